"""A newcomer's first session on a fresh clone: README's tour (init, a short train, run) leaves every
shipped file as it was, and run.py says which model it runs."""
import hashlib
import shutil
import subprocess

import pytest

from conftest import REPO, run_script

# Train_Data/input.txt as shipped. The tour is checked on that text: on another one, init.py
# rightly makes another tokenizer.
SHIPPED_CORPUS_SHA256 = "51e179f2503a09b911e993aba609bb1180a21a72ab9b7561ba68c09bb6db4a28"


def require_shipped_corpus() -> None:
    digest = hashlib.sha256((REPO / "Train_Data" / "input.txt").read_bytes()).hexdigest()
    if digest != SHIPPED_CORPUS_SHA256:
        pytest.skip("Train_Data/input.txt is not the shipped corpus (you replaced it, as README invites); "
                    "this check needs the shipped one: `git checkout Train_Data/input.txt`")


def git(*args, cwd) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def fresh_clone(tmp_path):
    """The repository's tracked files as a new clone has them, in a git repository of their own."""
    require_shipped_corpus()
    clone = tmp_path / "clone"
    for name in git("ls-files", "-z", cwd=REPO).split("\0"):
        if name and (REPO / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    git("init", "-q", cwd=clone)
    git("add", "-A", cwd=clone)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "clone", cwd=clone)
    return clone


def test_the_tour_on_a_fresh_clone_keeps_the_shipped_files_and_run_names_what_it_loads(fresh_clone):
    shipped = run_script(fresh_clone / "run.py", "--prompt", "ROMEO:", "--max-new-tokens", "5", "--seed", "1",
                         cwd=fresh_clone)
    assert shipped.returncode == 0, shipped.stderr
    assert "pretrained.pth" in shipped.stderr and "shipped" in shipped.stderr

    init = run_script(fresh_clone / "init.py", cwd=fresh_clone)
    assert init.returncode == 0, init.stderr
    assert git("status", "--porcelain", cwd=fresh_clone) == ""      # the same tokenizer, byte for byte
    train = run_script(fresh_clone / "train.py", "--stop-at-step", "2", "--eval_interval", "1",
                       cwd=fresh_clone, timeout=900)
    assert train.returncode == 0, train.stderr
    assert (fresh_clone / "Saved_Weights" / "weights-best.pth").is_file()

    yours = run_script(fresh_clone / "run.py", "--prompt", "ROMEO:", "--max-new-tokens", "5", "--seed", "1",
                       cwd=fresh_clone)
    assert yours.returncode == 0, yours.stderr
    assert "weights-best.pth" in yours.stderr.splitlines()[0]
    # Nothing tracked changed: the shipped model, its loss curve and the tokenizer are as cloned.
    modified = [line for line in git("status", "--porcelain", cwd=fresh_clone).splitlines()
                if not line.startswith("??")]
    assert modified == []
