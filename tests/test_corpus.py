"""Corpora larger than memory: reading a file in pieces, counting its chunks, learning from a sample,
and tokenizing it on several processes into the memory-mapped cache. Each streamed result is held
against the plain one on the whole string."""
import hashlib
import pickle
import re
import tempfile
from collections import Counter
from itertools import chain
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

import init
from conftest import english_like_text
from support import corpus
from support.corpus import count_chunks, read_pieces, safe_cuts
from tokenizer import SPLIT_RE, Tokenizer, TokenizerError

ENGLISH = english_like_text()[:60_000]   # made by the tests, never Train_Data/input.txt
# Multi-byte characters (2, 3 and 4 bytes), Unicode whitespace (U+3000, U+00A0, U+001C) and long
# whitespace runs, so that small pieces cut inside characters and inside whitespace runs.
MIXED = ("Ça coûte 12€ —  l'été\u3000arrive.\n\n\n  \t𝄞 notes_here don't\xa0stop \x1c\n" * 40
         + ENGLISH[:5000])
# the characters random texts are made of: every kind the split pattern treats differently
ALPHABET = "ab1 \n\t\u3000\xa0\x1c'_.,é€𝄞s"


@pytest.fixture(scope="module")
def mixed_tok() -> Tokenizer:
    tok = Tokenizer()
    tok.train(MIXED + ENGLISH, 420)
    return tok


def write(tmp_path: Path, text: str, name: str = "text.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


# ───────────────────────────── reading in pieces and counting chunks ─────────────────────────────

@pytest.mark.parametrize("piece_bytes", [1, 2, 3, 5, 64, 1 << 20])
def test_streamed_chunk_counting_equals_counting_the_whole_string(tmp_path, piece_bytes):
    path = write(tmp_path, MIXED)
    pieces = list(read_pieces(path, piece_bytes=piece_bytes))
    assert "".join(pieces) == MIXED
    assert count_chunks(pieces, SPLIT_RE) == Counter(SPLIT_RE.findall(MIXED))


@settings(max_examples=150, deadline=None)
@given(text=st.text(alphabet=ALPHABET, max_size=60), piece_bytes=st.integers(1, 9),
       scan_bytes=st.integers(9, 24), offsets=st.lists(st.integers(0, 200), max_size=4))
@example(text="ab\u3000\u3000 €𝄞  a", piece_bytes=1, scan_bytes=9, offsets=[3, 4, 5])
def test_pieces_and_safe_cuts_keep_the_chunks_of_the_whole_text(text, piece_bytes, scan_bytes, offsets):
    """Pieces cut anywhere (inside characters, inside whitespace runs) and files cut at safe_cuts
    (found with small scan windows, so block ends straddle windows) give the whole text's chunks."""
    with tempfile.TemporaryDirectory() as folder, \
            mock.patch.object(corpus, "SCAN_BYTES", scan_bytes):
        path = write(Path(folder), text)
        size = path.stat().st_size
        assert count_chunks(read_pieces(path, piece_bytes=piece_bytes), SPLIT_RE) == Counter(SPLIT_RE.findall(text))
        found = safe_cuts(path, offsets)
        assert found == [first_block_end(text, offset) for offset in offsets]
        cuts = sorted(set([0, *found, size]))
        parts = [list(read_pieces(path, a, b, piece_bytes)) for a, b in zip(cuts, cuts[1:])]
        assert "".join(chain.from_iterable(parts)) == text
        assert list(chain.from_iterable(SPLIT_RE.findall("".join(p)) for p in parts)) == SPLIT_RE.findall(text)


def first_block_end(text: str, offset: int) -> int:
    """The byte offset just after the first non-space character that starts at or after offset and
    that whitespace follows (the end of the file if none, 0 for 0): what safe_cuts should find."""
    if offset <= 0:
        return 0
    starts = [0]  # the byte offset of each character, and of the end
    for ch in text:
        starts.append(starts[-1] + len(ch.encode("utf-8")))
    first = next((i for i, start in enumerate(starts) if start >= offset), len(text))
    found = re.compile(r"\S(?=\s)").search(text, first)
    return starts[found.end()] if found else starts[-1]


def test_a_safe_cut_is_found_past_a_long_stretch_without_whitespace(tmp_path):
    text = "x" * 200_000 + "é \n" + "y" * 10
    path = write(tmp_path, text)
    cut = safe_cuts(path, [5])[0]
    assert cut == len(("x" * 200_000 + "é").encode("utf-8"))
    assert safe_cuts(path, [0, cut + 1, 10 ** 9]) == [0, path.stat().st_size, path.stat().st_size]


# ─────────────────────────────────────────── training ───────────────────────────────────────────

def test_training_from_streamed_chunk_counts_gives_the_merges_of_train(tmp_path):
    text = MIXED + ENGLISH
    path = write(tmp_path, text)
    whole, streamed = Tokenizer(), Tokenizer()
    whole.train(text, 500)
    streamed.train_from_chunk_counts(count_chunks(read_pieces(path, piece_bytes=777), SPLIT_RE), 500)
    assert streamed.merges == whole.merges and len(whole.merges) == 244


def test_count_tokens_from_chunk_counts_equals_the_length_of_encode(mixed_tok):
    assert mixed_tok.count_tokens(count_chunks([MIXED], SPLIT_RE)) == len(mixed_tok.encode(MIXED))


def test_sampled_training_of_a_file_smaller_than_the_sample_equals_training_on_it(tmp_path, capsys):
    text = MIXED + ENGLISH
    path = write(tmp_path, text)
    # several 1 MB windows would be needed for more: force small ones to cover the file in parts
    with mock.patch.object(corpus, "SAMPLE_WINDOW_BYTES", 1000):
        ranges = corpus.sample_ranges(path, path.stat().st_size, 10 ** 8)
        assert len(ranges) > 50 and ranges[0][0] == 0 and ranges[-1][1] == path.stat().st_size
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # consecutive: the whole file
        assert init.main(["--input", str(path), "--vocab-size", "400", "--out", str(tmp_path / "tok")]) == 0
    expected = Tokenizer()
    expected.train(text, 400)
    assert Tokenizer.load(tmp_path / "tok").merges == expected.merges
    err = capsys.readouterr().err
    assert f"chars per token: {len(text) / len(expected.encode(text)):.2f} on {path} (" in err


def test_a_file_larger_than_the_sample_is_learned_from_windows_spread_over_it(tmp_path, capsys):
    # ten distinct parts: a sample spread over the file meets the last ones too
    text = "".join(f"part{i} " * 3000 + "\n" for i in range(10))
    path = write(tmp_path, text)
    size = path.stat().st_size
    with mock.patch.object(corpus, "SAMPLE_WINDOW_BYTES", 1000):
        ranges = corpus.sample_ranges(path, size, 20_000)
        assert init.main(["--input", str(path), "--vocab-size", "300", "--out", str(tmp_path / "tok"),
                          "--sample-bytes", "20k"]) == 0
    assert len(ranges) == 20 and all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))
    assert 19_000 < sum(b - a for a, b in ranges) < 21_000 and ranges[-1][0] > 0.9 * size
    sampled = "".join(text.encode()[a:b].decode() for a, b in ranges)
    assert "part9" in sampled
    err = capsys.readouterr().err
    assert f"-byte sample of {path} (20 windows over its {size:,} bytes)" in err


