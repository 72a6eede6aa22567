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

    def __init__(self, *args, removed: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.removed = removed or {}         # options an earlier version had: name -> what to do instead

    def error(self, message):
        raise UserError(f"{message} (see python {self.prog} --help)")

    def parse_known_args(self, args=None, namespace=None):
        args = one_spelling(sys.argv[1:] if args is None else list(args))
        for arg in args:
            name = arg.partition("=")[0][2:].replace("-", "_") if arg.startswith("--") else None
            if name in self.removed:
                raise UserError(f"--{name.replace('_', '-')} was removed: {self.removed[name]}")
        return super().parse_known_args(args, namespace)


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


def param_defaults(params, needed: dict[str, type]) -> dict:
    """The `needed` settings' values in Model_Params (floats as floats)."""
    return {name: float(getattr(params, name)) if kind is float else getattr(params, name)
            for name, kind in needed.items()}


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


def add_param_options(parser: argparse.ArgumentParser, params, defaults: dict) -> None:
    """One `--<name> VALUE` option for each setting in defaults, grouped by Model_Params.py's
    sections, its help the setting's comment in the file."""
    helps, groups = param_help(params), {}
    for name, default in defaults.items():
        section, comment = helps.get(name, ("hyperparameters", ""))
        if section not in groups:
            groups[section] = parser.add_argument_group(f"Model_Params: {section}")
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


# Options train.py once had, and what to do instead: an old command gets one line, not "unrecognized".
REMOVED_OPTIONS = {
    "ema_decay": "the weight average measured worse than the weights themselves (docs/EXPERIMENTS.md)",
    "teacher": "learning from a teacher gained 0.02 nats/char for 2.6x the time (docs/EXPERIMENTS.md)",
    "distill_weight": "learning from a teacher gained 0.02 nats/char for 2.6x the time (docs/EXPERIMENTS.md)",
    "adam_eps": "AdamW's ε is fixed at 1e-4 (support/optim.py says why)",
    "eval_windows": "each evaluation scores 200 fixed windows",
    "final_eval_tokens": "the final evaluation scores at most 1,000,000 validation tokens",
    "workers": "tokenizing uses every core",
    "compile": "torch.compile never made a step faster here (docs/EXPERIMENTS.md)",
    "stop_at_step": "press Ctrl-C to stop and save; running train.py again resumes exactly",
    "min_lr": "the schedule decays to 0",
    "grad_clip": "the gradient norm is always clipped to 1.0 (train.py's GRAD_CLIP)",
    "vocab_size": "the vocabulary is init.py's: run `python init.py --vocab-size N`, then train.py",
}


def train_parser(repo, params, needed: dict[str, type], dtypes) -> argparse.ArgumentParser:
    """train.py's command line: what to read and write and how to run, then one option for each
    Model_Params setting it reads (needed), defaulting to the file's value."""
    parser = Parser(prog="train.py", allow_abbrev=False, removed=REMOVED_OPTIONS,
                    description="Train the transformer on a text file. Rerunning resumes exactly from "
                                "weights-latest.pth; everything printed goes to stderr. Every option is "
                                "accepted with - or _ (--max-iters, --max_iters).")
    run = parser.add_argument_group("run")
    run.add_argument("--input", default=str(repo / "Train_Data" / "input.txt"),
                     help="UTF-8 text to train on (default: Train_Data/input.txt)")
    run.add_argument("--tokenizer-dir", default=str(repo / "tokenizer_save"),
                     help="tokenizer written by init.py (default: tokenizer_save/)")
    run.add_argument("--weights-dir", default=str(repo / "Saved_Weights"),
                     help="where checkpoints, loss_history.csv and loss.png go (default: Saved_Weights/)")
    run.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    run.add_argument("--dtype", default="auto", choices=dtypes,
                     help="autocast precision; auto = bfloat16 where supported, float16 on older GPUs "
                          "(with a gradient scaler); weights stay float32 either way")
    run.add_argument("--seed", type=checked(int), default=1337, help="random seed (default: 1337)")
    run.add_argument("--fresh", action="store_true", help="start from step 0; the run already in --weights-dir "
                     "is moved into a subfolder of it (earlier-run-N), not overwritten")
    run.add_argument("--init-from", metavar="PATH", help="fine-tune: start from this checkpoint (e.g. "
                     "Saved_Weights/pretrained.pth), or from GPT-2 (gpt2, gpt2-medium, gpt2-large, gpt2-xl, or a "
                     "Hugging Face GPT-2 folder): its shape, weights and tokenizer, with a fresh optimizer and "
                     "the fine-tuning rates and length unless given")
    add_param_options(parser, params, param_defaults(params, needed))
    return parser


def check_train_settings(cfg) -> None:
    """One UserError line for the first of train.py's settings that makes no sense."""
    positive = ("block_size", "emb_len", "num_layers", "num_heads", "batch_size", "grad_accum_steps", "eval_interval")
    rules = [(name, lambda v: v >= 1, "must be at least 1") for name in positive]
    rules += [(name, lambda v: v >= 0, "must not be negative")
              for name in ("max_iters", "warmup_iters", "weight_decay", "max_minutes", "max_epochs")]
    rules += [(name, lambda v: v > 0, "must be above 0") for name in ("learning_rate", "muon_lr")]
    rules += [(name, lambda v: 0 <= v < 1, "must be in [0, 1)") for name in ("dropout", "bpe_dropout")]
    for name, is_ok, what in rules:
        if not is_ok(getattr(cfg, name)):
            raise UserError(f"--{name.replace('_', '-')} {what}, got {getattr(cfg, name)}")
    for name, choices in (("optimizer", ("adamw", "muon")), ("positions", ("learned", "rotary"))):
        if getattr(cfg, name) not in choices:
            raise UserError(f"--{name} must be one of {', '.join(choices)}, got {getattr(cfg, name)!r}")
    if cfg.emb_len % cfg.num_heads:
        raise UserError(f"--emb-len ({cfg.emb_len}) must be divisible by --num-heads ({cfg.num_heads})")
