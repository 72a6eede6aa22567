"""Settings: Model_Params.py read safely, one-line errors, command-line value checks.

Read this when you want to know how a hand edit that breaks Model_Params.py becomes one clear
line instead of a traceback, how train.py builds `--help` from the file's own comments, or why
`--vocab-size` and `--vocab_size` both work. All three scripts get their settings through here.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import math
import re
import sys

# The kinds a setting can be checked against: what is accepted, and how the message names it
# (a float setting may be written as a whole number).
_KINDS = {float: ((int, float), "a number"), int: (int, "a whole number"), str: (str, "a quoted string")}
RESTORE_HINT = "restore it with `git checkout Model_Params.py`"


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit code 2, no traceback."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one `error:` line like every other user mistake, and every
    option takes both spellings: options are defined as --vocab-size (what --help shows), and
    --vocab_size is read as that too."""

    def error(self, message):
        raise UserError(f"{message} (see python {self.prog} --help)")

    def parse_known_args(self, args=None, namespace=None):
        return super().parse_known_args(one_spelling(sys.argv[1:] if args is None else list(args)), namespace)


def one_spelling(argv: list[str]) -> list[str]:
    """Every `--name_with_underscores[=VALUE]` before a bare `--` spelled `--name-with-underscores[=VALUE]`."""
    spelled = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return spelled + argv[i:]
        if arg.startswith("--"):
            name, equals, value = arg.partition("=")
            arg = name.replace("_", "-") + equals + value
        spelled.append(arg)
    return spelled


# train.py's settings that have no line in Model_Params.py, because few need to change them:
# name -> (default, help). `python train.py --help` lists them with the rest.
TRAIN_FLAGS = {
    "grad_accum_steps": (1, "micro-batches summed into one optimiser step (1 = off)"),
    "muon_lr": (0.02, "peak Muon learning rate (optimizer muon); the same warm-up and decay as learning_rate"),
    "adam_eps": (1e-4, "AdamW's ε: gradients far below it barely move a weight (see support/optim.py)"),
    "ema_decay": (0.0, "> 0: evaluate and save a moving average of the weights, e.g. 0.998 (0 = off)"),
    "teacher": ("", "a trained .pth (same tokenizer) to learn from as well as the text: distillation (\"\" = off)"),
    "distill_weight": (0.5, "with a teacher: loss = (1 - w) × cross-entropy with the text + w × KL(teacher ‖ model)"),
    "eval_windows": (200, "fixed validation windows scored at each evaluation"),
    "final_eval_tokens": (1_000_000, "most validation tokens scored by the final evaluation, in windows spread "
                                     "evenly over the split (0 = all)"),
}


def load_params(needed: dict[str, type]):
    """The Model_Params module, checked to define every name in `needed` with a value of its kind.
    Any problem (a syntax error from a hand edit, a deleted setting, a word for a number) is a
    UserError saying what is wrong and how to restore the file."""
    try:
        params = importlib.import_module("Model_Params")
    except Exception as e:                       # SyntaxError, NameError, ... in a hand-edited file
        raise UserError(f"Model_Params.py cannot be read ({type(e).__name__}: {e}) — fix the edit or "
                        f"{RESTORE_HINT}") from None
    missing = [name for name in needed if not hasattr(params, name)]
    if missing:
        raise UserError(f"Model_Params.py lacks {', '.join(missing)} — {RESTORE_HINT}")
    for name, kind in needed.items():
        value = getattr(params, name)
        accepted, what = _KINDS[kind]
        if isinstance(value, bool) or not isinstance(value, accepted):
            raise UserError(f"Model_Params.py: {name} = {value!r} must be {what}")
    return params


def param_defaults(params, needed: dict[str, type], flags: dict | None = None) -> dict:
    """The `needed` settings' values in Model_Params (floats as floats), then each flag's default."""
    defaults = {name: float(getattr(params, name)) if kind is float else getattr(params, name)
                for name, kind in needed.items()}
    return {**defaults, **{name: default for name, (default, _) in (flags or {}).items()}}


def param_help(params) -> dict[str, tuple[str, str]]:
    """name -> (section title, comment), read from Model_Params.py's source so that --help explains
    each setting in the same words as the file. Decoration only: {} if the source is unavailable."""
    try:
        source = inspect.getsource(params)
    except (OSError, TypeError):
        return {}
    section, found = "hyperparameters", {}
    for line in source.splitlines():
        if m := re.match(r"#\s*---\s*(.*?)\s*-*\s*$", line):
            section = m[1]
        elif m := re.match(r"(\w+)\s*=[^#]*#\s*(.*)$", line):
            found[m[1]] = (section, m[2])
    return found


