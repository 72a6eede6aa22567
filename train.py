"""Train the transformer on a text file, resumably, and report how well it predicts in bits per character.

    python train.py                              # Model_Params defaults, Train_Data/input.txt
    python train.py --emb_len 128 --max-minutes 5
    torchrun --nproc_per_node 2 train.py         # same flags, one process per CPU/GPU (DDP)

What happens, in order:
  1. settings: Model_Params.py, then `--<name> VALUE` overrides (type-checked), then run flags;
  2. data: the input is tokenized once and the ids cached beside it (.cache/), then split 90/10
     by position into training and validation tokens;
  3. model: a fresh Transformer, or the state in weights-latest.pth when there is one (exact
     resume: weights, optimizer, step, every random-number generator);
  4. loop: each step draws random block_size windows, averages the loss over batch_size ×
     grad_accum_steps × processes windows, clips the gradient and takes an AdamW step at the
     scheduled learning rate (linear warm-up, then cosine decay to min_lr at max_iters — or,
     when max_minutes would run out first, at the step the run will reach by then: the end of
     the schedule is re-fitted every few steps to the measured pace);
  5. every eval_interval steps: validation on a fixed set of windows, one line of figures,
     weights-best.pth when validation improved, a row in loss_history.csv, and last weights-latest.pth
     (so a run killed at any moment resumes from a complete evaluation and redoes the rest exactly);
  6. at the end (max_iters, --max-iters, or the max_minutes budget): a last checkpoint and a full pass over
     the whole validation split.

Everything printed goes to stderr; stdout stays empty.

Validation figures (see evaluate): loss per token is the mean negative log-likelihood (NLL, in
nats) of the scored tokens. nats/char = total NLL of the scored tokens ÷ the characters those
tokens spell, where a token counts the characters whose first UTF-8 byte it holds (so a character
split over two tokens counts once). bits/char = nats/char ÷ ln 2. Per character, runs with
different tokenizers compare fairly.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import inspect
import math
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from tqdm import tqdm

from Model import ModelConfig, Transformer
from support import settings
from support.checkpoints import (CHECKPOINT_FORMAT_VERSION, CheckpointError, check_tokenizer_fingerprint,
                                 load_checkpoint)
from support.devices import DTYPES, autocast, choose_dtype, pick_device
from support.optim import OPTIMIZERS, configure_optimizer
from support.settings import Parser, UserError, checked, load_params
from tokenizer import Tokenizer, TokenizerError

REPO = Path(__file__).resolve().parent
LATEST, BEST = "weights-latest.pth", "weights-best.pth"
HISTORY_CSV, HISTORY_PNG = "loss_history.csv", "loss.png"
FIT_EVERY = 25            # steps between re-fits of the schedule to the time budget
HASH_BLOCK_BYTES = 1 << 24  # the input is hashed this much at a time
NPY_HEADER_BYTES = 128     # the token cache's .npy header, fixed so it can be rewritten in place
HISTORY_COLUMNS = ("step", "minutes", "lr", "train_loss", "val_loss_per_token", "val_nats_per_char",
                   "val_bits_per_char", "val_tokens", "val_chars", "eval")
# What a checkpoint's weights depend on (dropout is a model setting too, but may change on resume).
SHAPE_NAMES = ("vocab_size", "block_size", "emb_len", "num_layers", "num_heads")
# The settings this script reads from Model_Params.py, and their kind (a float setting may be written
# as a whole number). Checked on start, so a hand edit that breaks one is a one-line error.
NEEDED_PARAMS = {"vocab_size": int, "block_size": int, "emb_len": int, "num_layers": int, "num_heads": int,
                 "dropout": float, "batch_size": int, "grad_accum_steps": int, "learning_rate": float,
                 "min_lr": float, "warmup_iters": int, "max_iters": int, "max_minutes": float,
                 "weight_decay": float, "grad_clip": float, "eval_interval": int, "eval_windows": int,
                 "optimizer": str, "muon_lr": float}


# ───────────────────────────────────────── settings ──────────────────────────────────────────────

def param_defaults() -> dict:
    """Every hyperparameter in Model_Params.py: name -> default value (int, float, bool or str)."""
    return settings.param_defaults(load_params(NEEDED_PARAMS), NEEDED_PARAMS)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="train.py",
        description="Train the transformer on a text file. Rerunning resumes exactly from "
                    "weights-latest.pth; everything printed goes to stderr.",
        allow_abbrev=False)   # --max would be ambiguous between --max-iters and --max_iters
    run = parser.add_argument_group("run")
    run.add_argument("--input", default=str(REPO / "Train_Data" / "input.txt"),
                     help="UTF-8 text to train on (default: Train_Data/input.txt)")
    run.add_argument("--tokenizer-dir", default=str(REPO / "tokenizer_save"),
                     help="tokenizer written by init.py (default: tokenizer_save/)")
    run.add_argument("--weights-dir", default=str(REPO / "Saved_Weights"),
                     help="where checkpoints, loss_history.csv and loss.png go (default: Saved_Weights/)")
    run.add_argument("--max-iters", dest="stop_at", type=checked(int), default=None, metavar="N",
                     help="stop when the step count reaches N (default: max_iters); the learning-rate "
                          "schedule still follows --max_iters, so a later run continues seamlessly")
    run.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    run.add_argument("--dtype", default="auto", choices=DTYPES,
                     help="autocast precision; auto = bfloat16 where supported, float16 on older GPUs "
                          "(with a gradient scaler); weights stay float32 either way")
    run.add_argument("--seed", type=checked(int), default=1337, help="random seed (default: 1337)")
    run.add_argument("--fresh", action="store_true",
                     help="start from step 0, ignoring (and in time replacing) the checkpoints in --weights-dir")
    run.add_argument("--compile", action="store_true", help="torch.compile the model (slow start, faster steps)")
    run.add_argument("--workers", type=checked(int), default=None, metavar="N",
                     help="processes that tokenize the input when its ids are not cached yet (default: all cores)")

    helps = settings.param_help(load_params(NEEDED_PARAMS))
    groups = {}
    for name, default in param_defaults().items():
        section, comment = helps.get(name, ("hyperparameters", ""))
        if section not in groups:
            groups[section] = parser.add_argument_group(f"Model_Params: {section}")
        # --max-minutes reads better on a command line; it is the same setting as --max_minutes.
        flags = [f"--{name}"] + (["--max-minutes"] if name == "max_minutes" else [])
        groups[section].add_argument(*flags, type=checked(type(default)), default=default,
                                     metavar=type(default).__name__.upper(),
                                     help=f"{comment} (default: {default})".replace("%", "%%"))
    return parser


def parse_settings(argv) -> argparse.Namespace:
    """The run's settings: Model_Params defaults, overridden by flags, checked for sense."""
    cfg = build_parser().parse_args(argv)
    cfg.overridden = {a.split("=")[0][2:] for a in argv if a.startswith("--")} & set(param_defaults())
    at_least = {"block_size": 1, "emb_len": 1, "num_layers": 1, "num_heads": 1, "batch_size": 1,
                "grad_accum_steps": 1, "eval_interval": 1, "eval_windows": 1, "max_iters": 0,
                "warmup_iters": 0}
    for name, low in at_least.items():
        if getattr(cfg, name) < low:
            raise UserError(f"--{name} must be at least {low}, got {getattr(cfg, name)}")
    for name in ("learning_rate", "min_lr", "weight_decay", "grad_clip"):
        if getattr(cfg, name) < 0:
            raise UserError(f"--{name} must not be negative, got {getattr(cfg, name)}")
    if cfg.optimizer not in OPTIMIZERS:
        raise UserError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}")
    if cfg.muon_lr <= 0:
        raise UserError(f"--muon_lr must be above 0, got {cfg.muon_lr}")
    if cfg.learning_rate == 0:
        raise UserError("--learning_rate must be above 0")
    if not 0 <= cfg.dropout < 1:
        raise UserError(f"--dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.emb_len % cfg.num_heads:
        raise UserError(f"--emb_len ({cfg.emb_len}) must be divisible by --num_heads ({cfg.num_heads})")
    if cfg.stop_at is not None:
        if cfg.stop_at < 1:
            raise UserError(f"--max-iters must be at least 1, got {cfg.stop_at}")
        if cfg.stop_at > cfg.max_iters:
            raise UserError(f"--max-iters {cfg.stop_at} is past the end of the schedule (max_iters "
                            f"{cfg.max_iters}); to train longer pass --max_iters {cfg.stop_at}")
    if cfg.max_minutes < 0:
        raise UserError(f"--max_minutes must not be negative, got {cfg.max_minutes}")
    if cfg.workers is not None and cfg.workers < 1:
        raise UserError(f"--workers must be at least 1, got {cfg.workers}")
    return cfg


def train_config(cfg, world_size: int) -> dict:
    """The settings worth recording in a checkpoint, as plain values."""
    record = {name: getattr(cfg, name) for name in param_defaults()}
    record.update(seed=cfg.seed, world_size=world_size, dtype=cfg.dtype, compile=cfg.compile)
    return record


# ───────────────────────────────────────── processes ─────────────────────────────────────────────

@dataclass(frozen=True)
class Processes:
    """Where this process stands among the ones torchrun started (rank 0 of 1 when run plainly)."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def start_processes(device_name: str) -> tuple[Processes, torch.device]:
    """Join torchrun's process group if there is one (it sets RANK, LOCAL_RANK, WORLD_SIZE) and pick
    this process's device: its own GPU under torchrun, else the requested one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        device = pick_device(device_name)
    except ValueError as e:
        raise UserError(str(e)) from None
    if world_size <= 1:
        return Processes(), device
    procs = Processes(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world_size)
    if device.type == "cuda":
        device = torch.device("cuda", procs.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise UserError(f"multi-process training supports cpu and cuda, not {device.type} — pass --device cpu")
    torch_dist.init_process_group(backend=backend)
    return procs, device


def all_reduce_sum(values: list[float], procs: Processes, device: torch.device) -> list[float]:
    """Sum each value over all processes (identity for one process)."""
    if not procs.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch_dist.all_reduce(t)
    return t.tolist()


# ─────────────────────────────────────────── data ────────────────────────────────────────────────

def data_fingerprint(input_path: Path, tokenizer: Tokenizer) -> str:
    """Identity of the token stream: the input's bytes and the vocabulary that splits them. The file
    is hashed a block at a time, so its size does not matter."""
    h = hashlib.sha256()
    try:
        with open(input_path, "rb") as f:
            while block := f.read(HASH_BLOCK_BYTES):
                h.update(block)
    except FileNotFoundError:
        raise UserError(f"input file {input_path} not found — pass --input PATH") from None
    except IsADirectoryError:
        raise UserError(f"input {input_path} is a folder, not a text file") from None
    except OSError as e:
        raise UserError(f"cannot read input file {input_path} ({e.strerror})") from None
    h.update(b"\0" + tokenizer.fingerprint().encode())
    return h.hexdigest()[:16]


def cache_path_for(input_path: Path, data_fp: str) -> Path:
    """Where the ids of this text under this tokenizer (data_fp) are cached. The key also hashes
    tokenizer.py's source: a fixed encoder bug must not leave stale ids behind under the same vocabulary."""
    h = hashlib.sha256(data_fp.encode())
    with contextlib.suppress(OSError, TypeError):
        h.update(Path(inspect.getsourcefile(Tokenizer)).read_bytes())
    return input_path.parent / ".cache" / f"{input_path.name}.{h.hexdigest()[:16]}.tokens.npy"


def token_dtype(tokenizer: Tokenizer) -> np.dtype:
    """Token ids stored compactly: uint16 while every id fits (vocab <= 65,536), else uint32."""
    return np.dtype(np.uint16 if tokenizer.vocab_size <= 2 ** 16 else np.uint32)


def npy_header(dtype: np.dtype, length: int) -> bytes:
    """The header of a .npy file (format 1.0) holding a 1-D array of length items. Always
    NPY_HEADER_BYTES long, so the header written before the ids are counted can be overwritten
    with the count afterwards. Format: magic, version, header size, a dict literal padded with spaces."""
    fields = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (length,)})
    text = fields.ljust(NPY_HEADER_BYTES - 11) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin-1")


