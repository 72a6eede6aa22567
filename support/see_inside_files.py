"""The files run.py's see-inside views write: the attention grid (PNG) and the surprise page (HTML).

Read this when you want to change how those files look. The numbers in them come from
support/see_inside.py; this module lays them out and writes them, whole or not at all. It imports
torch and matplotlib only when it draws, so run.py can check its options before loading anything.
"""
from __future__ import annotations

import html
import math
import sys
import warnings
from pathlib import Path

from support.files import atomic_write
from support.settings import UserError


def check_can_write(attention: Path | None, page: Path | None) -> None:
    """Before the model loads: each output file has a folder to go in, and --attention has matplotlib."""
    for path in (attention, page):
        if path is not None and not path.parent.is_dir():
            raise UserError(f"{path}: there is no folder {path.parent}/ to write it in")
    if attention is not None:
        try:
            import matplotlib  # noqa: F401  (optional: only --attention draws)
        except ImportError:
            raise UserError("--attention draws with matplotlib, which is not installed — "
                            "`pip install matplotlib`") from None


def write(path: Path, write_to) -> None:
    """atomic_write(path, write_to), a failed write as one line, and a note of where the file went."""
    try:
        atomic_write(path, write_to)
    except OSError as e:
        raise UserError(f"could not write {path} ({e.strerror or e})") from None
    print(f"wrote {path}", file=sys.stderr)


# ───────────────────────────────────────── the attention grid ─────────────────────────────────────────

def write_attention_grid(path: Path, model, idx, decode_bytes) -> None:
    """Every layer × head's attention over the prompt idx (1, T), drawn to the PNG file `path`."""
    from support.see_inside import attention_maps, quoted
    labels = [quoted(decode_bytes([token])) for token in idx[0].tolist()]
    draw_attention(path, attention_maps(model, idx).numpy(), labels)

def draw_attention(path: Path, maps, labels: list[str]) -> None:
    """A grid of every layer × head attention matrix, maps (layers, H, T, T), rows = query token,
    columns = key token, labelled with the tokens; one colour scale (0..1) for all, in a colourbar."""
    import matplotlib
    matplotlib.use("Agg")                                 # files only, never a window
    import matplotlib.pyplot as plt

    layers, heads, T, _ = maps.shape
    cell = max(2.2, 0.13 * T)                             # inches per matrix: room for T labels
    fig, axes = plt.subplots(layers, heads, figsize=(cell * heads + 2, cell * layers + 1), squeeze=False,
                             sharex=True, sharey=True, layout="constrained")
    every = max(1, math.ceil(T / 48))                     # past ~48 tokens labels overlap: every n-th
    ticks = list(range(0, T, every))
    font = max(4, min(8, 400 / T))
    for layer in range(layers):
        for head in range(heads):
            ax = axes[layer][head]
            image = ax.imshow(maps[layer, head], vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
            ax.set_title(f"layer {layer}, head {head}", fontsize=9)
    # Shared axes: token labels on the left column (queries) and the bottom row (keys) only.
    axes[0][0].set_xticks(ticks, [labels[i] for i in ticks])
    axes[0][0].set_yticks(ticks, [labels[i] for i in ticks])
    for ax in axes.flat:
        ax.tick_params(labelsize=font)
        ax.tick_params(axis="x", labelrotation=90)
    for ax in axes[-1]:
        ax.set_xlabel("key (looked at)", fontsize=8)
    for row in axes:
        row[0].set_ylabel("query (looking)", fontsize=8)
    fig.colorbar(image, ax=axes, fraction=0.02, label="attention weight")
    try:
        with warnings.catch_warnings():                   # a glyph the font lacks is drawn as a box
            warnings.simplefilter("ignore")
            write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


# ───────────────────────────────────────── the surprise page ─────────────────────────────────────────

MAX_NATS = 8.0       # the colour scale's end: a token the model gave under e^-8 ≈ 0.03% is fully red


def surprise_colour(nats: float) -> str:
    """White for a token the model was sure of, through orange, to red at MAX_NATS and beyond."""
    f = min(max(nats, 0.0) / MAX_NATS, 1.0)
    red, green, blue = 255 - 35 * f, 255 - 215 * f, 255 - 215 * min(1.0, 2 * f)
    return f"rgb({red:.0f},{green:.0f},{blue:.0f})"


def _text_in_html(text: str) -> str:
    # A literal carriage return would be normalised away by the HTML parser: keep it as a reference.
    return html.escape(text, quote=False).replace("\r", "&#13;")


def surprise_page(title: str, texts: list[str], nats: list[float], guesses: list[list[tuple[str, float]]],
                  summary: str) -> str:
    """A self-contained HTML page (no scripts, no external files): each token's text in a <span>
    coloured by its surprise, with data-nats and a tooltip of its loss and the model's top guesses."""
    spans = []
    for text, loss, top in zip(texts, nats, guesses):
        tip = f"loss {loss:.3f} nats (p = {math.exp(-loss):.2%})\nthe model's top guesses here:\n" + \
              "\n".join(f"  {token} {p:.1%}" for token, p in top)
        spans.append(f'<span data-nats="{loss!r}" style="background:{surprise_colour(loss)}" '
                     f'title="{html.escape(tip)}">{_text_in_html(text)}</span>')
    legend = "".join(f'<span class="swatch" style="background:{surprise_colour(n)}">{n:g}</span>'
                     for n in range(int(MAX_NATS) + 1))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
.text {{ font-family: monospace; white-space: pre-wrap; line-height: 1.6; border: 1px solid #ccc; padding: 1em; }}
.swatch {{ display: inline-block; width: 3em; text-align: center; font-family: monospace; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(summary)}</p>
<p>Each token is coloured by its surprise: the nats the model lost on it, −ln p(token | the text before it).
Hover over a token for its loss and the model's top guesses at that position.</p>
<p>surprise in nats: {legend}+</p>
<div class="text">{"".join(spans)}</div>
</body></html>
"""


def write_surprise_page(path: Path, name: str, figures: str, loaded, text: str, seq, windows) -> None:
    """The surprise page of `text` (file `name`), scored on run.py's --eval windows over seq, the
    start token then the text's tokens; figures: --eval's line, shown at the top."""
    from support.see_inside import quoted, token_surprise, token_texts
    decode_bytes = loaded.tokenizer.decode_bytes
    surprise = token_surprise(loaded.model, seq, windows, loaded.device)
    guesses = [[(quoted(decode_bytes([token])), p) for token, p in zip(tokens, probs)]
               for tokens, probs in zip(surprise.guess_ids.tolist(), surprise.guess_probs.tolist())]
    texts = token_texts(text, [decode_bytes([token]) for token in seq[1:].tolist()])
    page = surprise_page(f"surprise: {name}", texts, surprise.nats.tolist(), guesses,
                         figures.replace(" ", ", ").replace("=", " "))
    write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
