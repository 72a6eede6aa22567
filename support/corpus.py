"""Texts larger than memory: reading a UTF-8 file in pieces, sampling it, encoding it on many cores.

Read this when your corpus is bigger than RAM, or you wonder how init.py learns from a 100 MB
sample of a larger file and how train.py tokenizes it on every core. The pieces and ranges are cut
where no chunk of the pre-split can straddle, so working piece by piece gives exactly the chunks
(and the token ids) of the whole text. Nothing here knows the BPE: the tokenizer is an argument.
"""
from __future__ import annotations

import codecs
import contextlib
import math
import multiprocessing
import os
import pickle
import queue
import re
import signal
import subprocess
import sys
from array import array
from collections import Counter
from itertools import chain
from pathlib import Path

import numpy as np
from tqdm import tqdm

from support.files import crlf_to_lf, read_problem
from support.settings import UserError


class TokenizerError(ValueError):
    """A problem with tokenizer files or input, as one line naming the file and the problem.
    (Defined here, beside the file readers that raise it; tokenizer.py offers it under its name.)"""


def token_dtype(vocab_size: int) -> np.dtype:
    """The one width of stored token ids: uint16 while every id fits (vocab_size <= 65,536),
    else uint32. Tokenizer's arrays (its typecode) and train.py's token cache both use it."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")


def surrogate_error(text: str) -> TokenizerError | None:
    """The error for text's first lone surrogate (a str that has no UTF-8 bytes), None if none."""
    found = _SURROGATE_RE.search(text)
    return found and TokenizerError(f"the text has a lone surrogate (U+{ord(found[0]):04X}) at "
                                    f"index {found.start()}; it is not valid Unicode and has no "
                                    f"UTF-8 bytes")


# --- blocks: where a text can be cut without changing its chunks -------------------------------
# Long texts are split a block at a time, so no list of chunks grows with the text. A block ends
# where a non-space character meets whitespace: no chunk spans that point (only a single space
# may lead a chunk), and the pattern looks ahead only inside whitespace, so the blocks give
# exactly the chunks of the whole text. Whitespace to both pre-splits: `re`'s \s less U+001C..U+001F,
# which are punctuation to GPT-2's (Unicode's White_Space).
BLOCK_CHARS = 1 << 20
_BLOCK_END_RE = re.compile(r"\S(?=[^\S\x1c-\x1f])")
_LAST_BLOCK_END_RE = re.compile(r".*\S(?=[^\S\x1c-\x1f])", re.DOTALL)  # greedy: up to the last one

# Files are read PIECE_BYTES at a time. safe_cuts looks for a block end in windows of SCAN_BYTES;
# consecutive windows overlap by _SCAN_OVERLAP bytes, enough to hold a non-space character and
# the whitespace after it (at most 4 + 3 bytes of UTF-8), so no block end falls between them.
PIECE_BYTES = 1 << 20
RANGE_BYTES = 4 << 20   # encode_file hands out the file in ranges this size (their ids move as one array)
SCAN_BYTES = 1 << 16
_SCAN_OVERLAP = 8


def text_blocks(text: str, block_chars: int = BLOCK_CHARS):
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


def count_chunks(pieces, split_re) -> Counter:
    """How often each chunk (each match of split_re, tokenizer.SPLIT_RE) occurs in an iterable of
    texts, read a block at a time. The pieces of read_pieces end where a chunk must end, so the
    counts over the pieces of a file are the counts of the whole file as one string."""
    counts = Counter()
    for piece in pieces:
        for block in text_blocks(piece):
            counts.update(split_re.findall(block))
    return counts


def crlf_note(path) -> str | None:
    """One line for the user when the file's line ends are "\r\n" (judged by its first SCAN_BYTES),
    None otherwise: what read_pieces does with them is worth saying once."""
    with open(path, "rb") as f:
        if b"\r\n" not in f.read(SCAN_BYTES):
            return None
    return f"note: {path} has Windows line ends (CRLF); each is read as a plain newline (LF)"


