"""Checkouts and platforms other than Linux: a Git for Windows checkout (CRLF line ends), a user's
own CRLF text, and tokenizing where worker processes are spawned (macOS, Windows), not forked."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from itertools import chain
from unittest import mock

import pytest

import init
from conftest import ON_CPU, REPO, english_like_text, run_script, run_tiny
from support import corpus
from tokenizer import SPLIT_RE, Tokenizer, TokenizerError

TOKENIZER_FILES = ("itos.json", "merges.json", "stoi.json", "vocab_size.json")
# A text as a Windows editor saves it: every line ends "\r\n". A lone "\r" (old Mac style) is kept
# as it is; it is not a line end to us.
LF_TEXT = english_like_text(40_000) + "a lone\rcarriage return stays\n"
CRLF_TEXT = LF_TEXT.replace("\n", "\r\n")


def write(path, text: str):
    path.write_bytes(text.encode("utf-8"))
    return path


# ─────────────────────────────── a checkout made by Git for Windows ───────────────────────────────

def git(*args, cwd=None) -> None:
    # Pinned so that no global setting of the machine (identity, signing) changes what the test does.
    subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com",
                    "-c", "commit.gpgsign=false", *map(str, args)],
                   cwd=cwd, check=True, capture_output=True, timeout=120)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_crlf_checkout_has_the_committed_text_and_tokenizer_and_init_learns_them_again(tmp_path):
    # The commit as it is, plus the working tree's .gitattributes (committed in a copy), cloned as
    # Git for Windows clones (core.autocrlf=true).
    staged, clone = tmp_path / "staged", tmp_path / "clone"
    git("clone", "--quiet", REPO, staged)
    shutil.copyfile(REPO / ".gitattributes", staged / ".gitattributes")
    git("add", ".gitattributes", cwd=staged)
    git("commit", "--quiet", "--allow-empty", "-m", "the working tree's .gitattributes", cwd=staged)
    git("-c", "core.autocrlf=true", "clone", "--quiet", staged, clone)
    assert b"\r\n" in (clone / "README.md").read_bytes()   # the clone did convert: text files have CRLF

    def committed(path: str) -> bytes:
        return subprocess.run(["git", "show", f"HEAD:{path}"], cwd=REPO, check=True, capture_output=True).stdout

    exact = ["Train_Data/input.txt", *(f"tokenizer_save/{name}" for name in TOKENIZER_FILES)]
    for path in exact:
        assert (clone / path).read_bytes() == committed(path), path

    # The committed vocabulary size, not Model_Params' (which a user may have changed here).
    vocab_size = json.loads(committed("tokenizer_save/vocab_size.json"))["vocab_size"]
    result = run_script("init.py", "--input", clone / "Train_Data" / "input.txt", "--vocab-size", vocab_size,
                        "--out", clone / "tokenizer_save", cwd=clone)
    assert result.returncode == 0, result.stderr
    assert "CRLF" not in result.stderr
    for path in exact:
        assert (clone / path).read_bytes() == committed(path), path


# ─────────────────────────────────────── a user's CRLF text ───────────────────────────────────────

@pytest.mark.parametrize("window_bytes", [corpus.SAMPLE_WINDOW_BYTES, 1000], ids=["whole", "in-windows"])
def test_a_crlf_text_and_its_lf_twin_give_byte_identical_tokenizers_from_init(tmp_path, capsys, window_bytes):
    saved = {}
    for name, text in (("lf", LF_TEXT), ("crlf", CRLF_TEXT)):
        path = write(tmp_path / f"{name}.txt", text)
        with mock.patch.object(corpus, "SAMPLE_WINDOW_BYTES", window_bytes):
            assert init.main(["--input", str(path), "--vocab-size", "400", "--out", str(tmp_path / name)]) == 0
        saved[name] = {file: (tmp_path / name / file).read_bytes() for file in TOKENIZER_FILES}
        notes = [line for line in capsys.readouterr().err.splitlines() if "CRLF" in line]
        assert len(notes) == (name == "crlf")                # said once, and only for the CRLF text
    assert saved["crlf"] == saved["lf"]
    tokens = json.loads(saved["crlf"]["itos.json"])
    assert [i for i, token in tokens.items() if "\r" in token] == [str(ord("\r"))]   # only the byte itself


def test_a_sample_of_a_crlf_text_is_read_with_lf_line_ends(tmp_path):
    path = write(tmp_path / "crlf.txt", CRLF_TEXT)
    raw = path.read_bytes()
    with mock.patch.object(corpus, "SAMPLE_WINDOW_BYTES", 1000):
        ranges = corpus.sample_ranges(path, len(raw), 10_000)       # ~10 windows spread over 80 KB
    assert len(ranges) > 5 and sum(b - a for a, b in ranges) < len(raw) / 2
    expected = chain.from_iterable(SPLIT_RE.findall(raw[a:b].decode("utf-8").replace("\r\n", "\n"))
                                   for a, b in ranges)
    counts = corpus.count_chunks(corpus.read_sample(path, ranges, mock.Mock()), SPLIT_RE)
    assert counts == Counter(expected) and not any("\r\n" in chunk for chunk in counts)


@pytest.mark.parametrize("piece_bytes", [1, 2, 3, 7, 64, 1 << 20])
def test_read_pieces_of_a_crlf_file_give_its_lf_text_whatever_the_piece_size(tmp_path, piece_bytes):
    text = "é\r\n\r\n \r\nab\r\r\n\rx \r\n" * 30 + CRLF_TEXT[:2000] + "\r"
    path = write(tmp_path / "crlf.txt", text)
    assert "".join(corpus.read_pieces(path, piece_bytes=piece_bytes)) == text.replace("\r\n", "\n")


def test_a_crlf_text_gives_the_token_ids_of_its_lf_twin_through_the_cache(tmp_path):
    from support import id_cache   # imports torch: only this test pays for it
    tok = Tokenizer()
    tok.train(LF_TEXT, 400)
    got = {}
    for name, text in (("lf", LF_TEXT), ("crlf", CRLF_TEXT)):
        path = write(tmp_path / f"{name}.txt", text)
        notes = []
        got[name] = id_cache.load_token_ids(path, id_cache.data_fingerprint(path, tok), tok, id_cache.Processes(),
                                            notes.append, workers=2, range_bytes=3000).tolist()
        assert sum("CRLF" in note for note in notes) == (name == "crlf")   # said once, for CRLF only
        assert list(chain.from_iterable(tok.encode_file(path))) == got[name]   # one process, no cache
    assert got["crlf"] == got["lf"] == tok.encode(LF_TEXT)


def test_run_eval_scores_a_crlf_text_as_its_lf_twin(tiny, tmp_path):
    text = "the quick brown fox 1 jumps over the lazy dog; café au lait n°2.\n" * 20
    figures = [run_tiny(tiny, "--eval", write(tmp_path / name, text.replace("\n", end)), *ON_CPU).stdout
               for name, end in (("lf.txt", "\n"), ("crlf.txt", "\r\n"))]
    assert figures[0] and figures[0] == figures[1]


# ───────────────────────────── tokenizing on spawned worker processes ─────────────────────────────

# The parent: a main script that imports torch at the top, as train.py does, and tokenizes a file on
# two workers started as macOS and Windows start them. It notes its own pid as it runs its top.
MAIN_SCRIPT = """
import os, sys
with open(os.environ["IMPORT_LOG"], "a") as log:
    log.write(f"{os.getpid()} main\\n")
