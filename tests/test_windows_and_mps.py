"""Windows processes and files, and the MPS random state (support/files.py, lock.py, checkpoints.py,
history.py), tried on whatever machine runs the suite.

What Linux cannot do for real is simulated, and each test's docstring says what: the Windows API
(kernel32 answered from this machine's /proc; msvcrt.locking made of POSIX byte-range locks), a
file another program holds open (os.replace or open raising PermissionError, with files.WINDOWS
set), and the Mac's MPS generator (a CPU generator behind torch.mps's two functions). On Windows the
lock and liveness tests run the real calls, with no fake."""
import errno
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, tiny_model
from support import checkpoints, files, history, lock
from support.checkpoints import (own_rng_state, remove_leftover_temps, restore_training_state, save_atomic,
                                 save_resume_state)
from support.distributed import Processes
from support.history import HISTORY_CSV, read_history, record
from support.scoring import EvalResult
from support.settings import UserError
from tokenizer import Tokenizer

WAIT_S = 60           # generous: a busy 2-core machine


def no_say(msg):
    raise AssertionError(f"unexpected note: {msg}")


def wait_until(condition, what: str):
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {WAIT_S} s waiting for {what}")
        time.sleep(0.02)


# ─────────────────────────────── is a process alive ───────────────────────────────

def test_process_alive_is_true_while_a_process_runs_and_false_once_it_has_ended():
    """Real, no simulation: os.kill(pid, 0) on POSIX, OpenProcess on Windows."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert files.process_alive(os.getpid()) and files.process_alive(child.pid)
    finally:
        child.communicate(timeout=WAIT_S)
    assert not files.process_alive(child.pid)


class ProcessTableKernel32:
    """Simulated: kernel32's OpenProcess, GetExitCodeProcess and CloseHandle, answered from this
    machine's real process table (/proc/PID/stat). An exited process that nobody has reaped yet (a
    zombie) stands for a Windows process that has exited while a handle keeps its id."""

    def __init__(self, denied=()):
        self.handles, self.error, self.denied = {}, 0, set(denied)

    def OpenProcess(self, access, inherit, pid):
        assert access == files.PROCESS_QUERY_LIMITED_INFORMATION and not inherit
        if pid in self.denied:
            self.error = 5                    # ERROR_ACCESS_DENIED: another user's protected process
            return None
        if not Path(f"/proc/{pid}").exists():
            self.error = files.ERROR_INVALID_PARAMETER
            return None
        handle = 4 * (len(self.handles) + 1)
        self.handles[handle] = pid
        return handle

    def GetExitCodeProcess(self, handle, code):
        state = Path(f"/proc/{self.handles[handle]}/stat").read_text().rsplit(")", 1)[1].split()[0]
        code._obj.value = 0 if state in ("Z", "X") else files.STILL_ACTIVE
        return True

    def CloseHandle(self, handle):
        del self.handles[handle]
        return True


def zombie_state(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the simulated kernel32 reads /proc (Linux)")
def test_process_alive_on_windows_asks_the_process_table_and_never_sends_a_signal(monkeypatch):
    """Simulated: Windows (files.WINDOWS) and kernel32 (ProcessTableKernel32, over the real /proc).
    os.kill is made to fail the test: on Windows its signal 0 is Ctrl-C to another process."""
    kernel32 = ProcessTableKernel32(denied={1})
    monkeypatch.setattr(files, "WINDOWS", True)
    monkeypatch.setattr(files, "_windows_api", lambda: (kernel32, lambda: kernel32.error))
    monkeypatch.setattr(os, "kill", lambda *args: pytest.fail(f"os.kill{args} on Windows"))
    running = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        wait_until(lambda: zombie_state(exited.pid), "the second child to exit")
        assert files.process_alive(os.getpid()) and files.process_alive(running.pid)
        assert files.process_alive(1)                        # access denied: it exists
        assert not files.process_alive(exited.pid)          # exited, its id still held
    finally:
        running.communicate(timeout=WAIT_S)
        exited.wait(timeout=WAIT_S)
    assert not files.process_alive(running.pid)             # gone: no such id
    assert kernel32.handles == {}                           # every handle opened was closed


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the simulated kernel32 reads /proc (Linux)")
def test_on_windows_a_dead_writers_temp_file_is_removed_and_a_live_writers_is_kept(tmp_path, monkeypatch):
    """Simulated: Windows (files.WINDOWS) and kernel32 (ProcessTableKernel32, over the real /proc)."""
    kernel32 = ProcessTableKernel32()
    monkeypatch.setattr(files, "WINDOWS", True)
    monkeypatch.setattr(files, "_windows_api", lambda: (kernel32, lambda: kernel32.error))
    monkeypatch.setattr(os, "kill", lambda *args: pytest.fail(f"os.kill{args} on Windows"))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=WAIT_S)
    dead_tmp = tmp_path / f"weights-latest.pth.{gone.pid}.tmp"
    live_tmp = tmp_path / f"weights-best.pth.{os.getppid()}.tmp"
    dead_tmp.write_bytes(b"half")
    live_tmp.write_bytes(b"being written")
    notes = []
    remove_leftover_temps(tmp_path, notes.append)
    assert not dead_tmp.exists() and live_tmp.exists()
    assert notes == [f"note: removed {dead_tmp}, left by an interrupted save"]


# ─────────────────────────────── one train.py per folder, with Windows locks ───────────────────────────────

# msvcrt.locking made of POSIX byte-range locks (fcntl.lockf), which, like Windows's, belong to the
# process and go when it dies. It also checks that the locked byte leaves the process id readable.
FAKE_MSVCRT = textwrap.dedent("""
    import errno, fcntl, os, types
    def locking(fd, mode, nbytes):
        at = os.lseek(fd, 0, os.SEEK_CUR)
        assert at >= 32, "a Windows lock on the first bytes would hide the holder's process id"
        try:
            fcntl.lockf(fd, fcntl.LOCK_UN if mode == 0 else fcntl.LOCK_EX | fcntl.LOCK_NB, nbytes, at)
        except OSError:
            raise PermissionError(errno.EACCES, "Permission denied") from None   # the C runtime's answer
    msvcrt = types.SimpleNamespace(locking=locking, LK_UNLCK=0, LK_NBLCK=2)
