"""Faults and bad input lose nothing: the real scripts, on a tiny model in temp folders,
are killed mid-run and given broken checkpoints, damaged tokenizers, edited settings and bad text.
Each case checks the message (one `error:` line, no traceback) and that nothing was lost: the
checkpoints still load and rebuild their model, the files that should not change are byte-identical.

Speed: the scripts run in children forked from one process that imported torch once
(forked_scripts.py). Each child runs the real script file as `__main__`, with its own argv, stdio
and exit code: ~35 runs take a fraction of a second each instead of 4 s or more. Faults (SIGKILL
inside a checkpoint write, a full disk) are injected there too.

Covered by other files, not repeated here:
  prompts — empty, emoji, CJK, control characters, longer than block_size, 1 MB:
      test_run.py::test_every_kind_of_prompt_gets_one_continuation_per_line
  prompts — closed stdin: test_run.py::test_closed_stdin_exits_quietly
  NaN loss (learning rate 1e38): test_train.py::test_nan_loss_stops_and_keeps_last_good_checkpoint
  Model_Params.py edited, run.py: test_run.py::test_edited_model_params_still_runs_the_trained_model_and_names_the_differences
  tokenizer retrained (same size, other merges): run.py: test_run.py::test_tokenizer_that_does_not_match_the_checkpoint_is_refused;
      train.py: test_train.py::test_resume_with_retrained_tokenizer_is_refused
  weights folder blocked by a file: test_train.py::test_unwritable_weights_folder_is_reported_before_training
  input missing, empty, invalid UTF-8 (init.py): test_init.py::test_bad_input_gives_one_error_line_and_writes_nothing
  input of a few bytes: init.py: test_init.py::test_init_stops_early_with_a_warning_when_no_pair_is_left;
      train.py: test_train.py::test_input_too_short_for_one_block_is_a_clear_error
"""
import csv
import hashlib
import json
import os
import pickle
import random
import tracemalloc
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import Model_Params
from conftest import ON_CPU, REPO, TINY_TEXT, TINY_TRAIN_FLAGS, run_script
from support.checkpoints import load_checkpoint, model_from_checkpoint
from support import id_cache
from support.corpus import count_chunks, read_pieces
from support.lock import LOCK_NAME
from test_tokenizer import english_like_text
from tokenizer import SPLIT_RE, Tokenizer

KILLED = -9                      # returncode of a process ended by SIGKILL


# ───────────────────────────────────── running the scripts ─────────────────────────────────────

@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    maxrss_kb: int               # the child's peak resident memory
    timed_out: bool


class ForkedScripts:
    """Runs scripts through forked_scripts.py: run(script, *args, cwd=...) -> Result."""

    def __init__(self):
        env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("forked_scripts.py"))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def run(self, script, *args, cwd: Path, fault: list | None = None, kill_on: str | None = None,
            timeout: float = 120) -> Result:
        """script: a name in the repo or a path. fault, kill_on: see forked_scripts.py."""
        request = {"script": str(REPO / script), "args": [str(a) for a in args], "cwd": str(cwd),
                   "fault": fault, "kill_on": kill_on, "timeout": timeout}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        assert reply, "forked_scripts.py stopped"
        result = Result(**json.loads(reply))
        assert not result.timed_out, result.stderr
        return result

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def scripts():
    server = ForkedScripts()
    yield server
    server.close()


@pytest.fixture
def tiny(tiny_trained, tmp_path) -> dict:
    """A private copy of the session's tiny run (conftest): its input, tokenizer and weights."""
    shutil.copy(tiny_trained["input"], tmp_path / "input.txt")
    shutil.copytree(tiny_trained["tokenizer_dir"], tmp_path / "tokenizer")
    shutil.copytree(tiny_trained["weights_dir"], tmp_path / "weights")
    return {"root": tmp_path, "input": tmp_path / "input.txt", "tokenizer_dir": tmp_path / "tokenizer",
            "weights_dir": tmp_path / "weights", "reference": tiny_trained["weights_dir"]}


def train_args(tiny, weights_dir=None, input=None, tokenizer_dir=None) -> list:
    """train.py's folders (the tiny copy's unless replaced) and the tiny model's settings."""
    return ["--input", input or tiny["input"], "--tokenizer-dir", tokenizer_dir or tiny["tokenizer_dir"],
            "--weights-dir", weights_dir or tiny["weights_dir"], *TINY_TRAIN_FLAGS, *ON_CPU]


