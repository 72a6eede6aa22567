"""Tests of tokenizer.py: the fast engine against the plain BPE, round trips, files, errors.

The plain pair in tokenizer.py, train_bpe and encode_bpe, is the oracle: every fast path (the
incremental trainer, the numpy cut, bulk merging, the chunk cache) must give exactly its merges
and its ids. The texts are made here (random ones, and conftest's English-like text made from a
word list), never read from Train_Data/input.txt, which users replace with their own.
"""
import copy
import errno
import json
import random
from itertools import chain
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from conftest import english_like_text
from support import fast_bpe
from support.corpus import text_blocks, token_dtype
from support.fast_bpe import chunk_keys, chunk_of_key
from tokenizer import (SPLIT_RE, Tokenizer, TokenizerError, encode_bpe, merge_pair, token_bytes,
                       token_text, train_bpe)

# Fixed and modest: the same examples on every run, quick on a loaded 2-core machine.
PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=150)


def training_segmentation(text: str, merges) -> dict[str, list[int]]:
    """Each chunk of text -> its ids after every merge was applied to it in turn, as train_bpe
    leaves its chunks: an encoder independent of encode_bpe's lowest-rank-first loop."""
    segmentation = {}
    for chunk in set(SPLIT_RE.findall(text)):
        ids = list(chunk.encode("utf-8"))
        for rank, pair in enumerate(merges):
            ids = merge_pair(ids, pair, 256 + rank)
        segmentation[chunk] = ids
    return segmentation


def text_slice(start: int, length: int) -> str:
    return english_like_text()[start:start + length]


# --- corpora ----------------------------------------------------------------------------------

PIECES = [
    "a", "a", "aa", "aaaa", "b", "ab", "ba", "the", " the", " a", " aaa",   # overlapping runs
    " ", " ", "  ", "\n", "\n\n", "\r\n", "\t", "\u00a0", "\u3000",          # whitespace
    "é", "e\u0301", "ß", "Ωμέγα", "Жизнь", "中文", "日本語", "한국어", "مرحبا",  # scripts, marks
    "😀", "👩\u200d👩\u200d👧", "1", "42", "3.14", ".", ",", "!?", "--", "_", "'s", "'ll",
    "\x00", "\x1b", "<0x", "|",
]


def random_corpus(seed: int, max_pieces: int = 120) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, max_pieces)))


@pytest.fixture(scope="module")
def english_tok() -> Tokenizer:
    """A small vocabulary learned from a slice of the corpus (quick to train)."""
    tok = Tokenizer()
    tok.train(text_slice(0, 60_000), 600)
    return tok


# --- training ---------------------------------------------------------------------------------

@pytest.mark.parametrize("first_seed", range(0, 200, 40))
def test_fast_trainer_learns_exactly_the_reference_merges_on_random_corpora(first_seed):
    for seed in range(first_seed, first_seed + 40):
        text = random_corpus(seed)
        vocab_size = 256 + random.Random(-seed).randint(0, 60)
        tok = Tokenizer()
        tok.train(text, vocab_size)
        assert tok.merges == train_bpe(text, vocab_size), f"seed {seed}: {text!r}"


@pytest.mark.parametrize("text", [
    "a" * 6, "a" * 7, "a" * 33, "aaaa aaa aa a", "abababab", "aabaabaab", " aaaa\n\naaaa",
    "zzzz zzzzz zzzzzzzz", "ÿÿÿÿÿ", "😀😀😀😀",
])
def test_fast_trainer_matches_reference_on_runs_with_overlapping_pairs(text):
    tok = Tokenizer()
    tok.train(text, 300)
    assert tok.merges == train_bpe(text, 300)


@pytest.mark.parametrize("start", [0, 123_457, 250_000])
def test_fast_trainer_learns_the_plain_merges_on_slices_of_an_english_like_text(start):
    text = text_slice(start, 15_000)
    tok = Tokenizer()
    tok.train(text, 256 + 150)
    assert tok.merges == train_bpe(text, 256 + 150)
    assert tok.encode(text) == encode_bpe(text, tok.merges)


