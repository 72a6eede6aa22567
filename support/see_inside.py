"""The numbers behind run.py's see-inside views: candidates, a traced pass, attention, surprise.

Read this when you want to know where --show-probs, --trace, --attention and --html get their
numbers: from the model's own modules run on real tensors (forward hooks, Model.attention_weights),
and per-token surprise through --eval's windows. The drawing and the page live beside it.
"""
from __future__ import annotations

import codecs
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from Model import attention_weights, keep_likeliest
from support.scoring import windows_to_batch
from support.text_io import can_show


def quoted(token_bytes: bytes) -> str:
    r"""A token's text in double quotes, readable on one line: a newline shows as \n, a control
    character as \x07, and a byte of a character split over two tokens as \xe2."""
    shown = []
    for ch in token_bytes.decode("utf-8", "surrogateescape"):
        if 0xDC80 <= ord(ch) <= 0xDCFF:                    # surrogateescape's stand-in for a lone byte
            shown.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ch in '"\\':
            shown.append("\\" + ch)
        elif ch.isprintable():
            shown.append(ch)
        else:
            shown.append(repr(ch)[1:-1])                   # \n, \t, \x00, \u200b, ...
    return '"' + "".join(shown) + '"'


# ─────────────────────────────── --show-probs: what the model weighed ───────────────────────────────

DRAWN, CUT, FURTHER = "→", "✗", "… "
PLAIN = {DRAWN: "->", CUT: "x", FURTHER: "... "}      # on a console that cannot show the marks (cp1252)


def candidates(logits: torch.Tensor, drawn: int | None, k: int, temperature: float, top_k: int | None = None,
               top_p: float | None = None) -> list[tuple[int, float, str]]:
    """logits (V,) -> the k likeliest next tokens, [(token id, probability after temperature, mark)]:
    probabilities softmax(logits / T) (T = 0 is greedy, shown untempered); the mark is → for the drawn
    token, ✗ for one that top-k/top-p removed, else "". The drawn token is listed last when it is not
    among the k."""
    logits = logits.detach().float().cpu()
    scaled = logits / temperature if temperature > 0 else logits
    probs = F.softmax(scaled, dim=-1)                                            # (V,)
    # Greedy decoding ignores top-k/top-p (Model.sample_next), so nothing is cut at T = 0.
    kept = torch.ones_like(probs, dtype=torch.bool) if temperature == 0 else \
        keep_likeliest(scaled[None], top_k, top_p)[0].isfinite()                 # (V,)
    # Sorted on the logits, stably: the first is exactly the token greedy decoding (argmax) takes.
    order = torch.sort(logits, descending=True, stable=True).indices[:k].tolist()
    if drawn is not None and drawn not in order:
        order.append(drawn)
    return [(token, probs[token].item(), DRAWN if token == drawn else ("" if kept[token] else CUT))
            for token in order]


def candidates_line(logits: torch.Tensor, drawn: int | None, decode_bytes, k: int, temperature: float,
                    top_k: int | None = None, top_p: float | None = None, plain: bool = False) -> str:
    """candidates() on one line: the marked, quoted tokens with their probabilities in percent; "… "
    before the drawn one when it comes from further down. plain: the marks in ASCII (PLAIN)."""
    shown = []
    for i, (token, p, mark) in enumerate(candidates(logits, drawn, k, temperature, top_k, top_p)):
        gap = FURTHER if i == k else ""
        if plain:
            gap, mark = PLAIN.get(gap, gap), PLAIN.get(mark, mark)
        shown.append(f"{gap}{mark}{quoted(decode_bytes([token]))} {100 * p:.1f}%")
    return "   ".join(shown)


def show_candidates(logits: torch.Tensor, drawn: int, decode_bytes, args) -> None:
    """--show-probs: candidates_line on stderr, with run.py's sampling settings (args)."""
    # On a terminal, the text on stdout has no newline yet: start the line on a fresh one.
    fresh = "\n" if sys.stdout.isatty() and sys.stderr.isatty() else ""
    print(fresh + candidates_line(logits, drawn, decode_bytes, args.show_probs, args.temperature,
                                  args.top_k or None, args.top_p, plain=not can_show(sys.stderr, "".join(PLAIN))),
          file=sys.stderr, flush=True)


