"""One train.py per weights folder (support/lock.py): a second run is refused with one line naming
the first, a killed run leaves no lock behind (not even through a forked child), and run.py reads
a folder that is being trained into.

Timing never decides a result: a run that must still be running while another starts is frozen
with SIGSTOP once it holds the lock, and every wait polls for a condition with a generous limit."""
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import REPO, TINY_TRAIN_FLAGS, assert_one_error_line, file_hashes, run_script

pytest.importorskip("fcntl", reason="these tests hold and inspect flock locks (POSIX); Windows' lock "
                                     "is tried in tests/test_windows_and_mps.py")

from support.lock import LOCK_NAME, hold_folder  # noqa: E402
from support.settings import UserError      # noqa: E402

WAIT_S = 120          # generous: a busy 2-core machine may take many seconds to import torch


def no_say(msg):
    raise AssertionError(f"unexpected note: {msg}")


def wait_for(condition, what: str, proc: subprocess.Popen | None = None, timeout: float = WAIT_S):
    """Poll until condition() is true; fail naming `what` (with proc's stderr if it ended first)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process ended (exit {proc.returncode}) before {what}: {read_stderr(proc)}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def read_stderr(proc) -> str:
    path = getattr(proc, "stderr_path", None)
    return path.read_text(errors="replace") if path and path.exists() else ""


def lock_names(folder: Path, pid: int) -> bool:
    """Whether the folder's lock file holds this process id (written just after taking the lock)."""
    try:
        return (folder / LOCK_NAME).read_text().strip() == str(pid)
    except FileNotFoundError:
        return False


def end(proc: subprocess.Popen) -> None:
    """Make sure a process we started is gone (SIGKILL works on a stopped one too)."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=WAIT_S)


def kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ─────────────────────────────── the lock itself, between real processes ───────────────────────────────

# A process that holds `folder`, optionally forks a child the way tokenizer workers are started
# (multiprocessing 'fork') that outlives it, then prints "held <child pid or 0>" and sleeps.
HOLDER = textwrap.dedent("""
    import multiprocessing, sys, time
    sys.path.insert(0, sys.argv[1])
    from support.lock import hold_folder
    lock = hold_folder(sys.argv[2], lambda msg: print(msg, file=sys.stderr))
    def sleep_when_started(started):
        started.set()           # the fork hooks have run by now
        time.sleep(600)
    child = 0
    if sys.argv[3] == "fork":
        fork = multiprocessing.get_context("fork")
        started = fork.Event()
        worker = fork.Process(target=sleep_when_started, args=(started,))
        worker.start()
        started.wait(60)        # else, on a busy machine, the parent may be killed before the child ran them
        child = worker.pid
    print("held", child, flush=True)
    time.sleep(600)
""")


def start_holder(folder: Path, fork: bool = False) -> tuple[subprocess.Popen, int]:
    """A child process holding `folder`; returns it once it says so, with its forked child's pid."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(REPO), str(folder), "fork" if fork else "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], WAIT_S)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("held"):
        end(proc)
        pytest.fail(f"holder did not start: {line!r} {proc.stderr.read()}")
    return proc, int(line.split()[1])


def test_forked_child_does_not_keep_the_lock_after_its_parent_is_killed(tmp_path):
    holder, child = start_holder(tmp_path, fork=True)
    try:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=WAIT_S)
        os.kill(child, 0)                          # the forked child is still alive...
        with hold_folder(tmp_path, no_say) as lock:  # ...and yet the folder is free
            assert lock.held
    finally:
        end(holder)
        kill_pid(child)


def test_release_lets_another_take_the_folder(tmp_path):
    first = hold_folder(tmp_path, no_say)
    with pytest.raises(UserError):
        hold_folder(tmp_path, no_say)              # a second open file conflicts, even in one process
    first.release()
    assert not first.held
    with hold_folder(tmp_path, no_say) as second:
        assert second.held
    first.release()                                # releasing twice is harmless