def tokenize_into(f, input_path: Path, tokenizer: Tokenizer, workers: int, range_bytes: int | None,
                  progress: bool) -> int:
    """Write the input's token ids into the open binary file f as a .npy array; returns their count.
    The text is encoded in ranges on `workers` processes and the ids written as they come, in order,
    so neither the text nor the ids are ever whole in memory."""
    dtype = token_dtype(tokenizer)
    f.write(npy_header(dtype, 0))
    count = 0
    with contextlib.closing(tokenizer.encode_file(input_path, workers, range_bytes, progress)) as parts:
        for ids in parts:
            f.write(np.asarray(ids, dtype=dtype))
            count += len(ids)
    f.seek(0)
    f.write(npy_header(dtype, count))
    return count


def write_cache(cache: Path, input_path: Path, tokenizer: Tokenizer, workers: int,
                range_bytes: int | None, progress: bool, say) -> None:
    """Tokenize the input into the cache file: written under a temporary name and renamed when complete.
    A folder we may not write to only costs a re-tokenization next time."""
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    remove_abandoned_cache_temps(cache.parent, say)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            tokenize_into(f, input_path, tokenizer, workers, range_bytes, progress)
        os.replace(tmp, cache)
    except OSError as e:
        say(f"note: could not cache token ids in {cache.parent}/ ({e.strerror or e}); tokenizing every run")
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)        # only left when something failed


