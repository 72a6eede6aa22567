"""Checkpoint files: reading them safely, and the checks that turn a bad file into one line.

Read this when you want to know what a .pth file holds, why loading one can never run code, or
where the one-line errors about broken or foreign checkpoints come from. train.py's resume state
(optimizer, step, random generators) is written and checked here too.
"""
from __future__ import annotations

import pickle
import re
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch

from Model import ModelConfig, Transformer
from tokenizer import Tokenizer
from support.distributed import gather
from support.files import atomic_write, held_open, held_open_line, remove_stale_temps, write_failure
from support.history import HISTORY_CSV, HISTORY_PNG
from support.settings import UserError

CHECKPOINT_FORMAT_VERSION = 3     # 3: model_config names its positions
# Files from before that: version 1 held a learned position table, version 2 rotary positions.
POSITIONS_BEFORE_VERSION_3 = {1: "learned", 2: "rotary"}


class CheckpointError(Exception):
    """A checkpoint file that cannot be used; the message is one line naming the file."""


def load_checkpoint(path) -> dict:
    """Read a checkpoint safely: torch.load(weights_only=True) only rebuilds tensors and plain
    values, so a file crafted to run code is refused without running it. Checks the format;
    any problem raises CheckpointError naming the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint — train one with `python train.py`")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes) — the save was interrupted; delete it and retrain or resume")
    try:
        with warnings.catch_warnings():         # torch warns about old pickle protocols; the
            warnings.simplefilter("ignore")     # error below says all the user needs
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # The safe unpickler stops at the first reference to a function or class it does not
        # allow (GLOBAL), before anything could call it.
        if "global" in str(e).lower():
            raise CheckpointError(f"{path}: refused — it references code, not just tensors and plain "
                                  f"values (loading it could run that code); nothing was executed") from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (unrecognised pickle data)") from None
    except Exception as e:                      # zip/stream errors, EOFError, ...
        raise CheckpointError(f"{path}: {_describe_unreadable(path, e)}") from None
    _check_format(ckpt, path)
    return ckpt


def _describe_unreadable(path: Path, error: Exception) -> str:
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        return "truncated (the zip archive is incomplete) — the save was interrupted; retrain or resume"
    if isinstance(error, EOFError):
        return "truncated (ends in the middle of the data)"
    return f"not a PyTorch checkpoint (unrecognised contents; {type(error).__name__})"


def _check_format(ckpt, path: Path) -> None:
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a checkpoint of this project (holds a {type(ckpt).__name__}, not a dict)")
    if "format_version" not in ckpt:
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            # The original project saved the bare state dict, with no config to rebuild the model.
            raise CheckpointError(f"{path}: a weights file in the original project's format (a bare state "
                                  f"dict, no model config or tokenizer fingerprint) — this code cannot run "
                                  f"it; train a model with `python init.py` then `python train.py`")
        raise CheckpointError(f"{path}: not a checkpoint of this project (no format_version)")
    if ckpt["format_version"] in POSITIONS_BEFORE_VERSION_3 and isinstance(ckpt.get("model_config"), dict):
        # The same model, but its config did not name the positions yet: read it as what it held.
        ckpt["model_config"] = {"positions": POSITIONS_BEFORE_VERSION_3[ckpt["format_version"]], **ckpt["model_config"]}
        ckpt["format_version"] = CHECKPOINT_FORMAT_VERSION
    if isinstance(ckpt.get("model_config"), dict) and "gelu" not in ckpt["model_config"]:
        ckpt["model_config"]["gelu"] = "exact"     # written before the GELU was a choice (GPT-2's is "tanh")
    if ckpt["format_version"] != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format_version {ckpt['format_version']!r}, this code reads "
                              f"{CHECKPOINT_FORMAT_VERSION} — retrain with this version of train.py")
    for key in ("model_config", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    try:
        ModelConfig.from_dict(ckpt["model_config"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: bad model_config: {e}") from None
    state = ckpt["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: 'model' is not a state dict of tensors")


def model_from_checkpoint(ckpt: dict, device, path=None) -> Transformer:
    """Rebuild the Transformer described by ckpt["model_config"], load its weights as fp32, move it
    to `device`, eval mode. `path` only names the file in error messages."""
    where = f"{path}: " if path is not None else "checkpoint: "
    try:
        config = ModelConfig.from_dict(ckpt["model_config"])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{where}bad model_config: {e}") from None
    model = Transformer(config)
    # A shipped "best" file may hold fp16 weights; compute in fp32 regardless.
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()})
    except RuntimeError as e:        # missing or unexpected names, or a shape that differs: torch names them
        detail = " ".join(str(e).split("\n\t")[1:2]) or str(e).splitlines()[0]
        raise CheckpointError(f"{where}weights do not match the model config ({detail.strip()})") from None
    return model.to(device).eval()


def check_tokenizer_fingerprint(ckpt: dict, tokenizer_fingerprint: str, path) -> None:
    """The model's token ids only mean something with the tokenizer it was trained with."""
    saved = ckpt.get("tokenizer_fingerprint")
    if saved is None:
        raise CheckpointError(f"{path}: checkpoint records no tokenizer fingerprint — cannot tell which "
                              f"tokenizer it needs; retrain with `python train.py`")
    if saved != tokenizer_fingerprint:
        raise CheckpointError(f"{path}: trained with a different tokenizer (fingerprint {saved}, the loaded "
                              f"tokenizer is {tokenizer_fingerprint}) — use the tokenizer it was trained "
                              f"with, or retrain with `python train.py`")


def checkpoint_tokenizer(ckpt: dict, path, tokenizer_dir) -> Tokenizer:
    """The tokenizer a checkpoint's model was trained with: its own copy (the merges, which checkpoints
    carry since they were first written with them: one .pth is then a whole model), or else the one in
    tokenizer_dir, which must be that tokenizer (same fingerprint)."""
    if "tokenizer_merges" in ckpt:
        if not isinstance(ckpt["tokenizer_merges"], torch.Tensor):
            raise CheckpointError(f"{path}: 'tokenizer_merges' is not a tensor of merges")
        order = ckpt.get("tokenizer_byte_order")
        tokenizer = Tokenizer.from_merges(ckpt["tokenizer_merges"].tolist(), path,
                                          byte_order=None if order is None else order.tolist(),
                                          special_tokens=ckpt.get("tokenizer_special_tokens"),
                                          pre_split=ckpt.get("tokenizer_pre_split", "default"))
    else:
        tokenizer = Tokenizer.load(tokenizer_dir)
    check_tokenizer_fingerprint(ckpt, tokenizer.fingerprint(), path)
    return tokenizer


def load_source(path) -> dict:
    """A checkpoint of this project, or a Hugging Face GPT-2 (gpt2 ... gpt2-xl, or its folder) read as one."""
    from support import hugging_face          # (it imports this module)
    return hugging_face.gpt2_checkpoint(path) if hugging_face.is_gpt2_source(path) else load_checkpoint(path)


def load_trained_model(path, tokenizer_dir, device) -> tuple[Transformer, dict, Tokenizer]:
    """A trained checkpoint (or a GPT-2: load_source) -> (its model in eval mode on device, the checkpoint,
    its tokenizer). What run.py runs; problems raise CheckpointError or TokenizerError naming the file."""
    ckpt = load_source(path)
    tokenizer = checkpoint_tokenizer(ckpt, path, tokenizer_dir)
    return model_from_checkpoint(ckpt, device, path), ckpt, tokenizer


def tokenizer_fields(tokenizer: Tokenizer) -> dict:
    """The tokenizer as a checkpoint carries it: its fingerprint and merges ((merges, 2) int32), and
    for an imported one (GPT-2's) its byte order, special tokens and pre-split."""
    fields = {"tokenizer_fingerprint": tokenizer.fingerprint(),
              "tokenizer_merges": torch.tensor(tokenizer.merges, dtype=torch.int32).reshape(-1, 2)}
    if tokenizer.byte_order is not None:
        fields["tokenizer_byte_order"] = torch.tensor(tokenizer.byte_order, dtype=torch.int32)
    if tokenizer.special_tokens:
        fields["tokenizer_special_tokens"] = dict(tokenizer.special_tokens)
    if tokenizer.pre_split != "default":
        fields["tokenizer_pre_split"] = tokenizer.pre_split
    return fields