@PROPERTY
@given(st.one_of(st.text(max_size=120), st.text(alphabet=st.sampled_from("ab \n😀é'1_."), max_size=200)),
       st.integers(256, 330))
@example("", 300)
@example("aaaaaaa bbb aaaa", 400)
def test_fast_trainer_learns_the_plain_merges_on_any_text(text, vocab_size):
    tok = Tokenizer()
    tok.train(text, vocab_size)
    assert tok.merges == train_bpe(text, vocab_size)
    assert tok.encode(text) == encode_bpe(text, tok.merges)


def test_plain_encoding_replays_the_merges_in_rank_order_chunk_by_chunk():
    merges = train_bpe("the theme then, the thin thing", 280)
    steps = []
    ids = encode_bpe("the thing", merges, lambda rank, at, after: steps.append((rank, at, after)))
    assert [at for _, at, _ in steps] == sorted(at for _, at, _ in steps)   # chunk 0, then chunk 1
    for at in (0, 1):
        ranks = [rank for rank, chunk, _ in steps if chunk == at]
        assert ranks == sorted(set(ranks)) and ranks
    assert [after for _, at, after in steps if at == 1][-1] == ids[-1:] and len(ids) == 2


def test_run_of_six_letters_merges_into_one_token_by_hand():
    # "aaaaaa": (a,a) x5 -> [A,A,A]; (A,A) x2 -> [B,A]; then (B,A) -> [C]
    tok = Tokenizer()
    tok.train("aaaaaa", 1000)
    assert tok.merges == [(97, 97), (256, 256), (257, 256)]
    assert tok.encode("aaaaaa") == [258]
    assert tok.encode("aaaaa") == [257, 97]  # [A,A,a] -> [B,a]: (B,a) was never learned


def test_ties_go_to_the_smallest_pair():
    # every pair of "abcd" occurs once; (a,b) is smallest; then (c,d)=(99,100) beats (256,99)
    tok = Tokenizer()
    tok.train("abcd", 259)
    assert tok.merges == [(97, 98), (99, 100), (256, 257)]


def test_training_stops_early_when_no_pair_is_left():
    tok = Tokenizer()
    tok.train("ab ab ab", 1000)  # chunks "ab", " ab": (a,b) then (" ", ab) leave one token each
    assert tok.merges == [(97, 98), (32, 256)]
    assert tok.encode("ab ab") == [256, 257]


def test_training_is_deterministic_and_retraining_replaces_merges():
    text = random_corpus(7)
    first, second = Tokenizer(), Tokenizer()
    first.train(text, 290)
    second.train("something else entirely", 270)
    second.train(text, 290)
    assert first.merges == second.merges
    assert first.fingerprint() == second.fingerprint()


def test_no_token_joins_a_newline_to_letters_or_a_word_to_its_punctuation():
    tok = Tokenizer()
    tok.train("\nthe end.\nthe end.\n" * 50 + "word, word, word," * 50, 400)
    for i in range(tok.vocab_size):
        text = tok.decode([i])
        assert not ("\n" in text and any(ch.isalpha() for ch in text)), repr(text)
        assert not (any(ch.isalpha() for ch in text) and any(ch in ".," for ch in text)), text


@pytest.mark.parametrize("bad", [255, 0, -1, 2.5, "300", True])
def test_train_rejects_a_vocab_size_that_is_not_an_int_of_at_least_256(bad):
    with pytest.raises(ValueError):
        Tokenizer().train("some text", bad)


# --- pre-split --------------------------------------------------------------------------------

def test_pre_split_keeps_the_leading_space_with_the_word_and_newlines_apart():
    assert SPLIT_RE.findall("Hello world,  it's 2024!\n\nOK") == [
        "Hello", " world", ",", " ", " it", "'s", " 2024", "!", "\n", "\n", "OK"]
    assert SPLIT_RE.findall("a\nb") == ["a", "\n", "b"]
    assert SPLIT_RE.findall("snake_case x") == ["snake", "_", "case", " x"]


