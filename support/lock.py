"""One train.py per weights folder: an OS file lock that refuses a second run on the same folder.

Read this when train.py says that another run is writing to the folder, or when you wonder why a
killed run never leaves a lock behind. Two runs on one folder would otherwise both train to the
end, write every row of loss_history.csv twice, interleaved, and leave whichever checkpoint was
renamed last. train.py (rank 0 under torchrun) takes the lock before it writes anything and holds
it for the whole run. run.py only reads whole files, so it never takes the lock.

Why this machinery and not a simpler "lock file exists" check:
- The lock is the operating system's (flock), not the file's existence. The OS drops it the moment
  the holding process ends, however it ends (`kill -9`, power cut of a container), so a stale lock
  never blocks the next run. The file `.train.lock` stays in the folder; it only carries the
  last holder's process id (each run that takes the lock rewrites it), so a refused run can name
  the run in its way. It is never deleted: deleting it could let
  two runs lock two different files of the same name.
- flock belongs to the open file, and a forked child shares it. train.py forks tokenizer worker
  processes; if one outlived a killed train.py it would keep the folder locked. So every fork
  closes the child's copy at once (os.register_at_fork), which leaves the lock with the parent
  alone. A started program (subprocess, spawn) never gets it: Python opens files close-on-exec.
- Where there is no flock (Windows) or the filesystem refuses it, the folder cannot be guarded:
  the run says so once and carries on, as it did before this lock existed.
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

LOCK_NAME = ".train.lock"
# The holder writes its process id just after taking the lock; a refused run that looks in that
# instant finds the file empty, so it looks again for up to this long before naming no one.
PID_WAIT_S = 2.0

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
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)   # close-on-exec, as Python opens every file
    except OSError as e:
        raise UserError(f"cannot create {path} ({e.strerror or e}) — pass --weights-dir with a "
                        f"writable folder") from None
    if fcntl is None:
        os.close(fd)
        say(f"note: cannot guard {folder}/ against a second train.py on this system (no file locks); "
            f"run one train.py per weights folder")
        return FolderLock(folder, None)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)                 # e.g. ENOLCK, EOPNOTSUPP on some network filesystems
            say(f"note: cannot guard {folder}/ against a second train.py ({e.strerror or e}); "
                f"run one train.py per weights folder")
            return FolderLock(folder, None)
        pid = _holder_pid(fd)
        os.close(fd)
        who = f"another train.py (process {pid})" if pid is not None else "another train.py"
        raise UserError(f"{who} is writing to {folder}/ — wait for it to finish, or pass "
                        f"--weights-dir DIR to train into another folder") from None
    # Ours now: replace the last holder's id with ours (it may be a killed run's). The id only
    # improves a refused run's message, so a failed write (a full disk) does not stop this run.
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return FolderLock(folder, fd)


def _holder_pid(fd: int) -> int | None:
    """The process id the holder wrote into the lock file, or None if it wrote none in time."""
    deadline = time.monotonic() + PID_WAIT_S
    while True:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return int(text)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)
