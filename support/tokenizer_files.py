"""Checking what a Tokenizer is given (merges, files, ids): read this when one is refused and you wonder why."""
from __future__ import annotations

import json
import operator
from pathlib import Path

from support.corpus import TokenizerError
from support.fast_bpe import MAX_VOCAB, NUM_BYTES, PRE_SPLITS
from support.files import read_problem


def check_definition(merges, source, byte_order=None, special_tokens=None, pre_split="default") -> None:
    """Raise a one-line TokenizerError naming source unless these are a tokenizer's definition:
    merges [left_id, right_id] that use only the ids made before them, each pair once; byte_order
    None or each byte value once; special tokens text -> the ids right after the merges."""
    if not isinstance(merges, list) or len(merges) > MAX_VOCAB - NUM_BYTES:
        raise TokenizerError(f"{source}: \"merges\" must be a list of [left_id, right_id]")
    seen: dict[tuple[int, int], int] = {}
    for i, item in enumerate(merges):
        limit = NUM_BYTES + i  # a merge can only use the tokens made before it
        if not (isinstance(item, list) and len(item) == 2
                and all(type(x) is int and 0 <= x < limit for x in item)):
            raise TokenizerError(f"{source}: merge {i} is {item!r}; expected "
                                 f"[left_id, right_id] with ids from 0 to {limit - 1}")
        pair = (item[0], item[1])
        if pair in seen:  # training never merges a pair twice
            raise TokenizerError(f"{source}: merge {i} {item!r} repeats merge {seen[pair]}")
        seen[pair] = i
    if byte_order is not None and not (isinstance(byte_order, (list, tuple))
                                       and _sorted_ints(byte_order) == list(range(NUM_BYTES))):
        raise TokenizerError(f"{source}: byte_order must list the byte values 0..255 once each, "
                             f"got {str(byte_order)[:60]}")
    first = NUM_BYTES + len(merges)   # special tokens take the ids right after the merges
    if special_tokens is not None and not (
            isinstance(special_tokens, dict) and all(isinstance(text, str) and text for text in special_tokens)
            and _sorted_ints(special_tokens.values()) == list(range(first, first + len(special_tokens)))):
        raise TokenizerError(f"{source}: special_tokens must map texts to the ids after the merges "
                             f"({first}, {first + 1}, ...), got {str(special_tokens)[:60]}")
    if pre_split not in PRE_SPLITS:
        raise TokenizerError(f"{source}: pre_split {pre_split!r} is not one of {', '.join(PRE_SPLITS)}")


def _sorted_ints(values) -> list[int]:
    """values sorted, anything but an int (a bool, a str) as -1: a range of ints only if they are its ints."""
    return sorted(v if type(v) is int else -1 for v in values)


def read_json(path: Path, key: str | None = None, versions: tuple[int, ...] = (1,)):
    """Parse one JSON file, turning every way it can fail into a one-line TokenizerError. With
    key, the file must be an object holding "format_version" (one of versions) and key."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenizerError(f"{path}: missing — run `python init.py` to create it") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{path}: {read_problem(e)}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column "
                             f"{e.colno}) — truncated or edited by hand?") from None
    if key is not None:
        if is_original_format(data):
            raise TokenizerError(f"{path}: this is the original project's tokenizer format (merges as "
                                 f"pairs of its own token ids, no format_version), which this code does "
                                 f"not read — run `python init.py` to make a tokenizer in this format")
        if not isinstance(data, dict) or "format_version" not in data or key not in data:
            raise TokenizerError(f"{path}: expected an object with \"format_version\" and \"{key}\"")
        if data["format_version"] not in versions or type(data["format_version"]) is not int:
            raise TokenizerError(f"{path}: format_version {data['format_version']!r} is not supported "
                                 f"(this code reads {' and '.join(map(str, versions))})")
    return data


def is_original_format(data) -> bool:
    """Whether a merges.json holds the original project's merges: no "format_version", and the
    merges as bare pairs of its token ids (or of their text): a list of pairs, or an object keyed by them."""
    if isinstance(data, dict):
        return bool(data) and "format_version" not in data and "merges" not in data
    return isinstance(data, list) and bool(data) and all(isinstance(pair, list) and len(pair) == 2 for pair in data)


def difference(got, expected: dict) -> str | None:
    """The first way the JSON object got differs from expected, in a few words (None if equal)."""
    if not isinstance(got, dict):
        return f"expected a JSON object, found {type(got).__name__}"
    for key, want in expected.items():
        if key not in got:
            return f"entry {key!r} is missing (merges.json defines it)"
        if got[key] != want or type(got[key]) is not type(want):
            return f"entry {key!r} is {got[key]!r}, but merges.json gives {want!r}"
    extra = [key for key in got if key not in expected]
    return f"entry {extra[0]!r} is not in the vocabulary merges.json defines" if extra else None


def is_token_id(x, vocab_size: int) -> bool:
    """Whether x can index the vocabulary (ints, and numpy or torch integers, from 0)."""
    try:
        return 0 <= operator.index(x) < vocab_size
    except TypeError:
        return False