@PROPERTY
@given(st.text(max_size=80), st.integers(min_value=1, max_value=12))
@example("word  \n\n  word \t\n", 3)
def test_pre_split_covers_the_text_and_blocks_give_the_same_chunks(text, block_chars):
    chunks = SPLIT_RE.findall(text)
    assert "".join(chunks) == text
    blocks = list(text_blocks(text, block_chars))
    assert "".join(blocks) == text
    assert list(chain.from_iterable(map(SPLIT_RE.findall, blocks))) == chunks


# Characters of every class the cut tells apart, among them those the rules single out: the
# space, the apostrophe and the letters of the contractions, NUL, Unicode digits and spaces, and
# characters past U+00FF (which chunk_keys never packs into an int).
TRICKY = " \n\t\r\x00\x1c\x85\xa0'_sdmtlvreSxA19!.,-é²٣中\u3000\u0301😀"


@PROPERTY
@given(st.one_of(st.text(max_size=80), st.text(alphabet=TRICKY, max_size=80)))
@example("Hello world,  it's 2024!\n\nOK 'll've're'x '' ''s snake_case  _ \t x")
@example("'")
@example("a'll")
@example("")
def test_the_numpy_cut_gives_the_chunks_of_the_pattern(text):
    chunks = SPLIT_RE.findall(text)
    keys = chunk_keys(text)
    assert list(map(chunk_of_key, keys)) == chunks
    assert len(set(keys)) == len(set(chunks))   # one key per distinct chunk


def test_short_chunks_get_int_keys_and_the_others_keep_their_text():
    keys = chunk_keys("Hello, café 'tis\n\n extraordinary\x00 中 ")
    assert [(chunk_of_key(k), type(k)) for k in keys] == [
        ("Hello", int), (",", int), (" café", int), (" '", int), ("tis", int), ("\n\n", int),
        (" extraordinary", str), ("\x00", str), (" 中", str), (" ", int)]
    assert chunk_keys("abc abc")[0] != chunk_keys("abd")[0]


def test_the_numpy_cut_gives_the_chunks_of_the_pattern_on_a_long_text():
    text = english_like_text()
    assert list(map(chunk_of_key, chunk_keys(text))) == SPLIT_RE.findall(text)


# --- encoding and decoding --------------------------------------------------------------------

@PROPERTY
@given(st.text())
@example("")
@example("\r\n\t\x00\x07\x1b[0m\u200b\ufeff")
@example("👩\u200d👩\u200d👧 中文 日本語 e\u0301 Ω")
@example("<0xE2><0x80> | <0x")
def test_decode_of_encode_returns_any_text_exactly(english_tok, text):
    ids = english_tok.encode(text)
    assert english_tok.decode(ids) == text
    assert english_tok.decode_bytes(ids) == text.encode("utf-8")
    assert all(0 <= i < english_tok.vocab_size for i in ids)


@PROPERTY
@given(st.text(alphabet=st.sampled_from("ab \n😀é"), max_size=60))
def test_encode_matches_the_reference_encoder(english_tok, text):
    tok = Tokenizer()
    tok.train(text * 2 + "abab aabb", 300)
    assert tok.encode(text) == encode_bpe(text, tok.merges)
    assert english_tok.encode(text) == encode_bpe(text, english_tok.merges)