""")
SIMULATE = os.name != "nt"        # on Windows the real msvcrt is used

HOLDER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from support import lock
    from support.settings import UserError
    if sys.argv[3] == "simulate":
        exec(sys.argv[4])
        lock.fcntl, lock.msvcrt = None, msvcrt
    try:
        held = lock.hold_folder(sys.argv[2], lambda msg: print(msg, file=sys.stderr))
    except UserError as e:
        print("refused:", e, flush=True)
        sys.exit(0)
    print("held", held.held, flush=True)
    sys.stdin.read()                  # until the test closes stdin or kills us
""")


def other_process(folder: Path) -> tuple[subprocess.Popen, str]:
    """A child process that tries to hold `folder` with Windows locks, and its first line: "held True"
    (it then holds the folder until its stdin is closed) or "refused: <the error>"."""
    args = ["simulate", FAKE_MSVCRT] if SIMULATE else ["real"]
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(REPO), str(folder), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


@pytest.fixture
def windows_locks(monkeypatch):
    """support/lock.py as on Windows: no fcntl, msvcrt (simulated by FAKE_MSVCRT off Windows)."""
    if SIMULATE:
        namespace = {}
        exec(FAKE_MSVCRT, namespace)
        monkeypatch.setattr(lock, "msvcrt", namespace["msvcrt"])
        monkeypatch.setattr(lock, "fcntl", None)
    assert lock.msvcrt is not None


def refusal(pid: int, folder: Path) -> str:
    return (f"another train.py (process {pid}) is writing to {folder}/ — wait for it to finish, or pass "
            f"--weights-dir DIR to train into another folder")