def remove_abandoned_cache_temps(cache_dir: Path, say) -> None:
    """A run killed while tokenizing leaves NAME.tokens.npy.PID.tmp in .cache/. Remove those whose
    process is gone; a live PID may be another run tokenizing right now."""
    for tmp in cache_dir.glob("*.tokens.npy.*.tmp"):
        pid = tmp.name.split(".")[-2]
        if pid.isdigit() and not process_alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()
                say(f"note: removed {tmp}, left by an interrupted tokenization")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)              # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:
        return True                  # exists, owned by someone else
    return True


def tokenize_to_temp_file(input_path: Path, tokenizer: Tokenizer, workers: int,
                          range_bytes: int | None) -> np.ndarray:
    """The input's ids in a nameless temporary file, memory-mapped: bounded memory without a cache.
    The file disappears when the map is closed."""
    dtype = token_dtype(tokenizer)
    try:
        with tempfile.TemporaryFile() as f:
            count = tokenize_into(f, input_path, tokenizer, workers, range_bytes, progress=False)
            if count == 0:
                return np.zeros(0, dtype=dtype)
            return np.memmap(f, dtype=dtype, mode="r", offset=NPY_HEADER_BYTES, shape=(count,))
    except OSError as e:
        raise UserError(f"cannot tokenize {input_path}: no cache and no temporary file ({e.strerror or e})") from None


def default_workers() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load_token_ids(input_path: Path, data_fp: str, tokenizer: Tokenizer, procs: Processes, say,
                   workers: int | None = None, range_bytes: int | None = None) -> np.ndarray:
    """The token ids of the input, memory-mapped from the cache, tokenized first on `workers` processes
    (default: all cores) when not cached yet. Under torchrun rank 0 tokenizes while the others wait,
    then all map the cache. range_bytes: how much text each worker takes at a time (see
    Tokenizer.encode_file; the default suits large files)."""
    cache = cache_path_for(input_path, data_fp)
    workers = workers or default_workers()
    if procs.is_main and not cache.exists():
        size = input_path.stat().st_size
        if size >= 100_000:                       # worth a word (and a bar) only when it takes a while
            say(f"tokenizing {input_path} ({size:,} bytes) once, on {workers} process(es); "
                f"the ids are cached in {cache.parent}/")
        write_cache(cache, input_path, tokenizer, workers, range_bytes, size >= 100_000, say)
    if procs.distributed:
        torch_dist.barrier()                      # rank 0 has written the cache
    if cache.exists():
        return np.load(cache, mmap_mode="r")      # memory-mapped: pages load as windows touch them
    # no cache (unwritable, or another machine's disk)
    return tokenize_to_temp_file(input_path, tokenizer, workers, range_bytes)


def split_ids(ids: np.ndarray, block_size: int, input_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """First 90% of the tokens for training, the last 10% for validation (split by position, so
    validation text is text the model never trained on). Each part must hold one window + 1."""
    n_train = int(len(ids) * 0.9)
    train, val = ids[:n_train], ids[n_train:]
    need = block_size + 1
    if len(train) < need or len(val) < need:
        raise UserError(f"{input_path} is too short: {len(ids):,} tokens give {len(train):,} training and "
                        f"{len(val):,} validation tokens, but each part needs at least block_size + 1 = "
                        f"{need} — use a longer text or a smaller --block_size")
    return train, val


def chars_per_token(tokenizer: Tokenizer) -> torch.Tensor:
    """(V,) int64: how many characters each token starts, i.e. how many of its bytes are not UTF-8
    continuation bytes (10xxxxxx). Summed over a token sequence this counts every character whose
    first byte lies in it — exactly once, even when a character is split over two tokens."""
    counts = [sum(1 for b in tokenizer.decode_bytes([i]) if b & 0xC0 != 0x80)
              for i in range(tokenizer.vocab_size)]
    return torch.tensor(counts, dtype=torch.int64)


def windows_to_batch(data: np.ndarray, starts, length: int, device: torch.device):
    """Windows data[s : s + length + 1] for each start -> inputs x and targets y, both (B, length)
    int64 on device; y is x shifted one token left (each position predicts the next token)."""
    starts = np.asarray(starts, dtype=np.int64)
    rows = torch.from_numpy(data[starts[:, None] + np.arange(length + 1)].astype(np.int64))  # (B, L+1)
    if device.type == "cuda":
        rows = rows.pin_memory().to(device, non_blocking=True)
    else:
        rows = rows.to(device)
    return rows[:, :-1], rows[:, 1:]


# ───────────────────────────────────────── evaluation ────────────────────────────────────────────

@dataclass
class EvalResult:
    """Sums over the scored tokens; the per-token and per-character figures follow from them."""
    nll: float       # total negative log-likelihood, nats
    tokens: int      # tokens scored
    chars: int       # characters those tokens start (see chars_per_token)

    @property
    def loss_per_token(self) -> float:
        return self.nll / self.tokens

    @property
    def nats_per_char(self) -> float:
        return self.nll / self.chars

    @property
    def bits_per_char(self) -> float:
        return self.nats_per_char / math.log(2)


def fixed_windows(n_tokens: int, block_size: int, count: int) -> list[tuple[int, int]]:
    """`count` windows spread evenly over the split, the same at every evaluation, so successive
    figures differ only because the model changed. (start, length) pairs."""
    starts = np.unique(np.linspace(0, n_tokens - block_size - 1, count).round().astype(np.int64))
    return [(int(s), block_size) for s in starts]


def full_pass_windows(n_tokens: int, block_size: int) -> list[tuple[int, int]]:
    """Back-to-back windows over the whole split: every token but the first is a target exactly
    once (the first has nothing before it to be predicted from). The last window may be shorter.
    Each window starts with no context, so this is a little pessimistic compared with a sliding window."""
    return [(s, min(block_size, n_tokens - 1 - s)) for s in range(0, n_tokens - 1, block_size)]


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: np.ndarray, windows: list[tuple[int, int]],
             chars: torch.Tensor, device: torch.device, amp_dtype: torch.dtype | None = None,
             batch_size: int = 32, procs: Processes = Processes()) -> EvalResult:
    """Score windows of `data` (each (start, length) predicts data[start+1 : start+length+1]) and
    return the summed NLL, tokens and characters. In eval mode (no dropout); the model's mode is
    restored after. Under torchrun each process scores its share and the sums are added up, so
    every process gets the same result."""
    was_training = model.training
    model.eval()
    mine = windows[procs.rank::procs.world_size]
    nll, tokens, n_chars = 0.0, 0, 0
    by_length: dict[int, list[int]] = {}
    for start, length in mine:
        by_length.setdefault(length, []).append(start)
    for length, starts in by_length.items():
        for i in range(0, len(starts), batch_size):
            x, y = windows_to_batch(data, starts[i:i + batch_size], length, device)
            with autocast(device, amp_dtype):
                logits, _ = model(x)
            # Cross-entropy in float32 whatever the autocast precision: these sums are the result.
            nll += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
            tokens += y.numel()
            n_chars += int(chars[y.cpu()].sum())
    model.train(was_training)
    nll, tokens, n_chars = all_reduce_sum([nll, tokens, n_chars], procs, device)
    return EvalResult(nll, int(tokens), int(n_chars))


