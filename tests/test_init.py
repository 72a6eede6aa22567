"""Tests of init.py, run as a user would run it (in a subprocess, writing only under tmp_path)."""
import ast
import os
import re
import subprocess
import sys

import pytest

import init
import Model_Params
from conftest import REPO, assert_one_error_line, needs_pty, run_script
from tokenizer import Tokenizer, encode_bpe

CORPUS = ("To be, or not to be, that is the question:\n"
          "Whether 'tis nobler in the mind to suffer\n"
          "The slings and arrows of outrageous fortune,\n") * 20


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS, encoding="utf-8", newline="\n")
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
    corpus.write_text("ab ab", encoding="utf-8", newline="\n")
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
    "missing file": (lambda tmp: tmp / "nope.txt", "300", "nope.txt: not found"),
    "empty file": (_write("empty.txt", b""), "300", "empty.txt is empty"),
    "invalid UTF-8": (_write("latin1.txt", "caf\xe9 au lait".encode("latin-1")), "300",
                      "latin1.txt is not valid UTF-8: bad byte 0xE9 at byte offset 3"),
    "a binary file": (_write("image.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256))), "300",
                      "image.png is not valid UTF-8: bad byte 0x89 at byte offset 0"),
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
    assert_one_error_line(result, words)
    assert snapshot(tmp_path) == before


def test_an_unknown_option_is_one_error_line(tmp_path):
    result = run_script("init.py", "--bogus", "300", "--out", tmp_path / "tok")
    assert_one_error_line(result)
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
    assert_one_error_line(result, "file.txt is not a folder")
    assert blocker.read_text() == "a file, not a folder"


def test_every_option_takes_both_spellings_and_help_shows_one():
    assert vars(init.parse_args(["--vocab_size", "300", "--sample_bytes", "1M"])) == \
        vars(init.parse_args(["--vocab-size", "300", "--sample-bytes", "1M"]))
    options = set(re.findall(r"(?<![\w-])--[a-z][a-z_-]*", run_script("init.py", "--help").stdout))
    assert {"--vocab-size", "--sample-bytes"} <= options and not [o for o in options if "_" in o], options


def test_defaults_are_the_corpus_model_params_and_tokenizer_save():
    args = init.parse_args([])
    assert args.input == str(REPO / "Train_Data" / "input.txt")
    assert init.parse_vocab_size(args.vocab_size) == Model_Params.vocab_size
    assert args.out == str(REPO / "tokenizer_save")


def test_sample_line_is_a_line_of_the_text_with_some_substance():
    assert init.sample_line("\n\nHi\nThis line is long enough to show.\n") == \
        "This line is long enough to show."
    assert init.sample_line("short") == "short"


# ─────────────────────────── --explain: how the saved tokenizer splits a text ───────────────────────────

EXPLAINED = "To be, or not to be: that is the question, café 2024!\n"
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    """A tiny tokenizer trained here, in a temporary folder (never the committed tokenizer_save/)."""
    folder = tmp_path_factory.mktemp("explain") / "tok"
    tok = Tokenizer()
    tok.train(CORPUS + "café café 2024 2024", 320)
    tok.save(folder)
    return folder, tok


def environment(**changes) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "NO_COLOR"}
    return {**env, "PYTHONHASHSEED": "0", **changes}


def run_in_terminal(*args, env: dict) -> tuple[int, str, str]:
    """Run init.py with its stdout on a pseudo-terminal (isatty() is true there): exit code,
    stdout (with the terminal's \\r\\n made \\n again) and stderr."""
    import pty                        # POSIX only: the tests that come here are marked needs_pty
    main_end, script_end = pty.openpty()
    process = subprocess.Popen([sys.executable, str(REPO / "init.py"), *map(str, args)], cwd=REPO, env=env,
                               stdin=subprocess.DEVNULL, stdout=script_end, stderr=subprocess.PIPE)
    os.close(script_end)
    output = b""
    while True:
        try:
            data = os.read(main_end, 1 << 16)
        except OSError:   # EIO: the script closed its end
            break
        if not data:
            break
        output += data
    os.close(main_end)
    stderr = process.stderr.read().decode()
    process.wait(timeout=60)
    return process.returncode, output.decode().replace("\r\n", "\n"), stderr


def fired_ranks(tok: Tokenizer, text: str) -> list[int]:
    """The ranks of the merges the plain encoder applies to text, each once, in increasing order."""
    steps = []
    encode_bpe(text, tok.merges, lambda rank, at, after: steps.append(rank))
    return sorted(set(steps))


