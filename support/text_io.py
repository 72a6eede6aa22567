"""Text in and out for run.py: prompts from a terminal or a pipe, a --stop text, a text to score,
and the lines that say which model was loaded.

Read this when you want to know how run.py stops at a --stop text without printing part of it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from support.files import read_problem
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


def read_prompts(interactive: bool):
    """Yield prompts from stdin: with a '> ' marker on stderr when a person is typing, otherwise one
    per line. The line's newline is not part of the prompt."""
    if interactive:
        print("Type a prompt and press Enter (an empty line starts from a new line); Ctrl-D or Ctrl-C quits.",
              file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:                                   # end of input (Ctrl-D)
            if interactive:
                print(file=sys.stderr)
            return
        yield line[:-2] if line.endswith("\r\n") else line.removesuffix("\n")


def read_text(path: Path) -> str:
    """The UTF-8 text in `path` (exactly as stored: no newline translation), or a one-line UserError."""
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: {read_problem(e)}") from None
    if not text:
        raise UserError(f"{path}: empty — nothing to score")
    return text


def set_up_streams(prompts_from_stdin: bool) -> None:
    """stdout ready for generated text, and stdin for prompts: neither fails on any character."""
    if sys.stdout is None:
        raise UserError("stdout is closed — nowhere to write the text")
    # Generated text is arbitrary: never fail on a character the terminal's encoding lacks. Stdin lines
    # end only at "\n" (a "\r" inside a prompt is part of it), and bad UTF-8 in them becomes U+FFFD.
    sys.stdout.reconfigure(errors="replace")
    if sys.stdin is not None and prompts_from_stdin:
        sys.stdin.reconfigure(errors="replace", newline="\n")


def shown_path(path: Path) -> Path:
    """path as the user would type it from here: relative to the current folder when inside it."""
    return path.resolve().relative_to(Path.cwd()) if path.resolve().is_relative_to(Path.cwd()) else path


def describe_loaded(weights: Path, why: str, model, ckpt: dict, device, params) -> list[str]:
    """The banner: which checkpoint and why, what it holds; and a note naming every model setting
    that Model_Params.py (edited since?) no longer matches, as the model runs as it was trained."""
    c, val = model.config, ckpt.get("val_nats_per_char")
    lines = [f"loaded {shown_path(weights)} ({why})",
             f"model: {model.num_params() / 1e6:.2f}M parameters, vocab {c.vocab_size}, context {c.block_size} "
             f"tokens, {c.num_layers} layers, step {ckpt.get('step', '?')}"
             + (f", val {val:.3f} nats/char" if isinstance(val, float) else "") + f"; device {device}"]
    differences = [f"{name} {getattr(params, name)!r} (checkpoint {value!r})"
                   for name, value in ckpt["model_config"].items() if getattr(params, name, value) != value]
    if differences:
        lines.append(f"note: Model_Params.py differs from this checkpoint: {'; '.join(differences)} — running "
                     f"the model as it was trained (train again to use the new values)")
    return lines
