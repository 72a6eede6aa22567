"""Files that are never half-written, temp files that do not pile up, and one-line read errors.

Read this when you wonder why a crash never leaves half a checkpoint or half a tokenizer behind,
or what train.py does on Windows when another program holds one of its files open.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

# Windows differs in two ways these helpers hide: it refuses to replace or append to a file another
# program holds open, and os.kill(pid, 0) there sends Ctrl-C instead of asking whether pid exists.
WINDOWS = os.name == "nt"
# A reader (run.py loading weights-best.pth) usually lets go within a second: wait this long between
# tries before saying the file is held (about 1 s in all).
HELD_RETRY_WAITS_S = (0.1, 0.2, 0.3, 0.4)


def temp_path(path: Path) -> Path:
    """Where a new version of `path` is written before it replaces the old one: same folder (so
    the rename is atomic), marked with our process id (so a leftover can be traced to its writer)."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def atomic_write(path, write) -> None:
    """Call write(tmp) to fill a temporary file beside `path`, then rename it over `path`: readers
    see the old file or the new one, never half of one. If anything fails, the temporary file is
    removed, the error propagates, and `path` still holds its last complete version."""
    atomic_write_all({path: write})


def held_open(error: Exception) -> bool:
    """Whether a write failed because another program holds the file open: Windows refuses to replace
    or append to a file open elsewhere (a spreadsheet showing loss_history.csv), a POSIX system never
    does, so there a PermissionError is always about permissions."""
    return WINDOWS and isinstance(error, PermissionError)


def held_open_line(path) -> str:
    """The one line for a file another program holds open (see held_open), with what to do."""
    return (f"could not write {path}: another program holds it open — close it, then run train.py "
            f"again to resume")


def retry_while_held(action, *args, **kwargs):
    """action(*args, **kwargs), tried again for about a second while another program holds the file
    open (see held_open): a reader usually lets go. Returns its result; the last failure propagates."""
    for wait in HELD_RETRY_WAITS_S:
        try:
            return action(*args, **kwargs)
        except PermissionError as e:
            if not held_open(e):
                raise
            time.sleep(wait)
    return action(*args, **kwargs)


def write_failure(error: Exception, folder) -> str:
    """Why a write failed, in a few words, with the free space left where it was going."""
    if held_open(error):
        return "another program holds it open"
    why = error.strerror if isinstance(error, OSError) and error.strerror else "the write failed"
    with contextlib.suppress(OSError):
        why += f"; {shutil.disk_usage(folder).free / 1e6:,.0f} MB free there"
    return why


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (ours, or anyone's)."""
    if WINDOWS:
        return _windows_process_alive(pid, *_windows_api())
    try:
        os.kill(pid, 0)              # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:
        return True                  # exists, owned by someone else
    return True


# Windows: ask the process table (OpenProcess, GetExitCodeProcess), through ctypes.
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
STILL_ACTIVE = 259                   # the exit code of a process that has not exited
ERROR_INVALID_PARAMETER = 87         # OpenProcess's answer for an id no process has


@functools.cache
def _windows_api():
    """(kernel32, ctypes.get_last_error), typed for the three calls _windows_process_alive makes."""
    import ctypes
    from ctypes import wintypes
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.GetExitCodeProcess.argtypes = (wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD))
    kernel32.GetExitCodeProcess.restype = wintypes.BOOL
    kernel32.CloseHandle.argtypes = (wintypes.HANDLE,)
    return kernel32, ctypes.get_last_error


def _windows_process_alive(pid: int, kernel32, get_last_error) -> bool:
    """process_alive on Windows. When unsure (access denied), alive: a live writer's file must stay."""
    import ctypes
    from ctypes import wintypes
    handle = kernel32.OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not handle:
        return get_last_error() != ERROR_INVALID_PARAMETER      # e.g. access denied: it exists
    try:
        code = wintypes.DWORD()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == STILL_ACTIVE   # an exited process keeps its id while a handle is open
    finally:
        kernel32.CloseHandle(handle)


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


def crlf_to_lf(text: str) -> str:
    """text with each Windows line end "\r\n" made "\n" (a lone "\r", old Mac style, stays).

    Every reader of a file's text calls it (read_pieces), so a CRLF file teaches no "\r\n" token
    and encodes to the ids of its LF twin. A piece of read_pieces ends after a non-space character, so
    no "\r\n" is ever cut in two."""
    # Looking for "\r" first (a memchr: ~0.01 ms per MB) keeps LF text as fast as before; the
    # replace alone scans at ~1 ms per MB even when there is nothing to replace.
    return text.replace("\r\n", "\n") if "\r" in text else text


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
            retry_while_held(os.replace, tmp, path)     # atomic on the same filesystem
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
