"""The fast engine of tokenizer.py's BPE: the same merges and the same ids, many times faster.

Read this when you want to know how training on a megabyte takes well under a second; tokenizer.py's
plain `train_bpe` and `encode_bpe` say *what* is computed, and the tests hold this engine equal to
them. Training updates only the pair counts around each merge, with a heap (learn_merges); encoding
cuts the text into chunks with numpy (chunk_starts, chunk_keys), merges many new chunks together
round by round (merge_in_bulk), and remembers each distinct chunk (ChunkEncoder's cache). The
merges come in as arguments: this module does not import tokenizer.py. Ids here are always byte
order (id i < 256 is byte value i): tokenizer.py relabels them for a vocabulary in another order.
"""
from __future__ import annotations

import operator
import re
import unicodedata
from array import array
from collections import defaultdict
from heapq import heapify, heappop, heappush, heapreplace

import numpy as np

NUM_BYTES = 256           # the base tokens: one per byte value (as in tokenizer.py)
MAX_VOCAB = 0x110000      # a token id is held as a str character, chr(id) (see below)

# Inside this module a sequence of tokens is often a str with one character per token, token id
# i being chr(i): then `in`, str.replace and str.find do the pair work in C. A chunk's bytes become
# such a str by decoding them as Latin-1, which maps byte b to chr(b).

# A ChunkEncoder remembers the ids of every distinct chunk it has encoded, across calls (most
# chunks recur: in a long text, and from one prompt or document to the next). Past this many
# chunks it starts afresh, so encoding a huge text cannot grow the cache without bound.
CACHE_LIMIT = 200_000

# From this many new distinct chunks on, encoding merges them all at once with numpy
# (merge_in_bulk); fewer (a prompt, a short line) are merged one by one (encode_chunk).
BULK_MIN_CHUNKS = 64
BULK_MAX_CHARS = 200


# --- cutting text into chunks with numpy --------------------------------------------------------
# tokenizer.SPLIT_RE defines the chunks, and training cuts with it. Encoding a long text makes the
# same cut with a few whole-array numpy steps (chunk_starts, tested to agree with SPLIT_RE.findall),
# which is several times faster than one regex match per chunk, and turns most chunks into int keys
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
# GPT-2's pattern (pre_split "gpt2", tokenizer.GPT2_SPLIT_PATTERN) has the same rules with its own
# classes: a letter is Unicode category L*, a digit N* (², ½ and Ⅻ too), whitespace is Unicode's
# White_Space (`re` adds U+001C..U+001F), and an underscore is punctuation.
_LETTER, _DIGIT, _PUNCT, _UNDERSCORE, _SPACE, _OTHER_SPACE = range(6)
_CONTRACTIONS = ("s", "d", "m", "t", "ll", "ve", "re")
PRE_SPLITS = ("default", "gpt2")   # tokenizer.SPLIT_PATTERN's cut, GPT-2's cut


def _char_class(ch: str, pre_split: str = "default") -> int:
    if ch == " ":
        return _SPACE
    if pre_split == "gpt2":
        category = unicodedata.category(ch)[0]
        if category in "LN":
            return _LETTER if category == "L" else _DIGIT
        return _OTHER_SPACE if ch.isspace() and not "\x1c" <= ch <= "\x1f" else _PUNCT
    if ch == "_":
        return _UNDERSCORE
    if re.fullmatch(r"[^\W\d_]", ch):
        return _LETTER
    if re.fullmatch(r"\d", ch):
        return _DIGIT
    if re.fullmatch(r"\s", ch):
        return _OTHER_SPACE
    return _PUNCT


_LATIN1_CLASSES = {pre_split: np.array([_char_class(chr(c), pre_split) for c in range(256)], np.uint8)
                   for pre_split in PRE_SPLITS}
for _table in _LATIN1_CLASSES.values():
    _table.flags.writeable = False