def test_other_folders_are_not_blocked(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    holder, _ = start_holder(tmp_path / "a")
    try:
        with hold_folder(tmp_path / "b", no_say) as lock:
            assert lock.held
    finally:
        end(holder)


def test_dropped_lock_frees_the_folder(tmp_path):
    # train.py keeps its lock on the Trainer; a script that calls train.main() twice in one process
    # (as the tests do) finds the folder free once the first Trainer is gone.
    lock = hold_folder(tmp_path, no_say)
    with pytest.raises(UserError, match=f"process {os.getpid()}"):
        hold_folder(tmp_path, no_say)
    del lock
    with hold_folder(tmp_path, no_say) as again:
        assert again.held


# ───────────────────────────────────── with the real scripts ─────────────────────────────────────

def start_script(script: str, *args, stderr_path: Path) -> subprocess.Popen:
    """Like conftest's run_script, but started in the background, stderr to a file (no pipe to fill)."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen([sys.executable, str(REPO / script), *map(str, args)], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    proc.stderr_path = stderr_path
    return proc


def train_args(tiny_trained, weights_dir: Path, *extra) -> list:
    return ["--input", tiny_trained["input"], "--tokenizer-dir", tiny_trained["tokenizer_dir"],
            "--weights-dir", weights_dir, *TINY_TRAIN_FLAGS, *extra]


def history_steps(weights_dir: Path) -> list[str]:
    lines = (weights_dir / "loss_history.csv").read_text().splitlines()
    return [line.split(",")[0] for line in lines[1:]]


def test_second_train_on_one_folder_is_refused_and_the_first_finishes(tiny_trained, tmp_path):
    weights = tmp_path / "weights"
    first = start_script("train.py", *train_args(tiny_trained, weights), stderr_path=tmp_path / "first.err")
    try:
        wait_for(lambda: lock_names(weights, first.pid), "the first run to take the lock", first)
        first.send_signal(signal.SIGSTOP)          # still running, whatever the machine's speed
        before, lock = file_hashes(weights), (weights / LOCK_NAME).read_bytes()
        for extra in ((), ("--fresh",)):           # resuming, and starting over: refused before writing a byte
            second = run_script("train.py", *train_args(tiny_trained, weights, *extra), timeout=WAIT_S)
            assert_one_error_line(second, f"{weights}/", f"process {first.pid}", "--weights-dir")
            assert file_hashes(weights) == before and (weights / LOCK_NAME).read_bytes() == lock
            assert sorted(p.name for p in weights.iterdir()) == sorted([*before, LOCK_NAME])
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=WAIT_S) == 0, read_stderr(first)
    finally:
        end(first)
    # The first run's history is what one undisturbed run writes: each evaluation once.
    assert history_steps(weights) == history_steps(tiny_trained["weights_dir"])


def test_run_killed_while_holding_the_folder_leaves_no_lock(tiny_trained, tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(tiny_trained["weights_dir"], weights)
    killed = start_script("train.py", *train_args(tiny_trained, weights, "--max_iters", "80"),
                          stderr_path=tmp_path / "killed.err")
    try:
        wait_for(lambda: lock_names(weights, killed.pid), "the run to take the lock", killed)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=WAIT_S)
    finally:
        end(killed)
    again = run_script("train.py", *train_args(tiny_trained, weights, "--max_iters", "80"), timeout=WAIT_S)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stderr and "error" not in again.stderr


def test_run_py_reads_a_folder_that_train_py_holds(tiny_trained, tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(tiny_trained["weights_dir"], weights)
    training = start_script("train.py", *train_args(tiny_trained, weights, "--max_iters", "80"),
                            stderr_path=tmp_path / "train.err")
    try:
        wait_for(lambda: lock_names(weights, training.pid), "train.py to take the lock", training)
        training.send_signal(signal.SIGSTOP)       # holding the folder for as long as run.py takes
        result = run_script("run.py", "--weights", weights / "weights-best.pth", "--tokenizer-dir",
                            tiny_trained["tokenizer_dir"], "--prompt", "the", "--max-new-tokens", "8",
                            "--seed", "1", timeout=WAIT_S)
        assert training.poll() is None             # it really was holding the folder all along
    finally:
        end(training)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
