"""Tests of support/bpe_dropout.py: splitting training tokens into their merge's two tokens."""
import numpy as np
import torch
from hypothesis import given, settings, strategies as st

import train
from conftest import TINY_TEXT, TINY_VOCAB
from support.bpe_dropout import merge_parts, split_tokens
from support.distributed import Processes
from tokenizer import NUM_BYTES, Tokenizer

TOKENIZER = Tokenizer()
TOKENIZER.train(TINY_TEXT, TINY_VOCAB)
IDS = np.array(TOKENIZER.encode(TINY_TEXT), dtype=np.int64)
PARTS = merge_parts(TOKENIZER.merges, TOKENIZER.vocab_size)


def test_merge_parts_hold_each_merges_two_tokens_and_none_for_bytes():
    assert PARTS.shape == (TINY_VOCAB, 2)
    assert (PARTS[:NUM_BYTES] == -1).all()
    assert [tuple(p) for p in PARTS[NUM_BYTES:].tolist()] == [tuple(m) for m in TOKENIZER.merges]


def test_merge_parts_of_a_tokenizer_with_special_tokens_and_another_byte_order_spell_each_token():
    """GPT-2's layout: bytes in another order, <|endoftext|> after the merges; each part pair spells its token."""
    order = list(range(255, -1, -1))
    gpt2_like = Tokenizer.from_merges([list(m) for m in TOKENIZER.merges[:20]], "test", byte_order=order,
                                      special_tokens={"<|endoftext|>": NUM_BYTES + 20}, pre_split="gpt2")
    parts = merge_parts(gpt2_like.merges, gpt2_like.vocab_size)
    assert parts[gpt2_like.end_of_text].tolist() == [-1, -1] and (parts[:NUM_BYTES] == -1).all()
    for token in range(NUM_BYTES, NUM_BYTES + 20):
        left, right = parts[token].tolist()
        assert gpt2_like.decode_bytes([left, right]) == gpt2_like.decode_bytes([token])


@settings(max_examples=50, deadline=None)
@given(start=st.integers(0, len(IDS) - 40), length=st.integers(1, 32), seed=st.integers(0, 2 ** 31 - 1),
       prob=st.floats(0, 1))
def test_split_rows_spell_the_same_text_and_keep_their_length(start, length, seed, prob):
    rows = torch.from_numpy(IDS[start:start + length]).unsqueeze(0)              # (1, L)
    split = torch.rand(rows.shape, generator=torch.Generator().manual_seed(seed)) < prob
    out = split_tokens(rows, PARTS, split)
    assert out.shape == rows.shape
    # The split row is a respelling of the same bytes, cut to L tokens: a prefix of the text.
    text, respelled = TOKENIZER.decode_bytes(rows[0].tolist()), TOKENIZER.decode_bytes(out[0].tolist())
    assert text.startswith(respelled)
    # Tokens before the first split stay where they were; a split token becomes its two parts.
    where = [i for i in range(length) if split[0, i] and rows[0, i] >= NUM_BYTES]
    first = where[0] if where else length
    assert out[0, :first].tolist() == rows[0, :first].tolist()
    if where and first + 1 < length:
        assert out[0, first:first + 2].tolist() == PARTS[rows[0, first]].tolist()


def test_no_split_changes_nothing_and_byte_tokens_never_split():
    rows = torch.from_numpy(IDS[:64].reshape(4, 16))
    assert torch.equal(split_tokens(rows, PARTS, torch.zeros_like(rows, dtype=torch.bool)), rows)
    bytes_only = torch.tensor([[104, 101, 108, 108, 111]])                        # "hello", byte by byte
    assert torch.equal(split_tokens(bytes_only, PARTS, torch.ones_like(bytes_only, dtype=torch.bool)), bytes_only)


def batches(bpe_dropout: float, rank: int = 0, world_size: int = 1, grad_accum: int = 1, seed: int = 0) -> list:
    """Five steps' (x, y) micro-batches from train.get_batch on the tiny text, batch 8 × 16 tokens."""
    cfg = train.parse_settings(["--block_size", "16", "--batch_size", "8", "--bpe_dropout", str(bpe_dropout),
                                "--grad_accum_steps", str(grad_accum)])
    procs = Processes(rank=rank, world_size=world_size)
    generator = torch.Generator().manual_seed(seed)
    return [xy for _ in range(5) for xy in train.get_batch(IDS, cfg, generator, procs, torch.device("cpu"), PARTS)]


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))


def test_batches_with_bpe_dropout_split_tokens_and_are_repeatable():
    plain, split = batches(0.0), batches(0.3)
    for x, y in split:
        assert x.shape == y.shape == (8, 16) and torch.equal(y[:, :-1], x[:, 1:])   # still shifted by one
    # Split rows hold shorter tokens: fewer of them are merged tokens than in the plain windows.
    merged_share = lambda xys: torch.cat([x.flatten() for x, _ in xys]).ge(NUM_BYTES).float().mean().item()
    assert merged_share(split) < merged_share(plain) - 0.05
    assert same(batches(0.3, seed=1), batches(0.3, seed=1)) and not same(batches(0.3, seed=1), batches(0.3, seed=2))


def test_split_batches_do_not_depend_on_the_number_of_processes():
    # The global batch (micro-steps, processes, batch) is drawn whole, coins included: two processes'
    # shares are one process's two micro-batches with grad_accum_steps 2.
    one = batches(0.3, grad_accum=2, seed=5)
    shares = [batches(0.3, rank=r, world_size=2, seed=5) for r in (0, 1)]
    assert same(one[0::2], shares[0]) and same(one[1::2], shares[1])
