"""Tests of tokenizer.py: the fast engine against the plain BPE, round trips, files, errors; and a
tokenizer in GPT-2's layout (support/gpt2_tokenizer.py) against transformers and tiktoken.

The plain pair in tokenizer.py, train_bpe and encode_bpe, is the oracle: every fast path (the
incremental trainer, the numpy cut, bulk merging, the chunk cache) must give exactly its merges
and its ids. The texts are made here (random ones, and conftest's English-like text made from a
word list), never read from Train_Data/input.txt, which users replace with their own.
"""
import copy
import errno
import hashlib
import json
import pickle
import random
from itertools import chain
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from conftest import english_like_text, gpt2_tokenizer_files
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
        p, lambda d: d.update(format_version=3)), "format_version 3"),
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


# --- an imported tokenizer: GPT-2's byte order, special tokens and pre-split ------------------------
# A tiny vocabulary in GPT-2's layout, made here by Hugging Face's trainer (offline): its byte
# tokens in the trainer's order (not byte order), "<|endoftext|>" after the merges. Read by
# transformers, by tiktoken (from the same ranks) and by support/gpt2_tokenizer.py, it must give the
# same ids in all three.

GPT2_MIXED = ("Hello world! It's a test: don't, can't, we'll, they've, I'm, you're, 'S 'sup. "
              "Café naïve résumé — 中文 日本語 한국어 😀👍 x² ½ Ⅻ ① 3.14159 2024 1,000,000\n\n\t\ttabs  \n"
              "def f(self): return self._x + a_b__c  # snake_case __init__\n    trailing   \n")

GPT2_TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "Café naïve résumé — 中文 日本語 한국어 😀👍👩\u200d👩\u200d👧 e\u0301",
    "x² + y² = z², ½ cup, Ⅻ o'clock, ① ② ③, ³⁄₄ 五",
    "'S 'sup don't I'm you're we'll they've she'd IT'S 's ''s x'",
    "3.14159 2024 1,000,000 0x1F 007",
    "tabs\t\there\n\n\nnewlines   trailing spaces   \n \t \r\n",
    "self._x = a_b__c  # __init__ snake_case _private",
    "\x1c\x1d\x1e\x1f a\x1cb !\x1f \u00a0\u2003\u3000 end",
    "",
]
GPT2_SPECIAL_TEXTS = ["<|endoftext|>", "a<|endoftext|>b", " <|endoftext|> next", "<|endoftext|><|endoftext|>\n",
                      "<|endoftext|", "x <|endo<|endoftext|>ftext|>"]


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory) -> Path:
    """vocab.json and merges.txt of a ~800-token byte-level BPE, in GPT-2's layout."""
    folder = tmp_path_factory.mktemp("gpt2")
    gpt2_tokenizer_files(folder, text_slice(0, 6000) + GPT2_MIXED * 5, vocab_size=800)
    return folder


@pytest.fixture(scope="module")
def gpt2_tok(gpt2_folder) -> Tokenizer:
    from support.gpt2_tokenizer import from_gpt2_files
    # The trainer made no merge whose text an earlier token has, or this would refuse the vocabulary.
    return from_gpt2_files(gpt2_folder / "vocab.json", gpt2_folder / "merges.txt")


@pytest.fixture(scope="module")
def hf_tok(gpt2_folder):
    from transformers import GPT2TokenizerFast
    return GPT2TokenizerFast(vocab=str(gpt2_folder / "vocab.json"), merges=str(gpt2_folder / "merges.txt"))


@pytest.fixture(scope="module")
def tiktoken_enc(gpt2_tok):
    import tiktoken
    from tokenizer import GPT2_SPLIT_PATTERN
    ranks = {gpt2_tok.decode_bytes([i]): i for i in range(256 + len(gpt2_tok.merges))}
    return tiktoken.Encoding("tiny-gpt2", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
                             special_tokens=gpt2_tok.special_tokens)


def test_a_gpt2_vocabulary_is_read_with_its_byte_order_special_token_and_pre_split(gpt2_tok, hf_tok):
    assert gpt2_tok.vocab_size == len(hf_tok) == 801 and gpt2_tok.pre_split == "gpt2"
    assert gpt2_tok.byte_order is not None and sorted(gpt2_tok.byte_order) == list(range(256))
    assert gpt2_tok.special_tokens == {"<|endoftext|>": 800} and gpt2_tok.end_of_text == 800 == hf_tok.eos_token_id
    assert [gpt2_tok.decode([i]) for i in range(801)] == [hf_tok.decode([i]) for i in range(801)]