def test_with_windows_locks_a_second_run_is_refused_naming_the_first_and_a_killed_one_leaves_no_lock(
        tmp_path, windows_locks):
    """Simulated off Windows: msvcrt.locking (FAKE_MSVCRT: POSIX byte-range locks, in every process).
    Real: the processes, the kill, the lock file."""
    holder, said = other_process(tmp_path)
    try:
        assert said == "held True", holder.stderr.read() if holder.poll() is not None else said
        with pytest.raises(UserError) as refused:
            lock.hold_folder(tmp_path, no_say)
        assert str(refused.value) == refusal(holder.pid, tmp_path)
    finally:
        holder.kill()
        holder.communicate(timeout=WAIT_S)
    mine = held_when_free(tmp_path)          # Windows drops a dead process's locks soon, not at once
    checker, said = other_process(tmp_path)
    checker.communicate(timeout=WAIT_S)
    assert said == "refused: " + refusal(os.getpid(), tmp_path)
    mine.release()
    assert not mine.held
    after, said = other_process(tmp_path)    # release() let go: another process takes the folder
    after.communicate(input="", timeout=WAIT_S)
    assert said == "held True"


def held_when_free(folder) -> lock.FolderLock:
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            return lock.hold_folder(folder, no_say)
        except UserError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# ───────────────────────────── a file another program holds open (Windows) ─────────────────────────────

def replace_held(times: int | None):
    """Simulated: os.replace of another program's open file on Windows (PermissionError), `times`
    times, then the real rename (None: always)."""
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if times is None or len(calls) <= times:
            raise PermissionError(errno.EACCES, "Access is denied", str(dst))
        real_replace(src, dst)
    replace.calls = calls
    return replace


@pytest.fixture
def on_windows(monkeypatch):
    """Simulated: Windows, for files.held_open; time.sleep recorded, not slept. -> the waits."""
    waits = []
    monkeypatch.setattr(files, "WINDOWS", True)
    monkeypatch.setattr(files.time, "sleep", waits.append)
    return waits