# ───────────────────────────────────────── optimisation ──────────────────────────────────────────

def learning_rate_at(step: int, cfg, horizon: int | None = None) -> float:
    """The learning rate for step `step` (0-based): linear warm-up over warmup_iters steps to
    learning_rate, then a cosine curve down to min_lr at `horizon` (default max_iters), then min_lr.
    Warm-up keeps the first, large and badly-aimed updates from wrecking AdamW's still-empty moment
    estimates."""
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / cfg.warmup_iters
    span = (cfg.max_iters if horizon is None else horizon) - cfg.warmup_iters
    progress = min(1.0, (step - cfg.warmup_iters) / span) if span > 0 else 1.0
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


# ───────────────────────────────────── random-number state ───────────────────────────────────────
# Exact resume needs every generator that shapes training back in the same state: the batch
# generator (which windows), torch's global generator (dropout masks) and, for anything that uses
# them, numpy's and Python's. Stored as tensors and plain values, so weights_only loading works.

def own_rng_state(device: torch.device) -> dict:
    """This process's dropout generators (differ per process under torchrun)."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def shared_rng_state(batch_gen: torch.Generator) -> dict:
    """The generators every process keeps identical (the batch generator) plus numpy's and Python's."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    return {"batches": batch_gen.get_state(),
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64),
                       "gauss_next": gauss_next}}