import torch  # noqa: E402,F401
sys.path.insert(0, REPO)
from itertools import chain  # noqa: E402

if __name__ == "__main__":
    from support import corpus
    from tokenizer import Tokenizer
    corpus.WORKER_START = "spawn"
    ids = chain.from_iterable(Tokenizer.load(TOKENIZER).encode_file(TEXT, workers=2, range_bytes=3000))
    with open(IDS, "w") as out:
        out.write(" ".join(map(str, ids)))
"""
# Loaded by every Python started with PYTHONPATH holding its folder, the workers included: notes
# each process as it starts, and each import of torch or train as it happens.
SITECUSTOMIZE = """
import os, sys

def note(what):
    with open(os.environ["IMPORT_LOG"], "a") as log:
        log.write(f"{os.getpid()} {what}\\n")

note("start")
sys.addaudithook(lambda event, args: event == "import" and args[0] in ("torch", "train") and note(args[0]))
"""


def test_spawned_tokenizer_workers_give_the_forked_ids_without_importing_torch_or_the_main_script(tmp_path):
    text, hooks, log = write(tmp_path / "text.txt", LF_TEXT), tmp_path / "hooks", tmp_path / "imports.log"
    tok = Tokenizer()
    tok.train(LF_TEXT, 400)
    tok.save(tmp_path / "tok")
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    main = tmp_path / "main.py"
    main.write_text(f"REPO, TOKENIZER, TEXT, IDS = {str(REPO)!r}, {str(tmp_path / 'tok')!r}, {str(text)!r}, "
                    f"{str(tmp_path / 'ids.txt')!r}\n" + textwrap.dedent(MAIN_SCRIPT))
    env = {**os.environ, "IMPORT_LOG": str(log),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, str(main)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr

    spawned = list(map(int, (tmp_path / "ids.txt").read_text().split()))
    in_process = list(chain.from_iterable(tok.encode_file(text)))
    forked = list(chain.from_iterable(tok.encode_file(text, workers=2, range_bytes=3000)))
    assert spawned == in_process == forked == tok.encode(LF_TEXT)

    notes = [line.split() for line in log.read_text().splitlines()]
    parent = next(int(pid) for pid, what in notes if what == "main")
    assert {int(pid) for pid, what in notes if what != "start"} == {parent}   # torch and main: the parent only
    assert [what for pid, what in notes if int(pid) == parent] == ["start", "main", "torch"]
    assert len({int(pid) for pid, what in notes if what == "start"} - {parent}) == 2   # the two workers ran


def test_an_error_in_a_spawned_worker_is_raised_in_the_parent_with_its_offset(tmp_path, monkeypatch):
    good = LF_TEXT[:20_000].encode("utf-8")
    path = tmp_path / "bad.txt"
    path.write_bytes(good + b"\xff" + b" tail\r\n" * 100)
    monkeypatch.setattr(corpus, "WORKER_START", "spawn")
    with pytest.raises(TokenizerError, match=f"bad byte 0xFF at byte offset {len(good)}$"):
        list(Tokenizer().encode_file(path, workers=2, range_bytes=3000))
