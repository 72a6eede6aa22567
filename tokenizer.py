"""A byte-level BPE tokenizer, trained from scratch on a text.

How it works:

1. A text is UTF-8 bytes, and each of the 256 byte values is a base token (id = byte value), so
   every Python string can be encoded: there is no "unknown" token.
2. The text is first cut into chunks by SPLIT_PATTERN (a word with the space before it, a number,
   a run of punctuation, a run of whitespace). No merge crosses a chunk boundary, so a token never
   glues a word to the punctuation or the newline after it.
3. Training repeatedly takes the most frequent adjacent pair of tokens inside the chunks and
   replaces it everywhere by a new token: merge i creates token id 256 + i. Ties go to the
   smallest (left_id, right_id), so the same text always gives the same merges.
4. Encoding cuts a text into the same chunks and, inside each, replays the merges in the order
   they were learned. Each distinct chunk is merged once and remembered (a cache kept across
   calls); when a text brings many new ones, numpy merges them all together, round by round
   (_merge_in_bulk, tested to agree with the one-chunk-at-a-time `_encode_chunk`). The cut itself
   is made with numpy too (chunk_keys, tested to agree with SPLIT_RE). Decoding joins the bytes
   of the tokens.

The four files written by `save` (UTF-8 JSON, readable by a person):

- merges.json      {"format_version": 1, "merges": [[left_id, right_id], ...]} in the order
                   learned; merges[i] creates id 256 + i. This file alone defines the vocabulary;
                   the other three are derived from it and checked against it on loading.
- vocab_size.json  {"format_version": 1, "vocab_size": N}, where N = 256 + number of merges.
- itos.json        {"<id>": "<token text>", ...} for every id.
- stoi.json        {"<token text>": id, ...}. Two different merges can build the same bytes;
                   such a text maps to the lower of its ids.

Token text: a token whose bytes are valid UTF-8 is written as that text. Any other token (a single
byte such as 0xE2, part of a multi-byte character) is written as one `<0xHH>` per byte, e.g.
"<0xE2><0x80>". A token whose real text starts with "<0x" is also written the escaped way, so a
string starting with "<0x" always means escaped bytes and the form is lossless and unambiguous.

Files larger than memory: `read_pieces` decodes a UTF-8 file a piece at a time, each piece ending
where a chunk must end, so chunking the pieces one by one gives the chunks of the whole file.
`count_chunks` turns such pieces into chunk counts and `Tokenizer.train_from_chunk_counts` learns
from the counts (`train` is the same learner on one string). `Tokenizer.encode_file` encodes a
file on several processes, cut at `safe_cuts`, and yields the ids in order as compact arrays.
"""

import hashlib
import json
import multiprocessing
import operator
import os
import queue
import re
import signal
import sys
from array import array
from collections import Counter, defaultdict
from heapq import heapify, heappop, heappush, heapreplace
from pathlib import Path

import numpy as np
from tqdm import tqdm

FORMAT_VERSION = 1
NUM_BYTES = 256           # the base tokens: one per byte value
MAX_VOCAB = 0x110000      # token ids are held as str characters inside this module (see below)

# GPT-2-style pre-split, written for the standard `re` module (which has no \p{L}):
# [^\W\d_] is "a word character that is not a digit or an underscore", i.e. a letter.
SPLIT_PATTERN = (
    r" ?[^\W\d_]+"              # a word, with the single space before it
    r"|'(?:[sdmt]|ll|ve|re)"    # the common English contractions: 's 't 'd 'm 'll 've 're
    r"| ?\d+"                   # a number, with the space before it
    r"| ?[^\s\w]+"              # punctuation and symbols, with the space before them
    r"|\s+(?!\S)"               # whitespace, leaving its last space to the word that follows
    r"|\s+"                     # any whitespace left over (e.g. a newline before a word)
    r"|_+"                      # underscores (a word character to `re`, punctuation to us)
)
SPLIT_RE = re.compile(SPLIT_PATTERN)

# Long texts are split a block at a time, so no list of chunks grows with the text. A block ends
# where a non-space character meets whitespace: no chunk spans that point (only a single space
# may lead a chunk), and the pattern looks ahead only inside whitespace, so the blocks give
# exactly the chunks of the whole text.
_BLOCK_CHARS = 1 << 20
_BLOCK_END_RE = re.compile(r"\S(?=\s)")
_LAST_BLOCK_END_RE = re.compile(r".*\S(?=\s)", re.DOTALL)  # greedy: matches up to the last one

# Files are read PIECE_BYTES at a time. safe_cuts looks for a block end in windows of _SCAN_BYTES;
# consecutive windows overlap by _SCAN_OVERLAP bytes, enough to hold a non-space character and
# the whitespace after it (at most 4 + 3 bytes of UTF-8), so no block end falls between them.
PIECE_BYTES = 1 << 20
_RANGE_BYTES = 4 << 20   # encode_file hands out the file in ranges this size (their ids move as one array)
_SCAN_BYTES = 1 << 16
_SCAN_OVERLAP = 8

# A tokenizer remembers the ids of every distinct chunk it has encoded, across calls (most chunks
# recur: in a long text, and from one prompt or document to the next). Past this many chunks it
# starts afresh, so encoding a huge text cannot grow the cache without bound.
_CACHE_LIMIT = 200_000

# From this many new distinct chunks on, encoding merges them all at once with numpy
# (_merge_in_bulk); fewer (a prompt, a short line) are merged one by one (Tokenizer._encode_chunk).
_BULK_MIN_CHUNKS = 64
_BULK_MAX_CHARS = 200

_ESCAPE_PREFIX = "<0x"
_ESCAPED_RE = re.compile(r"(?:<0x[0-9A-F]{2}>)+")

