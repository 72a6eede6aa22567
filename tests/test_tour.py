"""A newcomer's first session on a fresh copy of the project: README's tour (init, a short train, run)
leaves every shipped file as it was, and run.py says which model it runs.

The copy is made from the files themselves (no git needed), less what a run leaves behind. What a
user may change in a checkout (the training text, the tokenizer, Model_Params.py) is checked
against the shipped model first: a check that needs the shipped one is skipped, saying so, when the
user changed it, and fails when it is as committed yet disagrees with the shipped model."""
import shutil
from pathlib import Path

import pytest

from conftest import (REPO, SHIPPED_WEIGHTS, file_hashes, require_shipped, require_shipped_corpus,
                      require_shipped_tokenizer, run_script)
from support.checkpoints import load_checkpoint

# What a run or a test leaves in the tree, never part of a fresh copy (as in .gitignore).
LEFT_BEHIND = (".git", "__pycache__", "*.pyc", ".venv", "venv", ".pytest_cache", ".hypothesis", ".cache", "*.tmp",
               "tokenizer_save.tmp*", "tokenizer_save.old*")


def model_params_differences(source: str, model_config: dict) -> list[str]:
    """The model settings in Model_Params.py's source whose values differ from model_config's."""
    params: dict = {}
    exec(compile(source, "Model_Params.py", "exec"), params)
    return [f"{name} {params.get(name)!r} (shipped model: {value!r})" for name, value in model_config.items()
            if params.get(name) != value and name != "gelu"]     # (GPT-2's GELU is no setting of Model_Params)


def copy_of_the_project(destination: Path) -> Path:
    """The project's files as a fresh clone has them: the tree, less what runs and tests leave
    behind, and in Saved_Weights/ only what ships (the pretrained model and its pictures)."""
    def ignore(folder, names):
        left = set(shutil.ignore_patterns(*LEFT_BEHIND)(folder, names))
        if Path(folder) == REPO / "Saved_Weights":
            left |= {name for name in names if not name.startswith("pretrained") and name != ".gitkeep"}
        return left
    return Path(shutil.copytree(REPO, destination, ignore=ignore))


@pytest.fixture
def fresh_copy(tmp_path):
    """A copy of the project as shipped (see the module's docstring for what is checked first)."""
    require_shipped_corpus()
    require_shipped_tokenizer()
    shipped_config = load_checkpoint(REPO / SHIPPED_WEIGHTS)["model_config"]
    differ = model_params_differences((REPO / "Model_Params.py").read_text(encoding="utf-8"), shipped_config)
    require_shipped("Model_Params.py", not differ, f"it differs from the shipped model: {', '.join(differ)}")
    return copy_of_the_project(tmp_path / "copy")


def test_the_tour_on_a_fresh_copy_keeps_the_shipped_files_and_run_names_what_it_loads(fresh_copy):
    shipped_files = file_hashes(fresh_copy)
    shipped = run_script(fresh_copy / "run.py", "--prompt", "ROMEO:", "--max-new-tokens", "5", "--seed", "1",
                         cwd=fresh_copy)
    assert shipped.returncode == 0, shipped.stderr
    first_line = shipped.stderr.splitlines()[0]
    assert "pretrained.pth" in first_line and "shipped" in first_line
    assert "Model_Params.py differs" not in shipped.stderr      # the shipped settings describe the shipped model

    init = run_script(fresh_copy / "init.py", cwd=fresh_copy)
    assert init.returncode == 0, init.stderr
    assert file_hashes(fresh_copy) == shipped_files              # the same tokenizer, byte for byte
    train = run_script(fresh_copy / "train.py", "--max-iters", "2", "--eval_interval", "1",
                       cwd=fresh_copy, timeout=900)
    assert train.returncode == 0, train.stderr
    assert (fresh_copy / "Saved_Weights" / "weights-best.pth").is_file()

    yours = run_script(fresh_copy / "run.py", "--prompt", "ROMEO:", "--max-new-tokens", "5", "--seed", "1",
                       cwd=fresh_copy)
    assert yours.returncode == 0, yours.stderr
    assert "weights-best.pth" in yours.stderr.splitlines()[0]
    # Every shipped file is as it was: the shipped model, its pictures, the tokenizer, the text.
    after = file_hashes(fresh_copy)
    assert {name: after.get(name) for name in shipped_files} == shipped_files