# ──────────────────────────────── --trace: one pass, stage by stage ────────────────────────────────

@torch.no_grad()
def trace(model, idx: torch.Tensor) -> tuple[list[tuple[str, torch.Tensor]], torch.Tensor]:
    """One real forward pass over idx (B, T), watched by forward hooks: [(stage name, its tensor)] in
    the order Model.py's top docstring tells it, and the logits (B, T, V)."""
    stages: list[tuple[str, torch.Tensor]] = [("ids", idx)]

    def record(name, take_input=False):
        def hook(module, inputs, output):
            stages.append((name, inputs[0] if take_input else output))
        return hook

    # The embedding starts the residual stream x (Transformer.embed, read after its dropout): the token's
    # vector, plus its position's with learned positions (rotary ones enter inside attention instead).
    start = "x = token embedding" + (" + position embedding" if model.config.positions == "learned" else "")
    watched = [(model.drop, record(start)), (model.ln_f, record("final LayerNorm"))]
    for i, block in enumerate(model.blocks):
        watched += [(block.attn, record(f"block {i} attention output")),
                    # ln2 reads the residual stream right after the attention was added to it.
                    (block.ln2, record(f"block {i} x + attention", take_input=True)),
                    (block.mlp, record(f"block {i} MLP output")),
                    (block, record(f"block {i} x + MLP"))]
    handles = [module.register_forward_hook(hook) for module, hook in watched]
    try:
        with model.eval_mode():
            logits, _ = model(idx)
    finally:
        for handle in handles:
            handle.remove()
    return stages + [("logits", logits)], logits


def trace_lines(model, idx: torch.Tensor, decode_bytes) -> list[str]:
    """trace() as text: each stage's name, shape and root-mean-square value (LayerNorm brings it
    back to about 1; the residual stream grows as blocks add to it), then the top-5 next tokens."""
    stages, logits = trace(model, idx)
    c = model.config
    lines = [f"one forward pass over {idx.shape[1]} prompt tokens (B = batch, T = tokens, E = emb_len "
             f"{c.emb_len}, V = vocab_size {c.vocab_size}):"]
    width = max(len(name) for name, _ in stages)
    for name, tensor in stages:
        rms = "" if name == "ids" else f"   rms {tensor.float().pow(2).mean().sqrt().item():.3f}"
        lines.append(f"  {name:<{width}}  {str(tuple(tensor.shape)):<16}{rms}".rstrip())
    lines.append("next token: " + candidates_line(logits[0, -1], None, decode_bytes, 5, temperature=1.0))
    return lines


# ─────────────────────────────── --attention: where each head looks ───────────────────────────────

@torch.no_grad()
def attention_maps(model, idx: torch.Tensor) -> torch.Tensor:
    """idx (1, T) -> (num_layers, H, T, T): each head's attention weights, row = query token,
    column = key token. Each block runs as usual; before it runs, its queries and keys are taken
    from its real input with the model's own pieces (ln1, attn.heads, attention_weights)."""
    maps = []
    with model.eval_mode():
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = model.embed(idx, positions)                                         # (1, T, E)
        for block in model.blocks:
            q, k, _ = block.attn.heads(block.ln1(x), positions)                 # (1, H, T, D) each
            maps.append(attention_weights(q, k)[0])                             # (H, T, T)
            x = block(x, positions)
    return torch.stack(maps).float().cpu()


