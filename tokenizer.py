"""A byte-level BPE tokenizer, trained from scratch on a text.

1. A text is UTF-8 bytes, and each of the 256 byte values is a base token (id = byte value), so
   every string can be encoded: there is no "unknown" token.
2. The pre-split: the text is first cut into chunks by SPLIT_PATTERN (a word with the space before
   it, a number, a run of punctuation, a run of whitespace). No merge crosses a chunk boundary, so
   a token never glues a word to the punctuation or the newline after it.
3. Training counts the adjacent pairs of tokens inside the chunks and replaces the most frequent
   pair everywhere by a new token: merge i creates id 256 + i. Again and again, until the
   vocabulary is full. Ties go to the smallest (left_id, right_id): the same text, the same merges.
4. Encoding cuts a text into the same chunks and, inside each, replays the merges in the order
   they were learned. Decoding joins the bytes of the tokens.

`train_bpe` and `encode_bpe` below are the whole algorithm, written to be read. `Tokenizer` gives
the same merges and ids many times faster (support/fast_bpe.py), reads files larger than memory
(support/corpus.py), and saves itself as four UTF-8 JSON files, readable by a person: merges.json
(the merges in the order learned, which alone define the vocabulary), vocab_size.json, and itos.json
and stoi.json (id -> token text and back; checked against merges.json on loading). Token text is a
token's bytes as text when they are valid UTF-8, else one `<0xHH>` per byte, e.g. "<0xE2><0x80>"
(part of a character); a token whose real text starts with "<0x" is escaped too, so the form is
lossless and unambiguous.
"""

import hashlib
import json
import operator
import re
import sys
from array import array
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from support import fast_bpe
from support.corpus import (TokenizerError, count_chunks, encode_file, surrogate_error, text_blocks,
                            token_dtype)
from support.files import atomic_write_all, read_problem

FORMAT_VERSION = 1
NUM_BYTES = 256           # the base tokens: one per byte value
MAX_VOCAB = 0x110000      # the fast engine holds a token id as a str character: chr(id)

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


# --- the plain BPE: the whole algorithm, for reading ---------------------------------------------

def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """ids with each occurrence of pair replaced by new_id, left to right: with pair (a, a),
    [a, a, a] -> [new, a] (occurrences that overlap are taken from the left)."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_bpe(text: str, vocab_size: int) -> list[tuple[int, int]]:
    """The merges BPE learns from text, most frequent pair first: merges[i] = (left_id, right_id)
    creates id 256 + i. Ties go to the smallest pair. Stops at vocab_size tokens, or earlier when
    every chunk is a single token. Plain and slow (every pair is recounted before every merge)."""
    chunk_counts = Counter(SPLIT_RE.findall(text))   # each distinct chunk once, with how often it occurs
    tokens = {chunk: list(chunk.encode("utf-8")) for chunk in chunk_counts}   # its tokens so far
    merges = []
    while NUM_BYTES + len(merges) < vocab_size:
        pair_counts = Counter()
        for chunk, ids in tokens.items():
            for pair in zip(ids, ids[1:]):
                pair_counts[pair] += chunk_counts[chunk]
        if not pair_counts:
            break                                    # every chunk is one token: nothing to merge
        best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
        tokens = {chunk: merge_pair(ids, best, NUM_BYTES + len(merges)) for chunk, ids in tokens.items()}
        merges.append(best)
    return merges


def encode_bpe(text: str, merges, on_merge=None) -> list[int]:
    """Text -> token ids: cut text into chunks; in each, apply the merges in the order learned.
    Each step merges the chunk's pair learned earliest (lowest rank): a merge only makes pairs
    with its new token, learned later, so this replays the merges in rank order, as training did.
    on_merge(rank, chunk_index, ids), if given, sees each step's result (init.py --explain)."""
    rank_of = {tuple(pair): rank for rank, pair in enumerate(merges)}
    out = []
    for chunk_index, chunk in enumerate(SPLIT_RE.findall(text)):
        ids = list(chunk.encode("utf-8"))
        while len(ids) > 1:
            rank = min(rank_of.get(pair, len(merges)) for pair in zip(ids, ids[1:]))
            if rank == len(merges):
                break                                # no pair of this chunk was ever merged
            ids = merge_pair(ids, tuple(merges[rank]), NUM_BYTES + rank)
            if on_merge:
                on_merge(rank, chunk_index, ids)
        out += ids
    return out


