"""The suite runs on Windows, macOS and Linux: here, on any of them, pytest is run again in a
subprocess where Python is made to lack what Windows lacks (the pty, tty, termios, fcntl and resource
modules; os.fork, os.forkpty, os.wait4), and the suite must still collect, and the tests that need
those things must skip saying why (conftest's needs_fork, needs_pty) instead of failing."""
import os
import subprocess
import sys

from conftest import REPO

# Imported by Python at start-up from PYTHONPATH, before pytest: the missing modules import as
# ImportError, as on Windows.
WITHOUT_POSIX = """\
import os, sys
for name in ("pty", "tty", "termios", "fcntl", "resource"):
    sys.modules[name] = None
for name in ("fork", "forkpty", "wait4"):
    if hasattr(os, name):
        delattr(os, name)
"""


def pytest_without_posix(tmp_path, *args) -> subprocess.CompletedProcess:
    (tmp_path / "sitecustomize.py").write_text(WITHOUT_POSIX, encoding="utf-8")
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p)
    # -p no:randomly: the order does not matter here; no:cacheprovider: the outer run owns .pytest_cache.
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
                           *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"})


def test_suite_collects_without_fork_pty_termios_and_fcntl(tmp_path):
    # --collect-only runs no test, so the inner run does not run this one again.
    result = pytest_without_posix(tmp_path, "--collect-only", "tests")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "ERROR" not in result.stdout, result.stdout[-3000:]           # as in "ERROR collecting ..."
    for name in ("test_init.py", "test_run.py", "test_robustness.py", "test_promises.py"):
        assert f"tests/{name}::" in result.stdout, name


def test_tests_that_need_fork_or_a_terminal_skip_saying_why_where_there_is_none(tmp_path):
    tests = ["tests/test_robustness.py::test_weights_folder_on_a_missing_path_is_created",          # `scripts`
             "tests/test_init.py::test_explain_in_a_terminal_puts_tokens_on_alternating_colours",
             "tests/test_run.py::test_interactive_session_streams_to_stdout_and_ctrl_c_exits_130"]
    result = pytest_without_posix(tmp_path, "-rs", *tests)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "3 skipped" in result.stdout, result.stdout[-3000:]
    assert "this platform has no os.fork" in result.stdout and "no pty module" in result.stdout, result.stdout
