"""Text in and out: the streams of every script in any console, and for run.py prompts from a
terminal or a pipe, a --stop text, a text to score, and the lines that say which model was loaded.

Read this when you want to know how run.py stops at a --stop text without printing part of it, or
what the scripts do in a console that is not UTF-8 (set_up_streams).
"""
from __future__ import annotations

import argparse
import errno
import io
import os
import sys
from pathlib import Path

from support.files import crlf_to_lf, read_problem
from support.settings import UserError


def stop_value(text: str) -> str:
    r"""The text after --stop, with backslash escapes such as \n and \t turned into characters."""
    try:
        # Python's escape decoder works on bytes; backslashreplace keeps non-ASCII text intact.
        stop = text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError:
        raise argparse.ArgumentTypeError(f"has a broken backslash escape: {text!r}") from None
    if not stop:
        raise argparse.ArgumentTypeError("must not be empty")
    return stop


def shown_length(pending: str, stop: str | None) -> tuple[int, bool]:
    """How much of the not-yet-printed text can be printed now, and whether the stop text was found.

    Text before the first `stop` is printed, `stop` itself is not. A tail that could still grow into
    `stop` (e.g. "\\r" when stop is "\\r\\n") waits for the next token to decide.
    """
    if stop is None:
        return len(pending), False
    at = pending.find(stop)
    if at >= 0:
        return at, True
    for k in range(min(len(stop) - 1, len(pending)), 0, -1):
        if pending.endswith(stop[:k]):
            return len(pending) - k, False
    return len(pending), False


# The keys that end typed input: Windows' console reads Ctrl-Z then Enter as the end, others Ctrl-D.
END_OF_INPUT = "Ctrl-Z then Enter" if os.name == "nt" else "Ctrl-D"


def read_prompts(interactive: bool):
    """Yield prompts from stdin: with a '> ' marker on stderr when a person is typing, otherwise one
    per line. The line's newline is not part of the prompt."""
    if interactive:
        print(f"Type a prompt and press Enter (an empty line starts from a new line); {END_OF_INPUT} or "
              f"Ctrl-C quits.", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:                                   # end of input (END_OF_INPUT)
            if interactive:
                print(file=sys.stderr)
            return
        yield line[:-2] if line.endswith("\r\n") else line.removesuffix("\n")


def read_text(path: Path) -> str:
    """The UTF-8 text in `path` (Windows line ends read as "\n", as training reads them), or a one-line UserError."""
    try:
        text = crlf_to_lf(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: {read_problem(e)}") from None
    if not text:
        raise UserError(f"{path}: empty — nothing to score")
    return text


def set_up_streams() -> None:
    r"""Every script's first call: no character stops its output, and text piped in is read as UTF-8.

    A console that is not UTF-8 lacks most characters: Windows writes to a pipe or file in its ANSI
    code page (cp1252 in the West), a Linux with a legacy locale in e.g. ISO-8859-1. There stdout
    shows "?" for a character it cannot encode, where Python would stop with a UnicodeEncodeError;
    stderr shows an escape such as \u2192, as Python always has it. Text piped or redirected into
    stdin is read as UTF-8 whatever the code page (cp1252 would read café as cafÃ©), while a person
    typing at a console keeps its encoding. Stdin lines end only at "\n" (a "\r" inside a prompt
    is part of it), and bytes that are not valid in the encoding become U+FFFD.

    IDLE's, Spyder's and Jupyter's streams are not io.TextIOWrapper and have no reconfigure: they
    take any character already, and are left as they are, as is a closed stream (None).
    """
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")
    if hasattr(sys.stdin, "reconfigure"):
        piped = {} if sys.stdin.isatty() else {"encoding": "utf-8"}
        try:
            sys.stdin.reconfigure(**piped, errors="replace", newline="\n")
        except io.UnsupportedOperation:     # read from already (main called again in one process): as it is
            pass


def can_show(stream, text: str) -> bool:
    """Whether `stream` can show every character of `text` (one that names no encoding is taken to be
    Unicode): a see-inside view uses plain ASCII marks where it cannot."""
    try:
        text.encode(getattr(stream, "encoding", None) or "utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Where a write to a pipe whose reader went away fails with EINVAL rather than EPIPE.
WINDOWS = os.name == "nt"


def stdout_closed(error: OSError) -> bool:
    """Whether a failed write means that the reader of stdout went away (`| head`): a BrokenPipeError,
    or on Windows an OSError with errno EINVAL."""
    return isinstance(error, BrokenPipeError) or (WINDOWS and error.errno == errno.EINVAL)


def shown_path(path: Path) -> Path:
    """path as the user would type it from here: relative to the current folder when inside it."""
    return path.resolve().relative_to(Path.cwd()) if path.resolve().is_relative_to(Path.cwd()) else path


def describe_loaded(weights: Path, why: str, model, ckpt: dict, device, params) -> list[str]:
    """The banner: which checkpoint and why, what it holds; and a note naming every model setting
    that Model_Params.py (edited since?) no longer matches, as the model runs as it was trained."""
    c, val = model.config, ckpt.get("val_nats_per_char")
    lines = [f"loaded {shown_path(weights)} ({why})",
             f"model: {model.num_params() / 1e6:.2f}M parameters, vocab {c.vocab_size}, context {c.block_size} "
             f"tokens, {c.num_layers} layers, " + (f"step {ckpt.get('step', '?')}" if "source" not in ckpt else
                                                   f"imported from Hugging Face: {ckpt['source']}")
             + (f", val {val:.3f} nats/char" if isinstance(val, float) else "") + f"; device {device}"]
    differences = [f"{name} {getattr(params, name)!r} (checkpoint {value!r})" for name, value in ckpt["model_config"].items()
                   if getattr(params, name, value) != value and "source" not in ckpt]   # (not a model of Model_Params)
    if differences:
        lines.append(f"note: Model_Params.py differs from this checkpoint: {'; '.join(differences)} — running "
                     f"the model as it was trained (train again to use the new values)")
    return lines
