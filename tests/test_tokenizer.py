"""Tests of tokenizer.py: the fast trainer against a plain one, round trips, files, errors."""
import copy
import json
import random
from collections import Counter
from itertools import chain

import pytest
from hypothesis import example, given, settings, strategies as st

import tokenizer
from conftest import REPO
from tokenizer import (SPLIT_RE, Tokenizer, TokenizerError, chunk_keys, chunk_of_key, text_blocks,
                       token_bytes, token_text)

# Fixed and modest: the same examples on every run, quick on a loaded 2-core machine.
PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=150)

INPUT_TXT = REPO / "Train_Data" / "input.txt"


# --- the plain twins: deliberately simple, slow, obviously right -----------------------------

def plain_merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each (left, right) in ids by new_id, left to right."""
    out, i = [], 0
    while i < len(ids):
        if tuple(ids[i:i + 2]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def reference_train(text: str, vocab_size: int, max_merges: int | None = None):
    """BPE with a full recount of every pair before every merge.

    Returns (merges, segmentation): segmentation maps each chunk to its ids after the last merge.
    Ties go to the smallest (left_id, right_id), the rule tokenizer.py documents.
    """
    chunks = Counter(SPLIT_RE.findall(text))
    words = {chunk: list(chunk.encode("utf-8")) for chunk in chunks}
    merges = []
    while 256 + len(merges) < vocab_size and (max_merges is None or len(merges) < max_merges):
        counts = Counter()
        for chunk, ids in words.items():
            for pair in zip(ids, ids[1:]):
                counts[pair] += chunks[chunk]
        if not counts:
            break
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        new_id = 256 + len(merges)
        merges.append(best)
        words = {chunk: plain_merge(ids, best, new_id) for chunk, ids in words.items()}
    return merges, words


def reference_encode(merges: list[tuple[int, int]], text: str) -> list[int]:
    """Encode by applying every merge, in order, to every chunk."""
    out, memo = [], {}
    for chunk in SPLIT_RE.findall(text):
        if chunk not in memo:
            ids = list(chunk.encode("utf-8"))
            for rank, pair in enumerate(merges):
                ids = plain_merge(ids, pair, 256 + rank)
            memo[chunk] = ids
        out += memo[chunk]
    return out


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


def input_slice(start: int, length: int) -> str:
    return INPUT_TXT.read_text(encoding="utf-8")[start:start + length]


@pytest.fixture(scope="module")
def shakespeare_tok() -> Tokenizer:
    """A small vocabulary learned from a slice of the corpus (quick to train)."""
    tok = Tokenizer()
    tok.train(input_slice(0, 60_000), 600)
    return tok


# --- training ---------------------------------------------------------------------------------

@pytest.mark.parametrize("first_seed", range(0, 200, 40))
def test_fast_trainer_learns_exactly_the_reference_merges_on_random_corpora(first_seed):
    for seed in range(first_seed, first_seed + 40):
        text = random_corpus(seed)
        vocab_size = 256 + random.Random(-seed).randint(0, 60)
        tok = Tokenizer()
        tok.train(text, vocab_size)
        assert tok.merges == reference_train(text, vocab_size)[0], f"seed {seed}: {text!r}"


@pytest.mark.parametrize("text", [
    "a" * 6, "a" * 7, "a" * 33, "aaaa aaa aa a", "abababab", "aabaabaab", " aaaa\n\naaaa",
    "zzzz zzzzz zzzzzzzz", "ÿÿÿÿÿ", "😀😀😀😀",
])
def test_fast_trainer_matches_reference_on_runs_with_overlapping_pairs(text):
    tok = Tokenizer()
    tok.train(text, 300)
    assert tok.merges == reference_train(text, 300)[0]


def test_fast_trainer_matches_reference_on_a_slice_of_the_corpus():
    text = input_slice(500_000, 15_000)
    tok = Tokenizer()
    tok.train(text, 256 + 150)
    assert tok.merges == reference_train(text, 256 + 150)[0]


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


def test_the_numpy_cut_gives_the_chunks_of_the_pattern_on_the_corpus():
    text = INPUT_TXT.read_text(encoding="utf-8")
    assert list(map(chunk_of_key, chunk_keys(text))) == SPLIT_RE.findall(text)


# --- encoding and decoding --------------------------------------------------------------------

@PROPERTY
@given(st.text())
@example("")
@example("\r\n\t\x00\x07\x1b[0m\u200b\ufeff")
@example("👩\u200d👩\u200d👧 中文 日本語 e\u0301 Ω")
@example("<0xE2><0x80> | <0x")
def test_decode_of_encode_returns_any_text_exactly(shakespeare_tok, text):
    ids = shakespeare_tok.encode(text)
    assert shakespeare_tok.decode(ids) == text
    assert shakespeare_tok.decode_bytes(ids) == text.encode("utf-8")
    assert all(0 <= i < shakespeare_tok.vocab_size for i in ids)


@PROPERTY
@given(st.text(alphabet=st.sampled_from("ab \n😀é"), max_size=60))
def test_encode_matches_the_reference_encoder(shakespeare_tok, text):
    tok = Tokenizer()
    tok.train(text * 2 + "abab aabb", 300)
    assert tok.encode(text) == reference_encode(tok.merges, text)
    assert shakespeare_tok.encode(text) == reference_encode(shakespeare_tok.merges, text)


def test_encode_of_a_long_text_merges_everywhere_not_only_at_the_end(shakespeare_tok):
    # The seed's encoder merged only the last two tokens, leaving long texts byte by byte.
    text = input_slice(0, 20_000)
    ids = shakespeare_tok.encode(text)
    assert ids == reference_encode(shakespeare_tok.merges, text)
    assert len(text) / len(ids) > 2.0
    line = " the king and the queen"
    repeated = shakespeare_tok.encode(line * 200)
    assert repeated[:len(repeated) // 200] == shakespeare_tok.encode(line)
    assert repeated == shakespeare_tok.encode(line) * 200


@pytest.mark.parametrize("seed", range(12))
def test_encode_of_training_text_matches_training_segmentation(seed):
    text = random_corpus(seed, 300) if seed else input_slice(100_000, 8_000)
    tok = Tokenizer()
    tok.train(text, 330)
    merges, segmentation = reference_train(text, 330)
    assert tok.merges == merges
    assert tok.encode(text) == list(chain.from_iterable(
        segmentation[chunk] for chunk in SPLIT_RE.findall(text)))


def test_a_single_long_chunk_encodes_as_training_segmented_it():
    rng = random.Random(3)
    text = "".join(rng.choice("abc") for _ in range(5_000))  # one chunk, no spaces
    tok = Tokenizer()
    tok.train(text, 330)
    merges, segmentation = reference_train(text, 330)
    assert tok.merges == merges
    assert tok.encode(text) == segmentation[text]


@pytest.mark.parametrize("seed", range(8))
def test_bulk_merging_gives_the_one_by_one_encoding(seed, monkeypatch):
    # Many new chunks are merged all at once with numpy, a few one by one: both must agree with
    # the plain reference, including runs like "aaaaa" where the occurrences of a pair overlap.
    text = random_corpus(seed, 400) if seed else input_slice(200_000, 20_000)
    tok = Tokenizer()
    tok.train(text + " aaaaaaa aaaa bbbbb aaaaa", 360)
    expected = reference_encode(tok.merges, text)
    # each time a copy, whose chunk cache is empty: the tokenizer remembers chunks across calls
    monkeypatch.setattr(tokenizer, "_BULK_MIN_CHUNKS", 1)   # every chunk goes through numpy
    assert copy.deepcopy(tok).encode(text) == expected
    monkeypatch.setattr(tokenizer, "_BULK_MAX_CHARS", 3)    # ... except those over 3 characters
    assert copy.deepcopy(tok).encode(text) == expected
    monkeypatch.setattr(tokenizer, "_BULK_MIN_CHUNKS", 10**9)  # every chunk one by one
    assert copy.deepcopy(tok).encode(text) == expected


@PROPERTY
@given(st.lists(st.text(alphabet=st.sampled_from("ab \n😀é"), min_size=1, max_size=30),
                min_size=1, max_size=40))
def test_bulk_merging_matches_the_reference_on_any_chunks(shakespeare_tok, pieces):
    tok = Tokenizer()
    tok.train("".join(pieces) * 2 + "abab aabb aaaa", 300)
    chunks = sorted(set(chain.from_iterable(map(SPLIT_RE.findall, pieces))))
    for t in (tok, shakespeare_tok):
        ids, counts = tokenizer._merge_in_bulk(chunks, t._rank_table)
        ids, ends = ids.tolist(), [0] + counts.cumsum().tolist()
        assert [ids[a:b] for a, b in zip(ends, ends[1:])] == [
            reference_encode(t.merges, chunk) for chunk in chunks]


def test_encode_is_unchanged_when_the_chunk_cache_overflows(shakespeare_tok, monkeypatch):
    text, other = input_slice(30_000, 5_000), input_slice(90_000, 5_000)
    expected = copy.deepcopy(shakespeare_tok).encode(text)
    monkeypatch.setattr(tokenizer, "_CACHE_LIMIT", 3)
    tok = copy.deepcopy(shakespeare_tok)
    assert tok.encode(text) == expected
    assert tok.encode(other) == reference_encode(tok.merges, other)
    # text's chunks were let go
    assert set(map(chunk_of_key, tok._chunk_cache)) == set(SPLIT_RE.findall(other))
    assert tok.encode(text) == expected


def test_the_chunk_cache_carries_over_between_calls_and_never_goes_stale():
    first, second = input_slice(0, 6_000), input_slice(50_000, 6_000)
    tok = Tokenizer()
    tok.train(first, 400)
    assert tok.encode(first) == reference_encode(tok.merges, first)
    # remembered for the next call
    assert set(SPLIT_RE.findall(first)) <= set(map(chunk_of_key, tok._chunk_cache))
    assert tok.encode(first + second) == reference_encode(tok.merges, first + second)
    # new merges (train again, or load) must not reuse ids cached under the old ones
    tok.train(second, 350)
    assert tok._chunk_cache == {}
    assert tok.encode(first) == reference_encode(tok.merges, first)
    # copies (and the pickles encode_file's worker processes receive) start with an empty cache
    assert copy.deepcopy(tok)._chunk_cache == {}


def test_an_untrained_tokenizer_encodes_bytes():
    tok = Tokenizer()
    assert tok.vocab_size == 256 and tok.merges == []
    assert tok.encode("aé") == [97, 0xC3, 0xA9]
    assert tok.decode([97, 0xC3, 0xA9]) == "aé"


def test_decode_replaces_invalid_utf8_and_decode_bytes_keeps_it(shakespeare_tok):
    assert shakespeare_tok.decode([0xC3, 0xA9]) == "é"
    assert shakespeare_tok.decode_bytes([0xC3]) == b"\xc3"
    assert shakespeare_tok.decode([0xC3]) == "\ufffd"
    assert shakespeare_tok.decode([]) == ""


@pytest.mark.parametrize("bad", [-1, 600, 10**6, 2.0, "a", None])
def test_decode_of_an_id_outside_the_vocabulary_is_a_tokenizer_error(shakespeare_tok, bad):
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        shakespeare_tok.decode([104, bad])


def test_encoding_a_lone_surrogate_is_a_tokenizer_error(shakespeare_tok):
    with pytest.raises(TokenizerError, match="index 3"):
        shakespeare_tok.encode("abc\ud800def")
    with pytest.raises(TokenizerError, match="surrogate"):
        Tokenizer().train("abc\udfffdef", 300)


def test_split_shows_the_tokens_with_bars(shakespeare_tok):
    shown = shakespeare_tok.split(" the question")
    assert shown.split("|") == [shakespeare_tok.token_text(i)
                                for i in shakespeare_tok.encode(" the question")]
    assert shown.replace("|", "") == " the question"
    assert "|" in shown and " the" in shown.split("|")
    assert Tokenizer().split("ab") == "a|b"


def test_fingerprint_changes_with_the_merges(shakespeare_tok):
    other = Tokenizer()
    other.train(input_slice(0, 60_000), 599)
    assert len(shakespeare_tok.fingerprint()) == 16
    assert other.fingerprint() != shakespeare_tok.fingerprint()
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
def saved(tmp_path, shakespeare_tok):
    directory = tmp_path / "tok"
    shakespeare_tok.save(directory)
    return directory


def test_save_then_load_gives_the_same_tokenizer(saved, shakespeare_tok):
    loaded = Tokenizer.load(saved)
    assert loaded.merges == shakespeare_tok.merges
    assert loaded.vocab_size == shakespeare_tok.vocab_size == 600
    assert loaded.fingerprint() == shakespeare_tok.fingerprint()
    text = input_slice(200_000, 3_000) + " 中文 😀 <0x"
    assert loaded.encode(text) == shakespeare_tok.encode(text)


def test_saved_files_are_readable_and_carry_a_format_version(saved, shakespeare_tok):
    merges = json.loads((saved / "merges.json").read_text(encoding="utf-8"))
    assert merges["format_version"] == 1
    assert [tuple(m) for m in merges["merges"]] == shakespeare_tok.merges
    assert json.loads((saved / "vocab_size.json").read_text()) == {
        "format_version": 1, "vocab_size": 600}
    itos = json.loads((saved / "itos.json").read_text(encoding="utf-8"))
    stoi = json.loads((saved / "stoi.json").read_text(encoding="utf-8"))
    the = shakespeare_tok.encode(" the")
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
