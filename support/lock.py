"""One train.py per weights folder: an OS file lock that refuses a second run on the same folder.

Read this when train.py says another run is writing to the folder. Two runs on one folder would
both train to the end and interleave loss_history.csv. Why not a "lock file exists" check:
- The lock is the OS's (flock; on Windows, msvcrt.locking of one byte), dropped the moment its
  process ends, however it ends, so a stale lock never blocks the next run. `.train.lock` only
  carries the holder's process id for a refused run's message; it is never deleted (that could let
  two runs lock two files of one name).
- A forked child shares the flock, and train.py forks tokenizer workers, so every fork closes the
  child's copy at once (os.register_at_fork). Where the system has no file locks or the filesystem
  refuses them, the run says so once and carries on unguarded.
"""
from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path

from support.settings import UserError

try:
    import fcntl
except ImportError:                  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:                  # POSIX
    msvcrt = None

LOCK_NAME = ".train.lock"
# The holder writes its process id just after taking the lock; a refused run that looks in that
# instant finds the file empty, so it looks again for up to this long before naming no one.
PID_WAIT_S = 2.0
# Windows locks byte ranges, and another process cannot read a locked byte: the lock is on one byte
# far past the process id at the start of the file (a lock may lie beyond the file's end).
WINDOWS_LOCK_BYTE = 1 << 20

# fd -> the token of the FolderLock holding it: for the fork hook below, and so that release()
# closes only its own fd (a number the OS may have handed out again since). Tokens, not the locks
# themselves, so that this table does not keep a dropped lock alive.
_HELD: dict[int, object] = {}


def _close_in_forked_child() -> None:
    """Runs in every forked child: close its copies of held lock files. Closing (not unlocking!)
    drops only the child's reference; an unlock here would release the parent's lock too."""
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_forked_child)


class FolderLock:
    """A held folder lock, released by release(), by leaving `with`, when the object is dropped, or
    when the process ends. Keep a reference for as long as the folder must stay yours."""

    def __init__(self, folder: Path, fd: int | None):
        self.folder, self._fd, self._token = folder, fd, object()
        if fd is not None:
            _HELD[fd] = self._token

    @property
    def held(self) -> bool:
        """False when the platform could not lock (see hold_folder) or after release()."""
        return self._fd is not None and _HELD.get(self._fd) is self._token

    def release(self) -> None:
        """Let another run take the folder (the lock file stays; it is harmless)."""
        if self.held:
            del _HELD[self._fd]
            _unlock_before_close(self._fd)
            os.close(self._fd)           # closing the last reference to the open file unlocks it
        self._fd = None

    def __del__(self):
        # Dropped with the Trainer that holds it: a script calling train.main() twice in one process
        # (as the tests do) must find the folder free the second time.
        try:
            self.release()
        except Exception:                # at interpreter exit; the OS drops the lock then anyway
            pass

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def hold_folder(folder, say) -> FolderLock:
    """Lock `folder` (which must exist) for this process, or raise UserError naming the run that
    holds it. `say` gets the one note when the folder cannot be locked on this system."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        # close-on-exec (not inherited), as Python opens every file; binary, so Windows writes "\n" as is
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
    except OSError as e:
        raise UserError(f"cannot create {path} ({e.strerror or e}) — pass --weights-dir with a "
                        f"writable folder") from None

    def unguarded(why: str) -> FolderLock:
        os.close(fd)
        say(f"note: cannot guard {folder}/ against a second train.py ({why}); run one train.py per weights folder")
        return FolderLock(folder, None)

    try:
        if not _lock(fd):
            return unguarded("no file locks on this system")
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return unguarded(e.strerror or str(e))   # e.g. ENOLCK, EOPNOTSUPP on some network filesystems
        pid = _holder_pid(fd)
        os.close(fd)
        who = f"another train.py (process {pid})" if pid is not None else "another train.py"
        raise UserError(f"{who} is writing to {folder}/ — wait for it to finish, or pass "
                        f"--weights-dir DIR to train into another folder") from None
    # Ours now: replace the last holder's id with ours (it may be a killed run's). The id only
    # improves a refused run's message, so a failed write (a full disk) does not stop this run.
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
    return FolderLock(folder, fd)


def _lock(fd: int) -> bool:
    """Take this system's exclusive lock on the open lock file, without waiting. -> False where the
    system has no file locks; OSError when another process holds it (EWOULDBLOCK, EAGAIN or EACCES)
    or the filesystem refuses locks."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    elif msvcrt is not None:
        os.lseek(fd, WINDOWS_LOCK_BYTE, os.SEEK_SET)     # msvcrt.locking locks from the file position
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)           # held: OSError EACCES
    else:
        return False
    return True


def _unlock_before_close(fd: int) -> None:
    """Windows drops a closed file's locks in its own time, so unlock first; a flock goes with the close."""
    if fcntl is None and msvcrt is not None:
        with contextlib.suppress(OSError):
            os.lseek(fd, WINDOWS_LOCK_BYTE, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _holder_pid(fd: int) -> int | None:
    """The process id the holder wrote into the lock file, or None if it wrote none in time."""
    deadline = time.monotonic() + PID_WAIT_S
    while True:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
        if text.isdigit():
            return int(text)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)