def test_replacing_a_checkpoint_a_reader_holds_open_is_retried_until_it_lets_go(tmp_path, monkeypatch, on_windows):
    """Simulated: Windows, and a reader that holds weights-best.pth for two tries."""
    path = tmp_path / checkpoints.BEST
    save_atomic({"step": 1}, path)
    monkeypatch.setattr(os, "replace", replace_held(times=2))
    save_atomic({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 2}
    assert len(on_windows) == 2 and sorted(tmp_path.iterdir()) == [path]


def test_a_checkpoint_held_open_for_good_is_one_line_saying_so_after_about_a_second(
        tmp_path, monkeypatch, on_windows):
    """Simulated: Windows, and a program that never lets weights-best.pth go."""
    path = tmp_path / checkpoints.BEST
    save_atomic({"step": 1}, path)
    monkeypatch.setattr(os, "replace", replace_held(times=None))
    with pytest.raises(UserError) as failed:
        save_atomic({"step": 2}, path)
    assert str(failed.value) == (f"could not write {path}: another program holds it open — close it, then run "
                                 f"train.py again to resume")
    assert 0.5 <= sum(on_windows) <= 2.0
    assert torch.load(path, weights_only=True) == {"step": 1}     # the last complete version
    assert sorted(tmp_path.iterdir()) == [path]                   # no temporary file left


def test_a_permission_error_on_posix_is_not_retried_and_still_says_make_room(tmp_path, monkeypatch):
    """Simulated: a POSIX system (files.WINDOWS false), where a PermissionError is about permissions."""
    waits = []
    monkeypatch.setattr(files, "WINDOWS", False)
    monkeypatch.setattr(files.time, "sleep", waits.append)
    replace = replace_held(times=None)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(UserError) as failed:
        save_atomic({"step": 1}, tmp_path / checkpoints.BEST)
    assert "make room" in str(failed.value) and "holds it open" not in str(failed.value)
    assert len(replace.calls) == 1 and waits == []


def history_held_open(monkeypatch, times: int | None):
    """Simulated: loss_history.csv open in a spreadsheet on Windows: appending raises PermissionError
    `times` times (None: always). loss.png is not drawn (not what is tested)."""
    import builtins
    tries = []

    def open_(file, mode="r", *args, **kwargs):
        if Path(file).name == HISTORY_CSV and "a" in mode:
            tries.append(file)
            if times is None or len(tries) <= times:
                raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return builtins.open(file, mode, *args, **kwargs)
    monkeypatch.setattr(history, "open", open_, raising=False)
    monkeypatch.setattr(history, "plot_history", lambda *args: None)


RESULT = EvalResult(nll=250.0, tokens=100, chars=400)


def test_a_history_row_waits_for_a_spreadsheet_that_lets_go(tmp_path, monkeypatch, on_windows):
    """Simulated: Windows, and loss_history.csv held open for one try."""
    history_held_open(monkeypatch, times=1)
    record(tmp_path, 10, 1.0, 3e-4, 2.5, RESULT, "windows", no_say)
    assert [row["step"] for row in read_history(tmp_path / HISTORY_CSV)] == ["10"]
    assert len(on_windows) == 1


def test_a_history_held_open_in_a_spreadsheet_is_one_line_saying_so(tmp_path, monkeypatch, on_windows):
    """Simulated: Windows, and loss_history.csv held open for good."""
    history_held_open(monkeypatch, times=None)
    with pytest.raises(UserError) as failed:
        record(tmp_path, 10, 1.0, 3e-4, 2.5, RESULT, "windows", no_say)
    path = tmp_path / HISTORY_CSV
    assert str(failed.value) == (f"could not write {path}: another program holds it open — close it, then run "
                                 f"train.py again to resume")
    assert "make room" not in str(failed.value)


# ─────────────────────────────── MPS random state (a Mac's GPU) ───────────────────────────────

@pytest.fixture
def mps_generator(monkeypatch) -> torch.Generator:
    """Simulated: the Mac's MPS generator, a CPU generator behind torch.mps.get_rng_state and
    set_rng_state (torch.device("mps") itself needs no Mac)."""
    generator = torch.Generator().manual_seed(7)
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda device="mps": generator.get_state())
    monkeypatch.setattr(torch.mps, "set_rng_state", lambda state, device="mps": generator.set_state(state))
    return generator


def test_resume_on_mps_restores_the_mps_generator_so_dropout_draws_continue_exactly(tmp_path, mps_generator):
    """Simulated: the MPS generator (mps_generator). Real: the checkpoint file and its loading."""
    device, model = torch.device("mps"), tiny_model(dropout=0.1)
    optimizer, scaler = torch.optim.AdamW(model.parameters()), torch.amp.GradScaler("cpu", enabled=False)
    batches = torch.Generator().manual_seed(1)
    torch.rand(5, generator=mps_generator)                         # some training has drawn from it
    path = tmp_path / checkpoints.LATEST
    save_resume_state(path, model, optimizer, scaler, batches, Processes(), device, step=3, best_val=None,
                      minutes=0.1, data_fp="d", tokenizer=Tokenizer(), train_config={})
    next_draws = torch.rand(5, generator=mps_generator)           # what an uninterrupted run draws next
    torch.rand(50, generator=mps_generator)                        # a new process: anywhere else
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt["rng_per_rank"][0]) == {"torch", "mps"}
    restore_training_state(ckpt, model, optimizer, scaler, batches, Processes(), device, seed=0, dropout=0.1,
                           say=no_say)
    assert torch.equal(torch.rand(5, generator=mps_generator), next_draws)


def test_rng_state_off_mps_holds_no_mps_entry_and_never_asks_torch_mps(monkeypatch):
    """Simulated: nothing; torch.mps's functions fail the test if called."""
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda *args: pytest.fail("torch.mps asked on the CPU"))
    assert set(own_rng_state(torch.device("cpu"))) == {"torch"}