def check_explanation(stdout: str, tok: Tokenizer, text: str) -> list[str]:
    """Check what every explanation must show; returns the lines that show the tokens after each merge."""
    lines = stdout.splitlines()
    ids_line = next(line for line in lines if line.startswith("ids:"))
    assert ast.literal_eval(ids_line.removeprefix("ids:").strip()) == tok.encode(text)
    merges = [(i, re.match(r"merge #(\d+): (.*) \+ (.*) -> (.*) \(id (\d+)\)$", line))
              for i, line in enumerate(lines) if line.startswith("merge #")]
    ranks = [int(m[1]) for _, m in merges]
    assert ranks == fired_ranks(tok, text) and ranks == sorted(set(ranks)) and len(ranks) > 5
    for _, m in merges:
        rank = int(m[1])
        left, right = tok.merges[rank]
        assert (m[2], m[3], m[4]) == tuple(repr(tok.token_text(i)) for i in (left, right, 256 + rank))
        assert int(m[5]) == 256 + rank
    assert lines[-1].startswith(f"{len(text)} characters -> {len(tok.encode(text))} tokens: ")
    return [lines[i + 1] for i, _ in merges]


def test_explain_off_a_terminal_shows_each_merge_with_bars_and_no_escape_codes(tiny_tokenizer):
    folder, tok = tiny_tokenizer
    result = run_script("init.py", "--explain", EXPLAINED, "--out", folder, env=environment())
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "\x1b" not in result.stdout
    after_each_merge = check_explanation(result.stdout, tok, EXPLAINED)
    assert after_each_merge[-1].strip() == "|".join(
        repr(tok.token_text(i))[1:-1] for i in tok.encode(EXPLAINED))
    assert "chunks: To| be|,| or| not| to| be|:| that|" in result.stdout


@needs_pty
def test_explain_in_a_terminal_puts_tokens_on_alternating_colours(tiny_tokenizer):
    folder, tok = tiny_tokenizer
    code, stdout, stderr = run_in_terminal("--explain", EXPLAINED, "--out", folder, env=environment())
    assert code == 0 and stderr == "", stderr
    assert "\x1b[" in stdout
    after_each_merge = check_explanation(stdout, tok, EXPLAINED)
    last = after_each_merge[-1].strip()
    coloured = re.findall(r"\x1b\[[0-9;]+m(.*?)\x1b\[0m", last)
    assert coloured == [repr(tok.token_text(i))[1:-1] for i in tok.encode(EXPLAINED)]
    assert len(set(re.findall(r"\x1b\[([0-9;]+)m", last)) - {"0"}) == 2   # two backgrounds, in turn


@needs_pty
@pytest.mark.parametrize("value", ["1", ""])
def test_explain_with_no_color_set_writes_no_escape_codes_even_on_a_terminal(tiny_tokenizer, value):
    folder, tok = tiny_tokenizer
    code, stdout, stderr = run_in_terminal("--explain", EXPLAINED, "--out", folder,
                                           env=environment(NO_COLOR=value))
    assert code == 0 and stderr == "", stderr
    assert "\x1b" not in stdout and "|" in stdout
    check_explanation(stdout, tok, EXPLAINED)


def test_explain_needs_no_input_file_and_trains_nothing(tiny_tokenizer, tmp_path):
    folder, tok = tiny_tokenizer
    before = snapshot(folder)
    result = run_script("init.py", "--explain", "the question", "--out", folder,
                        "--input", tmp_path / "missing.txt", env=environment())
    assert result.returncode == 0, result.stderr
    assert snapshot(folder) == before and list(tmp_path.iterdir()) == []


EXPLAIN_MISTAKES = {
    # case: (the folder given to --out, the text, words the error line must hold)
    "no tokenizer folder": (lambda tmp: tmp / "nowhere", "hello", "no tokenizer in"),
    "a damaged tokenizer": (lambda tmp: damaged_copy(tmp), "hello", "merges.json"),
    "no text": (lambda tmp: tmp / "nowhere", "", "--explain needs some text"),
}


def damaged_copy(tmp_path):
    folder = tmp_path / "tok"
    Tokenizer().save(folder)
    (folder / "merges.json").write_text("{", encoding="utf-8")
    return folder


@pytest.mark.parametrize("case", EXPLAIN_MISTAKES)
def test_explain_with_a_bad_tokenizer_or_text_is_one_error_line(tmp_path, case):
    make_folder, text, words = EXPLAIN_MISTAKES[case]
    result = run_script("init.py", "--explain", text, "--out", make_folder(tmp_path), env=environment())
    assert_one_error_line(result, words)