def restore_rng(ckpt: dict, batch_gen: torch.Generator, procs: Processes, device: torch.device,
                seed: int, dropout: float, say) -> None:
    """Put every generator back as the checkpoint left it (see own_rng_state, shared_rng_state)."""
    shared = ckpt["rng"]
    batch_gen.set_state(shared["batches"])
    n = shared["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = shared["python"]
    random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss_next"]))
    per_rank = ckpt["rng_per_rank"]
    if len(per_rank) == procs.world_size:
        own = per_rank[procs.rank]
        torch.set_rng_state(own["torch"])
        if device.type == "cuda" and "cuda" in own:
            torch.cuda.set_rng_state(own["cuda"], device)
    else:
        # A different number of processes: batches still match, only dropout masks cannot.
        torch.manual_seed(seed + 2 + procs.rank + 1_000_003 * ckpt["step"])
        if dropout > 0:
            say(f"note: checkpoint written by {len(per_rank)} process(es), resuming with {procs.world_size}: "
                f"same batches, but dropout masks differ from an uninterrupted run")


# ───────────────────────────────────────── checkpoints ───────────────────────────────────────────

def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file beside path, then rename: a crash never leaves half a file.
    A failed write (disk full, folder gone) is a UserError, and path still holds its last complete version."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:       # torch's zip writer reports a failed write as RuntimeError
        raise UserError(f"could not write {path} ({write_failure(e, path.parent)}); {path.name} still holds "
                        f"its last complete version, if any — make room and run train.py again to resume") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_failure(error: Exception, folder: Path) -> str:
    """Why a write failed, in a few words, with the free space left where it was going."""
    why = error.strerror if isinstance(error, OSError) and error.strerror else "the write failed"
    with contextlib.suppress(OSError):
        why += f"; {shutil.disk_usage(folder).free / 1e6:,.0f} MB free there"
    return why


def remove_leftover_temp_files(weights_dir: Path, say) -> None:
    """A save killed before its rename leaves NAME.PID.tmp behind (see save_atomic): never a complete
    file, never read. Removed so they do not pile up."""
    names = "|".join(re.escape(name) for name in (LATEST, BEST, HISTORY_CSV, HISTORY_PNG))
    for tmp in weights_dir.glob("*.tmp"):
        if re.fullmatch(rf"({names})\.\d+\.tmp", tmp.name) and tmp.name.split(".")[-2] != str(os.getpid()):
            with contextlib.suppress(OSError):
                tmp.unlink()
                say(f"note: removed {tmp}, left by an interrupted save")


def check_writable(weights_dir: Path) -> None:
    """Fail now, not after an hour of training, if checkpoints cannot be written."""
    try:
        weights_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=weights_dir, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UserError(f"cannot write to weights folder {weights_dir} ({e.strerror or e}) — "
                        f"pass --weights-dir with a writable folder") from None


@dataclass
class TrainState:
    """What changes as training goes, besides the model and optimizer."""
    step: int = 0
    best_val: float | None = None          # best validation nats/char so far (fixed windows)
    minutes: float = 0.0                   # wall time of previous runs (this run's is added on save)
    horizon: int = 0                       # step where the schedule ends: max_iters, or sooner to fit max_minutes
    saved_step: int | None = None          # step held by weights-latest.pth of this run, if any


def load_resume_state(path: Path, cfg, model_config: ModelConfig, tokenizer: Tokenizer,
                      data_fp: str) -> dict:
    """weights-latest.pth, checked to belong to this run: same model shape, tokenizer and input.
    A mismatch is one line naming what differs and pointing at --fresh."""
    fresh_hint = "pass --fresh to start over"
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as e:
        raise UserError(f"{e} (or {fresh_hint})") from None
    if ckpt.get("kind") != "latest" or not {"optimizer", "rng", "rng_per_rank", "step"} <= set(ckpt):
        raise UserError(f"{path}: not a resumable checkpoint (no optimizer or random state) — {fresh_hint}")
    try:
        check_tokenizer_fingerprint(ckpt, tokenizer.fingerprint(), path)
    except CheckpointError:
        raise UserError(f"{path} was trained with a different tokenizer (fingerprint "
                        f"{ckpt.get('tokenizer_fingerprint')}, {cfg.tokenizer_dir} has "
                        f"{tokenizer.fingerprint()}) — use the tokenizer it was trained with, or "
                        f"{fresh_hint}") from None
    if ckpt.get("data_fingerprint") != data_fp:
        raise UserError(f"{path} was trained on a different input text than {cfg.input} (data fingerprint "
                        f"{ckpt.get('data_fingerprint')}, now {data_fp}) — use the same --input, or {fresh_hint}")
    trained_with = ckpt.get("train_config", {}).get("optimizer", "adamw")
    if trained_with != cfg.optimizer:
        raise UserError(f"{path} was trained with --optimizer {trained_with}, not {cfg.optimizer} (their "
                        f"saved states differ) — pass --optimizer {trained_with}, or {fresh_hint}")
    saved, wanted = ckpt["model_config"], model_config.to_dict()
    differ = [f"{k} {saved.get(k)} -> {wanted[k]}" for k in SHAPE_NAMES if saved.get(k) != wanted[k]]
    if differ:
        raise UserError(f"{path} holds a model of a different shape ({', '.join(differ)}) — pass the "
                        f"settings it was trained with, or {fresh_hint}")
    return ckpt


def changed_settings(ckpt: dict, cfg, world_size: int) -> list[str]:
    """Settings that differ from the checkpoint's run (allowed, but worth saying)."""
    old, new = ckpt.get("train_config", {}), train_config(cfg, world_size)
    return [f"{k} {old[k]} -> {new[k]}" for k in new
            if k in old and old[k] != new[k] and k not in SHAPE_NAMES]


def latest_checkpoint(model, optimizer, scaler, state: TrainState, cfg, model_config, tokenizer,
                      data_fp, batch_gen, rng_per_rank, world_size) -> dict:
    return {"format_version": CHECKPOINT_FORMAT_VERSION, "kind": "latest",
            "model_config": model_config.to_dict(), "model": model.state_dict(),
            "tokenizer_fingerprint": tokenizer.fingerprint(), "step": state.step,
            "val_nats_per_char": state.best_val, "best_val": state.best_val,
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "train_config": train_config(cfg, world_size), "data_fingerprint": data_fp,
            "rng": shared_rng_state(batch_gen), "rng_per_rank": rng_per_rank,
            "minutes": state.minutes}


def best_checkpoint(model, step: int, result: EvalResult, cfg, model_config, tokenizer, world_size) -> dict:
    return {"format_version": CHECKPOINT_FORMAT_VERSION, "kind": "best",
            "model_config": model_config.to_dict(), "model": model.state_dict(),
            "tokenizer_fingerprint": tokenizer.fingerprint(), "step": step,
            "val_nats_per_char": result.nats_per_char, "val_bits_per_char": result.bits_per_char,
            "val_loss_per_token": result.loss_per_token, "train_config": train_config(cfg, world_size)}


# ─────────────────────────────────────────── history ─────────────────────────────────────────────

def read_history(path: Path) -> list[dict]:
    """The rows of loss_history.csv, as dicts keyed by HISTORY_COLUMNS."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def trim_history(path: Path, step: int) -> None:
    """Keep the complete rows of evaluations up to `step` (the resumed checkpoint's). Later rows come
    from a run killed before its weights-latest.pth was written; the resumed run writes them again."""
    if not path.exists():
        return
    rows = read_history(path)
    keep = [row for row in rows if set(row) == set(HISTORY_COLUMNS) and None not in row.values()
            and row["step"].isdigit() and int(row["step"]) <= step]
    if len(keep) < len(rows):
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS)
                writer.writeheader()
                writer.writerows(keep)
            os.replace(tmp, path)
        except OSError as e:
            raise UserError(f"could not write {path} ({write_failure(e, path.parent)})") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def append_history(path: Path, row: dict) -> None:
    """One row per evaluation; the header is written when the file is new."""
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def plot_history(csv_path: Path, png_path: Path) -> None:
    """loss.png from loss_history.csv, if matplotlib is installed (it is optional); never a window."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = [r for r in read_history(csv_path) if r["eval"] == "windows"]
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    train = [(s, float(r["train_loss"])) for s, r in zip(steps, rows) if r["train_loss"]]
    if train:
        ax.plot(*zip(*train), label="train loss / token")
    ax.plot(steps, [float(r["val_loss_per_token"]) for r in rows], label="val loss / token")
    ax.plot(steps, [float(r["val_bits_per_char"]) for r in rows], label="val bits / char")
    ax.set_xlabel("step")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png_path.with_name(f"{png_path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)


# ─────────────────────────────────────────── stopping ────────────────────────────────────────────

class StopRequest:
    """The first Ctrl-C (or SIGTERM) asks training to stop at the next step boundary and save; a
    second Ctrl-C aborts at once. Under torchrun a worker may see one Ctrl-C twice (from the
    terminal and forwarded by torchrun), so there only the first counts, and torchrun itself
    ends workers that take too long. Installed only while training."""

    def __init__(self, say, distributed: bool):
        self.signum = None
        self.say = say
        self.distributed = distributed
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            if signum == signal.SIGINT and not self.distributed:
                raise KeyboardInterrupt
            return
        self.signum = signum
        self.say(f"\n{signal.Signals(signum).name}: stopping after this step and saving "
                 f"(Ctrl-C again to quit without saving)")

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class LossNotFinite(Exception):
    """Training diverged: the loss or gradient became NaN or infinite."""


# ─────────────────────────────────────────── training ────────────────────────────────────────────

class Trainer:
    """One training run: data, model, optimizer, random generators and the files it writes. Built
    from the settings, resuming from weights-latest.pth when there is one; run() trains."""

    def __init__(self, cfg, procs: Processes, device: torch.device, say, t_start: float):
        self.cfg, self.procs, self.device, self.say, self.t_start = cfg, procs, device, say, t_start
        self.weights_dir, self.input_path = Path(cfg.weights_dir), Path(cfg.input)
        self.latest_path = self.weights_dir / LATEST
        check_writable(self.weights_dir)
        self.tokenizer = tokenizer = Tokenizer.load(cfg.tokenizer_dir)
        if "vocab_size" in cfg.overridden and cfg.vocab_size != tokenizer.vocab_size:
            raise UserError(f"--vocab_size {cfg.vocab_size} differs from the tokenizer in {cfg.tokenizer_dir} "
                            f"({tokenizer.vocab_size} tokens); the vocabulary is set by init.py — run "
                            f"`python init.py --vocab-size {cfg.vocab_size}` first")
        self.params_vocab_size, cfg.vocab_size = cfg.vocab_size, tokenizer.vocab_size

        self.data_fp = data_fingerprint(self.input_path, tokenizer)
        self.model_config = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=cfg.block_size,
                                        emb_len=cfg.emb_len, num_layers=cfg.num_layers,
                                        num_heads=cfg.num_heads, dropout=cfg.dropout)
        # Checked before tokenizing: a resume that cannot work should fail at once.
        self.ckpt = None
        if self.latest_path.exists() and not cfg.fresh:
            self.ckpt = load_resume_state(self.latest_path, cfg, self.model_config, tokenizer, self.data_fp)
        ids = load_token_ids(self.input_path, self.data_fp, tokenizer, procs, say, cfg.workers)
        self.train_ids, self.val_ids = split_ids(ids, cfg.block_size, self.input_path)
        self.chars = chars_per_token(tokenizer)
        self.val_windows = fixed_windows(len(self.val_ids), cfg.block_size, cfg.eval_windows)

        # Seeds: identical initial weights on every process (DDP would copy rank 0's anyway); one
        # batch generator that every process keeps in step, so all draw the same global batch and
        # each takes its own slice of it (a run's batches do not depend on the number of
        # processes); dropout masks independent per process.
        torch.manual_seed(cfg.seed)
        self.model = Transformer(self.model_config)
        self.batch_gen = torch.Generator().manual_seed(cfg.seed + 1)
        torch.manual_seed(cfg.seed + 2 + procs.rank)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2 ** 32)

        self.state = TrainState()
        if self.ckpt is not None:
            self.model.load_state_dict(self.ckpt["model"])
            self.state = TrainState(step=self.ckpt["step"], best_val=self.ckpt.get("best_val"),
                                    minutes=self.ckpt.get("minutes", 0.0), saved_step=self.ckpt["step"])
        self.previous_minutes = self.state.minutes
        self.state.horizon = cfg.max_iters       # with a time budget, run() may bring it closer
        self.model.to(device)
        self.optimizer = configure_optimizer(self.model, cfg.learning_rate, cfg.weight_decay,
                                             optimizer=cfg.optimizer, muon_lr=cfg.muon_lr)
        self.amp_dtype = choose_dtype(cfg.dtype, device)
        # float16 has too few exponent bits for small gradients: scale the loss up, unscale before
        # the step (skipping steps whose gradients overflowed). bfloat16 needs none of this.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        if self.ckpt is not None:
            self.optimizer.load_state_dict(self.ckpt["optimizer"])
            if "scaler" in self.ckpt and self.scaler.is_enabled():
                self.scaler.load_state_dict(self.ckpt["scaler"])
            restore_rng(self.ckpt, self.batch_gen, procs, device, cfg.seed, cfg.dropout, say)
        self.stop_at = cfg.stop_at or cfg.max_iters
        self.global_batch = cfg.batch_size * cfg.grad_accum_steps * procs.world_size

    def describe(self) -> None:
        """What is about to happen, on stderr."""
        cfg, say, procs, state = self.cfg, self.say, self.procs, self.state
        precision = (f"autocast {str(self.amp_dtype).removeprefix('torch.')} (float32 master weights)"
                     if self.amp_dtype else "float32")
        say(f"device {self.device}, {precision}, {procs.world_size} process(es)"
            f"{', compiled' if cfg.compile else ''}")
        say(f"model: {cfg.num_layers} layers × {cfg.emb_len} wide × {cfg.num_heads} heads, context "
            f"{cfg.block_size}, vocab {self.tokenizer.vocab_size} — {self.model.num_params():,} parameters")
        if self.params_vocab_size != self.tokenizer.vocab_size:
            say(f"note: the tokenizer has {self.tokenizer.vocab_size} tokens, Model_Params.vocab_size says "
                f"{self.params_vocab_size} (init.py applies it); the model follows the tokenizer")
        say(f"data: {self.input_path} — {len(self.train_ids):,} training and {len(self.val_ids):,} "
            f"validation tokens")
        say(f"global batch: {self.global_batch} windows = batch_size {cfg.batch_size} × grad_accum_steps "
            f"{cfg.grad_accum_steps} × {procs.world_size} process(es) = "
            f"{self.global_batch * cfg.block_size:,} tokens/step")
        say(f"optimizer: Muon (peak lr {cfg.muon_lr:g}) for the blocks' matrices, AdamW (peak lr "
            f"{cfg.learning_rate:g}) for the rest" if cfg.optimizer == "muon" else
            f"optimizer: AdamW (peak lr {cfg.learning_rate:g})")
        if self.ckpt is not None:
            best = f", best val {state.best_val:.4f} nats/char" if state.best_val is not None else ""
            say(f"resuming from {self.latest_path} at step {state.step}{best}")
            changed = changed_settings(self.ckpt, cfg, procs.world_size)
            if changed:
                say(f"note: settings changed since the checkpoint: {', '.join(changed)}")
        else:
            old = (self.weights_dir / BEST).exists() or self.latest_path.exists()
            say("starting fresh" + (f" (the checkpoints in {self.weights_dir}/ will be replaced)" if old else ""))

    def run(self) -> int:
        """Train to stop_at (or until time is up, a signal, or divergence); returns the exit code."""
        cfg, state, say = self.cfg, self.state, self.say
        self.describe()
        if self.procs.is_main:
            remove_leftover_temp_files(self.weights_dir, say)
        budget_s = cfg.max_minutes * 60 if cfg.max_minutes > 0 else None
        self.loop_start, self.loop_first_step, self.final_eval_s = time.monotonic(), state.step, None
        if budget_s is not None:
            self.fit_horizon(budget_s)           # from the previous runs' pace, when resuming
        at_end = state.step >= min(self.stop_at, state.horizon)
        out_of_time = budget_s is not None and self.minutes_so_far() >= cfg.max_minutes
        if (at_end or out_of_time) and (last_lr := self.interrupted_final_evaluation()) is not None:
            say(f"{self.latest_path} is at the end of its run (step {state.step}), but the run stopped during "
                f"its final evaluation: doing that now")
            self.final_evaluation(last_lr)
            return 0
        if at_end:
            say(f"nothing to do: {self.latest_path} is already at step {state.step} (stop at "
                f"{min(self.stop_at, state.horizon)}); pass --max_iters N to train longer, or --fresh to start over")
            return 0
        if out_of_time:
            say(f"nothing to do: {self.latest_path} has used its {cfg.max_minutes:g}-minute budget "
                f"({self.minutes_so_far():.1f} min); pass --max_minutes M to train longer, or --fresh to start over")
            return 0
        if self.procs.is_main and self.ckpt is None and (self.weights_dir / HISTORY_CSV).exists():
            (self.weights_dir / HISTORY_CSV).unlink()        # a run from step 0 gets a fresh history
        elif self.procs.is_main and self.ckpt is not None:
            trim_history(self.weights_dir / HISTORY_CSV, state.step)
        train_model = torch.compile(self.model) if cfg.compile else self.model
        if self.procs.distributed:
            from torch.nn.parallel import DistributedDataParallel
            ids = [self.device.index] if self.device.type == "cuda" else None
            train_model = DistributedDataParallel(train_model, device_ids=ids)

        bar = tqdm(total=self.stop_at, initial=state.step, desc="training", unit="step", file=sys.stderr,
                   disable=not self.procs.is_main, dynamic_ncols=True, mininterval=1.0)
        loss_sum, loss_count, lr = 0.0, 0, learning_rate_at(state.step, cfg, state.horizon)
        self.loop_start = time.monotonic()
        step_time = None                  # moving average, seconds per step (the first step is slow)
        reason = "done"
        self.model.train()
        try:
            with StopRequest(say, self.procs.distributed) as stop:
                while state.step < min(self.stop_at, state.horizon):
                    t_step = time.monotonic()
                    if budget_s is not None and (state.step - self.loop_first_step) % FIT_EVERY == FIT_EVERY - 1:
                        self.fit_horizon(budget_s)
                        bar.total = min(self.stop_at, state.horizon)
                    lr = learning_rate_at(state.step, cfg, state.horizon)
                    wants_stop = stop.signum is not None or (
                        budget_s is not None and self.minutes_so_far() * 60 >= budget_s)
                    loss, stop_votes = self.train_step(train_model, lr, wants_stop)
                    state.step += 1
                    loss_sum, loss_count = loss_sum + loss, loss_count + 1

                    seconds = time.monotonic() - t_step
                    step_time = seconds if step_time is None or loss_count == 1 else 0.9 * step_time + 0.1 * seconds
                    bar.update(1)
                    bar.set_postfix_str(f"loss {loss:.3f}, lr {lr:.2e}, "
                                        f"{self.global_batch * cfg.block_size / step_time:,.0f} tok/s", refresh=False)
                    if stop_votes:
                        reason = "interrupted" if stop.signum is not None else "time"
                        break
                    if state.step % cfg.eval_interval == 0 and state.step < min(self.stop_at, state.horizon):
                        self.evaluate_and_save(loss_sum / loss_count, lr)
                        loss_sum, loss_count = 0.0, 0
        except LossNotFinite as e:
            kept = (f"{self.latest_path} still holds step {state.saved_step}, the last good checkpoint"
                    if state.saved_step is not None else "no checkpoint was written")
            raise UserError(f"{e}; stopped without saving — {kept}. Try a lower --learning_rate") from None
        finally:
            bar.close()                   # now, so that it is not redrawn after an error line

        if reason == "interrupted":
            self.save_latest()
            say(f"stopped at step {state.step}; saved {self.latest_path} — run train.py again to resume")
            return 128 + stop.signum
        if reason == "time" or (budget_s is not None and state.step < min(self.stop_at, cfg.max_iters)):
            say(f"--max-minutes {cfg.max_minutes:g} reached at step {state.step} (the learning-rate schedule "
                f"was fitted to end there)")
        if state.saved_step != state.step:
            self.evaluate_and_save(loss_sum / loss_count if loss_count else None, lr)
        self.final_evaluation(lr)
        return 0

    def train_step(self, train_model, lr: float, wants_stop: bool) -> tuple[float, bool]:
        """One optimizer step on one global batch -> (mean loss, whether any process wants to stop)."""
        cfg, procs = self.cfg, self.procs
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if cfg.optimizer == "muon":   # Muon's rate follows the same schedule, scaled to its peak
            for group in self.optimizer.muon.param_groups:
                group["lr"] = lr * cfg.muon_lr / cfg.learning_rate
        # The global batch, shaped (micro-steps, processes, batch_size): every process draws all
        # of it and trains on its own slice.
        starts = torch.randint(0, len(self.train_ids) - cfg.block_size,
                               (cfg.grad_accum_steps, procs.world_size, cfg.batch_size), generator=self.batch_gen)
        step_loss = 0.0
        for micro in range(cfg.grad_accum_steps):
            x, y = windows_to_batch(self.train_ids, starts[micro, procs.rank].numpy(), cfg.block_size, self.device)
            # DDP averages gradients across processes during backward; between micro-steps that
            # exchange is wasted, so only the last one syncs.
            last = micro == cfg.grad_accum_steps - 1
            with train_model.no_sync() if procs.distributed and not last else contextlib.nullcontext():
                with autocast(self.device, self.amp_dtype):
                    _, loss = train_model(x, y)
                # Dividing by the micro-step count makes the summed gradients a mean.
                self.scaler.scale(loss / cfg.grad_accum_steps).backward()
            step_loss += loss.item() / cfg.grad_accum_steps
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf")).item()
        # One exchange per step: the mean loss over processes, and whether any process wants to
        # stop (signal or time), so that all of them stop at the same step.
        loss_total, stop_votes = all_reduce_sum([step_loss, float(wants_stop)], procs, self.device)
        step_loss = loss_total / procs.world_size
        # float16's scaler skips steps whose gradients overflowed; anywhere else an infinite
        # gradient means training has diverged.
        if not math.isfinite(step_loss) or (not self.scaler.is_enabled() and not math.isfinite(grad_norm)):
            raise LossNotFinite(f"loss became {step_loss} at step {self.state.step + 1}")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return step_loss, stop_votes > 0

    def fit_horizon(self, budget_s: float) -> None:
        """Move the end of the schedule to the step this run will reach when its time runs out, so a
        time-limited run ends with its learning rate decayed, not cut off mid-curve. The rate is
        measured over this run (evaluations included); time for the final full evaluation is set
        aside. All processes take the same value, since they must use the same learning rate."""
        steps = self.state.step - self.loop_first_step
        elapsed = time.monotonic() - self.loop_start
        if steps == 0 and self.previous_minutes > 0:     # resuming: the earlier runs' pace
            steps, elapsed = self.state.step, self.previous_minutes * 60
        # The final pass scores the whole split; until one windows-evaluation has been timed,
        # keep 3% of the budget for it.
        reserve = self.final_eval_s if self.final_eval_s is not None else 0.03 * budget_s
        remaining = budget_s - self.minutes_so_far() * 60 - reserve
        reachable = self.state.step + max(1, int(steps / elapsed * remaining)) if steps and elapsed > 0 else None
        horizon = self.cfg.max_iters if reachable is None else min(self.cfg.max_iters, reachable)
        [total] = all_reduce_sum([float(horizon)], self.procs, self.device)
        self.state.horizon = max(self.state.step + 1, int(total / self.procs.world_size))

    def minutes_so_far(self) -> float:
        """Wall time of every run that led to this state, this one included."""
        return self.previous_minutes + (time.monotonic() - self.t_start) / 60

    def save_latest(self) -> None:
        """weights-latest.pth with every process's dropout generator (gathered to rank 0)."""
        self.state.minutes = self.minutes_so_far()
        rng_per_rank = [own_rng_state(self.device)]
        if self.procs.distributed:
            rng_per_rank = [None] * self.procs.world_size
            torch_dist.all_gather_object(rng_per_rank, {k: v.cpu() for k, v in own_rng_state(self.device).items()})
        if self.procs.is_main:
            save_atomic(latest_checkpoint(self.model, self.optimizer, self.scaler, self.state, self.cfg,
                                          self.model_config, self.tokenizer, self.data_fp, self.batch_gen,
                                          rng_per_rank, self.procs.world_size), self.latest_path)
        self.state.saved_step = self.state.step

    def evaluate_and_save(self, train_loss: float | None, lr: float) -> None:
        """Validation on the fixed windows, one line of figures, weights-best.pth when nats/char
        improved, a history row, and weights-latest.pth. Latest is written last: a run killed before
        it resumes from the previous evaluation and redoes this one exactly, rewriting the other two."""
        state = self.state
        t_eval = time.monotonic()
        result = evaluate(self.model, self.val_ids, self.val_windows, self.chars, self.device, self.amp_dtype,
                          self.cfg.batch_size, self.procs)
        # The final pass scores every validation token; scale this evaluation's time to estimate it.
        scale = len(self.val_ids) / max(1, len(self.val_windows) * self.cfg.block_size)
        self.final_eval_s = (time.monotonic() - t_eval) * scale * 1.2 + 2
        if not math.isfinite(result.nll):
            raise LossNotFinite(f"validation loss became {result.nll} at step {state.step}")
        improved = state.best_val is None or result.nats_per_char < state.best_val
        if improved:
            state.best_val = result.nats_per_char
        if self.procs.is_main:
            if improved:
                save_atomic(best_checkpoint(self.model, state.step, result, self.cfg, self.model_config,
                                            self.tokenizer, self.procs.world_size), self.weights_dir / BEST)
            self.record(result, train_loss, lr, "windows")
        self.save_latest()
        train_part = f"train {train_loss:.4f}, " if train_loss is not None else ""
        self.say(f"step {state.step}: {train_part}val {result.loss_per_token:.4f} nats/token, "
                 f"{result.nats_per_char:.4f} nats/char, {result.bits_per_char:.4f} bits/char"
                 f"{' (best, saved)' if improved else ''}")

    def interrupted_final_evaluation(self) -> float | None:
        """If the run was killed during its final evaluation, the learning rate of its last step;
        else None. The sign: loss_history.csv ends with a row for the checkpoint's own step (its
        last evaluation, which holds that rate) that is not the full pass. Rank 0 reads the file
        and tells the others, which take part in the evaluation too."""
        missing, lr = 0.0, 0.0
        if self.procs.is_main and self.ckpt is not None:
            with contextlib.suppress(OSError, csv.Error, ValueError):
                rows = read_history(self.weights_dir / HISTORY_CSV)
                if rows and rows[-1].get("step") == str(self.state.step) and rows[-1].get("eval") == "windows":
                    missing, lr = 1.0, float(rows[-1]["lr"])
        missing, lr = all_reduce_sum([missing, lr], self.procs, self.device)
        return lr if missing else None

    def final_evaluation(self, lr: float) -> None:
        """The whole validation split, every token scored once: the run's headline figure."""
        final = evaluate(self.model, self.val_ids, full_pass_windows(len(self.val_ids), self.cfg.block_size),
                         self.chars, self.device, self.amp_dtype, self.cfg.batch_size, self.procs)
        if self.procs.is_main:
            self.record(final, None, lr, "full")
        self.say(f"final, whole validation split ({final.tokens:,} tokens, {final.chars:,} chars) at step "
                 f"{self.state.step}: {final.loss_per_token:.4f} nats/token, {final.nats_per_char:.4f} "
                 f"nats/char, {final.bits_per_char:.4f} bits/char")
        self.say(f"saved {self.latest_path} and {self.weights_dir / BEST} (best val {self.state.best_val:.4f} "
                 f"nats/char) after {self.minutes_so_far():.1f} min")

    def record(self, result: EvalResult, train_loss: float | None, lr: float, kind: str) -> None:
        """A row in loss_history.csv, and loss.png redrawn (rank 0 only)."""
        try:
            append_history(self.weights_dir / HISTORY_CSV, {
                "step": self.state.step, "minutes": f"{self.minutes_so_far():.3f}", "lr": f"{lr:.6g}",
                "train_loss": "" if train_loss is None else f"{train_loss:.6f}",
                "val_loss_per_token": f"{result.loss_per_token:.6f}", "val_nats_per_char": f"{result.nats_per_char:.6f}",
                "val_bits_per_char": f"{result.bits_per_char:.6f}", "val_tokens": result.tokens,
                "val_chars": result.chars, "eval": kind})
        except OSError as e:
            raise UserError(f"could not write {self.weights_dir / HISTORY_CSV} "
                            f"({write_failure(e, self.weights_dir)}) — make room and run train.py again to resume") from None
        try:
            plot_history(self.weights_dir / HISTORY_CSV, self.weights_dir / HISTORY_PNG)
        except Exception as e:                    # a plot is a nicety; never lose a run over it
            self.say(f"note: could not draw {HISTORY_PNG} ({type(e).__name__}: {e})")


def train(cfg, t_start: float) -> int:
    """Everything after parsing: join torchrun's group if any, build the run, train it."""
    procs, device = start_processes(cfg.device)
    say = (lambda msg: tqdm.write(msg, file=sys.stderr)) if procs.is_main else (lambda msg: None)
    return Trainer(cfg, procs, device, say, t_start).run()


def main(argv=None) -> int:
    t_start = time.monotonic()
    argv = sys.argv[1:] if argv is None else list(argv)
    rank = int(os.environ.get("RANK", "0"))
    try:
        return train(parse_settings(argv), t_start)
    except (UserError, TokenizerError, CheckpointError) as e:
        if rank == 0:              # under torchrun every process hits the same mistake: say it once
            print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if rank == 0:
            print("\ninterrupted; nothing more saved", file=sys.stderr)
        return 130
    finally:
        if torch_dist.is_available() and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
