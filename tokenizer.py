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

A tokenizer imported from GPT-2 (support/gpt2_tokenizer.py) is this BPE with three differences, all
off for those trained here: its byte tokens come in another order (`byte_order[i]` is the byte of
id i); special tokens such as "<|endoftext|>" follow the merges (ids no text encodes to unless
`allowed_special`); and it pre-splits with GPT-2's own pattern (GPT2_SPLIT_PATTERN).
"""

import hashlib
import json
import re
import sys
from array import array
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from support import fast_bpe
from support.corpus import (TokenizerError, count_chunks, encode_file, surrogate_error, text_blocks,
                            token_dtype)
from support.files import atomic_write_all
from support.tokenizer_files import check_definition, difference, is_token_id, read_json

FORMAT_VERSION = 1        # of a tokenizer trained here; 2: with an imported tokenizer's differences
NUM_BYTES = 256           # the base tokens: one per byte value
MAX_VOCAB = fast_bpe.MAX_VOCAB   # the most tokens: the fast engine holds an id as a str character
END_OF_TEXT = "<|endoftext|>"   # GPT-2's special token between documents

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

# GPT-2's own pre-split (pre_split="gpt2"), written for the `regex` module, which knows \p{L} (a
# letter) and \p{N} (any number: ², ½ and Ⅻ too, where `re` sees letters). Unlike ours, it counts
# an underscore as punctuation. The Tokenizer cuts it with numpy (fast_bpe.chunk_starts, tested).
GPT2_SPLIT_PATTERN = r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


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

    def _set_merges(self, merges, byte_order=None, special_tokens=None, pre_split="default") -> None:
        """Install merges (and an imported tokenizer's differences) and rebuild the tables derived from them."""
        self._merges = [(int(a), int(b)) for a, b in merges]
        order = list(range(NUM_BYTES)) if byte_order is None else [int(b) for b in byte_order]
        self._byte_order = None if order == list(range(NUM_BYTES)) else order
        self._special_tokens = dict(sorted((special_tokens or {}).items(), key=lambda item: item[1]))
        self._pre_split = pre_split
        self._bytes = [bytes([b]) for b in order]   # id -> the bytes it stands for
        for a, b in self._merges:
            self._bytes.append(self._bytes[a] + self._bytes[b])
        self._bytes += [text.encode("utf-8") for text in self._special_tokens]
        # The engine's ids are in byte order (id = byte value): merges go in relabelled, and
        # encode_pieces relabels what comes out (self._relabel[engine id] = id; None: no change).
        engine_merges = [tuple(order[x] if x < NUM_BYTES else x for x in pair) for pair in self._merges]
        relabel = np.arange(NUM_BYTES + len(self._merges), dtype=token_dtype(self.vocab_size))
        relabel[order] = np.arange(NUM_BYTES)
        self._relabel = relabel if self._byte_order else None
        # the fast encoder, with its chunk cache: new merges, new encoder, no stale ids
        self._encoder = fast_bpe.ChunkEncoder(engine_merges, NUM_BYTES + len(self._merges), self.typecode, pre_split)
        specials = sorted(map(re.escape, self._special_tokens), key=len, reverse=True)   # longest first
        self._special_re = re.compile(f"({'|'.join(specials)})") if specials else None

    def _differences(self) -> dict:
        """What sets an imported tokenizer apart, as format 2 saves it; {} for one trained here."""
        found = {"byte_order": self._byte_order, "special_tokens": self._special_tokens, "pre_split": self._pre_split}
        return {} if found == {"byte_order": None, "special_tokens": {}, "pre_split": "default"} else found

    @property
    def vocab_size(self) -> int:
        return NUM_BYTES + len(self._merges) + len(self._special_tokens)

    @property
    def merges(self) -> list[tuple[int, int]]:
        """The merges in rank order: merges[i] = (left_id, right_id) creates id 256 + i."""
        return list(self._merges)

    @property
    def byte_order(self) -> list[int] | None:
        """byte_order[i]: the byte value of id i < 256; None when it is i itself (ours)."""
        return None if self._byte_order is None else list(self._byte_order)

    @property
    def special_tokens(self) -> dict[str, int]:
        """text -> id of each special token (ids right after the merges); {} for ours."""
        return dict(self._special_tokens)

    @property
    def pre_split(self) -> str:
        """How text is cut into chunks: "default" (SPLIT_PATTERN) or "gpt2" (GPT2_SPLIT_PATTERN)."""
        return self._pre_split

    @property
    def end_of_text(self) -> int | None:
        """The id of "<|endoftext|>" (GPT-2's marker between documents), None if there is none."""
        return self._special_tokens.get(END_OF_TEXT)

    @property
    def typecode(self) -> str:
        """The array typecode of this vocabulary's ids: "H" (2 bytes) up to 65,536 tokens, else "I"."""
        return token_dtype(self.vocab_size).char

    def fingerprint(self) -> str:
        """A short hex id of the vocabulary: the same merges (and differences) give the same fingerprint."""
        differences = self._differences()
        data = json.dumps([self._merges, differences] if differences else self._merges,
                          separators=(",", ":")).encode("ascii")
        return hashlib.sha256(data).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, fingerprint={self.fingerprint()!r})"

    # Pickled (e.g. for encode_file's worker processes where they are spawned), a tokenizer is
    # its merges and differences alone: the tables are quick to rebuild from them.
    def __getstate__(self) -> dict:
        return {"merges": self._merges, **self._differences()}

    def __setstate__(self, state: dict) -> None:
        self._set_merges(**state)

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
        if self._differences():
            raise TokenizerError("an imported tokenizer (GPT-2's) is not trained further here: "
                                 "train a Tokenizer() of our own")
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

    def encode(self, text: str, allowed_special: bool = False) -> list[int]:
        """Text -> token ids, those of encode_bpe(text, self.merges); decode(encode(text)) == text.
        A special token's text ("<|endoftext|>") is plain text unless allowed_special: then its id."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        parts = self._special_re.split(text) if allowed_special and self._special_re else [text]
        ids = array(self.typecode)
        try:
            for i, part in enumerate(parts):   # text, special, text, ...: a special ends a chunk
                if i % 2:
                    ids.append(self._special_tokens[part])
                else:
                    for block in self.encode_pieces([part]):
                        ids.frombytes(block)
        except UnicodeEncodeError:
            raise surrogate_error(text) from None
        return ids.tolist()

    def encode_pieces(self, pieces):
        """Yield the ids of the pieces' text, a block at a time (see corpus.text_blocks), as the
        bytes of an array of self.typecode. Raises UnicodeEncodeError on a lone surrogate."""
        encoder, relabel = self._encoder, self._relabel
        for piece in pieces:
            for block in text_blocks(piece):
                ids = encoder.encode_block(block)
                yield ids if relabel is None else relabel.take(np.frombuffer(ids, relabel.dtype)).tobytes()

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
            bad = next(i for i in ids if not is_token_id(i, self.vocab_size))
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
        differences = self._differences()   # format 2 adds them (one line each) before the merges
        version = 2 if differences else FORMAT_VERSION
        head = "".join(f'  "{key}": {json.dumps(value, ensure_ascii=False)},\n' for key, value in differences.items())
        files = {
            "merges.json": f'{{\n  "format_version": {version},\n{head}  "merges": {merges}\n}}',
            "vocab_size.json": json.dumps({"format_version": version, "vocab_size": self.vocab_size}, indent=2),
            "itos.json": json.dumps(self._itos(), ensure_ascii=False, indent=1),
            "stoi.json": json.dumps(self._stoi(), ensure_ascii=False, indent=1),
        }
        atomic_write_all({directory / name: lambda tmp, content=content:
                          tmp.write_text(content + "\n", encoding="utf-8", newline="\n")
                          for name, content in files.items()})

    @classmethod
    def from_merges(cls, merges, source, byte_order=None, special_tokens=None, pre_split="default") -> "Tokenizer":
        """The tokenizer of these [left_id, right_id] merges (and an imported tokenizer's differences,
        see the properties), checked (support/tokenizer_files.py): a problem is a TokenizerError naming source."""
        check_definition(merges, source, byte_order, special_tokens, pre_split)
        tok = cls()
        tok._set_merges(merges, byte_order, special_tokens, pre_split)
        return tok

    @classmethod
    def load(cls, directory) -> "Tokenizer":
        """Read a tokenizer written by `save`; a missing or bad file raises TokenizerError."""
        directory = Path(directory)
        if not directory.is_dir():
            raise TokenizerError(f"no tokenizer in {directory}/ — run `python init.py` first")
        path = directory / "merges.json"
        data = read_json(path, "merges", versions=(1, 2))
        differences = {key: data[key] for key in ("byte_order", "special_tokens", "pre_split")
                       if key in data and data["format_version"] == 2}
        tok = cls.from_merges(data["merges"], path, **differences)

        path = directory / "vocab_size.json"
        size = read_json(path, "vocab_size", versions=(1, 2))["vocab_size"]
        if type(size) is not int or size != tok.vocab_size:
            raise TokenizerError(f"{path}: vocab_size is {size!r}, but merges.json has "
                                 f"{len(tok.merges)} merges, which make {tok.vocab_size} tokens")

        for name, expected in (("itos.json", tok._itos()), ("stoi.json", tok._stoi())):
            path = directory / name
            problem = difference(read_json(path), expected)
            if problem:
                raise TokenizerError(f"{path}: {problem}")
        return tok