def context_starts(n_tokens: int, block_size: int) -> dict[int, int]:
    """Where the context began when generation predicted each token: t -> the first position the model
    saw, for tokens 1 .. n_tokens - 1 of a generation's ids (the prompt's window, then the new tokens).
    The window grows with the text; once full it restarts from its last half, as Model.py's
    _ContextWindow does (a test holds them equal)."""
    starts, start = {}, 0
    for t in range(1, n_tokens):                   # token t is predicted from ids[start:t]
        if t - start > block_size:
            start = t - max(1, block_size // 2)
        starts[t] = start
    return starts


def eval_context_starts(windows: list[tuple[int, int, int]]) -> dict[int, int]:
    """The same for --eval's windows over its ids (the start token, then the text's): a window
    (start, end, skip) scores ids start + skip + 1 .. end, each seen from `start` on."""
    return {t: start for start, end, skip in windows for t in range(start + skip + 1, end + 1)}


@torch.no_grad()
def looked_at(model, ids: list[int], starts: dict[int, int], device) -> dict[int, np.ndarray]:
    """Where the model looked when it predicted token t, for each t -> start in `starts`: the attention
    of the last token it saw, t - 1, over ids[start:t], as (num_layers, H, t - start). One
    attention_maps pass per window (tokens with one start): attention is causal, so row t - 1 - start
    of that pass is the row of a pass over ids[start:t] alone."""
    windows: dict[int, list[int]] = {}
    for t, start in starts.items():
        windows.setdefault(start, []).append(t)
    rows = {}
    for start, tokens in windows.items():
        maps = attention_maps(model, torch.tensor([ids[start:max(tokens)]], device=device))   # (L, H, n, n)
        for t in tokens:
            rows[t] = maps[:, :, t - 1 - start, :t - start].numpy()
    return rows


# ────────────────────────────── --html: how surprised by each token ──────────────────────────────

@dataclass
class Surprise:
    """Per scored token, in text order: its loss and the model's top guesses at its position."""
    nats: np.ndarray          # (N,) -log p(token | context)
    guess_ids: np.ndarray     # (N, top) likeliest tokens there, likeliest first
    guess_probs: np.ndarray   # (N, top) their probabilities


@torch.no_grad()
def token_surprise(model, ids: np.ndarray, windows: list[tuple[int, int, int]], device, top: int = 5,
                   batch_size: int = 32) -> Surprise:
    """Each counted prediction of the windows (the format of support.scoring.score_windows, whose
    sum these per-token values add up to) with the top guesses at its position."""
    nats, guess_ids, guess_probs = [], [], []
    # Windows of one length stack into a batch (run.py's are all block_size long but the first).
    groups = [windows[:1]] + [windows[i:i + batch_size] for i in range(1, len(windows), batch_size)]
    for group in filter(None, groups):
        starts, ends, skips = zip(*group)
        x, y = windows_to_batch(ids, starts, ends[0] - starts[0], device)           # (W, L) each
        log_probs = F.log_softmax(model(x)[0].float(), dim=-1)                      # (W, L, V)
        best = log_probs.topk(top, dim=-1)                                          # (W, L, top)
        losses = -log_probs.gather(-1, y[..., None])[..., 0]                        # (W, L)
        for row, skip in enumerate(skips):
            nats.append(losses[row, skip:].cpu())
            guess_ids.append(best.indices[row, skip:].cpu())
            guess_probs.append(best.values[row, skip:].exp().cpu())
    return Surprise(torch.cat(nats).numpy(), torch.cat(guess_ids).numpy(), torch.cat(guess_probs).numpy())


def token_texts(text: str, pieces: list[bytes]) -> list[str]:
    """The text split at the tokens (pieces: each token's bytes, which join to the text's UTF-8):
    a character split over two tokens goes whole to the token it starts in, as chars_per_token
    counts it, so the pieces of text join back to `text` exactly."""
    data = text.encode("utf-8")
    cuts, at = [], 0
    for piece in pieces:
        cut = at
        while cut < len(data) and data[cut] & 0xC0 == 0x80:          # a continuation byte: move on
            cut += 1
        cuts.append(cut)
        at += len(piece)
    return [data[a:b].decode("utf-8") for a, b in zip(cuts, cuts[1:] + [len(data)])]


def streamed_texts(pieces: list[bytes]) -> list[str]:
    """Each token's text as run.py streams it (pieces: each token's bytes): decoded one token at a
    time, so a character split over two tokens comes with the token that completes it, and bytes
    that never form UTF-8 come as U+FFFD."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    texts = [decoder.decode(piece) for piece in pieces]
    return texts[:-1] + [texts[-1] + decoder.decode(b"", final=True)] if texts else []
