"""Consoles that are not UTF-8: every script's output shows there without a traceback, and a prompt
piped in as UTF-8 is read as UTF-8 (support/text_io.py's set_up_streams, every script's first call).

Two such consoles are common. Windows writes to a pipe or a file in its ANSI code page (cp1252 in
the West), and reads one in it; a Linux with a legacy locale uses e.g. ISO-8859-1. Each is stood in
for by the environment of a subprocess, and the scripts' bytes are decoded here in the console's
encoding, strictly: a byte it could not have written fails the test.
"""
import io
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ON_CPU, REPO, run_tiny
from support.text_io import set_up_streams


def legacy_locale() -> dict:
    """LC_ALL for a real ISO-8859-1 locale, if this machine has one (`locale -a`); else {}."""
    if shutil.which("locale") is None:
        return {}
    names = subprocess.run(["locale", "-a"], capture_output=True, text=True, timeout=30).stdout.split()
    found = [name for name in names if re.search(r"\.iso-?8859-?1$", name, re.IGNORECASE)]
    return {"LC_ALL": found[0]} if found else {}


@pytest.fixture(scope="module", params=["cp1252", "latin-1"])
def console(request) -> dict:
    """"env" for a script run as in that console; "encoding" of its streams; "argv": the encoding the
    script decodes its command line in."""
    if request.param == "cp1252":          # Windows, writing to a pipe or a file
        return {"env": {"PYTHONIOENCODING": "cp1252", "PYTHONUTF8": "0"}, "encoding": "cp1252", "argv": "utf-8"}
    # A legacy Linux locale. Under the C locale Python turns its UTF-8 mode on: PYTHONUTF8=0 keeps it off.
    # In a real ISO-8859-1 locale the command line is Latin-1 too.
    real = legacy_locale()
    return {"env": {"PYTHONIOENCODING": "latin-1", "PYTHONUTF8": "0", **real}, "encoding": "latin-1",
            "argv": "latin-1" if real else "utf-8"}


def run_in(console: dict, script: str, *args, stdin: bytes = b"") -> tuple[int, str, str]:
    """`python script args` run in the console -> exit code, stdout and stderr decoded in its encoding."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", **console["env"]}
    done = subprocess.run([sys.executable, str(REPO / script), *map(str, args)], input=stdin,
                          capture_output=True, env=env, timeout=120)
    return done.returncode, done.stdout.decode(console["encoding"]), done.stderr.decode(console["encoding"])


@pytest.mark.parametrize("script", ["init.py", "train.py", "run.py"])
def test_help_shows_in_a_console_that_is_not_utf8(console, script):
    code, out, err = run_in(console, script, "--help")
    assert code == 0 and "Traceback" not in err, err
    assert out.startswith("usage:")


def test_explain_of_cyrillic_cjk_and_emoji_shows_in_a_console_that_is_not_utf8(console, tiny_trained):
    text = "Жизнь 東京 🙂 café"
    code, out, err = run_in(console, "init.py", "--explain", text, "--out", tiny_trained["tokenizer_dir"])
    assert code == 0 and "Traceback" not in err, err
    got = text.encode("utf-8").decode(console["argv"])     # what the script's command line holds
    assert f"({len(got)} characters, {len(got.encode('utf-8'))} bytes)" in out
    assert f"{len(got)} characters -> " in out.splitlines()[-1]


# A prompt with a character that UTF-8 and the consoles write differently, and --show-probs with a
# token cut by top-k (✗) beside the drawn one (→), on the CPU: the same text whatever the machine.
PROMPT = "café"
SAMPLING = ("--seed", "1", "--max-new-tokens", "12", "--temperature", "1", "--top-k", "2", "--show-probs", "3",
            *ON_CPU)


def candidate_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.endswith("%")]


@pytest.fixture(scope="module")
def tiny_run(tiny_trained) -> dict:
    """run.py's arguments for the session's tiny model."""
    return {"weights": tiny_trained["weights_dir"] / "weights-best.pth", "tokenizer_dir": tiny_trained["tokenizer_dir"]}


@pytest.fixture(scope="module")
def with_prompt_in_utf8(tiny_run):
    """The PROMPT given with --prompt, in a UTF-8 console: the text and marks to expect."""
    result = run_tiny(tiny_run, "--prompt", PROMPT, *SAMPLING)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def piped_in_console(console, tiny_run):
    """The PROMPT piped into run.py as UTF-8, in the console: (exit code, stdout, stderr)."""
    return run_in(console, "run.py", "--weights", tiny_run["weights"], "--tokenizer-dir", tiny_run["tokenizer_dir"],
                  *SAMPLING, stdin=f"{PROMPT}\n".encode("utf-8"))


def test_piped_utf8_prompt_is_read_as_utf8_in_a_console_that_is_not_utf8(piped_in_console, with_prompt_in_utf8):
    code, out, err = piped_in_console
    assert code == 0 and "Traceback" not in err, err
    assert out == with_prompt_in_utf8.stdout          # the same prompt, seed and text


def test_show_probs_marks_show_in_a_console_that_is_not_utf8(piped_in_console, with_prompt_in_utf8):
    code, _, err = piped_in_console
    assert code == 0 and "Traceback" not in err, err
    expected = [line.replace("→", "->").replace("✗", "x") for line in candidate_lines(with_prompt_in_utf8.stderr)]
    assert any("->" in line for line in expected) and any(" x" in line for line in expected)
    assert candidate_lines(err) == expected


class Terminal(io.BytesIO):
    """The bytes a person types at a console."""

    def isatty(self) -> bool:
        return True


def test_typed_input_keeps_the_console_encoding_and_piped_input_is_read_as_utf8(monkeypatch):
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(Terminal("café\n".encode("latin-1")), encoding="latin-1"))
    set_up_streams()
    assert sys.stdin.readline() == "café\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("café\n".encode("utf-8")), encoding="latin-1"))
    set_up_streams()
    assert sys.stdin.readline() == "café\n"


def test_streams_without_reconfigure_as_in_idle_spyder_or_jupyter_are_left_as_they_are(monkeypatch):
    # Their streams are not io.TextIOWrapper: no reconfigure, and they take any character already.
    # The property: set_up_streams raises nothing, there or with no streams at all (pythonw.exe).
    for streams in (io.StringIO, lambda: None):
        for name in ("stdin", "stdout", "stderr"):
            monkeypatch.setattr(sys, name, streams())
        set_up_streams()
        print("→ 東京 🙂", file=sys.stdout or io.StringIO())