def run_args(tiny, weights=None, tokenizer_dir=None) -> list:
    """run.py on the tiny copy's best weights (unless replaced): one short greedy continuation."""
    return ["--weights", weights or tiny["weights_dir"] / "weights-best.pth",
            "--tokenizer-dir", tokenizer_dir or tiny["tokenizer_dir"],
            "--prompt", "the quick", "--max-new-tokens", "5", "--temperature", "0"]


# ─────────────────────────────────────── what must hold ────────────────────────────────────────

def assert_one_error_line(result: Result, *fragments: str) -> str:
    """Exit 2 with stderr one `error:` line holding every fragment: no traceback, nothing on stdout."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def file_hashes(folder: Path) -> dict:
    """Every file under folder -> sha256 of its bytes (but the lock file, which names the last run)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_NAME}


def assert_checkpoints_load(weights_dir: Path) -> dict:
    """Every weights-*.pth in the folder loads safely and rebuilds its model, as run.py does."""
    loaded = {}
    for path in sorted(weights_dir.glob("weights-*.pth")):
        loaded[path.name] = load_checkpoint(path)
        model_from_checkpoint(loaded[path.name], "cpu", path)
    return loaded


def history(weights_dir: Path) -> list[dict]:
    """loss_history.csv without the wall-clock column (the one thing that differs between runs)."""
    with open(weights_dir / "loss_history.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "minutes"} for row in csv.DictReader(f)]


# ───────────────────────────────────────── SIGKILL ──────────────────────────────────────────────

def test_sigkill_at_any_moment_loses_no_finished_checkpoint_and_resuming_ends_as_if_never_killed(
        scripts, tiny, tmp_path):
    """The tiny run (60 steps, evaluations at 20, 40, 60) again in a new folder, killed four times
    at different moments; every kill leaves only complete checkpoints, each rerun resumes from the
    last one, and the last rerun ends with the very weights, best checkpoint and history of the
    uninterrupted run."""
    weights = tmp_path / "killed"
    args = train_args(tiny, weights)

    def latest_step():
        return load_checkpoint(weights / "weights-latest.pth")["step"]

    # 1. Killed halfway through writing the first checkpoint file: half a temp file, no checkpoint.
    first = scripts.run("train.py", *args, cwd=tmp_path, fault=[["half", "latest", 20]])
    assert first.returncode == KILLED, first.stderr
    assert not (weights / "weights-latest.pth").exists()
    assert list(weights.glob("weights-latest.pth.*.tmp"))
    assert_checkpoints_load(weights)

    # 2. The rerun starts over; killed with step 40's checkpoint written to its temp file, not renamed.
    second = scripts.run("train.py", *args, cwd=tmp_path, fault=[["unrenamed", "latest", 40]])
    assert second.returncode == KILLED and "starting fresh" in second.stderr, second.stderr
    assert latest_step() == 20
    assert_checkpoints_load(weights)
    assert list(weights.glob("weights-latest.pth.*.tmp"))
    generated = scripts.run("run.py", *run_args(tiny, weights=weights), cwd=tmp_path)
    assert generated.returncode == 0 and generated.stdout.strip(), generated.stderr   # not misled by temp files

    # 3. Resumes from step 20; SIGKILL from outside as soon as it reports step 40. (The 35th batch
    #    of this run is step 55: if the signal were slow, the run still dies before step 60.)
    third = scripts.run("train.py", *args, cwd=tmp_path, kill_on="step 40:", fault=[["kill_at_step", 35]])
    assert third.returncode == KILLED and "at step 20" in third.stderr, third.stderr
    assert latest_step() == 40
    assert_checkpoints_load(weights)

    # 4. Resumes from step 40; killed in the middle of the final evaluation's saves: weights-best.pth
    #    for step 60 written to its temp file, not renamed.
    fourth = scripts.run("train.py", *args, cwd=tmp_path, fault=[["unrenamed", "best", 60]])
    assert fourth.returncode == KILLED and "at step 40" in fourth.stderr, fourth.stderr
    assert_checkpoints_load(weights)

    # 5. The last rerun ends exactly as the uninterrupted run did.
    last = scripts.run("train.py", *args, cwd=tmp_path)
    assert last.returncode == 0 and "Traceback" not in last.stderr, last.stderr
    got, want = assert_checkpoints_load(weights), assert_checkpoints_load(tiny["reference"])
    for name in ("weights-latest.pth", "weights-best.pth"):
        assert got[name]["step"] == want[name]["step"] == 60
        assert got[name]["val_nats_per_char"] == want[name]["val_nats_per_char"]
        for key, tensor in want[name]["model"].items():
            assert got[name]["model"][key].equal(tensor), (name, key)
    assert history(weights) == history(tiny["reference"])
    assert not list(weights.glob("*.tmp"))                  # the killed saves' temp files are cleared away


def test_a_run_learning_from_a_teacher_killed_twice_ends_as_if_never_killed(scripts, tiny, tmp_path):
    """--teacher PATH: the tiny run's model as the teacher of a new one. Killed after its checkpoints
    at steps 20 and 40, the reruns resume and end with the very model of the uninterrupted run."""
    args = lambda weights: [*train_args(tiny, weights), "--teacher", tiny["reference"] / "weights-best.pth"]  # noqa: E731
    reference = scripts.run("train.py", *args(tmp_path / "whole"), cwd=tmp_path)
    assert reference.returncode == 0 and "teacher: " in reference.stderr, reference.stderr
    weights = tmp_path / "killed"
    for checkpoint in ("step 20:", "step 40:"):
        killed = scripts.run("train.py", *args(weights), cwd=tmp_path, fault=[["kill_on_print", checkpoint]])
        assert killed.returncode == KILLED, killed.stderr
    last = scripts.run("train.py", *args(weights), cwd=tmp_path)
    assert last.returncode == 0 and "at step 40" in last.stderr, last.stderr
    got, want = assert_checkpoints_load(weights), assert_checkpoints_load(tmp_path / "whole")
    for name in ("weights-latest.pth", "weights-best.pth"):
        assert got[name]["step"] == want[name]["step"] == 60
        for key, tensor in want[name]["model"].items():
            assert got[name]["model"][key].equal(tensor), (name, key)
    assert history(weights) == history(tmp_path / "whole")


def test_a_run_killed_during_its_final_evaluation_does_it_on_the_next_run(scripts, tiny):
    # The tiny run's folder as a kill during the final full pass leaves it: every checkpoint
    # written, the history without its last ("full") row.
    weights, history_csv = tiny["weights_dir"], tiny["weights_dir"] / "loss_history.csv"
    lines = history_csv.read_text().splitlines(keepends=True)
    assert lines[-1].rstrip().endswith(",full")
    history_csv.write_text("".join(lines[:-1]))
    def checkpoint_hashes():
        return {name: digest for name, digest in file_hashes(weights).items() if name.endswith(".pth")}
    checkpoints = checkpoint_hashes()

    result = scripts.run("train.py", *train_args(tiny), cwd=tiny["root"])
    assert result.returncode == 0 and "stopped during its final evaluation" in result.stderr, result.stderr
    assert history(weights) == history(tiny["reference"])        # the same full row as the unkilled run
    assert checkpoint_hashes() == checkpoints

    again = scripts.run("train.py", *train_args(tiny), cwd=tiny["root"])
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr
    assert history(weights) == history(tiny["reference"])


def test_temp_file_of_a_killed_tokenization_is_removed_by_the_next_run(scripts, tiny):
    # A kill while tokenizing leaves NAME.tokens.npy.PID.tmp in .cache/; a later run removes it,
    # but not one whose process still runs (another train.py may be tokenizing right now).
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()                                           # its PID names no process any more
    cache_dir = tiny["root"] / ".cache"
    cache_dir.mkdir()
    abandoned = cache_dir / f"input.txt.0123456789abcdef.tokens.npy.{gone.pid}.tmp"
    in_use = cache_dir / f"input.txt.fedcba9876543210.tokens.npy.{os.getpid()}.tmp"
    abandoned.write_bytes(b"half")
    in_use.write_bytes(b"half")
    result = scripts.run("train.py", *train_args(tiny), cwd=tiny["root"])
    assert result.returncode == 0, result.stderr
    assert not abandoned.exists() and in_use.exists()
    assert f"removed {abandoned}" in result.stderr
    assert list(cache_dir.glob("*.tokens.npy"))            # and the ids were cached as usual


def test_full_disk_during_a_checkpoint_write_is_one_error_line_and_keeps_the_last_checkpoint(
        scripts, tiny, tmp_path):
    weights = tmp_path / "full"
    result = scripts.run("train.py", *train_args(tiny, weights), cwd=tmp_path, fault=[["enospc", "latest", 40]])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and result.stderr.count("error: ") == 1
    assert "weights-latest.pth" in error and "resume" in error and "MB free" in error
    assert load_checkpoint(weights / "weights-latest.pth")["step"] == 20
    assert_checkpoints_load(weights)
    assert not list(weights.glob("*.tmp"))


def test_weights_folder_removed_during_a_save_is_one_error_line(scripts, tiny, tmp_path):
    weights = tmp_path / "vanishing"
    result = scripts.run("train.py", *train_args(tiny, weights), cwd=tmp_path, fault=[["vanish", "latest", 40]])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: could not write") and result.stderr.count("error: ") == 1
    assert "weights-latest.pth" in error and "run train.py again to resume" in error
    assert not weights.exists()


def test_sigkill_during_the_final_evaluation_then_a_rerun_does_that_evaluation(scripts, tiny, tmp_path):
    weights = tmp_path / "killed"
    killed = scripts.run("train.py", *train_args(tiny, weights), cwd=tmp_path,
                         fault=[["kill_on_print", "final evaluation"]])
    assert killed.returncode == KILLED, killed.stderr
    assert history(weights)[-1]["eval"] == "windows" and history(weights)[-1]["step"] == "60"
    checkpoints = {name: digest for name, digest in file_hashes(weights).items() if name.endswith(".pth")}

    rerun = scripts.run("train.py", *train_args(tiny, weights), cwd=tmp_path)
    assert rerun.returncode == 0 and "stopped during its final evaluation" in rerun.stderr, rerun.stderr
    assert history(weights) == history(tiny["reference"])        # the same final row as the unkilled run
    assert {name: digest for name, digest in file_hashes(weights).items() if name.endswith(".pth")} == checkpoints


def test_ctrl_c_once_stops_and_saves_twice_quits_without_saving(scripts, tiny, tmp_path):
    args = [*train_args(tiny, tmp_path / "w"), "--eval_interval", "5"]
    # Pressed once during step 8: that step ends, is saved, and the run exits 130.
    once = scripts.run("train.py", *args, cwd=tmp_path, fault=[["sigint_at_step", 8, 1]])
    assert once.returncode == 130 and "Traceback" not in once.stderr, once.stderr
    assert "stopped at step 8; saved" in once.stderr
    assert load_checkpoint(tmp_path / "w" / "weights-latest.pth")["step"] == 8

    # Pressed twice during step 8: the run quits at once, weights-latest.pth stays at step 5.
    twice = scripts.run("train.py", *args, "--fresh", cwd=tmp_path, fault=[["sigint_at_step", 8, 2]])
    assert twice.returncode == 130 and "Traceback" not in twice.stderr, twice.stderr
    assert "interrupted; nothing more saved" in twice.stderr and "stopped at step" not in twice.stderr
    assert load_checkpoint(tmp_path / "w" / "weights-latest.pth")["step"] == 5
    assert [row["step"] for row in history(tmp_path / "w")] == ["5"]
    assert not list((tmp_path / "w").glob("*.tmp"))


# ─────────────────────────────────────── broken checkpoints ─────────────────────────────────────

class WritesMarker:
    """Unpickling this calls open(marker, "w"): code run by loading, in miniature."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def code_pickle(path: Path, marker: Path, container: str) -> None:
    """A checkpoint-shaped file whose loading would create marker."""
    payload = {"format_version": 1, "kind": "latest", "model_config": {}, "model": WritesMarker(marker)}
    if container == "torch.save":
        import torch
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))


BROKEN_CHECKPOINTS = {
    # case: (make the bad file from the good one's bytes, words the error must hold)
    "zero-length": (lambda good, path, marker: path.write_bytes(b""), "empty file"),
    "truncated": (lambda good, path, marker: path.write_bytes(good[:len(good) // 2]), "truncated"),
    "garbage": (lambda good, path, marker: path.write_bytes(random.Random(7).randbytes(len(good))),
                "not a PyTorch checkpoint"),
    "code in torch.save pickle": (lambda good, path, marker: code_pickle(path, marker, "torch.save"), "refused"),
    "code in plain pickle": (lambda good, path, marker: code_pickle(path, marker, "pickle"), "refused"),
}


@pytest.mark.parametrize("case", BROKEN_CHECKPOINTS)
def test_broken_checkpoint_is_named_and_refused_by_run_and_train_and_no_code_runs(scripts, tiny, case):
    make, words = BROKEN_CHECKPOINTS[case]
    marker = tiny["root"] / "MARKER"
    for name in ("weights-best.pth", "weights-latest.pth"):   # what run.py, resp. train.py, reads
        path = tiny["weights_dir"] / name
        make(path.read_bytes(), path, marker)
    before = file_hashes(tiny["root"])
    generated = scripts.run("run.py", *run_args(tiny), cwd=tiny["root"])
    assert_one_error_line(generated, "weights-best.pth", words)
    resumed = scripts.run("train.py", *train_args(tiny), cwd=tiny["root"])
    assert_one_error_line(resumed, "weights-latest.pth", words, "--fresh")
    assert not marker.exists()
    assert file_hashes(tiny["root"]) == before


def test_checkpoints_from_before_positions_were_named_run_with_the_positions_they_held(scripts, tiny):
    """Format 1 held a learned position table, format 2 rotary positions; neither named them. run.py
    runs both: a format-2 copy of the tiny (rotary) model writes the very text the model writes."""
    import torch
    best = tiny["weights_dir"] / "weights-best.pth"
    prompt = ["--max-new-tokens", "20", "--device", "cpu"]
    expected = scripts.run("run.py", *run_args(tiny), *prompt, cwd=tiny["root"])
    assert expected.returncode == 0 and expected.stdout, expected.stderr
    ckpt = torch.load(best, weights_only=True)
    assert ckpt["model_config"].pop("positions") == "rotary"
    torch.save({**ckpt, "format_version": 2}, best)
    again = scripts.run("run.py", *run_args(tiny), *prompt, cwd=tiny["root"])
    assert again.returncode == 0 and again.stdout == expected.stdout, again.stderr
    ckpt["model"]["pos_emb.weight"] = torch.zeros(ckpt["model_config"]["block_size"], ckpt["model_config"]["emb_len"])
    torch.save({**ckpt, "format_version": 1}, best)
    learned = scripts.run("run.py", *run_args(tiny), *prompt, cwd=tiny["root"])
    assert learned.returncode == 0 and learned.stdout, learned.stderr       # a model without rotations now


# ─────────────────────────────────────── damaged tokenizer ──────────────────────────────────────

def edit_itos(folder: Path) -> None:
    itos = json.loads((folder / "itos.json").read_text(encoding="utf-8"))
    itos[str(len(itos) - 1)] = "an edited token"
    (folder / "itos.json").write_text(json.dumps(itos, ensure_ascii=False, indent=1), encoding="utf-8")


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


DAMAGED_TOKENIZERS = {
    # case: (damage the folder, words the error must hold)
    "stoi.json deleted": (lambda folder: (folder / "stoi.json").unlink(), ["stoi.json", "missing", "init.py"]),
    "merges.json deleted": (lambda folder: (folder / "merges.json").unlink(), ["merges.json", "missing"]),
    "merges.json cut in half": (lambda folder: truncate(folder / "merges.json"), ["merges.json", "not valid JSON"]),
    "itos.json edited": (edit_itos, ["itos.json", "an edited token", "merges.json gives"]),
}


@pytest.mark.parametrize("case", DAMAGED_TOKENIZERS)
def test_damaged_tokenizer_is_named_by_run_and_train_and_nothing_else_changes(scripts, tiny, case):
    damage, words = DAMAGED_TOKENIZERS[case]
    damage(tiny["tokenizer_dir"])
    before = file_hashes(tiny["root"])
    assert_one_error_line(scripts.run("run.py", *run_args(tiny), cwd=tiny["root"]), *words)
    assert_one_error_line(scripts.run("train.py", *train_args(tiny), cwd=tiny["root"]), *words)
    assert file_hashes(tiny["root"]) == before
    assert_checkpoints_load(tiny["weights_dir"])


# ─────────────────────────────────────── edited Model_Params ────────────────────────────────────

def scripts_with_params(folder: Path, **values) -> Path:
    """A copy of the repo's scripts whose Model_Params.py holds the given values."""
    folder.mkdir()
    for path in REPO.glob("*.py"):
        shutil.copy(path, folder / path.name)
    shutil.copytree(REPO / "support", folder / "support", ignore=shutil.ignore_patterns("__pycache__"))
    source = (folder / "Model_Params.py").read_text(encoding="utf-8")
    for name, value in values.items():
        source, found = re.subn(rf"^{name} = \S+", f"{name} = {value!r}", source, flags=re.M)
        assert found == 1, name
    (folder / "Model_Params.py").write_text(source, encoding="utf-8")
    return folder


def test_init_and_run_take_every_option_in_both_spellings_and_show_one():
    import init
    import run
    assert vars(init.parse_args(["--vocab_size", "300", "--sample_bytes", "1M"])) == \
        vars(init.parse_args(["--vocab-size", "300", "--sample-bytes", "1M"]))
    underscores = ["--max_new_tokens", "5", "--top_p", "0.5", "--top_k", "3", "--tokenizer_dir", "x",
                   "--eval_stride", "3", "--eval", "f"]
    assert vars(run.parse_args(underscores, Model_Params)) == \
        vars(run.parse_args([a.replace("_", "-") if a.startswith("--") else a for a in underscores], Model_Params))
    for script in ("init.py", "run.py"):
        shown = run_script(script, "--help").stdout
        options = set(re.findall(r"(?<![\w-])--[a-z][a-z_-]*", shown))
        assert options and not [option for option in options if "_" in option], (script, options)


def test_your_own_text_just_works_replace_input_then_init_then_train(scripts, tmp_path):
    """README's recipe, word for word, in a copy of the project: Model_Params.py set to a tiny model,
    `python init.py && python train.py` on one text, then input.txt replaced by another and the same
    two commands, with no flag. The second run starts, and the first run's files are kept aside."""
    flags = dict(zip(TINY_TRAIN_FLAGS[::2], TINY_TRAIN_FLAGS[1::2]))
    tiny_params = {name[2:]: type(getattr(Model_Params, name[2:]))(value)
                   for name, value in flags.items() if hasattr(Model_Params, name[2:])}
    project = scripts_with_params(tmp_path / "project", **{**tiny_params, "max_iters": 20, "eval_interval": 10})
    (project / "Train_Data").mkdir()
    weights = project / "Saved_Weights"
    first_run = {}
    for text in (TINY_TEXT, TINY_TEXT.replace("fox", "cat").replace("dog", "hen")):
        (project / "Train_Data" / "input.txt").write_text(text, encoding="utf-8")
        for script in ("init.py", "train.py"):
            result = scripts.run(project / script, cwd=project)
            assert result.returncode == 0, result.stderr
        if not first_run:
            first_run = file_hashes(weights)
            assert {"weights-latest.pth", "weights-best.pth", "loss_history.csv"} <= set(first_run)
    assert f"moved the run that was in {weights}/ to {weights / 'earlier-run-1'}/" in result.stderr
    assert "starting fresh" in result.stderr
    kept = file_hashes(weights / "earlier-run-1")
    assert kept == {name: digest for name, digest in first_run.items() if name in kept}
    assert set(kept) >= {"weights-latest.pth", "weights-best.pth", "loss_history.csv"}
    assert [row["step"] for row in history(weights)] == ["10", "20", "20"]     # the new run's own history


def test_edited_model_params_makes_train_refuse_to_resume_until_fresh(scripts, tiny, tmp_path):
    # Model_Params.py as the tiny model was trained (conftest's flags), then edited.
    # The settings that are flags only (no line in Model_Params.py) stay flags.
    flags = dict(zip(TINY_TRAIN_FLAGS[::2], TINY_TRAIN_FLAGS[1::2]))
    trained = {name[2:]: type(getattr(Model_Params, name[2:]))(value)
               for name, value in flags.items() if hasattr(Model_Params, name[2:])}
    folders = ["--input", tiny["input"], "--tokenizer-dir", tiny["tokenizer_dir"], "--weights-dir", tiny["weights_dir"],
               *[arg for name, value in flags.items() if not hasattr(Model_Params, name[2:]) for arg in (name, value)]]
    before = file_hashes(tiny["weights_dir"])

    # A setting that does not shape the weights: resumes (here: nothing left to do) and says what changed.
    lr = scripts_with_params(tmp_path / "lr", **{**trained, "learning_rate": 0.02})
    result = scripts.run(lr / "train.py", *folders, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "learning_rate 0.01 -> 0.02" in result.stderr and "nothing to do" in result.stderr

    # A setting that does: refused, naming it and --fresh, nothing touched ...
    layers = scripts_with_params(tmp_path / "layers", **{**trained, "num_layers": 3})
    assert_one_error_line(scripts.run(layers / "train.py", *folders, cwd=tmp_path),
                          "weights-latest.pth", "num_layers 2 -> 3", "--fresh")
    assert file_hashes(tiny["weights_dir"]) == before
    # ... until --fresh, which trains the new shape.
    result = scripts.run(layers / "train.py", *folders, "--fresh", "--stop-at-step", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert assert_checkpoints_load(tiny["weights_dir"])["weights-latest.pth"]["model_config"]["num_layers"] == 3


BROKEN_PARAMS = {
    # case: (edit the source of Model_Params.py, words the error must hold, scripts that must refuse)
    "syntax error": (lambda source: source.replace("block_size = ", "block_size = (", 1),
                     ["Model_Params.py cannot be read", "SyntaxError", "git checkout"],
                     ("init.py", "train.py", "run.py")),
    "a setting deleted": (lambda source: re.sub(r"^emb_len = .*$", "", source, flags=re.M),
                          ["Model_Params.py lacks emb_len", "git checkout"], ("train.py",)),
    "a number made a word": (lambda source: re.sub(r"^num_layers = \S+", "num_layers = 'six'", source, flags=re.M),
                             ["Model_Params.py: num_layers = 'six' must be a whole number"], ("train.py",)),
}


@pytest.mark.parametrize("case", BROKEN_PARAMS)
def test_model_params_broken_by_an_edit_is_one_error_line_and_changes_nothing(scripts, tiny, tmp_path, case):
    edit, words, refusing = BROKEN_PARAMS[case]
    folder = scripts_with_params(tmp_path / "scripts")
    params = folder / "Model_Params.py"
    params.write_text(edit(params.read_text(encoding="utf-8")), encoding="utf-8")
    before = {name: file_hashes(tiny[name]) for name in ("tokenizer_dir", "weights_dir")}
    commands = {"init.py": ["--input", tiny["input"], "--vocab-size", "300", "--out", tiny["tokenizer_dir"]],
                "train.py": train_args(tiny), "run.py": run_args(tiny)}
    for script in refusing:
        assert_one_error_line(scripts.run(folder / script, *commands[script], cwd=tiny["root"]), *words)
    assert {name: file_hashes(tiny[name]) for name in before} == before


# ──────────────────────────────────────── bad training text ─────────────────────────────────────

def binary_bytes() -> bytes:
    """Something like an image file: a PNG signature, then seeded random bytes."""
    return b"\x89PNG\r\n\x1a\n" + random.Random(3).randbytes(4000)


BAD_TEXTS = {
    # case: (file bytes or None for a missing file, words train.py's error must hold)
    "missing": (None, ["not found"]),
    "empty": (b"", ["too short"]),
    "too short": (b"the quick brown fox jumps over the lazy dog\n", ["too short", "block_size"]),
    "invalid UTF-8": (TINY_TEXT.encode("utf-8")[:5000] + b"\xff" + TINY_TEXT.encode("utf-8")[5000:],
                      ["not valid UTF-8", "0xFF", "5000"]),
    "binary": (binary_bytes(), ["not valid UTF-8", "0x89", "offset 0"]),
}


@pytest.mark.parametrize("case", BAD_TEXTS)
def test_bad_training_text_is_one_error_line_and_existing_checkpoints_survive(scripts, tiny, case):
    """Even with --fresh, which would replace the checkpoints, nothing is touched before the text is known good."""
    data, words = BAD_TEXTS[case]
    bad = tiny["root"] / "bad.txt"
    if data is not None:
        bad.write_bytes(data)
    before = file_hashes(tiny["weights_dir"])
    result = scripts.run("train.py", *train_args(tiny, input=bad), "--fresh", cwd=tiny["root"])
    assert_one_error_line(result, "bad.txt", *words)
    assert file_hashes(tiny["weights_dir"]) == before


def test_binary_file_is_one_error_line_from_init_and_keeps_the_tokenizer(scripts, tiny):
    """(init.py's other bad inputs are in test_init.py.)"""
    bad = tiny["root"] / "image.png"
    bad.write_bytes(binary_bytes())
    before = file_hashes(tiny["tokenizer_dir"])
    result = scripts.run("init.py", "--input", bad, "--vocab-size", "300", "--out", tiny["tokenizer_dir"],
                         cwd=tiny["root"])
    assert_one_error_line(result, "image.png", "not valid UTF-8", "0x89")
    assert file_hashes(tiny["tokenizer_dir"]) == before
    assert sorted(p.name for p in tiny["root"].iterdir()) == ["image.png", "input.txt", "tokenizer", "weights"]
    Tokenizer.load(tiny["tokenizer_dir"])


# ──────────────────────────────────────── weights folder ────────────────────────────────────────

def test_weights_folder_that_cannot_be_written_is_reported_before_any_step(scripts, tiny, tmp_path):
    # /sys refuses new files even to root (a chmod would not stop root, who runs CI).
    result = scripts.run("train.py", *train_args(tiny, weights_dir="/sys"), cwd=tmp_path)
    assert_one_error_line(result, "cannot write to weights folder /sys", "--weights-dir")
    assert not (tiny["root"] / ".cache").exists()             # stopped before even tokenizing


def test_weights_folder_on_a_missing_path_is_created(scripts, tiny, tmp_path):
    weights = tmp_path / "not" / "there" / "yet"
    result = scripts.run("train.py", *train_args(tiny, weights_dir=weights), "--stop-at-step", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert assert_checkpoints_load(weights)["weights-latest.pth"]["step"] == 1


# ─────────────────────────────────────────── memory ─────────────────────────────────────────────

def varied_text(path: Path, copies: int) -> Path:
    """copies × 2 MB of English-like text, each copy in its own line order."""
    base = english_like_text(2_000_000, seed=1)
    with open(path, "w", encoding="utf-8") as f:
        for copy in range(copies):
            lines = base.splitlines(keepends=True)
            random.Random(copy).shuffle(lines)
            f.write("".join(lines))
    return path


@pytest.fixture(scope="module")
def six_and_twenty_two_mb(tmp_path_factory) -> dict:
    """A 6 MB and a 22 MB text, both larger than every fixed-size buffer (1 MB pieces and hash
    blocks, 4 MB tokenizing ranges), and a tokenizer learned from the first."""
    folder = tmp_path_factory.mktemp("big_texts")
    texts = {"small": varied_text(folder / "small.txt", 3), "big": varied_text(folder / "big.txt", 11)}
    tokenizer = Tokenizer()
    tokenizer.train(texts["small"].read_text(encoding="utf-8")[:1_000_000], 512)
    return {**texts, "tokenizer": tokenizer}


def traced_peak(function) -> int:
    """The most memory Python objects (numpy arrays included) held at once while function ran."""
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_reading_and_tokenizing_a_file_hold_no_more_for_a_bigger_file(six_and_twenty_two_mb, tmp_path):
    """What init.py and train.py do with the whole file, in this process: count its chunks from
    pieces, and tokenize it into the token cache. Their peak may not grow by a quarter of a byte per
    extra byte of text (measured: 0.001 and 0.19); holding the text whole costs at least 1 (a
    character is a byte here), and its ids in a Python list about 10."""
    texts, tokenizer = six_and_twenty_two_mb, six_and_twenty_two_mb["tokenizer"]
    peaks = {}
    for name in ("small", "big"):
        path = texts[name]
        with open(tmp_path / f"{name}.npy", "wb") as f:
            peaks[name] = {
                "counting chunks": traced_peak(lambda: count_chunks(read_pieces(path), SPLIT_RE)),
                "tokenizing": traced_peak(lambda: id_cache.tokenize_into(f, path, tokenizer, 1, None, False)),
            }
    extra_text = texts["big"].stat().st_size - texts["small"].stat().st_size
    for step in peaks["small"]:
        assert (peaks["big"][step] - peaks["small"][step]) / extra_text < 0.25, (step, peaks)
