"""The GPT: a decoder-only transformer, its config, and generation.

Read top to bottom, this file follows one token's journey:

    ids (B, T) ──token embedding (+ position embedding)──▶ x (B, T, E)
      ──num_layers × Block [LayerNorm → causal self-attention → +x ; LayerNorm → MLP → +x]──▶ (B, T, E)
      ──final LayerNorm → dot product with every token embedding──▶ logits (B, T, V) ──▶ loss / next token

Where a token sits enters one of two ways (ModelConfig.positions): "learned" (the original's, GPT-2's)
adds a trained vector per position; "rotary" turns queries and keys by position inside attention.
B = batch, T = tokens in the window, E = emb_len, H = num_heads, D = E // H (head size),
V = vocab_size. Then comes generation: a plain sampling loop, then the same with a KV cache and
streaming. The optimizers, devices and checkpoint files live in support/.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from support import validation

ATTENTION_IMPLS = ("sdpa", "explicit")


# ───────────────────────────────────────── configuration ─────────────────────────────────────────

@dataclass
class ModelConfig:
    """The shape of a model: everything needed to rebuild it (stored in every checkpoint)."""
    vocab_size: int
    block_size: int          # longest window the model trains on and can see
    emb_len: int
    num_layers: int
    num_heads: int
    dropout: float = 0.0
    positions: str = "rotary"   # "learned" (a table of block_size vectors) or "rotary" (see rotate)
    gelu: str = "exact"         # the MLP's GELU: "exact", or "tanh", the approximation GPT-2 was trained with

    def __post_init__(self):
        validation.check_config(self)          # a config read from a file may hold anything
        self.dropout = float(self.dropout)

    def to_dict(self) -> dict:
        """Plain dict of plain values (safe for torch.load(weights_only=True))."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Inverse of to_dict. Unknown or missing keys raise ValueError (a checkpoint from other code)."""
        validation.check_config_dict(d, {f.name for f in dataclasses.fields(cls)})
        return cls(**d)


# ─────────────────────────────────────────── attention ───────────────────────────────────────────

def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, T, E) -> (B, H, T, D): each head attends in its own D-dimensional subspace."""
    B, T, E = x.shape
    return x.view(B, T, num_heads, E // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (B, T, H*D): the heads' outputs side by side again."""
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)


def causal_mask(q_len: int, k_len: int, device) -> torch.Tensor:
    """(q_len, k_len) bool, True where a query may look. The q_len queries are the *last* q_len of the
    k_len positions (a KV cache holds the earlier ones), so query i sits at position k_len - q_len + i."""
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]          # (q_len, 1)
    return torch.arange(k_len, device=device)[None, :] <= q_pos                # (q_len, k_len)