# ─────────────────────────────── train.py's resume state ───────────────────────────────
# weights-latest.pth holds everything an exact resume needs; weights-best.pth only what run.py
# needs. Both are dicts of plain values and tensors, written whole or not at all.

LATEST, BEST = "weights-latest.pth", "weights-best.pth"
# What a checkpoint's weights depend on (dropout is a model setting too, but may change on resume).
SHAPE_NAMES = ("vocab_size", "block_size", "emb_len", "num_layers", "num_heads", "positions")
FRESH_HINT = "pass --fresh to start a new run (this one is kept, moved into a subfolder)"


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save to a temporary file beside path, then rename: a crash never leaves half a file.
    A failed write (disk full, folder gone, path held open by another program on Windows) is a
    UserError, and path still holds its last complete version."""
    try:
        atomic_write(path, lambda tmp: torch.save(obj, tmp))
    except (OSError, RuntimeError) as e:       # torch's zip writer reports a failed write as RuntimeError
        if held_open(e):
            raise UserError(held_open_line(path)) from None
        raise UserError(f"could not write {path} ({write_failure(e, path.parent)}); {path.name} still holds "
                        f"its last complete version, if any — make room and run train.py again to resume") from None


def check_writable(weights_dir: Path) -> None:
    """Fail now, not after an hour of training, if checkpoints cannot be written."""
    try:
        weights_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=weights_dir, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UserError(f"cannot write to weights folder {weights_dir} ({e.strerror or e}) — "
                        f"pass --weights-dir with a writable folder") from None


def remove_leftover_temps(weights_dir: Path, say) -> None:
    """A save killed before its rename leaves NAME.PID.tmp behind (see save_atomic): never a complete
    file, never read. Removed so they do not pile up."""
    names = "|".join(re.escape(name) for name in RUN_FILES)
    remove_stale_temps(weights_dir, names, say, "an interrupted save")


def load_resume_state(path: Path, model_config: ModelConfig, tokenizer_fp: str, data_fp: str, optimizer: str) -> dict | None:
    """weights-latest.pth, checked to belong to this run: same model shape, tokenizer, input and
    optimizer. None when it is a run of another text or tokenizer (the caller moves that run aside:
    move_run_aside); any other mismatch is one line naming what differs and pointing at --fresh."""
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as e:
        raise UserError(f"{e} (or {FRESH_HINT})") from None
    if ckpt.get("kind") != "latest" or not {"optimizer", "rng", "rng_per_rank", "step"} <= set(ckpt):
        raise UserError(f"{path}: not a resumable checkpoint (no optimizer or random state) — {FRESH_HINT}")
    if ckpt.get("tokenizer_fingerprint") != tokenizer_fp or ckpt.get("data_fingerprint") != data_fp:
        return None
    trained_with = ckpt.get("train_config", {}).get("optimizer", "adamw")
    if trained_with != optimizer:
        raise UserError(f"{path} was trained with --optimizer {trained_with}, not {optimizer} (their "
                        f"saved states differ) — pass --optimizer {trained_with}, or {FRESH_HINT}")
    saved, wanted = ckpt["model_config"], model_config.to_dict()
    differ = [f"{k} {saved.get(k)} -> {wanted[k]}" for k in SHAPE_NAMES if saved.get(k) != wanted[k]]
    if differ:
        raise UserError(f"{path} holds a model of a different shape ({', '.join(differ)}) — pass the "
                        f"settings it was trained with, or {FRESH_HINT}")
    return ckpt


RUN_FILES = (LATEST, BEST, HISTORY_CSV, HISTORY_PNG)      # what one run of train.py leaves in its folder


def move_run_aside(weights_dir: Path) -> Path | None:
    """Move the run files in weights_dir (RUN_FILES) into a new subfolder, earlier-run-N, so that a new
    run never writes over them. -> that folder, or None when there was nothing to move."""
    present = [name for name in RUN_FILES if (weights_dir / name).exists()]
    if not present:
        return None
    number = 1
    while (weights_dir / f"earlier-run-{number}").exists():
        number += 1
    aside = weights_dir / f"earlier-run-{number}"
    try:
        aside.mkdir()
        for name in present:
            (weights_dir / name).rename(aside / name)
    except OSError as e:
        raise UserError(f"could not move the earlier run in {weights_dir}/ aside to {aside}/ ({e.strerror or e}); "
                        f"nothing was deleted — move or delete its files yourself, then run train.py again") from None
    return aside


def changed_settings(ckpt: dict, train_config: dict) -> list[str]:
    """Settings that differ from the checkpoint's run (allowed, but worth saying), and extras it used
    that this version removed (it goes on without them)."""
    old = ckpt.get("train_config", {})
    return [f"{k} {old[k]} -> {v}" for k, v in train_config.items()
            if k in old and old[k] != v and k not in SHAPE_NAMES] + [
        f"{k} {old[k]} -> removed" for k in ("teacher", "ema_decay") if old.get(k)]


def save_resume_state(path: Path, model, optimizer, scaler, batches: torch.Generator, procs, device, step: int,
                      best_val: float | None, minutes: float, data_fp: str, tokenizer: Tokenizer,
                      train_config: dict) -> None:
    """weights-latest.pth: the best file's fields plus optimizer, gradient scaler, the random generators
    (the batch generator, and every process's dropout generator, gathered to rank 0), the input's
    fingerprint and the minutes used: all an exact resume needs. Written by rank 0, whole or not at all."""
    rng_per_rank = gather(own_rng_state(device), procs)
    if procs.is_main:
        save_atomic({"format_version": CHECKPOINT_FORMAT_VERSION, "kind": "latest",
                     "model_config": model.config.to_dict(), "model": model.state_dict(),
                     **tokenizer_fields(tokenizer), "step": step, "val_nats_per_char": best_val, "best_val": best_val,
                     "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                     "train_config": train_config, "data_fingerprint": data_fp,
                     "rng": {"batches": batches.get_state()}, "rng_per_rank": rng_per_rank, "minutes": minutes},
                    path)


def best_checkpoint(model, step: int, result, tokenizer: Tokenizer, train_config: dict) -> dict:
    """weights-best.pth: what run.py needs (weights, config, the tokenizer's merges and fingerprint)
    and the validation figures (result: an EvalResult) that made it the best."""
    return {"format_version": CHECKPOINT_FORMAT_VERSION, "kind": "best",
            "model_config": model.config.to_dict(), "model": model.state_dict(),
            **tokenizer_fields(tokenizer), "step": step,
            "val_nats_per_char": result.nats_per_char, "val_bits_per_char": result.bits_per_char,
            "val_loss_per_token": result.loss_per_token, "train_config": train_config}


# Exact resume needs every generator that shapes training back in the same state: the batch
# generator (which windows) and torch's global generator (dropout masks; on a GPU, the device's
# generator draws them), stored as tensors.

def own_rng_state(device: torch.device) -> dict:
    """This process's dropout generators (differ per process under torchrun), on the CPU."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).cpu()
    if device.type == "mps":
        state["mps"] = torch.mps.get_rng_state().cpu()
    return state


def restore_training_state(ckpt: dict, model, optimizer, scaler, batches: torch.Generator, procs,
                           device: torch.device, seed: int, dropout: float, say) -> None:
    """Weights, optimizer, gradient scaler and random generators as weights-latest.pth left them."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if "scaler" in ckpt and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])
    batches.set_state(ckpt["rng"]["batches"])
    per_rank = ckpt["rng_per_rank"]
    if len(per_rank) == procs.world_size:
        own = per_rank[procs.rank]
        torch.set_rng_state(own["torch"])
        if device.type == "cuda" and "cuda" in own:
            torch.cuda.set_rng_state(own["cuda"], device)
        if device.type == "mps" and "mps" in own:
            torch.mps.set_rng_state(own["mps"])
    else:
        # A different number of processes: batches still match, only dropout masks cannot.
        torch.manual_seed(seed + 2 + procs.rank + 1_000_003 * ckpt["step"])
        if dropout > 0:
            say(f"note: checkpoint written by {len(per_rank)} process(es), resuming with {procs.world_size}: "
                f"same batches, but dropout masks differ from an uninterrupted run")