def _char_classes(codes: np.ndarray, pre_split: str) -> np.ndarray:
    """The class of each character, for a text as an array of code points."""
    latin1 = _LATIN1_CLASSES[pre_split]
    wide = codes >= 256
    if not wide.any():
        return latin1.take(codes)   # (take: several times faster than [codes] here)
    classes = latin1.take(np.where(wide, 0, codes))
    distinct, which = np.unique(codes[wide], return_inverse=True)
    classes[wide] = np.array([_char_class(chr(c), pre_split) for c in distinct.tolist()], np.uint8)[which]
    return classes


def chunk_starts(codes: np.ndarray, pre_split: str = "default") -> np.ndarray:
    """Where each chunk of SPLIT_RE.findall(text) begins (with pre_split "gpt2": of GPT-2's
    pattern), for text as an array of code points."""
    size = codes.size
    classes = _char_classes(codes, pre_split)
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


def chunk_keys(text: str, pre_split: str = "default") -> list:
    """The chunks of text (those of chunk_starts), in order, as keys: a short chunk as an int
    (see above; `chunk_of_key` turns it back), any other chunk as itself."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    starts = chunk_starts(codes, pre_split)
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


def as_token_str(chunk: str) -> str:
    """A chunk as a str of byte tokens (one character per byte, see above)."""
    return chunk.encode("utf-8").decode("latin-1")


# --- training ---------------------------------------------------------------------------------

def learn_merges(chunk_freq: dict, num_merges: int, bar=None) -> list[tuple[int, int]]:
    """The merges BPE learns from chunk -> count, at most num_merges of them: the same list as
    tokenizer.train_bpe, learned incrementally. Raises UnicodeEncodeError when a chunk holds a
    lone surrogate. bar (a tqdm bar, optional) advances by one per merge."""
    words = [as_token_str(chunk) for chunk in chunk_freq]   # each distinct chunk once ...
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


class RankTable:
    """Pair -> merge rank for numpy arrays of pairs. A pair (left, right) is the key
    left * vocab_size + right; the merges' keys are kept sorted, so a lookup is a binary search."""

    NO_MERGE = np.iinfo(np.int32).max   # ranks are int32 (vocabularies stay below tokenizer.MAX_VOCAB)

    def __init__(self, merges, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        keys = np.array([a * vocab_size + b for a, b in merges], dtype=np.int64)
        order = np.argsort(keys)
        # A last key past every pair's, so that a search never runs off the end.
        self.keys = np.append(keys[order], np.iinfo(np.int64).max)
        self.ranks = np.append(order, self.NO_MERGE).astype(np.int32)
        # Pairs of two byte tokens (the pairs of every chunk before its first merge) have a plain
        # 256 × 256 table, indexed by left * 256 + right: no search at all.
        self.byte_pair_ranks = np.full(NUM_BYTES * NUM_BYTES, self.NO_MERGE, dtype=np.int32)
        for rank, (a, b) in enumerate(merges):
            if a < NUM_BYTES and b < NUM_BYTES:
                self.byte_pair_ranks[a * NUM_BYTES + b] = rank

    def lookup(self, left, right):
        """The rank of each pair (left[i], right[i]) (int arrays), NO_MERGE where none."""
        keys = left.astype(np.int64) * self.vocab_size + right
        at = np.searchsorted(self.keys, keys)
        return np.where(self.keys.take(at) == keys, self.ranks.take(at), self.NO_MERGE).astype(np.int32)


def merge_in_bulk(chunks: list[str], table: RankTable):
    """Encode many distinct chunks at once: the ids of all of them one after another (int32), and
    how many ids each chunk got. Raises UnicodeEncodeError when a chunk holds a lone surrogate.

    The same result as ChunkEncoder.encode_chunk on each chunk, with numpy doing the work for all
    chunks together: every round, each chunk applies its lowest-ranked mergeable pair at every
    occurrence, leftmost first, which is the order encode_chunk replays them in. A chunk with no
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


# --- encoding: one chunk, many chunks, a block of text -------------------------------------------

class ChunkEncoder:
    """Encodes text with a fixed list of merges (merges[i] creates id 256 + i), as the bytes of an
    array of `typecode` ids. Remembers every distinct chunk it has encoded (self.cache, chunk key
    -> the bytes of its ids): most chunks recur, and joining bytes is much faster than building a
    list of ints. New merges need a new ChunkEncoder, so cached ids never go stale. pre_split:
    which cut makes the chunks (PRE_SPLITS)."""

    def __init__(self, merges, vocab_size: int, typecode: str, pre_split: str = "default") -> None:
        self.typecode = typecode
        self.pre_split = pre_split
        self.merges = list(merges)
        # pair (as a 2-character str, see above) -> rank, and rank -> that pair
        self.pair_strs = [chr(a) + chr(b) for a, b in self.merges]
        self.ranks = {pair: rank for rank, pair in enumerate(self.pair_strs)}
        self.rank_table = RankTable(self.merges, vocab_size)   # the same, for numpy
        self.cache: dict = {}

    def encode_chunk(self, chunk: str) -> tuple[int, ...]:
        """Apply the merges inside one chunk, the one learned earliest first.

        Replaying them in rank order is what training did to this chunk, so encoding the training
        text gives the segmentation training produced. A heap holds the ranks of the pairs seen so
        far (a rank may be there several times); a rank whose pair is no longer in the chunk is
        skipped. A merge only creates pairs with its new token, and those can only merge later (a
        higher rank), so ranks come off the heap in the order training applied them.
        """
        tokens = as_token_str(chunk)
        rank_of = self.ranks.get
        heap = [r for r in map(rank_of, map(operator.add, tokens, tokens[1:])) if r is not None]
        heapify(heap)
        done = -1  # the last rank handled; ranks come off the heap in order, repeats together
        while heap:
            rank = heappop(heap)
            if rank == done:
                continue
            done = rank
            pair = self.pair_strs[rank]
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

    def encode_new_chunks(self, chunks) -> dict[str, bytes]:
        """chunk -> the bytes of an array of its ids, for each of the distinct chunks given.
        Many at once go to merge_in_bulk (numpy, all chunks together); a few go one by one, and
        so does a very long chunk (a line of dashes, a DNA string): it would keep the bulk's
        rounds going long after the other chunks are done, where str.replace is quick."""
        if not self.merges or len(chunks) < BULK_MIN_CHUNKS:
            bulk, alone = [], chunks
        else:
            alone = [chunk for chunk in chunks if len(chunk) > BULK_MAX_CHARS]
            bulk = [chunk for chunk in chunks if len(chunk) <= BULK_MAX_CHARS] if alone else chunks
        typecode = self.typecode
        encoded = {chunk: array(typecode, self.encode_chunk(chunk)).tobytes() for chunk in alone}
        if bulk:
            ids, counts = merge_in_bulk(bulk, self.rank_table)
            data = ids.astype(np.dtype(typecode)).tobytes()
            ends = (np.cumsum(counts) * array(typecode).itemsize).tolist()
            encoded.update(zip(bulk, map(data.__getitem__, map(slice, [0] + ends, ends))))
        return encoded

    def encode_block(self, block: str) -> bytes:
        """The ids of a block of text (one that chunks on its own, see corpus.text_blocks) as the
        bytes of an array of self.typecode. Raises UnicodeEncodeError on a lone surrogate."""
        cache = self.cache
        keys = chunk_keys(block, self.pre_split)
        try:   # once the cache is warm, every chunk is in it
            return b"".join(map(cache.__getitem__, keys))
        except KeyError:   # some are new: merge those (all together), then join
            if len(cache) > CACHE_LIMIT:
                # a new dict rather than clear(): a thread still reading the old one finds what
                # it put there
                cache = self.cache = {}
            new = list(set(keys).difference(cache))
            chunks = list(map(chunk_of_key, new))
            encoded = self.encode_new_chunks(chunks)   # chunk -> the bytes of its ids
            cache.update(zip(new, map(encoded.__getitem__, chunks)))
            return b"".join(map(cache.__getitem__, keys))