def add_param_options(parser: argparse.ArgumentParser, params, defaults: dict, flags: dict) -> None:
    """One `--<name> VALUE` option for each setting in defaults, grouped by Model_Params.py's
    sections, its help the setting's comment in the file (flags: name -> (default, help), for the
    settings that have no line there)."""
    helps, groups = {**param_help(params), **{name: ("flags only", what) for name, (_, what) in flags.items()}}, {}
    for name, default in defaults.items():
        section, comment = helps.get(name, ("hyperparameters", ""))
        if section not in groups:
            groups[section] = parser.add_argument_group(section if section == "flags only" else f"Model_Params: {section}")
        groups[section].add_argument("--" + name.replace("_", "-"), type=checked(type(default)), default=default,
                                     metavar=type(default).__name__.upper(),
                                     help=f"{comment} (default: {default})".replace("%", "%%"))


_EXPECTED = {bool: "expected true or false", int: "expected a whole number", float: "expected a number",
             str: "expected text"}


def checked(kind: type, is_ok=None, what: str | None = None):
    """An argparse `type`: text -> a value of `kind` (bool, int, float or str), finite if a float
    and passing is_ok, else one line: `what` the value must be (default: the kind), and the text."""
    what = what or _EXPECTED[kind]

    def parse(text: str):
        value = None
        if kind is bool:
            value = {"1": True, "true": True, "yes": True, "on": True,
                     "0": False, "false": False, "no": False, "off": False}.get(text.strip().lower())
        else:
            try:
                value = kind(text)
            except ValueError:
                pass
        if value is not None and kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{what if is_ok else 'expected a finite number'}, got {text!r}")
        if value is None or (is_ok is not None and not is_ok(value)):
            raise argparse.ArgumentTypeError(f"{what}, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def check_ranges(cfg, at_least: dict, not_negative=(), above_zero=(), fractions=(), weights=()) -> None:
    """One UserError line for the first setting out of its range: at_least {name: lowest value},
    not_negative (>= 0), above_zero (> 0), fractions (in [0, 1)), weights (in [0, 1])."""
    rules = [(name, lambda v, low=low: v >= low, f"must be at least {low}") for name, low in at_least.items()]
    rules += [(name, lambda v: v >= 0, "must not be negative") for name in not_negative]
    rules += [(name, lambda v: v > 0, "must be above 0") for name in above_zero]
    rules += [(name, lambda v: 0 <= v < 1, "must be in [0, 1)") for name in fractions]
    rules += [(name, lambda v: 0 <= v <= 1, "must be in [0, 1]") for name in weights]
    for name, is_ok, what in rules:
        if not is_ok(getattr(cfg, name)):
            raise UserError(f"--{name.replace('_', '-')} {what}, got {getattr(cfg, name)}")


def add_run_options(parser: argparse.ArgumentParser, repo, dtypes) -> None:
    """train.py's own options, beside the Model_Params ones: what to read and write, and how to run
    (repo: the project folder, holding the default paths; dtypes: the --dtype choices)."""
    run = parser.add_argument_group("run")
    run.add_argument("--input", default=str(repo / "Train_Data" / "input.txt"),
                     help="UTF-8 text to train on (default: Train_Data/input.txt)")
    run.add_argument("--tokenizer-dir", default=str(repo / "tokenizer_save"),
                     help="tokenizer written by init.py (default: tokenizer_save/)")
    run.add_argument("--weights-dir", default=str(repo / "Saved_Weights"),
                     help="where checkpoints, loss_history.csv and loss.png go (default: Saved_Weights/)")
    run.add_argument("--stop-at-step", dest="stop_at", type=checked(int), default=None, metavar="N",
                     help="stop when the step count reaches N; the schedule still ends at --max-iters "
                          "(Model_Params' max_iters, not a stop), so a later run continues seamlessly")
    run.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    run.add_argument("--dtype", default="auto", choices=dtypes,
                     help="autocast precision; auto = bfloat16 where supported, float16 on older GPUs "
                          "(with a gradient scaler); weights stay float32 either way")
    run.add_argument("--seed", type=checked(int), default=1337, help="random seed (default: 1337)")
    run.add_argument("--fresh", action="store_true", help="start from step 0; the run already in --weights-dir "
                     "is moved into a subfolder of it (earlier-run-N), not overwritten")
    run.add_argument("--compile", action="store_true", help="torch.compile the model (slow start, faster steps)")
    run.add_argument("--workers", type=checked(int), default=None, metavar="N",
                     help="processes that tokenize the input when its ids are not cached yet (default: all cores)")
