"""The one scoring core (support/scoring.py): its sums against hand-computed values and plain
cross-entropy, for train.py's back-to-back windows and for run.py's sliding windows."""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import TINY_TEXT
from Model import ModelConfig, Transformer
from support.scoring import chars_per_token, final_windows, fixed_windows, score_windows
from tokenizer import Tokenizer


class Uniform(nn.Module):
    """A 'model' that gives every token the same probability: NLL = ln V per token, exactly."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, idx, targets=None):
        return torch.zeros(*idx.shape, self.vocab_size), None


def back_to_back(n_tokens: int, block: int) -> list[tuple[int, int, int]]:
    """Every token but the first a target once; the last window may be shorter."""
    return [(s, min(s + block, n_tokens - 1), 0) for s in range(0, n_tokens - 1, block)]


def reference_nll(model, ids, windows) -> float:
    """The windows' summed NLL the slow way: one window at a time, skipped predictions dropped."""
    nll = 0.0
    with torch.no_grad():
        for start, end, skip in windows:
            x = torch.tensor(ids[start:end], dtype=torch.long)[None]
            y = torch.tensor(ids[start + 1:end + 1], dtype=torch.long)
            nll += F.cross_entropy(model(x)[0][0][skip:], y[skip:], reduction="sum").item()
    return nll


def test_bits_per_char_of_a_uniform_model_is_the_hand_computed_value():
    # Byte tokens only, so each token is one byte: 8 bits per token under a uniform guess, and
    # bits/char = 8 × bytes ÷ characters of what was scored.
    tokenizer = Tokenizer()
    text = "héllo wörld, ça va?\n" * 5                  # 20 chars, 23 bytes per line
    ids = np.array(tokenizer.encode(text), dtype=np.uint16)
    result = score_windows(Uniform(256), ids, back_to_back(len(ids), 16), chars_per_token(tokenizer),
                           torch.device("cpu"), batch_size=3)
    # Every token but the first is scored once; the first is "h", one byte and one character.
    assert (result.tokens, result.chars) == (115 - 1, 100 - 1)
    assert math.isclose(result.bits_per_char, 8 * 114 / 99, rel_tol=1e-6)         # float32 logits
    assert math.isclose(result.loss_per_token, math.log(256), rel_tol=1e-6)


def small_model_and_ids():
    tokenizer = Tokenizer()
    tokenizer.train(TINY_TEXT, 280)
    ids = np.array(tokenizer.encode(TINY_TEXT), dtype=np.uint16)
    torch.manual_seed(0)
    return tokenizer, ids, Transformer(ModelConfig(tokenizer.vocab_size, 8, 16, 1, 2, 0.0)).eval()


def test_scoring_matches_plain_cross_entropy_and_counts_characters():
    tokenizer, ids, model = small_model_and_ids()
    windows = back_to_back(len(ids), 8)
    assert windows[-1][1] - windows[-1][0] < 8           # a short last window is scored too
    result = score_windows(model, ids, windows, chars_per_token(tokenizer), torch.device("cpu"), batch_size=5)

    nll = reference_nll(model, ids, windows)
    scored_text = tokenizer.decode(ids[1:].tolist())     # the text starts with a whole-character token
    assert result.tokens == len(ids) - 1
    assert result.chars == len(scored_text) == len(TINY_TEXT) - len(tokenizer.decode(ids[:1].tolist()))
    assert math.isclose(result.nll, nll, rel_tol=1e-5)
    assert math.isclose(result.bits_per_char, nll / len(scored_text) / math.log(2), rel_tol=1e-5)


def test_sliding_windows_score_each_token_once_with_the_context_they_give():
    # run.py's --eval windows: (start, end, skip), each later window scoring only its new tokens.
    tokenizer, ids, model = small_model_and_ids()
    block, stride = 8, 3
    end, windows = block, [(0, block, 0)]
    while end < len(ids) - 1:
        new_end = min(end + stride, len(ids) - 1)
        windows.append((new_end - block, new_end, block - (new_end - end)))
        end = new_end
    result = score_windows(model, ids, windows, chars_per_token(tokenizer), torch.device("cpu"), batch_size=4)

    nll = reference_nll(model, ids, windows)
    assert result.tokens == len(ids) - 1
    assert result.chars == len(tokenizer.decode(ids[1:].tolist()))
    assert math.isclose(result.nll, nll, rel_tol=1e-5)


def test_scoring_only_chosen_target_tokens_counts_exactly_those():
    # The rare-token bench splits the validation loss by target token; the parts must add up to
    # the whole, and each part must be the slow reference restricted to its tokens.
    tokenizer, ids, model = small_model_and_ids()
    windows = back_to_back(len(ids), 8)
    chars = chars_per_token(tokenizer)
    chosen = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
    chosen[np.unique(ids)[::3]] = True                   # every third token that occurs
    part = score_windows(model, ids, windows, chars, torch.device("cpu"), batch_size=5, targets=chosen)
    rest = score_windows(model, ids, windows, chars, torch.device("cpu"), batch_size=5, targets=~chosen)
    whole = score_windows(model, ids, windows, chars, torch.device("cpu"), batch_size=5)

    targets = torch.tensor(ids[1:].astype(np.int64))
    assert part.tokens == int(chosen[targets].sum()) and 0 < part.tokens < whole.tokens
    assert part.chars == int(chars[targets][chosen[targets]].sum())
    assert (part.tokens + rest.tokens, part.chars + rest.chars) == (whole.tokens, whole.chars)
    assert math.isclose(part.nll + rest.nll, whole.nll, rel_tol=1e-5)
    with torch.no_grad():
        logits = torch.cat([model(torch.tensor(ids[s:e], dtype=torch.long)[None])[0][0] for s, e, _ in windows])
    losses = F.cross_entropy(logits, targets, reduction="none")
    assert math.isclose(part.nll, losses[chosen[targets]].sum().item(), rel_tol=1e-5)


# ─────────────────────────── the windows train.py scores ───────────────────────────

def test_fixed_windows_are_the_same_every_time_and_inside_the_split():
    a, b = fixed_windows(1000, 16, 50), fixed_windows(1000, 16, 50)
    assert a == b and len(a) == 50
    assert all(0 <= s and e == s + 16 and e + 1 <= 1000 and skip == 0 for s, e, skip in a)


def test_final_windows_cover_a_small_split_back_to_back_and_spread_a_bound_over_a_big_one():
    full = final_windows(1000, 16, 0)
    targets = [t for s, e, _ in full for t in range(s + 1, e + 1)]
    assert targets == list(range(1, 1000))                          # every token but the first, once
    assert final_windows(1000, 16, 999) == final_windows(1000, 16, 5000) == full
    bounded = final_windows(100_000, 16, 1000)
    assert bounded == final_windows(100_000, 16, 1000)        # the same windows every time
    assert len(bounded) == 1000 // 16 and all(e - s == 16 for s, e, _ in bounded)
    assert bounded[0][0] == 0 and bounded[-1][1] == 100_000 - 1     # spread from one end to the other
    assert all(a[1] <= b[0] for a, b in zip(bounded, bounded[1:]))  # in order, never overlapping
