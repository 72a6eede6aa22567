"""Argument checks for Model.py's public methods: a clear one-line ValueError, not a deep torch error.

Read this only if you call the model from your own code and wonder what it accepts.
"""
from __future__ import annotations

import math

import torch

POSITIONS = ("learned", "rotary")     # Model.py: a learned table added to the tokens, or rotations in attention
GELUS = ("exact", "tanh")             # Model.py's MLP: the exact GELU, or GPT-2's tanh approximation


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_config(config) -> None:
    """A ModelConfig built from a file or a command line may hold anything."""
    for name in ("vocab_size", "block_size", "emb_len", "num_layers", "num_heads"):
        value = getattr(config, name)
        if not _is_int(value) or value < 1:
            raise ValueError(f"model config: {name} must be a positive integer, got {value!r}")
    if config.emb_len % config.num_heads:
        raise ValueError(f"model config: emb_len ({config.emb_len}) must be divisible by "
                         f"num_heads ({config.num_heads})")
    if not _is_number(config.dropout) or not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"model config: dropout must be in [0, 1), got {config.dropout!r}")
    if config.positions not in POSITIONS:
        raise ValueError(f"model config: positions must be one of {', '.join(POSITIONS)}, got {config.positions!r}")
    if config.gelu not in GELUS:
        raise ValueError(f"model config: gelu must be one of {', '.join(GELUS)}, got {config.gelu!r}")


def check_config_dict(d, names: set) -> None:
    """A stored config must have exactly the fields `names` (else it comes from other code)."""
    if not isinstance(d, dict):
        raise ValueError(f"model config must be a dict, got {type(d).__name__}")
    unknown, missing = sorted(set(d) - names), sorted(names - set(d))
    if unknown:
        raise ValueError(f"model config has unknown keys: {', '.join(map(str, unknown))}")
    if missing:
        raise ValueError(f"model config lacks keys: {', '.join(missing)}")


def check_prompt(idx, vocab_size: int, max_new_tokens) -> None:
    """idx must be a (1, T) torch.long tensor of ids in [0, vocab_size), T >= 1."""
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.shape[0] != 1 or idx.shape[1] < 1:
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"prompt must be a (1, T) tensor of token ids with T >= 1, got {shape}")
    if idx.dtype != torch.long:
        raise ValueError(f"prompt token ids must be torch.long, got {idx.dtype}")
    if idx.min().item() < 0 or idx.max().item() >= vocab_size:
        raise ValueError(f"prompt token ids must be in [0, {vocab_size})")
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")


def check_sampling(temperature, top_k, top_p) -> None:
    """Sampling settings that make sense: temperature >= 0, top_k >= 1 or None, top_p in (0, 1]."""
    if not _is_number(temperature) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 (or None for no limit), got {top_k!r}")
    if top_p is not None and (not _is_number(top_p) or not 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1] (or None for no limit), got {top_p!r}")

