"""Shared test helpers: where the repo is, how to run one of its scripts as a user would, and a
tiny model trained once per session by the real init.py and train.py (`tiny_trained`)."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run and machine (derandomize) and keep no example
# database; Hypothesis's own cache goes to the system's temp folder, so no test run leaves a
# .hypothesis folder in the checkout.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(Path(tempfile.gettempdir()) / "gpt-tests-hypothesis"))
settings.register_profile("reproducible", derandomize=True, database=None)
settings.load_profile("reproducible")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def run_script(script: str, *args: str, cwd: Path | None = None, input: str | None = None,
               timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python <repo>/<script> args...` and capture text stdout/stderr (never raises on exit code)."""
    full_env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd or REPO,
                          input=input, capture_output=True, text=True, timeout=timeout, env=full_env)


# ─────────────────────────── a tiny trained model, shared by the whole session ───────────────────────────

TINY_TEXT = "".join(f"the quick brown fox {i % 7} jumps over the lazy dog; café au lait n°{i % 3}.\n"
                    for i in range(300))
TINY_VOCAB = 300
# Tests that compare a script's figures with ones computed here, on the CPU, pin the script to the CPU
# too; every other run takes whatever device `--device auto` finds.
ON_CPU = ("--device", "cpu")
# 2 layers, 32 wide, 16-token context: 60 steps take about a second on one CPU core and leave a
# model that has all but memorised the text (val loss ~0.2 nats/token). The optimizer (AdamW, its ε),
# the length (60 steps, no max_epochs) and one model (no teacher) are pinned so that retuning
# Model_Params' defaults leaves these tests' model alone.
TINY_TRAIN_FLAGS = ("--vocab_size", str(TINY_VOCAB), "--block_size", "16", "--emb_len", "32",
                    "--num_layers", "2", "--num_heads", "2", "--batch_size", "8", "--max_iters", "60",
                    "--max_epochs", "0", "--eval_interval", "20", "--eval_windows", "8", "--warmup_iters", "5",
                    "--optimizer", "adamw", "--learning_rate", "1e-2", "--weight_decay", "0.1",
                    "--adam_eps", "1e-8", "--dropout", "0", "--teacher", "", "--seed", "1")


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory) -> dict:
    """init.py then train.py, run once per session on a small repetitive text in a temp folder.

    Returns paths: "input" (the text), "tokenizer_dir", "weights_dir" (weights-best.pth,
    weights-latest.pth, loss_history.csv), plus "train_flags" (the tiny model's settings) and
    "train_stderr". Treat the folder as read-only: copy it before changing anything.
    """
    root = tmp_path_factory.mktemp("tiny_trained")
    text_path = root / "input.txt"
    text_path.write_text(TINY_TEXT, encoding="utf-8")
    tokenizer_dir, weights_dir = root / "tokenizer", root / "weights"
    init = run_script("init.py", "--input", text_path, "--vocab-size", TINY_VOCAB, "--out", tokenizer_dir)
    assert init.returncode == 0, init.stderr
    # On the CPU: tests compare this model's checkpoints and figures with CPU computations.
    train = run_script("train.py", "--input", text_path, "--tokenizer-dir", tokenizer_dir,
                       "--weights-dir", weights_dir, *TINY_TRAIN_FLAGS, *ON_CPU)
    assert train.returncode == 0, train.stderr
    return {"input": text_path, "tokenizer_dir": tokenizer_dir, "weights_dir": weights_dir,
            "train_flags": TINY_TRAIN_FLAGS, "train_stderr": train.stderr}