def read_pieces(path, start: int = 0, end: int | None = None, piece_bytes: int = PIECE_BYTES):
    """Yield the text of bytes [start, end) of a UTF-8 file in pieces of about piece_bytes.

    Never holds more than a piece (and what a block end is waiting for) in memory. Each piece but
    the last ends at a block end (see text_blocks), so chunking the pieces one by one gives the
    chunks of the whole range; start and end should be 0, the file's size or `safe_cuts`, so the
    range's chunks are also the file's. Bytes that are not UTF-8 raise TokenizerError with their
    offset in the file.

    Line ends: each "\r\n" is read as "\n" (see crlf_to_lf), so a file saved with Windows line
    ends gives the text, the tokenizer and the ids of its LF twin. A lone "\r" stays.
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
            # Decode up to the last whole character (at the end, everything); cut: the bytes decoded.
            try:
                decoded, cut = codecs.utf_8_decode(data, "strict", at_end)
            except UnicodeDecodeError as e:
                raise TokenizerError(f"input file {path} is not valid UTF-8: bad byte 0x{data[e.start]:02X} "
                                     f"at byte offset {offset + e.start}") from None
            text = carry + decoded
            offset, tail = offset + cut, data[cut:]
            if at_end:
                if text:
                    yield crlf_to_lf(text)
                return
            last = _LAST_BLOCK_END_RE.match(text)
            split = last.end() if last else 0   # a text with no block end waits for more
            carry = text[split:]
            if split:
                yield crlf_to_lf(text[:split])


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
        data = f.read(SCAN_BYTES)
        skip = 0  # start on a character: skip the continuation bytes (10xxxxxx) of the one before
        while skip < min(3, len(data)) and data[skip] & 0xC0 == 0x80:
            skip += 1
        # Bytes that are not UTF-8 become lone surrogates here, which keeps the offsets right;
        # they are reported when the pieces are read.
        text = data[skip:].decode("utf-8", "surrogateescape")
        found = _BLOCK_END_RE.search(text)
        if found:
            return pos + skip + len(text[:found.end()].encode("utf-8", "surrogateescape"))
        if len(data) < SCAN_BYTES:
            break  # read to the end of the file without finding one
        pos += len(data) - _SCAN_OVERLAP
    return size


# --- learning from a sample (init.py) ------------------------------------------------------------

# The default sample. The merges of a vocabulary of a few thousand tokens are settled by the
# commonest pairs, which 100 MB of text pins down; reading it takes about 20 s here (chunk counting
# runs at ~5 MB/s on one core), and the counts of its distinct chunks stay far below 1 GB.
DEFAULT_SAMPLE_BYTES = 100_000_000
SAMPLE_WINDOW_BYTES = 1 << 20   # the sample is made of windows this size, spread over the file
_SIZE_RE = re.compile(r"(\d+)\s*([kmg]?)b?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9}


def parse_size(value: str) -> int | None:
    """"100000000", "100M", "500 MB", "2G" -> bytes (k, M, G are powers of 1000); None if it is
    not such a size."""
    match = _SIZE_RE.fullmatch(value.strip())
    return int(match[1]) * _SIZE_UNITS[match[2].lower()] if match else None


def input_size(path) -> int:
    """The size in bytes of the text to learn from; a missing, unreadable or empty file is a
    UserError (one line, exit code 2)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.read(1)  # readable, not just present
    except OSError as e:
        raise UserError(f"input file {path}: {read_problem(e)}") from None
    if size == 0:
        raise UserError(f"input file {path} is empty — nothing to learn from")
    return size