# Inside this module a sequence of tokens is often a str with one character per token, token id
# i being chr(i): then `in`, str.replace and str.find do the pair work in C. A chunk's bytes become
# such a str by decoding them as Latin-1, which maps byte b to chr(b).


class TokenizerError(ValueError):
    """A problem with tokenizer files or input, as one line naming the file and the problem."""


def token_text(token: bytes) -> str:
    """How a token's bytes are shown in the JSON files and by `split` (see the module docstring)."""
    try:
        text = token.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and not text.startswith(_ESCAPE_PREFIX):
        return text
    return "".join(f"<0x{b:02X}>" for b in token)


def token_bytes(text: str) -> bytes:
    """The inverse of `token_text`; raises ValueError on a malformed escaped form."""
    if not text.startswith(_ESCAPE_PREFIX):
        return text.encode("utf-8")
    if not _ESCAPED_RE.fullmatch(text):
        raise ValueError(f"malformed escaped token {text!r}")
    return bytes(int(text[i + 3:i + 5], 16) for i in range(0, len(text), 6))


def text_blocks(text: str, block_chars: int = _BLOCK_CHARS):
    """Yield text in blocks of about block_chars that chunk independently (see _BLOCK_END_RE)."""
    start = 0
    while start < len(text):
        end = start + block_chars
        if end >= len(text):
            yield text[start:] if start else text
            return
        cut = _BLOCK_END_RE.search(text, end)
        end = cut.end() if cut else len(text)
        yield text[start:end]
        start = end


# --- cutting text into chunks with numpy --------------------------------------------------------
# SPLIT_RE defines the chunks, and training cuts with it. Encoding a long text makes the same cut
# with a few whole-array numpy steps (chunk_starts, tested to agree with SPLIT_RE.findall), which
# is several times faster than one regex match per chunk, and turns most chunks into int keys
# rather than str slices (chunk_keys). The rules, read off SPLIT_PATTERN:
#   - a chunk is a run of one kind of character: letters, digits, punctuation, underscores, or
#     whitespace (any mix of it);
#   - a single space " " goes with the letters, digits or punctuation right after it;
#   - whitespace followed by a non-space keeps its last character apart: on its own, or as the
#     space of the word after it;
#   - an apostrophe that begins a chunk and the letters of 's 't 'd 'm 'll 've 're after it make
#     a chunk of their own.
# The classes are the pattern's own character sets; together they cover every character once.
# (Order matters: a space joins the classes below _UNDERSCORE; the two whitespace ones come last.)
_LETTER, _DIGIT, _PUNCT, _UNDERSCORE, _SPACE, _OTHER_SPACE = range(6)
_CONTRACTIONS = ("s", "d", "m", "t", "ll", "ve", "re")


def _char_class(ch: str) -> int:
    if ch == " ":
        return _SPACE
    if ch == "_":
        return _UNDERSCORE
    if re.fullmatch(r"[^\W\d_]", ch):
        return _LETTER
    if re.fullmatch(r"\d", ch):
        return _DIGIT
    if re.fullmatch(r"\s", ch):
        return _OTHER_SPACE
    return _PUNCT


_LATIN1_CLASSES = np.array([_char_class(chr(c)) for c in range(256)], dtype=np.uint8)
_LATIN1_CLASSES.flags.writeable = False


def _char_classes(codes: np.ndarray) -> np.ndarray:
    """The class of each character, for a text as an array of code points."""
    wide = codes >= 256
    if not wide.any():
        return _LATIN1_CLASSES.take(codes)   # (take: several times faster than [codes] here)
    classes = _LATIN1_CLASSES.take(np.where(wide, 0, codes))
    distinct, which = np.unique(codes[wide], return_inverse=True)
    classes[wide] = np.array([_char_class(chr(c)) for c in distinct.tolist()], np.uint8)[which]
    return classes


def chunk_starts(codes: np.ndarray) -> np.ndarray:
    """Where each chunk of SPLIT_RE.findall(text) begins, for text as an array of code points."""
    size = codes.size
    classes = _char_classes(codes)
    white = classes >= _SPACE
    kind = np.minimum(classes, _SPACE)   # any run of whitespace is one kind
    start = np.empty(size, dtype=bool)
    start[:1] = True
    np.not_equal(kind[1:], kind[:-1], out=start[1:])   # a new kind of character
    start[:-1] |= white[:-1] & ~white[1:]   # the last whitespace before a non-space stands apart
    start[1:] &= ~((classes[:-1] == _SPACE) & (classes[1:] < _UNDERSCORE))   # " word": one chunk
    apostrophes = np.flatnonzero(start & (codes == ord("'")))
    if apostrophes.size:
        after = np.append(codes, np.zeros(2, codes.dtype))   # (an apostrophe may end the text)
        first, second = after[apostrophes + 1], after[apostrophes + 2]
        length = np.zeros(apostrophes.size, dtype=np.int64)   # of the contraction, 0: none
        for letters in _CONTRACTIONS:
            found = first == ord(letters[0])
            if len(letters) == 2:
                found &= second == ord(letters[1])
            length[found] = 1 + len(letters)
        at, length = apostrophes[length > 0], length[length > 0]
        start[at + 1] = False
        start[at[length == 3] + 2] = False
        end = at + length
        start[end[end < size]] = True
    return np.flatnonzero(start)


# A chunk of at most 8 characters, each in U+0001..U+00FF, is keyed by an int: its characters'
# codes as the bytes of a little-endian 64-bit number. Most chunks are that short, and numpy
# makes all those keys at once, where cutting a str for each chunk costs as much as the regex.
_PACKED_CHARS = 8
_PACK_MASKS = np.array([(1 << 8 * n) - 1 for n in range(_PACKED_CHARS + 1)], dtype=np.uint64)
_PACK_MASKS.flags.writeable = False


