"""Tests of init.py, run as a user would run it (in a subprocess, writing only under tmp_path)."""
import pytest

import init
import Model_Params
from conftest import REPO, run_script
from tokenizer import Tokenizer

CORPUS = ("To be, or not to be, that is the question:\n"
          "Whether 'tis nobler in the mind to suffer\n"
          "The slings and arrows of outrageous fortune,\n") * 20


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return path


def snapshot(folder):
    """Every file under folder with its bytes, to show that nothing changed."""
    return {p.relative_to(folder): p.read_bytes() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


def test_init_trains_saves_and_reports(tmp_path, corpus):
    out = tmp_path / "tok"
    result = run_script("init.py", "--input", corpus, "--vocab-size", "300", "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # the summary and the progress bar go to stderr
    log = result.stderr
    tok = Tokenizer.load(out)
    assert tok.vocab_size == 300 and tok.decode(tok.encode(CORPUS)) == CORPUS
    sample = "To be, or not to be, that is the question:"
    chars_per_token = len(CORPUS) / len(tok.encode(CORPUS))
    for words in ("vocab size:      300", "merges learned:  44",
                  f"chars per token: {chars_per_token:.2f}", "time taken:",
                  f"sample line:     {sample}", f"its tokens:      {tok.split(sample)}",
                  "merges: 100%"):
        assert words in log
    assert tok.split(sample).count("|") < len(sample) - 1  # merged, not byte by byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "tok"]


def test_init_replaces_an_existing_tokenizer_and_leaves_no_temporary_folders(tmp_path, corpus):
    out = tmp_path / "tok"
    for vocab_size in ("280", "290"):
        result = run_script("init.py", "--input", corpus, "--vocab-size", vocab_size, "--out", out)
        assert result.returncode == 0, result.stderr
    assert Tokenizer.load(out).vocab_size == 290
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "tok"]


def test_init_stops_early_with_a_warning_when_no_pair_is_left(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("ab ab", encoding="utf-8")
    result = run_script("init.py", "--input", corpus, "--vocab-size", "1000",
                        "--out", tmp_path / "tok")
    assert result.returncode == 0, result.stderr
    assert "warning: no pair left to merge" in result.stderr and "vocab size 258" in result.stderr
    assert Tokenizer.load(tmp_path / "tok").vocab_size == 258


def _write(name, data):
    def make(tmp_path):
        path = tmp_path / name
        path.write_bytes(data)
        return path
    return make


BAD_INPUTS = {
    # case: (make the input file, --vocab-size, words the error must contain)
    "missing file": (lambda tmp: tmp / "nope.txt", "300", "nope.txt not found"),
    "empty file": (_write("empty.txt", b""), "300", "empty.txt is empty"),
    "invalid UTF-8": (_write("latin1.txt", "caf\xe9 au lait".encode("latin-1")), "300",
                      "not valid UTF-8: bad byte 0xE9 at byte offset 3"),
    "a folder": (lambda tmp: tmp, "300", "is a folder"),
    "vocab size word": (_write("ok.txt", b"hello hello"), "lots", "whole number, got 'lots'"),
    "vocab size float": (_write("ok.txt", b"hello hello"), "1e3", "whole number, got '1e3'"),
    "vocab size small": (_write("ok.txt", b"hello hello"), "255", "at least 256"),
    "vocab size negative": (_write("ok.txt", b"hello hello"), "-5", "at least 256"),
    "vocab size huge": (_write("ok.txt", b"hello hello"), "9" * 30, "at most 1,114,112"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gives_one_error_line_and_writes_nothing(tmp_path, case):
    make_input, vocab_size, words = BAD_INPUTS[case]
    path = make_input(tmp_path)
    out = tmp_path / "tok"
    Tokenizer().save(out)  # an existing tokenizer that must survive untouched
    before = snapshot(tmp_path)
    result = run_script("init.py", "--input", path, "--vocab-size", vocab_size, "--out", out)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert words in result.stderr and "Traceback" not in result.stderr
    assert snapshot(tmp_path) == before


def test_an_unknown_option_is_one_error_line(tmp_path):
    result = run_script("init.py", "--bogus", "300", "--out", tmp_path / "tok")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_out_that_is_a_file_is_an_error_and_stays_as_it_was(tmp_path, corpus):
    out = tmp_path / "tok"
    out.write_text("not a folder")
    result = run_script("init.py", "--input", corpus, "--vocab-size", "260", "--out", out)
    assert result.returncode == 2 and "is not a folder" in result.stderr
    assert out.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "tok"]


def test_out_that_cannot_be_created_is_one_error_line(tmp_path, corpus):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    result = run_script("init.py", "--input", corpus, "--vocab-size", "260",
                        "--out", blocker / "tok")
    assert result.returncode == 2 and "file.txt is not a folder" in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert blocker.read_text() == "a file, not a folder"


def test_defaults_are_the_corpus_model_params_and_tokenizer_save():
    args = init.parse_args([])
    assert args.input == str(REPO / "Train_Data" / "input.txt")
    assert init.parse_vocab_size(args.vocab_size) == Model_Params.vocab_size
    assert args.out == str(REPO / "tokenizer_save")


def test_sample_line_is_a_line_of_the_text_with_some_substance():
    assert init.sample_line("\n\nHi\nThis line is long enough to show.\n") == \
        "This line is long enough to show."
    assert init.sample_line("short") == "short"
