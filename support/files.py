"""Files that are never half-written, temp files that do not pile up, and one-line read errors.

Read this when you wonder why a crash never leaves half a checkpoint or half a tokenizer behind.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path


def temp_path(path: Path) -> Path:
    """Where a new version of `path` is written before it replaces the old one: same folder (so
    the rename is atomic), marked with our process id (so a leftover can be traced to its writer)."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def atomic_write(path, write) -> None:
    """Call write(tmp) to fill a temporary file beside `path`, then rename it over `path`: readers
    see the old file or the new one, never half of one. If anything fails, the temporary file is
    removed, the error propagates, and `path` still holds its last complete version."""
    atomic_write_all({path: write})


def write_failure(error: Exception, folder) -> str:
    """Why a write failed, in a few words, with the free space left where it was going."""
    why = error.strerror if isinstance(error, OSError) and error.strerror else "the write failed"
    with contextlib.suppress(OSError):
        why += f"; {shutil.disk_usage(folder).free / 1e6:,.0f} MB free there"
    return why


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (ours, or anyone's)."""
    try:
        os.kill(pid, 0)              # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:
        return True                  # exists, owned by someone else
    return True


def remove_stale_temps(folder, name_pattern: str, say, left_by: str) -> None:
    """Remove NAME.PID.tmp files in `folder` (NAME matching the regex name_pattern) whose writer
    process is gone: a write killed before its rename leaves one, never a complete file, never
    read. A live PID may be another process writing right now, so its file stays."""
    for tmp in Path(folder).glob("*.tmp"):
        match = re.fullmatch(rf"({name_pattern})\.(\d+)\.tmp", tmp.name)
        if match and int(match[2]) != os.getpid() and not process_alive(int(match[2])):
            with contextlib.suppress(OSError):
                tmp.unlink()
                say(f"note: removed {tmp}, left by {left_by}")


def read_problem(error: Exception) -> str:
    """Why a file could not be read as UTF-8 text, in a few words (to follow the file's name)."""
    if isinstance(error, FileNotFoundError):
        return "not found"
    if isinstance(error, IsADirectoryError):
        return "is a folder, not a text file"
    if isinstance(error, UnicodeDecodeError):
        return f"not UTF-8 text (invalid byte at offset {error.start})"
    if isinstance(error, OSError):
        return f"cannot be read ({error.strerror or error})"
    raise error


def atomic_write_all(writers: dict) -> None:
    """atomic_write for files that belong together, {path: write}: all are written, then all renamed,
    so a failure while writing leaves every old file as it was. (Only a crash between the renames,
    a few microseconds, could mix old and new files; replace_folder, which swaps a folder, cannot.)"""
    temps = {Path(path): temp_path(Path(path)) for path in writers}
    try:
        for path, write in writers.items():
            write(temps[Path(path)])
        for path, tmp in temps.items():
            os.replace(tmp, path)        # atomic on the same filesystem
    finally:
        for tmp in temps.values():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()             # only there when something failed


def replace_folder(folder, fill) -> None:
    """Replace folder (if any) by a new one that fill(new_folder) writes: fill works in a fresh
    folder beside it, and only when fill has returned is the new folder swapped in, by two renames.
    If anything fails, folder stays exactly as it was and the new one is removed."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # a private folder on the same filesystem, so both renames below are atomic
    work = Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp-", dir=folder.parent))
    new, old = work / "new", work / "old"
    try:
        new.mkdir()
        fill(new)
        if folder.exists():
            os.replace(folder, old)
        try:
            os.replace(new, folder)
        except BaseException:
            if old.exists():
                os.replace(old, folder)  # put the previous folder back
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