def chunk_keys(text: str) -> list:
    """The chunks of text (those of SPLIT_RE.findall), in order, as keys: a short chunk as an int
    (see above; `chunk_of_key` turns it back), any other chunk as itself."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    starts = chunk_starts(codes)
    ends = np.append(starts[1:], codes.size) if starts.size else starts
    lengths = ends - starts
    packed = lengths <= _PACKED_CHARS
    unfit = (codes >= 256) | (codes == 0)   # NUL would read as the end of a shorter chunk
    if unfit.any():
        seen = np.concatenate(([0], np.cumsum(unfit)))
        packed &= seen[ends] == seen[starts]
    low_bytes = np.zeros(codes.size + _PACKED_CHARS, dtype=np.uint8)
    low_bytes[:codes.size] = codes   # (a wide character wraps, but it is never packed)
    # the 8 characters from each position as one number: a view, 1 byte apart, not a copy
    windows = np.ndarray((codes.size,), dtype="<u8", buffer=low_bytes, strides=(1,))
    keys = np.zeros(starts.size, dtype=np.uint64)
    keys[packed] = windows.take(starts[packed]) & _PACK_MASKS.take(lengths[packed])
    keys = keys.tolist()
    others = ~packed
    for i, start, end in zip(np.flatnonzero(others).tolist(), starts[others].tolist(),
                             ends[others].tolist()):
        keys[i] = text[start:end]
    return keys


def chunk_of_key(key) -> str:
    """The chunk that chunk_keys gave this key for."""
    if isinstance(key, str):
        return key
    return key.to_bytes(8, "little").rstrip(b"\0").decode("latin-1")


def _as_token_str(chunk: str) -> str:
    """A chunk as a str of byte tokens (one character per byte, see above)."""
    return chunk.encode("utf-8").decode("latin-1")


def count_chunks(pieces) -> Counter:
    """How often each chunk occurs in an iterable of texts, read a block at a time.

    Pieces from `read_pieces` end where a chunk must end, so the counts over the pieces of a file
    are the counts of the whole file as one string."""
    counts = Counter()
    for piece in pieces:
        for block in text_blocks(piece):
            counts.update(SPLIT_RE.findall(block))
    return counts


# --- files larger than memory -----------------------------------------------------------------

def read_pieces(path, start: int = 0, end: int | None = None, piece_bytes: int = PIECE_BYTES):
    """Yield the text of bytes [start, end) of a UTF-8 file in pieces of about piece_bytes.

    Never holds more than a piece (and what a block end is waiting for) in memory. Each piece but
    the last ends at a block end (see text_blocks), so chunking the pieces one by one gives the
    chunks of the whole range; start and end should be 0, the file's size or `safe_cuts`, so the
    range's chunks are also the file's. Bytes that are not UTF-8 raise TokenizerError with their
    offset in the file.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        end = size if end is None else min(end, size)
        f.seek(start)
        offset = start   # where in the file `data` below begins
        tail = b""       # the bytes of a character the last read cut in two
        carry = ""       # decoded text after the last block end: what follows decides its chunks
        while True:
            data = tail + f.read(max(0, min(piece_bytes, end - f.tell())))
            at_end = f.tell() >= end
            cut = len(data) if at_end else _character_boundary(data)
            try:
                text = carry + data[:cut].decode("utf-8")
            except UnicodeDecodeError as e:
                raise _utf8_error(path, offset + e.start, data[e.start]) from None
            offset, tail = offset + cut, data[cut:]
            if at_end:
                if text:
                    yield text
                return
            last = _LAST_BLOCK_END_RE.match(text)
            split = last.end() if last else 0   # a text with no block end waits for more
            carry = text[split:]
            if split:
                yield text[:split]


def _character_boundary(data: bytes) -> int:
    """An index in data that no UTF-8 character straddles: before the last character when the
    data ends with a lead byte or continuation bytes (that character may be incomplete)."""
    cut = len(data)
    while cut > 0 and len(data) - cut < 3 and data[cut - 1] & 0xC0 == 0x80:  # 10xxxxxx
        cut -= 1
    if cut > 0 and data[cut - 1] >= 0xC0:  # 11xxxxxx: the lead byte of a multi-byte character
        cut -= 1
    return cut


def _utf8_error(path, offset: int, bad: int) -> "TokenizerError":
    return TokenizerError(f"input file {path} is not valid UTF-8: bad byte 0x{bad:02X} "
                          f"at byte offset {offset}")


