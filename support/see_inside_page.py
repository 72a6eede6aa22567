"""The see-inside page, run.py --html OUT.html: one self-contained HTML file of a run, every token clickable.

Read this when you want to change what the page shows, how big it may grow, or how it looks. Every
figure is computed here, in Python, by the functions behind the terminal views (see_inside.py,
explain.py) and embedded as JSON; the page's script only lays them out, with no server or network.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from support.explain import merge_line, token_merges
from support.see_inside import (candidates, context_starts, eval_context_starts, looked_at, quoted, streamed_texts,
                                token_surprise, token_texts)
from support.see_inside_files import write
from support.text_io import shown_path

TOP = 5                        # alternatives shown per token (with --prompt, --show-probs K says how many)
MAX_TOKENS = 10_000            # tokens on one page: a longer --eval text shows its first MAX_TOKENS
MAX_MAPS = 64                  # layer × head maps embedded: past it, only each layer's mean over its heads
ATTENTION_BUDGET = 1_000_000   # attention weights embedded (about 3.5 MB); tokens past it show none
MAX_NATS = 8.0                 # the colour scale's end: a token the model gave under e^-8 ≈ 0.03% is fully red


@dataclass
class PageToken:
    """One token of the page, with what the model thought of it where it stands."""
    id: int
    text: str                  # its share of the text ("" for --eval's start token, which is not text)
    kind: str                  # "prompt", "drawn" (generated), "given" (--eval's text), "start" (--eval's)
    p: float | None = None     # the model's probability of it there; None where it was not predicted
    alternatives: list = field(default_factory=list)   # [(id, probability, mark)], likeliest first


def surprise_colour(nats: float) -> str:
    """White for a token the model was sure of, through orange, to red at MAX_NATS and beyond."""
    f = min(max(nats, 0.0) / MAX_NATS, 1.0)
    red, green, blue = 255 - 35 * f, 255 - 215 * f, 255 - 215 * min(1.0, 2 * f)
    return f"rgb({red:.0f},{green:.0f},{blue:.0f})"


def permille(rows: np.ndarray) -> list:
    """(..., n) probability rows -> nested lists of whole thousandths, each within 1 of 1000 × p and
    every row summing to exactly 1000 (largest remainder): the page's attention weights."""
    scaled = 1000 * rows.astype(np.float64) / rows.sum(-1, keepdims=True)
    whole = np.floor(scaled)
    missing = 1000 - whole.sum(-1, keepdims=True)                    # thousandths still to hand out
    rank = np.argsort(np.argsort(whole - scaled, axis=-1, kind="stable"), axis=-1, kind="stable")
    return (whole + (rank < missing)).astype(int).tolist()


def given_alternatives(token: int, nats: float, guess_ids, guess_probs) -> list:
    """--eval's top guesses at a token of the text, the token itself appended when not among them."""
    alternatives = [(int(i), float(p), "") for i, p in zip(guess_ids, guess_probs)]
    if token not in guess_ids:
        alternatives.append((token, math.exp(-nats), ""))
    return alternatives


def page_data(title: str, about: list[str], summary: list[str], tokens: list[PageToken],
              starts: dict[int, int], loaded) -> dict:
    """Everything the page shows, as plain JSON values. starts: t -> the first token the model saw when
    it predicted token t (see_inside.context_starts); the attention over them is embedded for tokens
    in order until ATTENTION_BUDGET weights, for MAX_MAPS maps per token at most."""
    model, decode_bytes = loaded.model, loaded.tokenizer.decode_bytes
    layers, heads = model.config.num_layers, model.config.num_heads
    each_head = [f"head {h}" for h in range(heads)] if layers * heads <= MAX_MAPS else []
    maps = each_head + ["all heads (mean)"]
    spent, budgeted = 0, {}
    for t, start in sorted(starts.items()):
        spent += layers * len(maps) * (t - start)
        if spent > ATTENTION_BUDGET:
            break
        budgeted[t] = start
    rows = looked_at(model, [token.id for token in tokens], budgeted, loaded.device)
    shown = []
    for t, token in enumerate(tokens):
        looks = None
        if t in rows:                                                # (layers, H, t - start)
            means = rows[t].mean(axis=1, keepdims=True)
            looks = permille(np.concatenate([rows[t], means], axis=1) if len(maps) > 1 else means)
        nats = None if token.p is None else -math.log(token.p) if token.p > 0 else math.inf
        shown.append({"text": token.text, "token": quoted(decode_bytes([token.id])), "id": token.id,
                      "kind": token.kind, "p": None if token.p is None else float(f"{token.p:.6g}"),
                      "bg": "" if nats is None else surprise_colour(nats),
                      "alternatives": [[i, quoted(decode_bytes([i])), float(f"{p:.6g}"), mark]
                                       for i, p, mark in token.alternatives],
                      "start": starts.get(t), "looks": looks})
    bounds = [f"Attention is embedded for at most {ATTENTION_BUDGET:,} weights"]
    if len(budgeted) < len(starts):
        bounds.append(f"it stops at token {min(set(starts) - set(budgeted))}: later tokens show none "
                      f"(score or continue a shorter text to see theirs)")
    if len(maps) == 1:
        bounds.append(f"with {layers} × {heads} heads (over {MAX_MAPS}), only each layer's mean over its heads")
    return {"title": title, "about": about, "summary": summary, "bounds": "; ".join(bounds) + ".",
            "layers": layers, "maps": maps, "tokens": shown,
            "merges": {token.id: [merge_line(loaded.tokenizer, rank) for rank in
                                  token_merges(loaded.tokenizer, token.id)] for token in tokens},
            "legend": [[n, surprise_colour(n)] for n in range(int(MAX_NATS) + 1)]}


