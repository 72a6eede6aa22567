"""The one scoring core: summed negative log-likelihood and characters of windows of token ids.

Read this when you want to know exactly how a validation figure is added up: train.py's evaluations
and run.py's --eval both score through score_windows, on windows they choose.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from support.devices import autocast
from support.distributed import SINGLE, Processes, all_reduce_sum


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

    def figures(self) -> str:
        return (f"{self.loss_per_token:.4f} nats/token, {self.nats_per_char:.4f} nats/char, "
                f"{self.bits_per_char:.4f} bits/char")


def chars_per_token(tokenizer) -> torch.Tensor:
    """(V,) int64: how many characters each token starts, i.e. how many of its bytes are not UTF-8
    continuation bytes (10xxxxxx). Summed over a token sequence this counts every character whose
    first byte lies in it — exactly once, even when a character is split over two tokens."""
    counts = [sum(1 for b in tokenizer.decode_bytes([i]) if b & 0xC0 != 0x80)
              for i in range(tokenizer.vocab_size)]
    return torch.tensor(counts, dtype=torch.int64)


def windows_to_batch(ids: np.ndarray, starts, length: int, device: torch.device):
    """Windows ids[s : s + length + 1] for each start -> inputs x and targets y, both (B, length)
    int64 on device; y is x shifted one token left (each position predicts the next token)."""
    starts = np.asarray(starts, dtype=np.int64)
    rows = torch.from_numpy(ids[starts[:, None] + np.arange(length + 1)].astype(np.int64)).to(device)  # (B, L+1)
    return rows[:, :-1], rows[:, 1:]


def fixed_windows(n_tokens: int, block_size: int, count: int) -> list[tuple[int, int, int]]:
    """`count` windows spread evenly over the split, the same at every evaluation, so successive
    figures differ only because the model changed. (start, end, skip) triples, as score_windows takes."""
    starts = np.unique(np.linspace(0, n_tokens - block_size - 1, count).round().astype(np.int64))
    return [(int(s), int(s) + block_size, 0) for s in starts]


def final_windows(n_tokens: int, block_size: int, most_tokens: int) -> list[tuple[int, int, int]]:
    """The final evaluation's windows. When the split has at most `most_tokens` targets (or it is 0):
    back to back over the whole split, so every token but the first (which has nothing before it)
    is a target once; the last window may be shorter. Otherwise most_tokens ÷ block_size windows,
    spread evenly over the split, the same every time. Each window starts with no context, so this
    is a little pessimistic compared with a sliding window."""
    if most_tokens == 0 or n_tokens - 1 <= most_tokens:
        return [(s, min(s + block_size, n_tokens - 1), 0) for s in range(0, n_tokens - 1, block_size)]
    length = min(block_size, most_tokens)
    starts = np.linspace(0, n_tokens - length - 1, most_tokens // length).round().astype(np.int64)
    return [(int(s), int(s) + length, 0) for s in starts]


@torch.no_grad()
def score_windows(model: torch.nn.Module, ids: np.ndarray, windows: list[tuple[int, int, int]],
                  chars: torch.Tensor, device: torch.device, amp_dtype: torch.dtype | None = None,
                  batch_size: int = 32, procs: Processes = SINGLE, progress: str | None = None,
                  targets: torch.Tensor | None = None) -> EvalResult:
    """The summed NLL, tokens and characters of the predictions the windows ask for.

    A window (start, end, skip) feeds ids[start:end] to the model, which predicts
    ids[start + 1 : end + 1]; the first `skip` of those are context only, not counted (a sliding
    window scores only its new tokens). chars: chars_per_token. Windows of one length go through
    the model batch_size at a time, under autocast, the cross-entropy summed in float32; the
    caller puts the model in eval mode. Under torchrun each process scores its share and all get
    the summed result. progress: a bar's label, or None. targets: (V,) bool, to count only the
    predictions of the tokens True there (e.g. those rare in training); None counts all."""
    by_length: dict[int, list[tuple[int, int]]] = {}
    for start, end, skip in windows[procs.rank::procs.world_size]:
        by_length.setdefault(end - start, []).append((start, skip))
    batches = [(length, group[i:i + batch_size])
               for length, group in by_length.items() for i in range(0, len(group), batch_size)]
    nll, tokens, n_chars = 0.0, 0, 0
    targets = None if targets is None else targets.to(device)
    for length, batch in tqdm(batches, desc=progress, unit="batch", file=sys.stderr, leave=False,
                              disable=progress is None or not procs.is_main):
        starts, skips = zip(*batch)
        x, y = windows_to_batch(ids, starts, length, device)                       # (W, L) each
        with autocast(device, amp_dtype):
            logits, _ = model(x)                                                   # (W, L, V)
        losses = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")  # (W, L)
        counted = torch.arange(length, device=device)[None, :] >= torch.tensor(skips, device=device)[:, None]
        if targets is not None:
            counted &= targets[y]
        nll += losses[counted].sum().item()
        tokens += int(counted.sum())
        n_chars += int(chars[y[counted].cpu()].sum())
    nll, tokens, n_chars = all_reduce_sum([nll, tokens, n_chars], procs, device)
    return EvalResult(nll, int(tokens), int(n_chars))
