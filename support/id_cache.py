"""train.py's token-id cache: the input tokenized once, its ids kept as a .npy file beside it.

Read this when you wonder why the second run of train.py on a big text starts at once. The ids are
written as they are produced and read back memory-mapped, so they are never whole in memory.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
from pathlib import Path

import numpy as np

from support.corpus import crlf_note, token_dtype
from support.distributed import Processes, barrier
from support.files import atomic_write, read_problem, remove_stale_temps
from support.settings import UserError

HASH_BLOCK_BYTES = 1 << 20   # the input is hashed this much at a time: memory stays small whatever its size


def data_fingerprint(input_path: Path, tokenizer) -> str:
    """Identity of the token stream: the input's bytes and the vocabulary that splits them. The file
    is hashed a block at a time, so its size does not matter."""
    h = hashlib.sha256()
    try:
        with open(input_path, "rb") as f:
            while block := f.read(HASH_BLOCK_BYTES):
                h.update(block)
    except OSError as e:
        hint = " — pass --input PATH" if isinstance(e, FileNotFoundError) else ""
        raise UserError(f"input file {input_path}: {read_problem(e)}{hint}") from None
    h.update(b"\0" + tokenizer.fingerprint().encode())
    return h.hexdigest()[:16]


def cache_path_for(input_path: Path, data_fp: str, tokenizer) -> Path:
    """Where the ids of this text under this tokenizer (data_fp) are cached. The key also hashes
    the encoder's source (tokenizer.py and its fast engine): a fixed encoder bug must not leave stale
    ids behind under the same vocabulary."""
    h = hashlib.sha256(data_fp.encode())
    here = Path(__file__).resolve().parent
    with contextlib.suppress(OSError, TypeError):
        for source in (Path(inspect.getsourcefile(type(tokenizer))), here / "fast_bpe.py", here / "corpus.py"):
            h.update(source.read_bytes())
    return input_path.parent / ".cache" / f"{input_path.name}.{h.hexdigest()[:16]}.tokens.npy"


def _npy_header(f, dtype: np.dtype, count: int) -> None:
    # numpy leaves room in the header for the longest count, so the header written before the ids
    # are counted has the size of the final one, which is written over it.
    np.lib.format.write_array_header_1_0(
        f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (count,)})


def tokenize_into(f, input_path: Path, tokenizer, workers: int, range_bytes: int | None,
                  progress: bool) -> int:
    """Write the input's token ids into the open binary file f as a .npy array; returns their count.
    The text is encoded in ranges on `workers` processes and the ids written as they come, in order."""
    dtype = token_dtype(tokenizer.vocab_size)
    _npy_header(f, dtype, 0)
    data_start, count = f.tell(), 0
    with contextlib.closing(tokenizer.encode_file(input_path, workers, range_bytes, progress)) as parts:
        for ids in parts:
            f.write(np.asarray(ids, dtype=dtype))
            count += len(ids)
    f.seek(0)
    _npy_header(f, dtype, count)
    if f.tell() != data_start:                    # numpy changed its header layout: never misread ids
        raise OSError(f"the .npy header of {count} ids does not fit the space left for it")
    return count


def write_cache(cache: Path, input_path: Path, tokenizer, workers: int, range_bytes: int | None,
                progress: bool, say) -> None:
    """Tokenize the input into the cache file: written under a temporary name and renamed when complete.
    A folder we may not write to only costs a re-tokenization next time."""
    remove_stale_temps(cache.parent, r".+\.tokens\.npy", say, "an interrupted tokenization")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            tokenize_into(f, input_path, tokenizer, workers, range_bytes, progress)

    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, write)
    except OSError as e:
        say(f"note: could not cache token ids in {cache.parent}/ ({e.strerror or e}); tokenizing into "
            f"memory, every run")


def default_workers() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load_token_ids(input_path: Path, data_fp: str, tokenizer, procs: Processes, say,
                   workers: int | None = None, range_bytes: int | None = None) -> np.ndarray:
    """The token ids of the input, memory-mapped from the cache, tokenized first on `workers` processes
    (default: all cores) when not cached yet. Under torchrun rank 0 tokenizes while the others wait,
    then all map the cache. range_bytes: how much text each worker takes at a time (see
    Tokenizer.encode_file; the default suits large files)."""
    cache = cache_path_for(input_path, data_fp, tokenizer)
    workers = workers or default_workers()
    if procs.is_main and not cache.exists():
        size = input_path.stat().st_size
        if size >= 100_000:                       # worth a word (and a bar) only when it takes a while
            say(f"tokenizing {input_path} ({size:,} bytes) once, on {workers} process(es); "
                f"the ids are cached in {cache.parent}/")
        write_cache(cache, input_path, tokenizer, workers, range_bytes, size >= 100_000, say)
        if note := crlf_note(input_path):         # read as LF; said once it has read as text
            say(note)
    barrier(procs)                                # rank 0 has written the cache
    if cache.exists():
        return np.load(cache, mmap_mode="r")      # memory-mapped: pages load as windows touch them
    # No cache (an unwritable folder, or under torchrun another machine's disk): the ids in memory.
    dtype = token_dtype(tokenizer.vocab_size)
    parts = tokenizer.encode_file(input_path, workers, range_bytes)
    return np.concatenate([np.zeros(0, dtype)] + [np.asarray(ids, dtype) for ids in parts])
