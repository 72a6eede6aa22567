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
   they were learned. Decoding joins the bytes of the tokens.

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
"""

import hashlib
import json
import operator
import os
import re
import sys
from collections import Counter, defaultdict
from heapq import heapify, heappop, heappush, heapreplace
from itertools import chain
from pathlib import Path

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

# encode() remembers the ids of the distinct chunks it meets during one call; past this many it
# starts afresh, so encoding a huge text cannot grow the cache without bound.
_CACHE_LIMIT = 200_000

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


def chunk_blocks(text: str, block_chars: int = _BLOCK_CHARS):
    """Yield the chunks of text (SPLIT_RE.findall(text)) as a few lists, a block at a time."""
    start = 0
    while start < len(text):
        end = start + block_chars
        if end < len(text):
            cut = _BLOCK_END_RE.search(text, end)
            end = cut.end() if cut else len(text)
        yield SPLIT_RE.findall(text, start, end)
        start = end


def _as_token_str(chunk: str) -> str:
    """A chunk as a str of byte tokens (one character per byte, see above)."""
    return chunk.encode("utf-8").decode("latin-1")


# --- training ---------------------------------------------------------------------------------

def _learn_merges(chunk_freq: Counter, num_merges: int, bar=None) -> list[tuple[int, int]]:
    """The BPE training loop over distinct chunks and their frequencies (see Tokenizer.train)."""
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
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) \
                or not NUM_BYTES <= vocab_size <= MAX_VOCAB:
            raise ValueError(f"vocab_size must be an integer from {NUM_BYTES} to {MAX_VOCAB}, "
                             f"got {vocab_size!r}")
        chunk_freq = Counter()
        for chunks in chunk_blocks(text):
            chunk_freq.update(chunks)
        num_merges = vocab_size - NUM_BYTES
        try:
            with tqdm(total=num_merges, unit="merge", desc="merges", file=sys.stderr,
                      disable=not progress) as bar:
                merges = _learn_merges(chunk_freq, num_merges, bar)
        except UnicodeEncodeError:
            raise _surrogate_error(text) from None
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

    def encode(self, text: str) -> list[int]:
        """Text -> token ids; decode(encode(text)) == text for every str (lone surrogates aside)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        ids: list[int] = []
        cache: dict[str, tuple[int, ...]] = {}  # chunk -> ids; most chunks repeat
        try:
            for chunks in chunk_blocks(text):
                if len(cache) > _CACHE_LIMIT:
                    cache.clear()
                for chunk in set(chunks).difference(cache):
                    cache[chunk] = self._encode_chunk(chunk)
                ids += chain.from_iterable(map(cache.__getitem__, chunks))
        except UnicodeEncodeError:
            raise _surrogate_error(text) from None
        return ids

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


def _is_token_id(x, vocab_size: int) -> bool:
    """Whether x can index the vocabulary (ints, and numpy or torch integers, from 0)."""
    try:
        return 0 <= operator.index(x) < vocab_size
    except TypeError:
        return False


def _surrogate_error(text: str) -> TokenizerError:
    pos = re.search(r"[\ud800-\udfff]", text).start()
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