@pytest.mark.parametrize("text", GPT2_TEXTS)
def test_gpt2_tokenizer_gives_the_ids_of_transformers_and_tiktoken(gpt2_tok, hf_tok, tiktoken_enc, text):
    ids = gpt2_tok.encode(text)
    assert ids == hf_tok.encode(text) == tiktoken_enc.encode_ordinary(text)
    assert gpt2_tok.decode(ids) == text


@pytest.mark.parametrize("text", GPT2_SPECIAL_TEXTS)
def test_special_tokens_become_their_id_only_when_allowed_as_in_transformers_and_tiktoken(
        gpt2_tok, hf_tok, tiktoken_enc, text):
    allowed = gpt2_tok.encode(text, allowed_special=True)
    assert allowed == hf_tok.encode(text) == tiktoken_enc.encode(text, allowed_special="all")
    plain = gpt2_tok.encode(text)
    assert plain == hf_tok.encode(text, split_special_tokens=True) == tiktoken_enc.encode_ordinary(text)
    assert 800 not in plain and gpt2_tok.decode(plain) == gpt2_tok.decode(allowed) == text


GPT2_ALPHABET = st.sampled_from(list("aZé中😀 \t\n\r\x1c\x85\u3000_'sStlv.,!<|>1²½Ⅻ①") + ["<|endoftext|>", "'ll", "  "])


@PROPERTY
@given(st.lists(GPT2_ALPHABET, max_size=40).map("".join))
def test_gpt2_tokenizer_matches_tiktoken_and_transformers_on_any_text(gpt2_tok, hf_tok, tiktoken_enc, text):
    ids = gpt2_tok.encode(text)
    assert ids == tiktoken_enc.encode_ordinary(text) == hf_tok.encode(text, split_special_tokens=True)
    assert gpt2_tok.encode(text, allowed_special=True) == tiktoken_enc.encode(text, allowed_special="all")


# Assigned characters only: Python's Unicode tables and the regex module's may be of different
# versions, and disagree about characters one of them does not know yet.
ASSIGNED = st.characters(exclude_categories=("Cn", "Cs"))


@PROPERTY
@given(st.one_of(st.text(ASSIGNED, max_size=80), st.text(alphabet=TRICKY + "²½Ⅻ①\x1c\x1f\x85", max_size=80)),
       st.integers(min_value=1, max_value=12))
@example("self._x = a_b__c x² ½ Ⅻ\x1c\x1f 'S's", 3)
def test_the_numpy_cut_gives_the_chunks_of_gpt2s_pattern_and_blocks_keep_them(text, block_chars):
    regex = pytest.importorskip("regex")
    from tokenizer import GPT2_SPLIT_PATTERN
    chunks = regex.findall(GPT2_SPLIT_PATTERN, text)
    assert list(map(chunk_of_key, chunk_keys(text, "gpt2"))) == chunks
    blocks = list(text_blocks(text, block_chars))
    assert list(chain.from_iterable(regex.findall(GPT2_SPLIT_PATTERN, b) for b in blocks)) == chunks


def test_an_identity_byte_order_and_no_extras_is_a_plain_tokenizer(english_tok):
    same = Tokenizer.from_merges([list(m) for m in english_tok.merges], "test", byte_order=list(range(256)),
                                 special_tokens={}, pre_split="default")
    assert same.byte_order is None and same.fingerprint() == english_tok.fingerprint()


def test_fingerprint_changes_with_byte_order_special_tokens_and_pre_split(english_tok):
    merges = [list(m) for m in english_tok.merges]
    variants = [Tokenizer.from_merges(merges, "test"),
                Tokenizer.from_merges(merges, "test", byte_order=list(range(255, -1, -1))),
                Tokenizer.from_merges(merges, "test", special_tokens={"<|endoftext|>": 600}),
                Tokenizer.from_merges(merges, "test", special_tokens={"<|end|>": 600}),
                Tokenizer.from_merges(merges, "test", pre_split="gpt2")]
    assert len({tok.fingerprint() for tok in variants}) == len(variants)