def sample_ranges(path, size: int, sample_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges of the file to learn from, each starting and ending at a safe cut.

    A file of at most sample_bytes is covered whole, by consecutive ranges. A larger one gives
    about sample_bytes in windows of about SAMPLE_WINDOW_BYTES spread evenly over it, so every
    part of the file (a corpus is often sorted by source or date) has its say.
    """
    taken = min(size, sample_bytes)
    windows = math.ceil(taken / SAMPLE_WINDOW_BYTES)
    # Window i spans [i*size/windows, (i*size + taken)/windows): when taken == size, each one ends
    # where the next begins, and the cuts found from equal offsets are equal.
    offsets = chain.from_iterable((i * size // windows, (i * size + taken) // windows)
                                  for i in range(windows))
    cuts = safe_cuts(path, offsets)
    return [(start, end) for start, end in zip(cuts[::2], cuts[1::2]) if start < end]


def read_sample(path, ranges, bar):
    """Yield the text of the ranges a piece at a time (see read_pieces); bar counts the bytes."""
    for start, end in ranges:
        yield from read_pieces(path, start, end)
        bar.update(end - start)


# --- encoding a file on several processes (train.py) ---------------------------------------------

def encode_ranges(encode_pieces, typecode: str, path, ranges):
    """Yield the ids of each byte range [start, end) of a UTF-8 file (see read_pieces) as an array
    of typecode. encode_pieces(pieces) yields the bytes of such arrays (Tokenizer.encode_pieces)."""
    for start, end in ranges:
        ids = array(typecode)
        for block in encode_pieces(read_pieces(path, start, end)):
            ids.frombytes(block)
        yield ids


def encode_file(encode_pieces, typecode: str, path, workers: int = 1, range_bytes: int | None = None,
                progress: bool = False):
    """Yield the ids of a UTF-8 file as arrays of typecode, in file order, one per range of about
    range_bytes (default 4 MB), encoded on `workers` processes (see Tokenizer.encode_file).

    Joined, the arrays equal the encoding of the whole text: the ranges start and end at safe_cuts.
    Memory stays bounded whatever the file's size: a worker holds a piece of text, its chunk
    cache and at most three ranges' ids. Bytes that are not UTF-8 raise TokenizerError with
    their offset (the first bad range in file order).
    """
    size = os.stat(path).st_size
    if range_bytes is None:
        range_bytes = min(RANGE_BYTES, max(1, -(-size // workers)))  # a range per worker at least
    cuts = sorted(set(safe_cuts(path, range(0, size, range_bytes)) + [size]))
    ranges = list(zip(cuts, cuts[1:]))
    workers = max(1, min(workers, len(ranges)))
    with tqdm(total=size, unit="B", unit_scale=True, desc="tokenizing", file=sys.stderr,
              disable=not progress) as bar:
        if workers == 1:
            parts = encode_ranges(encode_pieces, typecode, path, ranges)  # in this process
        else:
            parts = _encode_in_processes(encode_pieces, typecode, path, ranges, workers)
        for (start, end), ids in zip(ranges, parts):
            yield ids
            bar.update(end - start)


# How encode_file starts its workers. "fork" (Linux) starts one in milliseconds with the tokenizer
# loaded (the workers run only Python and numpy code). Elsewhere (macOS, Windows) "spawn": each a
# fresh Python running support/encode_worker.py (see _encode_in_fresh_interpreters).
WORKER_START = "fork" if sys.platform.startswith("linux") else "spawn"


def _encode_in_processes(encode_pieces, typecode: str, path, ranges, workers: int):
    """encode_ranges(...) on `workers` processes. Worker k takes ranges k, k + workers,
    k + 2 × workers, ... (so its chunk cache stays warm) and hands each array over through a
    queue of its own holding at most two, so taking from the queues in turn gives the arrays in
    file order while the workers run ahead by at most two ranges each."""
    if WORKER_START == "spawn":
        yield from _encode_in_fresh_interpreters(encode_pieces, typecode, path, ranges, workers)
        return
    context = multiprocessing.get_context("fork")
    queues = [context.Queue(maxsize=2) for _ in range(workers)]
    processes = [context.Process(target=_encode_stripe, daemon=True,
                                 args=(encode_pieces, typecode, path, ranges[k::workers], queues[k]))
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


def _encode_in_fresh_interpreters(encode_pieces, typecode: str, path, ranges, workers: int):
    """_encode_in_processes without fork: worker k is a new Python running support/encode_worker.py,
    which reads its job from its stdin and writes its messages to its stdout, both pickled. The pipe
    is the queue: a worker waits to write its next array until this process reads, so it runs
    ahead by at most that array and the pipe's buffer."""
    # Why not multiprocessing's "spawn": its children first run the parent's main script again, as
    # __mp_main__ (multiprocessing/spawn.py, get_preparation_data, finds it from __main__.__spec__
    # or __main__.__file__), and it has no public switch to skip that: every worker of train.py would
    # import torch (seconds and ~220 MB each). A script started with subprocess is its own __main__
    # (documented, and nothing else runs first): encode_worker.py imports only what encoding needs.
    # Like spawn, it first takes this process's sys.path, so `support` and the tokenizer's module
    # import there as they do here.
    worker = [sys.executable, str(Path(__file__).with_name("encode_worker.py"))]
    processes = []
    try:
        for _ in range(workers):   # all started before any job is written: they start side by side
            processes.append(subprocess.Popen(worker, stdin=subprocess.PIPE, stdout=subprocess.PIPE))
        for k, process in enumerate(processes):
            job = (encode_pieces, typecode, os.path.abspath(path), ranges[k::workers])
            # A worker that died at start cannot take its job (Windows says EINVAL, not EPIPE);
            # _read_message then says how it ended.
            with contextlib.suppress(OSError), process.stdin:
                pickle.dump(sys.path, process.stdin)
                pickle.dump(job, process.stdin)
        for i in range(len(ranges)):
            yield _read_message(processes[i % workers])
    finally:
        for process in processes:   # done, failed, or the caller stopped early
            process.terminate()
        for process in processes:
            process.wait()
            process.stdout.close()


def _read_message(process) -> array:
    """The next array a fresh-interpreter worker writes; raise what it raised, or TokenizerError if
    it ended without a word."""
    try:
        kind, value = pickle.load(process.stdout)
    except (EOFError, pickle.UnpicklingError):
        raise TokenizerError(_ended_abruptly(process.wait())) from None
    if kind == "error":
        raise value
    return value


def _ended_abruptly(exitcode) -> str:
    return (f"a tokenizing process ended abruptly (exit code {exitcode}; out of memory?) — "
            f"try fewer worker processes")


def _encode_stripe(encode_pieces, typecode: str, path, ranges, out) -> None:
    """A worker process of encode_file: encode ranges in order, putting ("ids", array) for each,
    or ("error", exception) on failure, into the queue out (or anything with a .put)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it ends us
    try:
        for ids in encode_ranges(encode_pieces, typecode, path, ranges):
            out.put(("ids", ids))
    except Exception as e:  # e.g. invalid UTF-8: the parent raises it
        out.put(("error", e))


def _receive(source, process) -> array:
    """The next array a worker process puts into source; raise what it raised, or TokenizerError
    if it died without a word (killed, e.g. for lack of memory)."""
    while True:
        ended = not process.is_alive()   # asked before the wait: what it put before ending still comes
        try:
            kind, value = source.get(timeout=1)
            break
        except queue.Empty:
            if ended:
                raise TokenizerError(_ended_abruptly(process.exitcode)) from None
    if kind == "error":
        raise value
    return value
