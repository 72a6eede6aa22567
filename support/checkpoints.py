"""Checkpoint files: reading them safely, and the checks that turn a bad file into one line.

Read this when you want to know what a .pth file holds, why loading one can never run code, or
where the one-line errors about broken or foreign checkpoints come from. train.py's resume state
(optimizer, step, random generators) is written and checked here too.
"""
from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import torch

from Model import ModelConfig, Transformer

CHECKPOINT_FORMAT_VERSION = 1


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
    expected = model.state_dict()
    state = ckpt["model"]
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{where}weights do not match the model config "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f"{where}weight {name} has shape {tuple(tensor.shape)}, "
                                  f"config expects {tuple(expected[name].shape)}")
    # A shipped "best" file may hold fp16 weights; compute in fp32 regardless.
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
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