def test_a_byte_order_relabels_the_byte_ids_and_gives_the_same_segmentation(english_tok):
    order = list(range(255, -1, -1))   # id i is byte 255 - i
    flip = lambda x: 255 - x if x < 256 else x   # noqa: E731
    flipped = Tokenizer.from_merges([[flip(a), flip(b)] for a, b in english_tok.merges], "test", byte_order=order)
    text = text_slice(1000, 3000) + "\x00\xff é 😀"
    assert flipped.encode(text) == [flip(i) for i in english_tok.encode(text)]
    assert flipped.decode(flipped.encode(text)) == text
    assert flipped.decode_bytes([0, 255]) == b"\xff\x00"


def test_plain_tokenizer_files_and_fingerprint_are_unchanged(tmp_path):
    shipped = Path(__file__).resolve().parent.parent / "tokenizer_save"
    tok = Tokenizer.load(shipped)
    tok.save(tmp_path)
    for name in ("merges.json", "vocab_size.json", "itos.json", "stoi.json"):
        assert (tmp_path / name).read_bytes() == (shipped / name).read_bytes(), name
    # a plain tokenizer's fingerprint is the hash of its merges alone, as checkpoints recorded it
    merges = json.dumps([list(m) for m in tok.merges], separators=(",", ":")).encode("ascii")
    assert tok.fingerprint() == hashlib.sha256(merges).hexdigest()[:16]


def test_save_then_load_keeps_byte_order_special_tokens_and_pre_split(tmp_path, gpt2_tok):
    gpt2_tok.save(tmp_path)
    merges = json.loads((tmp_path / "merges.json").read_text(encoding="utf-8"))
    assert merges["format_version"] == 2 and merges["pre_split"] == "gpt2"
    assert merges["byte_order"] == gpt2_tok.byte_order and merges["special_tokens"] == {"<|endoftext|>": 800}
    assert json.loads((tmp_path / "itos.json").read_text(encoding="utf-8"))["800"] == "<|endoftext|>"
    loaded = Tokenizer.load(tmp_path)
    assert (loaded.fingerprint(), loaded.byte_order, loaded.special_tokens, loaded.pre_split) == (
        gpt2_tok.fingerprint(), gpt2_tok.byte_order, gpt2_tok.special_tokens, "gpt2")
    assert all(loaded.encode(t, allowed_special=True) == gpt2_tok.encode(t, allowed_special=True)
               for t in GPT2_TEXTS + GPT2_SPECIAL_TEXTS)


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_an_imported_tokenizer_travels_to_worker_processes(tmp_path, gpt2_tok, monkeypatch, start):
    from support import corpus
    monkeypatch.setattr(corpus, "WORKER_START", start)
    copy = pickle.loads(pickle.dumps(gpt2_tok))
    assert copy.fingerprint() == gpt2_tok.fingerprint() and copy.end_of_text == 800
    text = "".join(GPT2_TEXTS) * 20
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8", newline="")
    ids = list(chain.from_iterable(gpt2_tok.encode_file(path, workers=2, range_bytes=500)))
    assert ids == gpt2_tok.encode(text.replace("\r\n", "\n"))


def test_training_an_imported_tokenizer_is_refused(gpt2_tok):
    with pytest.raises(TokenizerError, match="imported"):
        copy.deepcopy(gpt2_tok).train("some text", 300)


BAD_DEFINITIONS = {
    "byte order too short": (dict(byte_order=list(range(255))), "byte_order"),
    "byte order repeats": (dict(byte_order=[0] + list(range(0, 255))), "byte_order"),
    "byte order not ints": (dict(byte_order=[str(b) for b in range(256)]), "byte_order"),
    "byte order with one more": (dict(byte_order=list(range(256)) + ["x"]), "byte_order"),
    "special id a bool": (dict(special_tokens={"<|endoftext|>": True}), "special_tokens"),
    "special id taken by a merge": (dict(special_tokens={"<|endoftext|>": 257}), "special_tokens"),
    "special ids with a gap": (dict(special_tokens={"<|a|>": 258, "<|b|>": 260}), "special_tokens"),
    "special text empty": (dict(special_tokens={"": 258}), "special_tokens"),
    "unknown pre-split": (dict(pre_split="gpt3"), "pre_split 'gpt3'"),
}