# --- token text (the escape scheme) --------------------------------------------------------------

_ESCAPE_PREFIX = "<0x"
_ESCAPED_RE = re.compile(r"(?:<0x[0-9A-F]{2}>)+")


def token_text(token: bytes) -> str:
    """How a token's bytes are shown in the JSON files and by `split` (see the module docstring)."""
    try:
        if not (text := token.decode("utf-8")).startswith(_ESCAPE_PREFIX):
            return text
    except UnicodeDecodeError:
        pass
    return "".join(f"<0x{b:02X}>" for b in token)


def token_bytes(text: str) -> bytes:
    """The inverse of `token_text`; raises ValueError on a malformed escaped form."""
    if not text.startswith(_ESCAPE_PREFIX):
        return text.encode("utf-8")
    if not _ESCAPED_RE.fullmatch(text):
        raise ValueError(f"malformed escaped token {text!r}")
    return bytes(int(text[i + 3:i + 5], 16) for i in range(0, len(text), 6))


# --- the tokenizer -------------------------------------------------------------------------------

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
        # the fast encoder, with its chunk cache: new merges, new encoder, no stale ids
        self._encoder = fast_bpe.ChunkEncoder(self._merges, self.vocab_size, self.typecode)

    @property
    def vocab_size(self) -> int:
        return NUM_BYTES + len(self._merges)

    @property
    def merges(self) -> list[tuple[int, int]]:
        """The merges in rank order: merges[i] = (left_id, right_id) creates id 256 + i."""
        return list(self._merges)

    @property
    def typecode(self) -> str:
        """The array typecode of this vocabulary's ids: "H" (2 bytes) up to 65,536 tokens, else "I"."""
        return token_dtype(self.vocab_size).char

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
        """Learn the merges of train_bpe(text, vocab_size), replacing any learned before (fewer
        when no chunk has two tokens left)."""
        if not isinstance(text, str):
            raise TypeError(f"train expects a str, got {type(text).__name__}")
        if error := surrogate_error(text):   # say where in the text, before any work
            raise error
        self.train_from_chunk_counts(count_chunks([text], SPLIT_RE), vocab_size, progress)

    def train_from_chunk_counts(self, chunk_freq: Counter, vocab_size: int, progress: bool = False):
        """Learn merges from chunk -> count, as `train` does from a text: how a file larger than
        memory is learned, its chunks counted piece by piece (corpus.count_chunks)."""
        if type(vocab_size) is not int or not NUM_BYTES <= vocab_size <= MAX_VOCAB:
            raise ValueError(f"vocab_size must be an integer from {NUM_BYTES} to {MAX_VOCAB}, "
                             f"got {vocab_size!r}")
        num_merges = vocab_size - NUM_BYTES
        try:
            with tqdm(total=num_merges, unit="merge", desc="merges", file=sys.stderr,
                      disable=not progress) as bar:
                # Same merges as train_bpe, learned incrementally: see support/fast_bpe.py.
                merges = fast_bpe.learn_merges(chunk_freq, num_merges, bar)
        except UnicodeEncodeError:   # a chunk with a lone surrogate: say which
            raise next(filter(None, map(surrogate_error, chunk_freq))) from None
        self._set_merges(merges)

    # --- encoding and decoding --------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Text -> token ids, those of encode_bpe(text, self.merges); decode(encode(text)) == text."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        ids = array(self.typecode)
        try:
            for block in self.encode_pieces([text]):
                ids.frombytes(block)
        except UnicodeEncodeError:
            raise surrogate_error(text) from None
        return ids.tolist()

    def encode_pieces(self, pieces):
        """Yield the ids of the pieces' text, a block at a time (see corpus.text_blocks), as the
        bytes of an array of self.typecode. Raises UnicodeEncodeError on a lone surrogate."""
        encoder = self._encoder
        for piece in pieces:
            for block in text_blocks(piece):
                yield encoder.encode_block(block)

    def count_tokens(self, chunk_freq: Counter) -> int:
        """How many tokens a text with these chunk counts encodes to, encoding each distinct chunk
        once: for count_chunks([text]) it is len(encode(text)), at a fraction of the work."""
        encoded = self._encoder.encode_new_chunks(list(chunk_freq))   # chunk -> bytes of its ids
        num_bytes = sum(n * len(encoded[chunk]) for chunk, n in chunk_freq.items())
        return num_bytes // token_dtype(self.vocab_size).itemsize

    def encode_file(self, path, workers: int = 1, range_bytes: int | None = None, progress=False):
        """Yield the ids of a UTF-8 file as arrays of self.typecode, in file order, one per range of
        about range_bytes (default 4 MB), encoded on `workers` processes, in bounded memory (see
        support/corpus.py). Joined, they equal encode(whole text, "\r\n" read as "\n"). Bad UTF-8: TokenizerError."""
        return encode_file(self.encode_pieces, self.typecode, path, workers, range_bytes, progress)

    def decode_bytes(self, ids) -> bytes:
        """Token ids -> the bytes they stand for (may end inside a UTF-8 character)."""
        ids = list(ids)
        try:
            if ids and min(ids) < 0:
                raise IndexError
            return b"".join(map(self._bytes.__getitem__, ids))
        except (IndexError, TypeError):
            bad = next(i for i in ids if not _is_token_id(i, self.vocab_size))
            raise TokenizerError(f"token id {bad!r} is not in the vocabulary "
                                 f"(ids go from 0 to {self.vocab_size - 1})") from None

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
        """Write the four JSON files into directory (created if needed), all four renamed into place
        only when all are complete: a failed save leaves the tokenizer that was there as it was."""
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
        atomic_write_all({directory / name: lambda tmp, content=content:
                          tmp.write_text(content + "\n", encoding="utf-8", newline="\n")
                          for name, content in files.items()})

    @classmethod
    def from_merges(cls, merges, source) -> "Tokenizer":
        """The tokenizer of these [left_id, right_id] merges, checked; a problem is a TokenizerError naming source."""
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
        tok = cls()
        tok._set_merges(merges)
        return tok

    @classmethod
    def load(cls, directory) -> "Tokenizer":
        """Read a tokenizer written by `save`; a missing or bad file raises TokenizerError."""
        directory = Path(directory)
        if not directory.is_dir():
            raise TokenizerError(f"no tokenizer in {directory}/ — run `python init.py` first")
        path = directory / "merges.json"
        tok = cls.from_merges(_read_json(path, "merges")["merges"], path)

        path = directory / "vocab_size.json"
        size = _read_json(path, "vocab_size")["vocab_size"]
        if type(size) is not int or size != tok.vocab_size:
            raise TokenizerError(f"{path}: vocab_size is {size!r}, but merges.json has "
                                 f"{len(tok.merges)} merges, which make {tok.vocab_size} tokens")

        for name, expected in (("itos.json", tok._itos()), ("stoi.json", tok._stoi())):
            path = directory / name
            problem = _difference(_read_json(path), expected)
            if problem:
                raise TokenizerError(f"{path}: {problem}")
        return tok


