"""run.py's --trace and --attention (the attention grid, a PNG), and the write every see-inside file goes through.

Read this when you want to change how the attention grid looks. torch and matplotlib are imported
only when it draws, so run.py can check its options before loading anything.
"""
from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

from support.files import atomic_write
from support.settings import UserError


def check_can_write(attention: Path | None, page: Path | None) -> None:
    """Before the model loads: each output file names a file in a folder that exists, and --attention
    has matplotlib."""
    for path, example in ((attention, "attention.png"), (page, "page.html")):
        if path is not None and path.is_dir():
            raise UserError(f"{path} is a folder: name a file in it, e.g. {path / example}")
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


# ────────────────────────────────── --trace and the attention grid ──────────────────────────────────

def look_inside(loaded, args, ids: list[int]) -> None:
    """run.py's --trace and --attention: one forward pass over the prompt's ids, nothing generated."""
    import torch
    from support.see_inside import attention_maps, quoted, trace_lines
    idx, decode_bytes = torch.tensor([ids], device=loaded.device), loaded.tokenizer.decode_bytes     # (1, T)
    if args.trace:
        print("\n".join(trace_lines(loaded.model, idx, decode_bytes)), file=sys.stderr)
    if args.attention is not None:
        labels = [quoted(decode_bytes([token])) for token in ids]
        draw_attention(args.attention, attention_maps(loaded.model, idx).numpy(), labels)


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
