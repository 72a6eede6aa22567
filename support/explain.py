"""What `python init.py --explain TEXT` prints: how the saved tokenizer turns TEXT into tokens.

Read this when you want to watch tokenizer.py's lesson play out on your own words. The steps are
those of the plain tokenizer.encode_bpe (through its on_merge callback), so what is shown is what
the tests trust. run.py's --html page shows the merges of each token in the same lines.
"""
from __future__ import annotations

import os
from itertools import chain, groupby

from tokenizer import NUM_BYTES, SPLIT_RE, encode_bpe

# Black text on cyan, then on yellow: the basic 8 ANSI colours, which every terminal shows.
_BACKGROUNDS = ("\x1b[30;46m", "\x1b[30;43m")
_RESET = "\x1b[0m"


def use_colour(stream) -> bool:
    """Colour only for a terminal, and never when NO_COLOR is set (to any value: no-color.org)."""
    return "NO_COLOR" not in os.environ and stream.isatty()


def visible(text: str) -> str:
    """text with newlines, tabs and other invisible characters escaped as repr() does, no quotes."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def side_by_side(pieces, colour: bool) -> str:
    """Texts next to each other, on alternating backgrounds or separated by |."""
    if colour:
        return "".join(f"{_BACKGROUNDS[i % 2]}{visible(p)}{_RESET}" for i, p in enumerate(pieces))
    return "|".join(map(visible, pieces))


def explain(tok, text: str, colour: bool) -> list[str]:
    """The lines that show how tok (a Tokenizer) encodes text (a non-empty str)."""
    chunks = SPLIT_RE.findall(text)
    steps = []   # (rank, chunk index, the chunk's ids after that merge), chunk by chunk
    ids = encode_bpe(text, tok.merges, lambda rank, at, after: steps.append((rank, at, after)))

    def tokens(ids_of_chunks) -> str:
        return side_by_side([tok.token_text(i) for i in chain.from_iterable(ids_of_chunks)], colour)

    current = [list(chunk.encode("utf-8")) for chunk in chunks]   # every chunk starts as bytes
    lines = [f"text:   {text!r} ({len(text)} characters, {len(text.encode('utf-8'))} bytes)",
             f"chunks: {side_by_side(chunks, colour)}   ({len(chunks)} from the pre-split; no merge "
             f"crosses them)",
             f"bytes:  {tokens(current)}   (one token per byte to start with)"]
    # Within a chunk the merges fire in rank order; across chunks, sorting by rank replays them as
    # if every chunk took each merge in turn, the way training applied them.
    for rank, group in groupby(sorted(steps, key=lambda step: step[:2]), key=lambda step: step[0]):
        for _, at, after in group:
            current[at] = after
        lines.append(merge_line(tok, rank))
        lines.append(f"        {tokens(current)}")
    lines.append(f"ids:    {ids}")
    lines.append(f"{len(text)} characters -> {len(ids)} tokens: "
                 f"{len(text) / len(ids):.2f} characters per token")
    return lines


def merge_line(tok, rank: int) -> str:
    """One merge, as --explain shows it: merge #rank: 'left' + 'right' -> 'new' (id of new)."""
    left, right = tok.merges[rank]
    return (f"merge #{rank}: {tok.token_text(left)!r} + {tok.token_text(right)!r} -> "
            f"{tok.token_text(NUM_BYTES + rank)!r} (id {NUM_BYTES + rank})")


def token_merges(tok, token_id: int) -> list[int]:
    """The ranks of the merges that built a token, in the order they were learned (and fire): its
    own merge, the merges that built its two parts, and so on down to bytes ([] for a byte or a
    special token such as <|endoftext|>, which no merge builds)."""
    ranks, todo, merges = [], [token_id], tok.merges
    while todo:
        rank = todo.pop() - NUM_BYTES
        if 0 <= rank < len(merges):
            ranks.append(rank)
            todo += merges[rank]
    return sorted(set(ranks))