# --- helpers -------------------------------------------------------------------------------------

def _is_token_id(x, vocab_size: int) -> bool:
    """Whether x can index the vocabulary (ints, and numpy or torch integers, from 0)."""
    try:
        return 0 <= operator.index(x) < vocab_size
    except TypeError:
        return False


def _read_json(path: Path, key: str | None = None):
    """Parse one JSON file, turning every way it can fail into a one-line TokenizerError. With
    key, the file must be an object holding "format_version" (the one this code reads) and key."""
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
        if _is_original_format(data):
            raise TokenizerError(f"{path}: this is the original project's tokenizer format (merges as "
                                 f"pairs of its own token ids, no format_version), which this code does "
                                 f"not read — run `python init.py` to make a tokenizer in this format")
        if not isinstance(data, dict) or "format_version" not in data or key not in data:
            raise TokenizerError(f"{path}: expected an object with \"format_version\" and \"{key}\"")
        if data["format_version"] != FORMAT_VERSION:
            raise TokenizerError(f"{path}: format_version {data['format_version']!r} is not "
                                 f"supported (this code reads version {FORMAT_VERSION})")
    return data


def _is_original_format(data) -> bool:
    """Whether a merges.json holds the original project's merges: no "format_version", and the
    merges as bare pairs of its token ids (or of their text): a list of pairs, or an object keyed by them."""
    if isinstance(data, dict):
        return bool(data) and "format_version" not in data and "merges" not in data
    return isinstance(data, list) and bool(data) and all(isinstance(pair, list) and len(pair) == 2 for pair in data)


def _difference(got, expected: dict) -> str | None:
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