@pytest.mark.parametrize("value, expected", [("100", 100), ("200M", 200_000_000), ("2g", 2 * 10 ** 9),
                                             ("500 kB", 500_000), ("1MB", 10 ** 6)])
def test_sample_bytes_accepts_plain_numbers_and_k_m_g(value, expected):
    assert init.parse_sample_bytes(value) == expected


@pytest.mark.parametrize("value", ["lots", "-5", "0", "1.5G", ""])
def test_a_bad_sample_bytes_is_one_error_line(tmp_path, capsys, value):
    path = write(tmp_path, "hello hello")
    assert init.main(["--input", str(path), "--out", str(tmp_path / "tok"), "--sample-bytes", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --sample-bytes") and err.count("\n") == 1
    assert not (tmp_path / "tok").exists()


# ───────────────────────────────────── parallel tokenization ─────────────────────────────────────

def test_parallel_tokenization_gives_the_ids_of_encode_on_the_whole_text(tmp_path, mixed_tok):
    path = write(tmp_path, MIXED)
    parts = list(mixed_tok.encode_file(path, workers=2, range_bytes=300))
    assert len(parts) > 20 and {p.typecode for p in parts} == {"H"}
    assert list(chain.from_iterable(parts)) == mixed_tok.encode(MIXED)
    assert list(chain.from_iterable(mixed_tok.encode_file(path))) == mixed_tok.encode(MIXED)  # one process


def test_a_tokenizer_travels_to_worker_processes_as_its_merges(mixed_tok):
    copy = pickle.loads(pickle.dumps(mixed_tok))
    assert copy.merges == mixed_tok.merges and copy.encode(MIXED) == mixed_tok.encode(MIXED)
    assert len(pickle.dumps(mixed_tok)) < 10 * len(mixed_tok.merges) + 200


@pytest.fixture(scope="module")
def id_cache():
    from support import id_cache as module  # imports torch: only the tests that need it pay for it
    return module


def test_tokenized_cache_is_a_memory_mapped_npy_and_is_reused(tmp_path, mixed_tok, id_cache, monkeypatch):
    path = write(tmp_path, MIXED)
    data_fp, say = id_cache.data_fingerprint(path, mixed_tok), lambda msg: None
    ids = id_cache.load_token_ids(path, data_fp, mixed_tok, id_cache.Processes(), say, workers=2,
                                     range_bytes=500)
    assert isinstance(ids, np.memmap) and ids.dtype == np.uint16
    assert ids.tolist() == mixed_tok.encode(MIXED)
    cache = id_cache.cache_path_for(path, data_fp, mixed_tok)
    assert sorted(p.name for p in (tmp_path / ".cache").iterdir()) == [cache.name]  # no temp file left
    assert np.array_equal(np.load(cache), ids)  # a plain .npy file
    monkeypatch.setattr(Tokenizer, "encode_file", lambda *args, **kwargs: pytest.fail("tokenized again"))
    assert np.array_equal(id_cache.load_token_ids(path, data_fp, mixed_tok, id_cache.Processes(), say), ids)


def test_without_a_writable_cache_folder_the_ids_are_tokenized_into_memory(tmp_path, mixed_tok, id_cache):
    path = write(tmp_path, MIXED)
    (tmp_path / ".cache").write_text("a file where the cache folder should be")
    notes = []
    ids = id_cache.load_token_ids(path, id_cache.data_fingerprint(path, mixed_tok), mixed_tok,
                                     id_cache.Processes(), notes.append, workers=2, range_bytes=500)
    assert ids.tolist() == mixed_tok.encode(MIXED)
    assert len(notes) == 1 and notes[0].startswith("note: could not cache token ids")


@pytest.mark.parametrize("vocab_size, dtype", [(300, np.uint16), (70_000, np.uint32)])
def test_the_cache_is_a_npy_file_whatever_the_count_and_width(tmp_path, id_cache, vocab_size, dtype):
    class Ids:                         # a tokenizer stand-in: encode_file yields ids in parts
        def __init__(self, parts):
            self.vocab_size, self.parts = vocab_size, parts

        def encode_file(self, *args):
            return (part for part in self.parts)
    for parts in ([], [[1, 2, 3]], [list(range(1000)), [vocab_size - 1] * 7]):
        with open(tmp_path / "ids.npy", "wb") as f:
            count = id_cache.tokenize_into(f, None, Ids(parts), 1, None, False)
        stored = np.load(tmp_path / "ids.npy")
        assert count == len(stored) and stored.dtype == dtype
        assert stored.tolist() == [i for part in parts for i in part]


def test_data_fingerprint_hashes_the_file_in_blocks_as_it_hashed_the_whole_bytes(tmp_path, mixed_tok,
                                                                                  id_cache, monkeypatch):
    path = write(tmp_path, MIXED)
    monkeypatch.setattr(id_cache, "HASH_BLOCK_BYTES", 1000)
    whole = hashlib.sha256(path.read_bytes() + b"\0" + mixed_tok.fingerprint().encode()).hexdigest()[:16]
    assert id_cache.data_fingerprint(path, mixed_tok) == whole  # checkpoints of earlier runs still resume


# ─────────────────────────────────────────── bad bytes ───────────────────────────────────────────

@pytest.mark.parametrize("data, offset, bad", [
    (("a b " * 2000).encode() + b"caf\xe9 au lait", 8003, 0xE9),  # a Latin-1 byte
    (("a b " * 2000).encode() + "€".encode()[:2], 8000, 0xE2),      # a character cut off at the end
    (b"\x80" + b"x y" * 100, 0, 0x80),                              # a continuation byte first
], ids=["latin-1 byte", "cut-off character", "continuation byte first"])
def test_invalid_utf8_in_a_streamed_file_gives_its_byte_offset(tmp_path, mixed_tok, data, offset, bad):
    path = tmp_path / "bad.txt"
    path.write_bytes(data)
    message = f"is not valid UTF-8: bad byte 0x{bad:02X} at byte offset {offset}"
    with pytest.raises(TokenizerError, match=message):
        list(read_pieces(path, piece_bytes=7))
    with pytest.raises(TokenizerError, match=message):
        list(mixed_tok.encode_file(path, workers=2, range_bytes=100))


def test_invalid_utf8_while_tokenizing_into_the_cache_leaves_no_file(tmp_path, mixed_tok, id_cache):
    # (init.py's one error line on such a file: test_init.py::test_bad_input_gives_one_error_line_and_writes_nothing)
    path = tmp_path / "bad.txt"
    path.write_bytes(("a b " * 2000).encode() + b"caf\xe9 au lait")
    with pytest.raises(TokenizerError, match="bad byte 0xE9 at byte offset 8003"):
        id_cache.load_token_ids(path, id_cache.data_fingerprint(path, mixed_tok), mixed_tok,
                                   id_cache.Processes(), lambda msg: None, workers=2, range_bytes=1000)
    assert list((tmp_path / ".cache").iterdir()) == []  # nothing half-written
