"""BPE-dropout for training batches: some tokens are split back into the two tokens they were merged
from. Read it when training on a small text (Model_Params.bpe_dropout above 0).

BPE spells a word one way only. The training text always merges ` Ca` and `esar` into ` Caesar`,
so training never shows ` Ca` on its own and its embedding never trains (on the nine plays, 185 of
the 4,096 tokens never occur alone in the training tokens); a new text that needs ` Ca` gives the
model a token it knows nothing about. BPE-dropout (Provilkov et al., 2020) shows the model other
spellings of its own text. Here each merged token of a training window is, with probability p,
replaced by the two tokens its merge joined (the last merge undone, one level). Each window keeps its
first block_size + 1 tokens, so a batch keeps its shape. Validation, `run.py --eval` and generation
use the tokenizer's one spelling, as before.
"""

import torch


def merge_parts(merges: list[tuple[int, int]], vocab_size: int) -> torch.Tensor:
    """(V, 2) int64: row t holds the two tokens that token t was merged from; -1, -1 for a byte or a
    special token (<|endoftext|>, after the merges)."""
    parts = torch.full((vocab_size, 2), -1, dtype=torch.int64)
    if merges:
        parts[256:256 + len(merges)] = torch.tensor(merges, dtype=torch.int64)   # merge i made id 256 + i
    return parts


def split_tokens(rows: torch.Tensor, parts: torch.Tensor, split: torch.Tensor) -> torch.Tensor:
    """Token ids rows (B, L) -> (B, L): each merged token where split (B, L, bool) is True becomes
    the two tokens of its merge (parts: see merge_parts); each row then keeps its first L tokens."""
    left, right = parts[rows, 0], parts[rows, 1]                                   # (B, L) each
    split = split & (right >= 0)                                                   # a byte stays whole
    pairs = torch.stack((torch.where(split, left, rows), torch.where(split, right, -1)), dim=2)
    pairs = pairs.flatten(1)                                                       # (B, 2L), -1 = no token
    # Every row has at least L tokens; a stable sort on "is empty" brings them to the front in order.
    order = torch.argsort((pairs < 0).to(torch.int8), dim=1, stable=True)
    return torch.gather(pairs, 1, order[:, :rows.shape[1]])