@pytest.mark.parametrize("case", BAD_DEFINITIONS)
def test_a_bad_imported_definition_is_one_line_naming_its_source(case):
    extras, words = BAD_DEFINITIONS[case]
    with pytest.raises(TokenizerError) as err:
        Tokenizer.from_merges([[97, 98], [256, 99]], "ckpt.pth", **extras)
    assert str(err.value).startswith("ckpt.pth: ") and words in str(err.value) and "\n" not in str(err.value)


def _edit_gpt2_files(folder: Path, to: Path, vocab=None, merges=None) -> tuple[Path, Path]:
    to.mkdir()
    data = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    (to / "vocab.json").write_text(json.dumps(vocab(data) if vocab else data), encoding="utf-8")
    (to / "merges.txt").write_text("\n".join(merges(lines) if merges else lines), encoding="utf-8")
    return to / "vocab.json", to / "merges.txt"


def _swap(data: dict, a: int, b: int) -> dict:
    text_of = {i: t for t, i in data.items()}
    data[text_of[a]], data[text_of[b]] = b, a
    return data


BAD_GPT2_FILES = {
    "a merge whose text an earlier token has": (None, lambda lines: lines[:3] + [lines[2]] + lines[3:], "merges.txt"),
    "merges out of order": (None, lambda lines: lines[:2] + [lines[3], lines[2]] + lines[4:], "merges.txt"),
    "a merged token among the bytes": (lambda d: _swap(d, 5, 300), None, "ids 0 to 255"),
    "ids with a gap": (lambda d: {**d, "<|endoftext|>": 900}, None, "ids 0, 1, 2"),
    "not a merge line": (None, lambda lines: lines + ["a b c"], "not a merge"),
}


@pytest.mark.parametrize("case", BAD_GPT2_FILES)
def test_a_vocabulary_not_in_gpt2s_layout_is_refused_in_one_line(gpt2_folder, tmp_path, case):
    from support.gpt2_tokenizer import from_gpt2_files
    vocab, merges, words = BAD_GPT2_FILES[case]
    paths = _edit_gpt2_files(gpt2_folder, tmp_path / "edited", vocab, merges)
    with pytest.raises(TokenizerError) as err:
        from_gpt2_files(*paths)
    assert words in str(err.value) and "\n" not in str(err.value)


# --- out: Hugging Face's files (support/gpt2_tokenizer.gpt2_files) -----------------------------

def _exported(tok: Tokenizer, folder: Path):
    from transformers import AutoTokenizer
    from support.gpt2_tokenizer import gpt2_files
    folder.mkdir()
    for name, text in gpt2_files(tok, block_size=64).items():
        (folder / name).write_text(text, encoding="utf-8", newline="\n")
    return AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, english_tok, gpt2_tok):
    """Our English tokenizer and the GPT-2 one, each written by gpt2_files and read by transformers."""
    folder = tmp_path_factory.mktemp("exported")
    return {"default": (english_tok, _exported(english_tok, folder / "ours")),
            "gpt2": (gpt2_tok, _exported(gpt2_tok, folder / "gpt2"))}


@PROPERTY
@given(st.sampled_from(["default", "gpt2"]),
       st.one_of(st.sampled_from(GPT2_TEXTS), st.text(alphabet=TRICKY + "²½Ⅻ①\x1c\x1f\x85_", max_size=60),
                 st.text(ASSIGNED, max_size=30)))
def test_an_exported_tokenizer_gives_the_same_ids_in_transformers(exported, which, text):
    tok, hf = exported[which]
    assert hf.encode(text) == tok.encode(text)


def test_an_exported_gpt2_tokenizer_reads_back_as_itself_with_its_special_token(exported, tmp_path):
    from support.gpt2_tokenizer import from_gpt2_files
    tok, hf = exported["gpt2"]
    assert hf.eos_token_id == tok.end_of_text and hf.encode("a<|endoftext|>") == tok.encode("a<|endoftext|>", True)
    folder = Path(hf.name_or_path)
    assert from_gpt2_files(folder / "vocab.json", folder / "merges.txt").fingerprint() == tok.fingerprint()


def test_two_ids_with_the_same_bytes_cannot_be_exported():
    from support.gpt2_tokenizer import gpt2_files
    twins = Tokenizer.from_merges([[97, 98], [256, 99], [98, 99], [97, 258]], "test")   # "abc" twice
    with pytest.raises(TokenizerError, match="257 and 259"):
        gpt2_files(twins, 64)
