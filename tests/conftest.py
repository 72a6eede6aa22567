"""Shared test helpers: where the repo is, and how to run one of its scripts as a user would."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def run_script(script: str, *args: str, cwd: Path | None = None, input: str | None = None,
               timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python <repo>/<script> args...` and capture text stdout/stderr (never raises on exit code)."""
    full_env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd or REPO,
                          input=input, capture_output=True, text=True, timeout=timeout, env=full_env)