def about_run(loaded, args) -> list[str]:
    """What made the page: the loaded weights (run.py's banner) and the tokenizer."""
    tok = loaded.tokenizer
    return loaded.banner + [f"tokenizer {shown_path(args.tokenizer_dir)}/: vocab {tok.vocab_size}, "
                            f"fingerprint {tok.fingerprint()}"]


def write_generation_page(path: Path, loaded, args, prompt_ids: list[int], steps: list) -> None:
    """The page of one continuation: prompt_ids, the tokens the model started from, then steps, each
    generated token with its step's logits (V,) as Model.stream yields them."""
    model, decode_bytes, k = loaded.model, loaded.tokenizer.decode_bytes, args.show_probs or TOP
    ids = prompt_ids + [token for token, _ in steps]
    texts = streamed_texts([decode_bytes([i]) for i in ids])
    tokens = [PageToken(i, text, "prompt") for i, text in zip(prompt_ids, texts)]
    if len(prompt_ids) > 1:         # the prompt's tokens as --eval scores them, from the tokens before
        seen = token_surprise(model, np.array(prompt_ids), [(0, len(prompt_ids) - 1, 0)], loaded.device, top=k)
        for token, nats, guess_ids, guess_probs in zip(tokens[1:], seen.nats, seen.guess_ids, seen.guess_probs):
            token.p = math.exp(-nats)
            token.alternatives = given_alternatives(token.id, nats, guess_ids.tolist(), guess_probs)
    for (token, logits), text in zip(steps, texts[len(prompt_ids):]):
        weighed = candidates(logits, token, k, args.temperature, args.top_k or None, args.top_p)
        tokens.append(PageToken(token, text, "drawn", next(p for i, p, _ in weighed if i == token), weighed))
    seed = "none: a fresh random draw (give --seed N to repeat a run)" if args.seed is None else args.seed
    sampling = (f"sampling: temperature {args.temperature}, top_k {args.top_k} (0 = no limit), top_p "
                f"{args.top_p}, max_new_tokens {args.max_new_tokens}, seed {seed}")
    stop = [] if args.stop is None else [f"stop at {args.stop!r}: the page shows every token drawn, the stop's too"]
    summary = [f"{len(prompt_ids)} prompt tokens (what the model started from), then {len(steps)} drawn; "
               f"the probabilities of a drawn token are those it was drawn with (after temperature "
               f"{args.temperature}; → drawn, ✗ cut by top-k/top-p), a prompt token's those the model gave it "
               f"(temperature 1), as --eval scores a text"]
    data = page_data("see inside a continuation", about_run(loaded, args) + [sampling] + stop, summary, tokens,
                     context_starts(len(ids), model.config.block_size), loaded)
    write(path, lambda tmp: tmp.write_text(page_html(data), encoding="utf-8"))


def write_eval_page(path: Path, loaded, args, text: str, seq: np.ndarray, windows, figures: list[str]) -> None:
    """The page of --eval: the text (at most MAX_TOKENS tokens of it) coloured by surprise, scored on
    run.py's windows over seq (the start token, then the text's tokens); figures: --eval's lines."""
    decode_bytes, n = loaded.tokenizer.decode_bytes, min(len(seq) - 1, MAX_TOKENS)
    needed = [w for w in windows if w[0] + w[2] < n]                  # the windows that score those n
    seen = token_surprise(loaded.model, seq, needed, loaded.device, top=TOP)
    texts = token_texts(text, [decode_bytes([i]) for i in seq[1:].tolist()])
    tokens = [PageToken(int(seq[0]), "", "start")]
    for t in range(n):
        token, nats = int(seq[t + 1]), float(seen.nats[t])
        tokens.append(PageToken(token, texts[t], "given", math.exp(-nats),
                                given_alternatives(token, nats, seen.guess_ids[t].tolist(), seen.guess_probs[t])))
    cut = [f"the page shows the first {n:,} of the text's {len(seq) - 1:,} tokens; the figures are the "
           f"whole text's"] if n < len(seq) - 1 else []
    starts = {t: s for t, s in eval_context_starts(needed).items() if t <= n}
    data = page_data(f"surprise: {args.eval.name}", about_run(loaded, args), figures + cut + [
        "Each token is coloured by its surprise: the nats the model lost on it, −ln p(token | the text "
        "before it); the first is predicted after a newline, the start token."], tokens, starts, loaded)
    write(path, lambda tmp: tmp.write_text(page_html(data), encoding="utf-8"))


def page_html(data: dict) -> str:
    """The page: a fixed template, and `data` as JSON inside it. The JSON is ASCII with <, > and &
    escaped, so no text of the run can end its script element or become markup; the script puts
    every text in place with textContent."""
    embedded = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    embedded = embedded.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    # The template (markup, style and the script that lays the data out) is a file of its own.
    template = Path(__file__).with_name("see_inside_page.html").read_text(encoding="utf-8")
    return template.replace("/*DATA*/", embedded)