def test_encode_of_a_long_text_merges_everywhere_not_only_at_the_end(english_tok):
    # The seed's encoder merged only the last two tokens, leaving long texts byte by byte.
    text = text_slice(0, 20_000)
    ids = english_tok.encode(text)
    assert ids == encode_bpe(text, english_tok.merges)
    assert len(text) / len(ids) > 2.0
    line = " the king and the queen"
    repeated = english_tok.encode(line * 200)
    assert repeated[:len(repeated) // 200] == english_tok.encode(line)
    assert repeated == english_tok.encode(line) * 200


@pytest.mark.parametrize("seed", range(12))
def test_encode_of_training_text_matches_training_segmentation(seed):
    text = random_corpus(seed, 300) if seed else text_slice(100_000, 8_000)
    tok = Tokenizer()
    tok.train(text, 330)
    merges = train_bpe(text, 330)
    segmentation = training_segmentation(text, merges)
    assert tok.merges == merges
    assert tok.encode(text) == list(chain.from_iterable(
        segmentation[chunk] for chunk in SPLIT_RE.findall(text)))


def test_a_single_long_chunk_encodes_as_training_segmented_it():
    rng = random.Random(3)
    text = "".join(rng.choice("abc") for _ in range(5_000))  # one chunk, no spaces
    tok = Tokenizer()
    tok.train(text, 330)
    merges = train_bpe(text, 330)
    segmentation = training_segmentation(text, merges)
    assert tok.merges == merges
    assert tok.encode(text) == segmentation[text]


@pytest.mark.parametrize("seed", range(8))
def test_bulk_merging_gives_the_one_by_one_encoding(seed, monkeypatch):
    # Many new chunks are merged all at once with numpy, a few one by one: both must agree with
    # the plain reference, including runs like "aaaaa" where the occurrences of a pair overlap.
    text = random_corpus(seed, 400) if seed else text_slice(200_000, 20_000)
    tok = Tokenizer()
    tok.train(text + " aaaaaaa aaaa bbbbb aaaaa", 360)
    expected = encode_bpe(text, tok.merges)
    # each time a copy, whose chunk cache is empty: the tokenizer remembers chunks across calls
    monkeypatch.setattr(fast_bpe, "BULK_MIN_CHUNKS", 1)   # every chunk goes through numpy
    assert copy.deepcopy(tok).encode(text) == expected
    monkeypatch.setattr(fast_bpe, "BULK_MAX_CHARS", 3)    # ... except those over 3 characters
    assert copy.deepcopy(tok).encode(text) == expected
    monkeypatch.setattr(fast_bpe, "BULK_MIN_CHUNKS", 10**9)  # every chunk one by one
    assert copy.deepcopy(tok).encode(text) == expected


@PROPERTY
@given(st.lists(st.text(alphabet=st.sampled_from("ab \n😀é"), min_size=1, max_size=30),
                min_size=1, max_size=40))
def test_bulk_merging_matches_the_reference_on_any_chunks(english_tok, pieces):
    tok = Tokenizer()
    tok.train("".join(pieces) * 2 + "abab aabb aaaa", 300)
    chunks = sorted(set(chain.from_iterable(map(SPLIT_RE.findall, pieces))))
    for t in (tok, english_tok):
        ids, counts = fast_bpe.merge_in_bulk(chunks, t._encoder.rank_table)
        ids, ends = ids.tolist(), [0] + counts.cumsum().tolist()
        assert [ids[a:b] for a, b in zip(ends, ends[1:])] == [
            encode_bpe(chunk, t.merges) for chunk in chunks]


def test_encode_is_unchanged_when_the_chunk_cache_overflows(english_tok, monkeypatch):
    text, other = text_slice(30_000, 5_000), text_slice(90_000, 5_000)
    expected = copy.deepcopy(english_tok).encode(text)
    monkeypatch.setattr(fast_bpe, "CACHE_LIMIT", 3)
    tok = copy.deepcopy(english_tok)
    assert tok.encode(text) == expected
    assert tok.encode(other) == encode_bpe(other, tok.merges)
    # text's chunks were let go
    assert set(map(chunk_of_key, tok._encoder.cache)) == set(SPLIT_RE.findall(other))
    assert tok.encode(text) == expected


def test_the_chunk_cache_carries_over_between_calls_and_never_goes_stale():
    first, second = text_slice(0, 6_000), text_slice(50_000, 6_000)
    tok = Tokenizer()
    tok.train(first, 400)
    assert tok.encode(first) == encode_bpe(first, tok.merges)
    # remembered for the next call
    assert set(SPLIT_RE.findall(first)) <= set(map(chunk_of_key, tok._encoder.cache))
    assert tok.encode(first + second) == encode_bpe(first + second, tok.merges)
    # new merges (train again, or load) must not reuse ids cached under the old ones
    tok.train(second, 350)
    assert tok._encoder.cache == {}
    assert tok.encode(first) == encode_bpe(first, tok.merges)
    # copies (and the pickles encode_file's worker processes receive) start with an empty cache
    assert copy.deepcopy(tok)._encoder.cache == {}


def test_an_untrained_tokenizer_encodes_bytes():
    tok = Tokenizer()
    assert tok.vocab_size == 256 and tok.merges == []
    assert tok.encode("aé") == [97, 0xC3, 0xA9]
    assert tok.decode([97, 0xC3, 0xA9]) == "aé"


def test_decode_replaces_invalid_utf8_and_decode_bytes_keeps_it(english_tok):
    assert english_tok.decode([0xC3, 0xA9]) == "é"
    assert english_tok.decode_bytes([0xC3]) == b"\xc3"
    assert english_tok.decode([0xC3]) == "\ufffd"
    assert english_tok.decode([]) == ""


@pytest.mark.parametrize("bad", [-1, 600, 10**6, 2.0, "a", None])
def test_decode_of_an_id_outside_the_vocabulary_is_a_tokenizer_error(english_tok, bad):
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        english_tok.decode([104, bad])


def test_encoding_a_lone_surrogate_is_a_tokenizer_error(english_tok):
    with pytest.raises(TokenizerError, match="index 3"):
        english_tok.encode("abc\ud800def")
    with pytest.raises(TokenizerError, match="surrogate"):
        Tokenizer().train("abc\udfffdef", 300)


def test_split_shows_the_tokens_with_bars(english_tok):
    shown = english_tok.split(" the question")
    assert shown.split("|") == [english_tok.token_text(i)
                                for i in english_tok.encode(" the question")]
    assert shown.replace("|", "") == " the question"
    assert "|" in shown and " the" in shown.split("|")
    assert Tokenizer().split("ab") == "a|b"


def test_fingerprint_changes_with_the_merges(english_tok):
    other = Tokenizer()
    other.train(text_slice(0, 60_000), 599)
    assert len(english_tok.fingerprint()) == 16
    assert other.fingerprint() != english_tok.fingerprint()
    assert Tokenizer().fingerprint() == Tokenizer().fingerprint()


# --- token text (the escape scheme) -----------------------------------------------------------

@PROPERTY
@given(st.binary(min_size=1, max_size=12))
@example(b"<0x")
@example(b"<0xE2>")
@example(b"\xe2\x80")
def test_token_text_is_lossless_and_shows_utf8_as_itself(data):
    shown = token_text(data)
    assert token_bytes(shown) == data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        assert shown.startswith("<0x")
    else:
        assert shown == text or (text.startswith("<0x") and shown.startswith("<0x3C><0x30>"))


def test_token_text_examples():
    assert token_text(b" the") == " the"
    assert token_text(b"\xe2\x80") == "<0xE2><0x80>"
    assert token_text(b"<0xE2>") == "<0x3C><0x30><0x78><0x45><0x32><0x3E>"
    with pytest.raises(ValueError):
        token_bytes("<0xZZ>")


# --- saving and loading -----------------------------------------------------------------------

@pytest.fixture()
def saved(tmp_path, english_tok):
    directory = tmp_path / "tok"
    english_tok.save(directory)
    return directory


def test_save_then_load_gives_the_same_tokenizer(saved, english_tok):
    loaded = Tokenizer.load(saved)
    assert loaded.merges == english_tok.merges
    assert loaded.vocab_size == english_tok.vocab_size == 600
    assert loaded.fingerprint() == english_tok.fingerprint()
    text = text_slice(200_000, 3_000) + " 中文 😀 <0x"
    assert loaded.encode(text) == english_tok.encode(text)


def test_saved_files_are_readable_and_carry_a_format_version(saved, english_tok):
    merges = json.loads((saved / "merges.json").read_text(encoding="utf-8"))
    assert merges["format_version"] == 1
    assert [tuple(m) for m in merges["merges"]] == english_tok.merges
    assert json.loads((saved / "vocab_size.json").read_text()) == {
        "format_version": 1, "vocab_size": 600}
    itos = json.loads((saved / "itos.json").read_text(encoding="utf-8"))
    stoi = json.loads((saved / "stoi.json").read_text(encoding="utf-8"))
    the = english_tok.encode(" the")
    assert len(the) == 1 and itos[str(the[0])] == " the" and stoi[" the"] == the[0]
    assert itos["10"] == "\n" and itos["233"] == "<0xE9>" and stoi["<0xE9>"] == 233
    assert len(itos) == 600 and sorted(p.name for p in saved.iterdir()) == [
        "itos.json", "merges.json", "stoi.json", "vocab_size.json"]


def test_save_and_load_keep_tokens_that_are_not_utf8(tmp_path):
    tok = Tokenizer()
    tok.train("中文中文中文 日本日本 ℃℃", 280)  # merges inside multi-byte characters
    assert any(token_text(tok.decode_bytes([i])).startswith("<0x") for i in range(256, 280))
    tok.save(tmp_path)
    loaded = Tokenizer.load(tmp_path)
    assert loaded.merges == tok.merges
    assert loaded.encode("中文 ℃") == tok.encode("中文 ℃")


def test_stoi_keeps_the_lowest_id_when_two_ids_spell_the_same_text(tmp_path):
    tok = Tokenizer()
    tok._set_merges([(97, 98), (98, 99), (256, 99), (97, 257)])  # "abc" twice: ids 258 and 259
    tok.save(tmp_path)
    stoi = json.loads((tmp_path / "stoi.json").read_text())
    assert stoi["abc"] == 258
    assert Tokenizer.load(tmp_path).merges == tok.merges


def _truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _edit_json(path, change):
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


BAD_FILES = {
    "merges.json missing": ("merges.json", lambda p: p.unlink(), "missing"),
    "itos.json missing": ("itos.json", lambda p: p.unlink(), "missing"),
    "stoi.json missing": ("stoi.json", lambda p: p.unlink(), "missing"),
    "vocab_size.json missing": ("vocab_size.json", lambda p: p.unlink(), "missing"),
    "merges.json truncated": ("merges.json", _truncate, "not valid JSON"),
    "itos.json truncated": ("itos.json", _truncate, "not valid JSON"),
    "stoi.json truncated": ("stoi.json", _truncate, "not valid JSON"),
    "vocab_size.json truncated": ("vocab_size.json", _truncate, "not valid JSON"),
    "merges.json empty": ("merges.json", lambda p: p.write_text(""), "not valid JSON"),
    "merges.json not UTF-8": ("merges.json", lambda p: p.write_bytes(b"\xff\xfe{"), "UTF-8"),
    "merges.json a list": ("merges.json", lambda p: p.write_text("[[97, 98]]"),
                           "format_version"),
    "merges.json new version": ("merges.json", lambda p: _edit_json(
        p, lambda d: d.update(format_version=2)), "format_version 2"),
    "merges.json future id": ("merges.json", lambda p: _edit_json(
        p, lambda d: d["merges"].__setitem__(0, [97, 400])), "merge 0"),
    "merges.json not a pair": ("merges.json", lambda p: _edit_json(
        p, lambda d: d["merges"].__setitem__(3, [97])), "merge 3"),
    "merges.json repeated": ("merges.json", lambda p: _edit_json(
        p, lambda d: d["merges"].__setitem__(5, d["merges"][2])), "repeats merge 2"),
    "merges.json shortened": ("vocab_size.json", lambda p: _edit_json(
        p.with_name("merges.json"), lambda d: d["merges"].pop()), "599 tokens"),
    "vocab_size.json wrong": ("vocab_size.json", lambda p: _edit_json(
        p, lambda d: d.update(vocab_size=1024)), "1024"),
    "itos.json edited": ("itos.json", lambda p: _edit_json(
        p, lambda d: d.update({"300": "oops"})), "'300'"),
    "itos.json extra id": ("itos.json", lambda p: _edit_json(
        p, lambda d: d.update({"600": "x"})), "'600'"),
    "stoi.json entry dropped": ("stoi.json", lambda p: _edit_json(
        p, lambda d: d.pop("a")), "'a' is missing"),
    "stoi.json id as text": ("stoi.json", lambda p: _edit_json(
        p, lambda d: d.update(a="97")), "'a'"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_file_stops_loading_with_one_line_naming_it(saved, case):
    name, damage, words = BAD_FILES[case]
    damage(saved / name)
    with pytest.raises(TokenizerError) as err:
        Tokenizer.load(saved)
    message = str(err.value)
    assert str(saved / name) in message and words in message
    assert "\n" not in message


def test_loading_from_a_missing_folder_says_to_run_init(tmp_path):
    with pytest.raises(TokenizerError, match="init.py"):
        Tokenizer.load(tmp_path / "nowhere")


@pytest.mark.parametrize("failing", ["merges.json", "vocab_size.json", "itos.json", "stoi.json"])
def test_an_interrupted_save_leaves_the_old_tokenizer_intact(saved, english_tok, monkeypatch, failing):
    before = {p.name: p.read_bytes() for p in saved.iterdir()}
    other = Tokenizer()
    other.train(text_slice(0, 5_000), 300)
    write_text = Path.write_text

    def full_disk_midway(path, data, *args, **kwargs):
        if path.name.startswith(failing):   # the temporary file beside it
            write_text(path, data[:len(data) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(path, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk_midway)
    with pytest.raises(OSError, match="No space"):
        other.save(saved)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before   # no temporary file left
    assert Tokenizer.load(saved).merges == english_tok.merges
    other.save(saved)   # and the next save goes through
    assert Tokenizer.load(saved).merges == other.merges


# The original project's tokenizer_save/: a character-level base vocabulary (the 65 characters of
# its Shakespeare text, the newline stored as "@": it replaced newlines by "@" before training), then
# merges as pairs of its own token ids, and no format_version anywhere.
ORIGINAL_CHARS = "@ !$&',-.3:;?" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + "abcdefghijklmnopqrstuvwxyz"
ORIGINAL_MERGES = [("t", "h"), ("th", "e"), ("e", " ")]


def write_original_tokenizer(folder: Path, merges_as: str) -> None:
    stoi = {ch: i for i, ch in enumerate(ORIGINAL_CHARS)}
    for left, right in ORIGINAL_MERGES:
        stoi[left + right] = len(stoi)
    merges = {"id pairs": [[stoi[left], stoi[right]] for left, right in ORIGINAL_MERGES],
              "text pairs": [[left, right] for left, right in ORIGINAL_MERGES],
              "an object": {str(stoi[left + right]): [stoi[left], stoi[right]] for left, right in ORIGINAL_MERGES}}
    folder.mkdir()
    for name, data in {"stoi.json": stoi, "itos.json": {str(i): s for s, i in stoi.items()},
                       "merges.json": merges[merges_as], "vocab_size.json": len(stoi)}.items():
        (folder / name).write_text(json.dumps(data), encoding="utf-8")


@pytest.mark.parametrize("merges_as", ["id pairs", "text pairs", "an object"])
def test_a_tokenizer_of_the_original_project_is_named_as_such_with_what_to_run(tmp_path, merges_as):
    assert len(ORIGINAL_CHARS) == 65
    write_original_tokenizer(tmp_path / "tokenizer_save", merges_as)
    with pytest.raises(TokenizerError) as err:
        Tokenizer.load(tmp_path / "tokenizer_save")
    message = str(err.value)
    assert "original project's" in message and "python init.py" in message and "\n" not in message


def test_token_ids_are_two_bytes_up_to_65536_tokens_and_four_beyond():
    assert token_dtype(256) == token_dtype(65_536) == np.uint16
    assert token_dtype(65_537) == token_dtype(0x110000) == np.uint32
    assert Tokenizer().typecode == "H"
    big = Tokenizer()
    big._set_merges([(a, b) for a in range(256) for b in range(256)][:65_281])   # 65,537 tokens
    assert big.vocab_size == 65_537 and big.typecode == "I"
    assert big.decode_bytes([65_536]) == b"\xff\x00"   # (no UTF-8 text holds 0xFF: only decoding shows it)
    text = "\x01\x01 é\xff\xff" * 3
    assert big.decode(big.encode(text)) == text