def safe_cuts(path, offsets) -> list[int]:
    """For each byte offset into a file, a place at or after it where the file can be cut into
    parts that chunk independently: just after a non-space character that whitespace follows
    (a block end), or the end of the file. Offset 0 stays 0. Reads a few KB per offset."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return [_next_cut(f, offset, size) for offset in offsets]


def _next_cut(f, offset: int, size: int) -> int:
    if offset <= 0:
        return 0
    pos = offset
    while pos < size:
        f.seek(pos)
        data = f.read(_SCAN_BYTES)
        skip = 0  # start on a character: skip the continuation bytes (10xxxxxx) of the one before
        while skip < min(3, len(data)) and data[skip] & 0xC0 == 0x80:
            skip += 1
        # Bytes that are not UTF-8 become lone surrogates here, which keeps the offsets right;
        # they are reported when the pieces are read.
        text = data[skip:].decode("utf-8", "surrogateescape")
        found = _BLOCK_END_RE.search(text)
        if found:
            return pos + skip + len(text[:found.end()].encode("utf-8", "surrogateescape"))
        if len(data) < _SCAN_BYTES:
            break  # read to the end of the file without finding one
        pos += len(data) - _SCAN_OVERLAP
    return size


# --- training ---------------------------------------------------------------------------------

def _learn_merges(chunk_freq: Counter, num_merges: int, bar=None) -> list[tuple[int, int]]:
    """The BPE training loop over distinct chunks and their frequencies (see Tokenizer.train).
    Raises UnicodeEncodeError when a chunk holds a lone surrogate."""
    words = [_as_token_str(chunk) for chunk in chunk_freq]   # each distinct chunk once ...
    freqs = list(chunk_freq.values())                        # ... with how often it occurs

    # A pair is a 2-character str. counts: pair -> occurrences in the text; where: pair -> the
    # words it occurs in (a word may be listed twice, or after the pair has left it).
    counts = defaultdict(int)
    where = defaultdict(list)
    for w_idx, word in enumerate(words):
        for pair in map(operator.add, word, word[1:]):
            counts[pair] += freqs[w_idx]
            where[pair].append(w_idx)

    # Heap of (-count, pair): its top is the most frequent pair and, among equal counts, the
    # smallest (left_id, right_id) — comparing 2-character strs compares ids. After a pair first
    # appears its count can only fall, so an entry may overstate a count but never understate it:
    # a top entry that overstates is pushed back with the true count before looking again.
    heap = [(-n, pair) for pair, n in counts.items()]
    heapify(heap)
    merges: list[tuple[int, int]] = []
    while len(merges) < num_merges:
        while heap:
            neg_count, pair = heap[0]
            n = counts.get(pair, 0)
            if n == -neg_count:
                heappop(heap)
                break
            if n > 0:
                heapreplace(heap, (-n, pair))
            else:
                heappop(heap)
        else:
            break  # no pair left: every chunk is a single token
        new = chr(NUM_BYTES + len(merges))
        merges.append((ord(pair[0]), ord(pair[1])))
        _merge_everywhere(pair, new, words, freqs, counts, where, heap)
        if bar is not None:
            bar.update()
    return merges


def _merge_everywhere(pair, new, words, freqs, counts, where, heap) -> None:
    """Replace pair (a, b) by the new token c in every word; update counts, where and heap.

    Only the pairs touching a replaced occurrence change: with x and y the neighbours in the
    new word, (x, a) and (b, y) lose an occurrence and (x, c) and (c, y) gain one. When x is
    itself a c (as in "abab" -> "cc"), the pair that disappeared there was (b, a).
    """
    a, b = pair
    born = defaultdict(int)  # the pairs with the new token, and their counts
    for w_idx in set(where.pop(pair)):
        word = words[w_idx]
        if pair not in word:
            continue  # the pair left this word in an earlier merge
        merged = word.replace(pair, new)  # left to right, never overlapping: "aaa" -> "ca"
        words[w_idx] = merged
        freq = freqs[w_idx]
        last = len(merged) - 1
        k = merged.find(new)
        while k >= 0:
            if k > 0:
                x = merged[k - 1]
                born[x + new] += freq
                where[x + new].append(w_idx)
                counts[(b if x == new else x) + a] -= freq
            if k < last and merged[k + 1] != new:  # a c on the right is handled as its x
                y = merged[k + 1]
                born[new + y] += freq
                where[new + y].append(w_idx)
                counts[b + y] -= freq
            k = merged.find(new, k + 1)
    del counts[pair]
    for p, n in born.items():
        counts[p] = n
        heappush(heap, (-n, p))


class _RankTable:
    """Pair -> merge rank for numpy arrays of pairs: an open-addressing hash table.

    A pair (left, right) is the key left * vocab_size + right; its slot is the top `bits` bits of
    key × an odd 64-bit constant (multiplicative hashing), or the next free slot after it. The
    table is at most a quarter full, so a lookup rarely needs more than one or two probes.
    Pairs of two byte tokens, the pairs of every chunk before its first merge, also have a plain
    256 × 256 table (byte_pair_ranks), indexed by left * 256 + right.
    """

    MULTIPLIER = 0x9E3779B97F4A7C15   # 2^64 / golden ratio, odd: spreads nearby keys apart
    NO_MERGE = np.iinfo(np.int32).max   # ranks are int32 (vocabularies stay below MAX_VOCAB)

    def __init__(self, merges, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.bits = max(4, (4 * len(merges)).bit_length())
        keys, ranks = [-1] * (1 << self.bits), [0] * (1 << self.bits)   # -1: an empty slot
        mask = (1 << self.bits) - 1
        for rank, (a, b) in enumerate(merges):
            key = a * vocab_size + b
            slot = ((key * self.MULTIPLIER) & 0xFFFFFFFFFFFFFFFF) >> (64 - self.bits)
            while keys[slot] != -1:
                slot = (slot + 1) & mask
            keys[slot], ranks[slot] = key, rank
        self.keys = np.array(keys, dtype=np.int64)
        self.ranks = np.array(ranks, dtype=np.int32)
        self.byte_pair_ranks = np.full(NUM_BYTES * NUM_BYTES, self.NO_MERGE, dtype=np.int32)
        for rank, (a, b) in enumerate(merges):
            if a < NUM_BYTES and b < NUM_BYTES:
                self.byte_pair_ranks[a * NUM_BYTES + b] = rank

    def lookup(self, left, right):
        """The rank of each pair (left[i], right[i]) (int arrays), NO_MERGE where none."""
        keys = left.astype(np.int64) * self.vocab_size + right
        slots = ((keys.astype(np.uint64) * np.uint64(self.MULTIPLIER))
                 >> np.uint64(64 - self.bits)).astype(np.int64)
        ranks = np.full(keys.size, self.NO_MERGE, dtype=np.int32)
        todo = np.arange(keys.size)   # the pairs not yet found or ruled out
        while todo.size:
            found = self.keys.take(slots)
            hit = found == keys[todo]
            ranks[todo[hit]] = self.ranks.take(slots[hit])
            go_on = ~hit & (found != -1)   # an occupied slot holding another key: probe the next
            todo, slots = todo[go_on], (slots[go_on] + 1) & ((1 << self.bits) - 1)
        return ranks


def _merge_in_bulk(chunks: list[str], table: _RankTable):
    """Encode many distinct chunks at once: the ids of all of them one after another (int32), and
    how many ids each chunk got. Raises UnicodeEncodeError when a chunk holds a lone surrogate.

    The same result as Tokenizer._encode_chunk on each chunk, with numpy doing the work for all
    chunks together: every round, each chunk applies its lowest-ranked mergeable pair at every
    occurrence, leftmost first, which is the order _encode_chunk replays them in. A chunk with no
    pair left to merge leaves the working arrays.
    """
    lengths = np.fromiter(map(len, map(str.encode, chunks)), dtype=np.int64, count=len(chunks))
    ids = np.frombuffer("".join(chunks).encode("utf-8"), dtype=np.uint8).astype(np.int32)
    # which chunk each position belongs to (int32 like ids and ranks: less memory to go through)
    owner = np.repeat(np.arange(len(chunks), dtype=np.int32), lengths)
    no_merge = table.NO_MERGE

    def pair_ranks(at):
        """The rank of merging (ids[i], ids[i + 1]) for each i in at; no_merge across chunk ends."""
        ranks = table.lookup(ids.take(at), ids.take(at + 1))
        ranks[owner.take(at) != owner.take(at + 1)] = no_merge
        return ranks

    # pair_rank[i]: rank of the merge of (ids[i], ids[i + 1]), or no_merge (also at chunk ends).
    # Computed once here; after that only the pairs next to a merge change, so only they are redone.
    pair_rank = np.full(ids.size, no_merge, dtype=np.int32)
    pair_rank[:-1] = table.byte_pair_ranks.take(ids[:-1] * NUM_BYTES + ids[1:])   # all bytes so far
    pair_rank[:-1][owner[:-1] != owner[1:]] = no_merge
    done_ids, done_owner = [], []
    while ids.size:
        # each chunk's lowest rank, spread over its positions; chunks with none are finished
        starts = np.flatnonzero(np.r_[True, owner[:-1] != owner[1:]])
        lowest = np.repeat(np.minimum.reduceat(pair_rank, starts), np.diff(np.r_[starts, ids.size]))
        finished = lowest == no_merge
        if finished.any():
            done_ids.append(ids[finished])
            done_owner.append(owner[finished])
            active = ~finished
            ids, owner, pair_rank, lowest = ids[active], owner[active], pair_rank[active], lowest[active]
            if not ids.size:
                break

        merge_at = pair_rank == lowest   # the left position of each occurrence of the chunk's pair
        # (x, x) in a run "x x x": occurrences overlap; keep every other one from the run's start
        overlaps = np.r_[False, merge_at[1:] & merge_at[:-1]]
        if overlaps.any():
            position = np.arange(ids.size)
            run_start = np.maximum.accumulate(np.where(merge_at & ~overlaps, position, 0))
            merge_at &= (position - run_start) % 2 == 0
        ids[merge_at] = NUM_BYTES + pair_rank[merge_at]          # the left token becomes the new one
        kept = ~np.r_[False, merge_at[:-1]]                      # and the right token goes
        new_at = (np.cumsum(kept) - 1)[merge_at]                 # where the new tokens are now
        ids, owner, pair_rank = ids[kept], owner[kept], pair_rank[kept]
        # the pairs (new, right neighbour) and (left neighbour, new) are the only ones that changed
        redo = np.concatenate((new_at - 1, new_at))   # (a position may come twice: harmless)
        redo = redo[(redo >= 0) & (redo < ids.size - 1)]
        pair_rank[redo] = pair_ranks(redo)
        pair_rank[-1] = no_merge   # the last position has no right neighbour

    owner = np.concatenate(done_owner) if done_owner else np.zeros(0, dtype=np.int32)
    ids = np.concatenate(done_ids) if done_ids else np.zeros(0, dtype=np.int32)
    order = np.argsort(owner, kind="stable")   # back to chunk order; each chunk's ids stay in order
    return ids[order], np.bincount(owner, minlength=len(chunks))


# --- the tokenizer ----------------------------------------------------------------------------

class Tokenizer:
    """Byte-level BPE. `Tokenizer()` has the 256 byte tokens and no merges."""

    def __init__(self) -> None:
        self._set_merges([])

    def _set_merges(self, merges) -> None:
        """Install merges and rebuild the tables derived from them."""
        self._merges = [(int(a), int(b)) for a, b in merges]
        self._bytes = [bytes([b]) for b in range(NUM_BYTES)]   # id -> the bytes it stands for
        for a, b in self._merges:
            self._bytes.append(self._bytes[a] + self._bytes[b])
        # for encoding: pair (as a 2-character str) -> rank, and rank -> that pair
        self._pair_strs = [chr(a) + chr(b) for a, b in self._merges]
        self._ranks = {pair: rank for rank, pair in enumerate(self._pair_strs)}
        self._rank_table = _RankTable(self._merges, self.vocab_size)  # the same, for numpy
        self._chunk_cache: dict = {}   # chunk key -> the bytes of its ids (_CACHE_LIMIT)

    @property
    def vocab_size(self) -> int:
        return NUM_BYTES + len(self._merges)

    @property
    def merges(self) -> list[tuple[int, int]]:
        """The merges in rank order: merges[i] = (left_id, right_id) creates id 256 + i."""
        return list(self._merges)

    def fingerprint(self) -> str:
        """A short hex id of the vocabulary: the same merges give the same fingerprint."""
        data = json.dumps(self._merges, separators=(",", ":")).encode("ascii")
        return hashlib.sha256(data).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, fingerprint={self.fingerprint()!r})"

    # Pickled (e.g. for encode_file's worker processes where they are spawned), a tokenizer is
    # its merges alone: they say everything, and the tables are quick to rebuild from them.
    def __getstate__(self) -> dict:
        return {"merges": self._merges}

    def __setstate__(self, state: dict) -> None:
        self._set_merges(state["merges"])

    # --- training ---------------------------------------------------------------------------

    def train(self, text: str, vocab_size: int, progress: bool = False) -> None:
        """Learn merges from text until the vocabulary has vocab_size tokens.

        Replaces any merges learned before. Stops early, with a smaller vocabulary, when no
        chunk has two tokens left. Ties: among the pairs with the highest count, the smallest
        (left_id, right_id) is merged first, so training is deterministic.

        Each distinct chunk is stored once with its frequency. A merge rewrites only the chunks
        that contain the pair and changes only the counts of the pairs around it: the corpus is
        never rescanned.
        """
        if not isinstance(text, str):
            raise TypeError(f"train expects a str, got {type(text).__name__}")
        _check_vocab_size(vocab_size)
        if _SURROGATE_RE.search(text):  # say where in the text, before any work
            raise _surrogate_error(text)
        self.train_from_chunk_counts(count_chunks([text]), vocab_size, progress)

    def train_from_chunk_counts(self, chunk_freq: Counter, vocab_size: int,
                                progress: bool = False) -> None:
        """Learn merges from chunk -> count (see `count_chunks`), as `train` does from a text.

        This is how a file larger than memory is learned: count its chunks piece by piece (or
        those of a sample of it), then learn from the counts, which grow with the number of
        distinct chunks rather than with the text.
        """
        _check_vocab_size(vocab_size)
        num_merges = vocab_size - NUM_BYTES
        try:
            with tqdm(total=num_merges, unit="merge", desc="merges", file=sys.stderr,
                      disable=not progress) as bar:
                merges = _learn_merges(chunk_freq, num_merges, bar)
        except UnicodeEncodeError:
            bad = next(chunk for chunk in chunk_freq if _SURROGATE_RE.search(chunk))
            raise _surrogate_error(bad) from None
        self._set_merges(merges)

    # --- encoding and decoding --------------------------------------------------------------

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        """Apply the merges inside one chunk, the one learned earliest first.

        Replaying them in rank order is what training did to this chunk, so encoding the training
        text gives the segmentation training produced. A heap holds the ranks of the pairs seen so
        far (a rank may be there several times); a rank whose pair is no longer in the chunk is
        skipped. A merge only creates pairs with its new token, and those can only merge later (a
        higher rank), so ranks come off the heap in the order training applied them.
        """
        tokens = _as_token_str(chunk)
        rank_of = self._ranks.get
        heap = [r for r in map(rank_of, map(operator.add, tokens, tokens[1:])) if r is not None]
        heapify(heap)
        done = -1  # the last rank handled; ranks come off the heap in order, repeats together
        while heap:
            rank = heappop(heap)
            if rank == done:
                continue
            done = rank
            pair = self._pair_strs[rank]
            if pair not in tokens:
                continue
            new = chr(NUM_BYTES + rank)
            tokens = tokens.replace(pair, new)  # left to right, never overlapping, as in training
            last = len(tokens) - 1
            k = tokens.find(new)
            while k >= 0:  # the new token's neighbours make pairs that may merge later
                if k > 0 and (r := rank_of(tokens[k - 1] + new)) is not None:
                    heappush(heap, r)
                if k < last and (r := rank_of(new + tokens[k + 1])) is not None:
                    heappush(heap, r)
                k = tokens.find(new, k + 1)
        return tuple(map(ord, tokens))

    @property
    def typecode(self) -> str:
        """The array typecode that holds any of this vocabulary's ids: "H" (2 bytes) while the
        vocabulary has at most 65,536 tokens, else "I" (4 bytes)."""
        return "H" if self.vocab_size <= 1 << 16 else "I"

    def _encode_blocks(self, pieces):
        """Yield the ids of the pieces' text, a block at a time (see text_blocks), as the bytes
        of an array of self.typecode. The chunk cache maps a chunk's key (see chunk_keys) -> the
        bytes of its ids: most chunks repeat, and joining bytes is much faster than building a
        list of ints."""
        cache = self._chunk_cache
        for piece in pieces:
            for block in text_blocks(piece):
                keys = chunk_keys(block)
                try:   # once the cache is warm, every chunk is in it
                    ids = b"".join(map(cache.__getitem__, keys))
                except KeyError:   # some are new: merge those (all together), then join
                    if len(cache) > _CACHE_LIMIT:
                        # a new dict rather than clear(): a thread still reading the old one
                        # finds what it put there
                        cache = self._chunk_cache = {}
                    new = list(set(keys).difference(cache))
                    chunks = list(map(chunk_of_key, new))
                    encoded = self._encode_new_chunks(chunks)   # chunk -> the bytes of its ids
                    cache.update(zip(new, map(encoded.__getitem__, chunks)))
                    ids = b"".join(map(cache.__getitem__, keys))
                yield ids

    def _encode_new_chunks(self, chunks) -> dict[str, bytes]:
        """chunk -> the bytes of an array of its ids, for each of the distinct chunks given.
        Many at once go to _merge_in_bulk (numpy, all chunks together); a few go one by one, and
        so does a very long chunk (a line of dashes, a DNA string): it would keep the bulk's
        rounds going long after the other chunks are done, where str.replace is quick."""
        if not self._merges or len(chunks) < _BULK_MIN_CHUNKS:
            bulk, alone = [], chunks
        else:
            alone = [chunk for chunk in chunks if len(chunk) > _BULK_MAX_CHARS]
            bulk = [chunk for chunk in chunks if len(chunk) <= _BULK_MAX_CHARS] if alone else chunks
        typecode = self.typecode
        encoded = {chunk: array(typecode, self._encode_chunk(chunk)).tobytes() for chunk in alone}
        if bulk:
            ids, counts = _merge_in_bulk(bulk, self._rank_table)
            data = ids.astype(np.dtype(typecode)).tobytes()
            ends = (np.cumsum(counts) * array(typecode).itemsize).tolist()
            encoded.update(zip(bulk, map(data.__getitem__, map(slice, [0] + ends, ends))))
        return encoded

    def encode(self, text: str) -> list[int]:
        """Text -> token ids; decode(encode(text)) == text for every str (lone surrogates aside)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        ids = array(self.typecode)
        try:
            for block in self._encode_blocks([text]):
                ids.frombytes(block)
        except UnicodeEncodeError:
            raise _surrogate_error(text) from None
        return ids.tolist()

    def count_tokens(self, chunk_freq: Counter) -> int:
        """How many tokens a text with these chunk counts encodes to, encoding each distinct chunk
        once: for count_chunks([text]) it is len(encode(text)), at a fraction of the work."""
        encoded = self._encode_new_chunks(list(chunk_freq))   # chunk -> bytes of its ids
        num_bytes = sum(n * len(encoded[chunk]) for chunk, n in chunk_freq.items())
        return num_bytes // array(self.typecode).itemsize

    def encode_ranges(self, path, ranges):
        """Yield the ids of each byte range [start, end) of a UTF-8 file (see read_pieces) as an
        array of self.typecode."""
        for start, end in ranges:
            ids = array(self.typecode)
            for block in self._encode_blocks(read_pieces(path, start, end)):
                ids.frombytes(block)
            yield ids

    def encode_file(self, path, workers: int = 1, range_bytes: int | None = None,
                    progress: bool = False):
        """Yield the ids of a UTF-8 file as arrays of self.typecode, in file order, one per range
        of about range_bytes (default 4 MB), encoded on `workers` processes.

        Joined, the arrays equal encode(whole text): the ranges start and end at safe_cuts.
        Memory stays bounded whatever the file's size: a worker holds a piece of text, its chunk
        cache and at most three ranges' ids. Bytes that are not UTF-8 raise TokenizerError with
        their offset (the first bad range in file order).
        """
        size = os.stat(path).st_size
        if range_bytes is None:
            range_bytes = min(_RANGE_BYTES, max(1, -(-size // workers)))  # a range per worker at least
        cuts = sorted(set(safe_cuts(path, range(0, size, range_bytes)) + [size]))
        ranges = list(zip(cuts, cuts[1:]))
        workers = max(1, min(workers, len(ranges)))
        with tqdm(total=size, unit="B", unit_scale=True, desc="tokenizing", file=sys.stderr,
                  disable=not progress) as bar:
            if workers == 1:
                parts = self.encode_ranges(path, ranges)  # in this process
            else:
                parts = self._encode_in_processes(path, ranges, workers)
            for (start, end), ids in zip(ranges, parts):
                yield ids
                bar.update(end - start)

    def _encode_in_processes(self, path, ranges, workers: int):
        """encode_ranges(path, ranges) on `workers` processes. Worker k takes ranges k, k + workers,
        k + 2 × workers, ... (so its chunk cache stays warm) and hands each array over through a
        queue of its own holding at most two, so taking from the queues in turn gives the arrays in
        file order while the workers run ahead by at most two ranges each."""
        context = _worker_context()
        queues = [context.Queue(maxsize=2) for _ in range(workers)]
        processes = [context.Process(target=_encode_stripe, daemon=True,
                                     args=(self, path, ranges[k::workers], queues[k]))
                     for k in range(workers)]
        for process in processes:
            process.start()
        try:
            for i in range(len(ranges)):
                yield _receive(queues[i % workers], processes[i % workers])
        finally:
            # Done, failed, or the caller stopped early: the workers have nothing more to do.
            for process in processes:
                process.terminate()
            for process in processes:
                process.join()

    def decode_bytes(self, ids) -> bytes:
        """Token ids -> the bytes they stand for (may end inside a UTF-8 character)."""
        ids = list(ids)
        table = self._bytes
        try:
            if ids and min(ids) < 0:
                raise IndexError
            return b"".join(map(table.__getitem__, ids))
        except (IndexError, TypeError):
            bad = next(i for i in ids if not _is_token_id(i, len(table)))
            raise TokenizerError(f"token id {bad!r} is not in the vocabulary "
                                 f"(ids go from 0 to {len(table) - 1})") from None

    def decode(self, ids) -> str:
        """Token ids -> text; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_text(self, token_id: int) -> str:
        """One token as text, escaped as in the JSON files when its bytes are not UTF-8."""
        return token_text(self._bytes[token_id])

    def split(self, text: str) -> str:
        """Show how text splits into tokens, e.g. "To|ken|izer"."""
        return "|".join(token_text(self._bytes[i]) for i in self.encode(text))

    # --- saving and loading -----------------------------------------------------------------

    def _itos(self) -> dict[str, str]:
        return {str(i): token_text(b) for i, b in enumerate(self._bytes)}

    def _stoi(self) -> dict[str, int]:
        stoi: dict[str, int] = {}
        for i, b in enumerate(self._bytes):
            stoi.setdefault(token_text(b), i)  # the lower id wins when two ids share a text
        return stoi

    def save(self, directory) -> None:
        """Write the four JSON files into directory (created if needed), each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # one merge per line, so the file reads (and diffs) as a list
        merge_lines = ",\n".join(f"    [{a}, {b}]" for a, b in self._merges)
        merges = f"[\n{merge_lines}\n  ]" if self._merges else "[]"
        files = {
            "merges.json": f'{{\n  "format_version": {FORMAT_VERSION},\n  "merges": {merges}\n}}',
            "vocab_size.json": json.dumps({"format_version": FORMAT_VERSION,
                                           "vocab_size": self.vocab_size}, indent=2),
            "itos.json": json.dumps(self._itos(), ensure_ascii=False, indent=1),
            "stoi.json": json.dumps(self._stoi(), ensure_ascii=False, indent=1),
        }
        for name, content in files.items():
            path = directory / name
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(content + "\n", encoding="utf-8")
            os.replace(tmp, path)

    @classmethod
    def load(cls, directory) -> "Tokenizer":
        """Read a tokenizer written by `save`; a missing or bad file raises TokenizerError."""
        directory = Path(directory)
        if not directory.is_dir():
            raise TokenizerError(f"no tokenizer in {directory}/ — run `python init.py` first")

        path = directory / "merges.json"
        data = _read_json(path, "merges")
        merges = data["merges"]
        if not isinstance(merges, list) or len(merges) > MAX_VOCAB - NUM_BYTES:
            raise TokenizerError(f"{path}: \"merges\" must be a list of [left_id, right_id]")
        seen: dict[tuple[int, int], int] = {}
        for i, item in enumerate(merges):
            limit = NUM_BYTES + i  # a merge can only use the tokens made before it
            if not (isinstance(item, list) and len(item) == 2
                    and all(_is_int(x) and 0 <= x < limit for x in item)):
                raise TokenizerError(f"{path}: merge {i} is {item!r}; expected "
                                     f"[left_id, right_id] with ids from 0 to {limit - 1}")
            pair = (item[0], item[1])
            if pair in seen:  # training never merges a pair twice
                raise TokenizerError(f"{path}: merge {i} {item!r} repeats merge {seen[pair]}")
            seen[pair] = i
        tok = cls()
        tok._set_merges(merges)

        path = directory / "vocab_size.json"
        size = _read_json(path, "vocab_size")["vocab_size"]
        if not _is_int(size) or size != tok.vocab_size:
            raise TokenizerError(f"{path}: vocab_size is {size!r}, but merges.json has "
                                 f"{len(merges)} merges, which make {tok.vocab_size} tokens")

        for name, expected in (("itos.json", tok._itos()), ("stoi.json", tok._stoi())):
            path = directory / name
            problem = _difference(_read_json(path), expected)
            if problem:
                raise TokenizerError(f"{path}: {problem}")
        return tok


# --- helpers ----------------------------------------------------------------------------------

def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_vocab_size(vocab_size) -> None:
    if not _is_int(vocab_size) or not NUM_BYTES <= vocab_size <= MAX_VOCAB:
        raise ValueError(f"vocab_size must be an integer from {NUM_BYTES} to {MAX_VOCAB}, "
                         f"got {vocab_size!r}")


def _encode_stripe(tok: "Tokenizer", path, ranges, out) -> None:
    """A worker process of encode_file: encode ranges in order, putting ("ids", array) for each,
    or ("error", exception) on failure, into the queue out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it ends us
    try:
        for ids in tok.encode_ranges(path, ranges):
            out.put(("ids", ids))
    except Exception as e:  # e.g. invalid UTF-8: the parent raises it
        out.put(("error", e))


def _receive(source, process) -> array:
    """The next array a worker process puts into source; raise what it raised, or TokenizerError
    if it died without a word (killed, e.g. for lack of memory)."""
    while True:
        try:
            kind, value = source.get(timeout=1)
            break
        except queue.Empty:
            if not process.is_alive():
                try:  # it may have put its last array just before ending
                    kind, value = source.get(timeout=1)
                    break
                except queue.Empty:
                    raise TokenizerError(f"a tokenizing process ended abruptly (exit code "
                                         f"{process.exitcode}; out of memory?) — try fewer "
                                         f"worker processes") from None
    if kind == "error":
        raise value
    return value


def _worker_context():
    """How encode_file starts its processes. fork starts one in milliseconds with the tokenizer
    module already loaded, and the workers only run this module's pure-Python code; elsewhere
    (macOS, Windows) spawn, which re-imports the main script in each worker."""
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def _is_token_id(x, vocab_size: int) -> bool:
    """Whether x can index the vocabulary (ints, and numpy or torch integers, from 0)."""
    try:
        return 0 <= operator.index(x) < vocab_size
    except TypeError:
        return False


_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")


def _surrogate_error(text: str) -> TokenizerError:
    pos = _SURROGATE_RE.search(text).start()
    return TokenizerError(f"the text has a lone surrogate (U+{ord(text[pos]):04X}) at index "
                          f"{pos}; it is not valid Unicode and has no UTF-8 bytes")


def _read_json(path: Path, key: str | None = None):
    """Parse one JSON file, turning every way it can fail into a one-line TokenizerError.

    With key, the file must be an object holding "format_version" (the one this code reads)
    and key.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenizerError(f"{path}: missing — run `python init.py` to create it") from None
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not UTF-8 text (byte offset {e.start})") from None
    except OSError as e:
        raise TokenizerError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column "
                             f"{e.colno}) — truncated or edited by hand?") from None
    if key is not None:
        if not isinstance(data, dict) or "format_version" not in data or key not in data:
            raise TokenizerError(f"{path}: expected an object with \"format_version\" "
                                 f"and \"{key}\"")
        if data["format_version"] != FORMAT_VERSION:
            raise TokenizerError(f"{path}: format_version {data['format_version']!r} is not "
                                 f"supported (this code reads version {FORMAT_VERSION})")
    return data


def _difference(got, expected: dict) -> str | None:
    """The first way the JSON object got differs from expected, in a few words (None if equal)."""
    if not isinstance(got, dict):
        return f"expected a JSON object, found {type(got).__name__}"
    for key, want in expected.items():
        if key not in got:
            return f"entry {key!r} is missing (merges.json defines it)"
        if got[key] != want or type(got[key]) is not type(want):
            return f"entry {key!r} is {got[key]!r}, but merges.json gives {want!r}"
    for key in got:
        if key not in expected:
            return f"entry {key!r} is not in the vocabulary merges.json defines"
    return None