def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """How much each query looks at each key: q (B, H, Tq, D), k (B, H, Tk, D) -> (B, H, Tq, Tk),
    every row a probability distribution over the positions the query may see."""
    # Scale by 1/sqrt(D) so score variance stays ~1 whatever the head size (else softmax saturates).
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])          # (B, H, Tq, Tk)
    # A token may only look at itself and the past: the future gets -inf, i.e. weight 0.
    scores = scores.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    return F.softmax(scores, dim=-1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: str, dropout_p: float = 0.0,
           training: bool = False) -> torch.Tensor:
    """Causal attention. q (B, H, Tq, D), k and v (B, H, Tk, D) with Tk >= Tq -> (B, H, Tq, D)."""
    Tq, Tk = q.shape[-2], k.shape[-2]
    dropout_p = dropout_p if training else 0.0
    if impl == "explicit":                                   # the textbook formula, for reading
        weights = F.dropout(attention_weights(q, k), dropout_p, training)
        return weights @ v                                   # (B, H, Tq, D): weighted sum of values
    # Fused kernel, same result. Its is_causal flag assumes Tq == Tk; a single new query (Tq == 1)
    # may see everything in the cache, so it needs no mask at all.
    if Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    mask = None if Tq == 1 else causal_mask(Tq, Tk, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def rotate(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotary positions: (B, H, T, D) queries or keys -> the same, turned by positions (T,). Dimension
    i pairs with i + D/2, a point in a plane turned by position × 10000^(-2i/D) (fast turns for fine
    position, slow ones for coarse). Why it works: turning q by a·m and k by a·n changes q·k exactly as
    turning k alone by a·(n - m) would, so attention scores see how far apart tokens are, not where."""
    half = x.shape[-1] // 2
    freqs = 10000.0 ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)   # (D/2,)
    angles = positions.float()[:, None] * freqs[None, :]                                  # (T, D/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]                                                 # (B, H, T, D/2)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class KVCache:
    """Keys and values of every layer for the positions seen so far, so that one more token costs one
    position's work instead of re-running the whole window. Buffers (num_layers, B, H, block_size, D)
    are allocated on first use with the keys' dtype and device; `length` positions are filled."""

    def __init__(self, config: ModelConfig):
        self.config, self.length = config, 0
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this layer's new (B, H, T, D) keys/values after the stored ones; return all of them,
        (B, H, length + T, D). The model adds T to length once every layer has stored."""
        if self.keys is None:
            c = self.config
            shape = (c.num_layers, k.shape[0], c.num_heads, c.block_size, c.emb_len // c.num_heads)
            self.keys = torch.empty(shape, dtype=k.dtype, device=k.device)
            self.values = torch.empty(shape, dtype=v.dtype, device=v.device)
        end = self.length + k.shape[2]
        self.keys[layer, :, :, self.length:end] = k
        self.values[layer, :, :, self.length:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


class CausalSelfAttention(nn.Module):
    """Every position mixes in information from itself and earlier positions, H heads in parallel."""

    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.num_heads = config.num_heads
        self.layer_index = layer_index                 # which slot of a KVCache is ours
        self.dropout = config.dropout
        self.rotary = config.positions == "rotary"
        self.impl = "sdpa"
        # One matmul makes queries, keys and values at once (3 E-wide outputs side by side).
        self.qkv = nn.Linear(config.emb_len, 3 * config.emb_len)
        self.proj = nn.Linear(config.emb_len, config.emb_len)
        self.resid_drop = nn.Dropout(config.dropout)

    def heads(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, T, E) at positions (T,) -> queries, keys and values, each (B, H, T, D); with rotary
        positions the queries and keys are turned to where each token sits."""
        q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(x).split(x.shape[-1], dim=2))
        if self.rotary:
            q, k = rotate(q, positions), rotate(k, positions)
        return q, k, v

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """(B, T, E) at positions (T,) -> (B, T, E)."""
        q, k, v = self.heads(x, positions)                             # 3 × (B, H, T, D)
        if cache is not None:
            k, v = cache.store(self.layer_index, k, v)                 # (B, H, past + T, D)
        y = attend(q, k, v, self.impl, self.dropout, self.training)    # (B, H, T, D)
        return self.resid_drop(self.proj(merge_heads(y)))              # (B, T, E)


class MLP(nn.Module):
    """Position-wise feed-forward: widen 4×, GELU, project back. Where most parameters live."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.up = nn.Linear(config.emb_len, 4 * config.emb_len)
        self.proj = nn.Linear(4 * config.emb_len, config.emb_len)
        self.drop = nn.Dropout(config.dropout)
        self.approximate = "tanh" if config.gelu == "tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.up(x), approximate=self.approximate)         # (B, T, 4E)
        return self.drop(self.proj(h))                                 # (B, T, E)


class Block(nn.Module):
    """Pre-norm block: x + attention(LN(x)), then x + MLP(LN(x)). Normalising *before* each sublayer
    keeps the residual stream an untouched sum, which trains stably without warm-up tricks."""

    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.emb_len)
        self.attn = CausalSelfAttention(config, layer_index)
        self.ln2 = nn.LayerNorm(config.emb_len)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), positions, cache)
        return x + self.mlp(self.ln2(x))


# ─────────────────────────────────────────── the model ───────────────────────────────────────────

class Transformer(nn.Module):
    """GPT: token embedding, num_layers Blocks, final LayerNorm, output head tied to the embedding."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.emb_len)
        # The original's positions: one learned vector per place in the window, 0 .. block_size - 1.
        self.pos_emb = nn.Embedding(config.block_size, config.emb_len) if config.positions == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.emb_len)
        # No separate output matrix: logits are dot products with the token embeddings themselves
        # ("weight tying"). Saves V×E parameters, and a token's input and output meaning stay one.
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2 initialisation: weights ~ N(0, 0.02), biases 0. The two projections that add into
        the residual stream get std 0.02/sqrt(2·num_layers): the stream is a sum of 2·num_layers
        such terms, so its variance then stays ~constant with depth."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        residual_std = 0.02 / math.sqrt(2 * self.config.num_layers)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.proj.weight, mean=0.0, std=residual_std)

    @property
    def attention_impl(self) -> str:
        """Which attention path every layer uses: "sdpa" (fused, default) or "explicit" (readable)."""
        return self.blocks[0].attn.impl

    @attention_impl.setter
    def attention_impl(self, impl: str) -> None:
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {', '.join(ATTENTION_IMPLS)}, got {impl!r}")
        for block in self.blocks:
            block.attn.impl = impl

    def num_params(self) -> int:
        """Number of parameters (the tied output head is counted once: it *is* the embedding)."""
        return sum(p.numel() for p in self.parameters())

    def embed(self, idx: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(B, T) ids at positions (T,) -> (B, T, E): what each token is, + where it sits (learned positions)."""
        x = self.tok_emb(idx)
        return x if self.pos_emb is None else x + self.pos_emb(positions)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                kv_cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> (logits (B, T, V), loss or None). loss: mean cross-entropy of targets
        (B, T) over all positions, in nats per token. kv_cache: if given, idx continues the positions
        already in the cache (generation only)."""
        B, T = idx.shape
        start = kv_cache.length if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        positions = torch.arange(start, start + T, device=idx.device)          # (T,)
        x = self.drop(self.embed(idx, positions))                              # (B, T, E)
        for block in self.blocks:
            x = block(x, positions, kv_cache)                                  # (B, T, E)
        if kv_cache is not None:
            kv_cache.length += T
        logits = self.unembed(self.ln_f(x))                                    # (B, T, V)
        if targets is None:
            return logits, None
        # cross_entropy wants (N, V) scores and (N,) class ids; float() keeps the loss in fp32.
        loss = F.cross_entropy(logits.reshape(B * T, -1).float(), targets.reshape(B * T))
        return logits, loss

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, E) -> logits (B, T, V): the tied head, each logit a dot product with a token's embedding."""
        return F.linear(x, self.tok_emb.weight)

    # ─────────────────────────────────────── generation ───────────────────────────────────────
    #
    # Context strategy past block_size (same with and without the cache, so use_cache only changes
    # speed): the model sees a window of the most recent tokens. The window grows one token per step;
    # when it would exceed block_size, it restarts from the last block_size // 2 tokens. With the
    # cache, a restart re-runs those tokens once (one batched forward), then one position per step —
    # amortised, about one extra position per new token. Every token is predicted from between
    # block_size // 2 and block_size tokens of context; a long prompt starts from its last block_size.

    @torch.no_grad()
    def generate_plain(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Generation in its plainest form: (1, T) prompt -> (1, T + max_new_tokens). Run the model on
        the last block_size tokens, turn the last position's logits into a distribution, draw one
        token, append it, repeat. stream() draws the same tokens while the text fits in block_size
        (test), reading a KV cache instead; past it, the two windows slide differently (see above)."""
        with self.eval_mode():
            for _ in range(max_new_tokens):
                logits, _ = self(idx[:, -self.config.block_size:])             # (1, T, V)
                token = sample_next(logits[:, -1, :], temperature, generator=generator)  # (1,)
                idx = torch.cat([idx, token[:, None].to(idx.device)], dim=1)   # (1, T + 1)
        return idx

    def stream(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
               generator: torch.Generator | None = None, with_logits: bool = False) -> Iterator:
        """Yield new token ids one at a time, each as soon as it is chosen. idx: (1, T) prompt.
        with_logits: yield (token, its step's logits (V,)) instead, to show what the model weighed.
        temperature 0 is greedy; top_k keeps the k likeliest tokens; top_p keeps the smallest set
        of likeliest tokens whose probability reaches top_p. Sampling draws from `generator` (a CPU
        torch.Generator; sampling runs on the CPU so a seed gives the same draws on any device).
        Break out of the loop to stop early. Settings are checked now, not at the first token."""
        validation.check_sampling(temperature, top_k, top_p)
        validation.check_prompt(idx, self.config.vocab_size, max_new_tokens)
        return self._stream(idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator, with_logits)

    def _stream(self, idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator, with_logits):
        window = _ContextWindow(self, use_cache, prompt_len=idx.shape[1])
        seq = idx                                                              # (1, T + generated)
        for _ in range(max_new_tokens):
            # no_grad and eval mode per step, not around the yield: nothing leaks to the caller meanwhile.
            with torch.no_grad(), self.eval_mode():
                logits = window.next_logits(seq)                               # (1, V)
                token = sample_next(logits, temperature, top_k, top_p, generator)[0].item()
            seq = torch.cat([seq, torch.tensor([[token]], dtype=seq.dtype, device=seq.device)], dim=1)
            yield (token, logits[0]) if with_logits else token

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, **sampling) -> torch.Tensor:
        """(1, T) prompt -> (1, T + max_new_tokens), the prompt and the new tokens; stream()'s keywords."""
        new = list(self.stream(idx, max_new_tokens, temperature, **sampling))
        return torch.cat([idx, torch.tensor([new], dtype=idx.dtype, device=idx.device)], dim=1)

    @contextlib.contextmanager
    def eval_mode(self):
        """Eval mode (no dropout) inside the block; the previous mode afterwards."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)


class _ContextWindow:
    """The window of recent tokens the model sees while generating (strategy: see Transformer).
    next_logits(seq) returns the logits for the token after seq (B, L), feeding the cache only the
    tokens it has not seen yet: the whole window after a (re)start, one token on every other step."""

    def __init__(self, model: Transformer, use_cache: bool, prompt_len: int):
        self.model = model
        self.block_size = model.config.block_size
        self.keep = max(1, self.block_size // 2)
        self.start = max(0, prompt_len - self.block_size)      # first position inside the window
        self.cache = KVCache(model.config) if use_cache else None

    def next_logits(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, L) -> logits (B, V) for position L."""
        L = seq.shape[1]
        if L - self.start > self.block_size:                   # window full: restart it
            self.start = L - self.keep
            if self.cache is not None:
                self.cache.length = 0                          # forget it; the buffers are reused
        if self.cache is None:
            logits, _ = self.model(seq[:, self.start:])
        else:
            unseen = seq[:, self.start + self.cache.length:]   # (B, window) or (B, 1)
            logits, _ = self.model(unseen, kv_cache=self.cache)
        return logits[:, -1, :]


# ─────────────────────────────────────────── sampling ────────────────────────────────────────────

def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) -> chosen token ids (B,), on the CPU."""
    logits = logits.detach().float().cpu()
    if temperature == 0:                                        # greedy: the likeliest token
        return logits.argmax(dim=-1)
    # temperature < 1 sharpens the distribution, > 1 flattens it; then top-k / top-p cut its tail.
    probs = F.softmax(keep_likeliest(logits / temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]


def keep_likeliest(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """logits (B, V) with every token that top-k or top-p rules out set to -inf."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth_best = torch.topk(logits, top_k, dim=-1).values[:, -1:]             # (B, 1)
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p is not None and top_p < 1.0:
        probs, order = torch.sort(F.softmax(logits, dim=-1), dim=-1, descending=True)
        # Drop a token when the likelier tokens before it already reach top_p; the likeliest
        # token is always kept.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p                       # (B, V)
        drop = drop_sorted.scatter(-1, order, drop_sorted)                        # back to id order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits
