"""Faults and bad input lose nothing: the real scripts, on a tiny model in temp folders,
are killed mid-run and given broken checkpoints, damaged tokenizers, edited settings and bad text.
Each case checks the message (one `error:` line, no traceback) and that nothing was lost: the
checkpoints still load and rebuild their model, the files that should not change are byte-identical.
The scripts run in children forked from one process that imported torch once (conftest's `scripts`),
where the faults (SIGKILL inside a checkpoint write, a full disk) are injected too.

Covered by other files, not repeated here:
  prompts — empty, emoji, CJK, control characters, longer than block_size, 1 MB:
      test_run.py::test_every_kind_of_prompt_gets_one_continuation_per_line
  prompts — closed stdin: test_run.py::test_closed_stdin_exits_quietly
  NaN loss (learning rate 1e38): test_train.py::test_nan_loss_stops_and_keeps_last_good_checkpoint
  Model_Params.py edited, run.py: test_run.py::test_edited_model_params_still_runs_the_trained_model_and_names_the_differences
  tokenizer retrained (same size, other merges): run.py: test_run.py::test_tokenizer_that_does_not_match_the_checkpoint_is_refused;
      train.py: test_train.py::test_a_run_of_another_tokenizer_is_moved_aside_and_a_new_run_starts
  input missing, empty, invalid UTF-8, binary (init.py): test_init.py::test_bad_input_gives_one_error_line_and_writes_nothing
  checkpoints from before the positions were named:
      test_checkpoints.py::test_versions_before_positions_were_named_load_as_the_positions_they_held
  a large text: test_promises.py::test_init_and_train_on_a_large_text_hold_far_less_than_the_text
"""
import json
import os
import pickle
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

import Model_Params
from conftest import (TINY_TEXT, TINY_TRAIN_FLAGS, assert_checkpoints_load, assert_one_error_line, file_hashes,
                      history, linux_only, run_args, scripts_with_params, train_args)
from support.checkpoints import load_checkpoint

KILLED = -9                      # returncode of a process ended by SIGKILL


# ───────────────────────────────────────── SIGKILL ──────────────────────────────────────────────

def test_sigkill_at_any_moment_loses_no_finished_checkpoint_and_resuming_ends_as_if_never_killed(
        scripts, tiny_copy, tmp_path):
    """The tiny run (60 steps, evaluations at 20, 40, 60) again in a new folder, killed four times
    at different moments; every kill leaves only complete checkpoints, each rerun resumes from the
    last one, and the last rerun ends with the very weights, best checkpoint and history of the
    uninterrupted run."""
    weights = tmp_path / "killed"
    args = train_args(tiny_copy, weights)

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
    generated = scripts.run("run.py", *run_args(tiny_copy, weights=weights), cwd=tmp_path)
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
    got, want = assert_checkpoints_load(weights), assert_checkpoints_load(tiny_copy["reference"])
    for name in ("weights-latest.pth", "weights-best.pth"):
        assert got[name]["step"] == want[name]["step"] == 60
        assert got[name]["val_nats_per_char"] == want[name]["val_nats_per_char"]
        for key, tensor in want[name]["model"].items():
            assert got[name]["model"][key].equal(tensor), (name, key)
    assert history(weights) == history(tiny_copy["reference"])
    assert not list(weights.glob("*.tmp"))                  # the killed saves' temp files are cleared away


def test_temp_file_of_a_killed_tokenization_is_removed_by_the_next_run(scripts, tiny_copy):
    # A kill while tokenizing leaves NAME.tokens.npy.PID.tmp in .cache/; a later run removes it,
    # but not one whose process still runs (another train.py may be tokenizing right now).
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()                                           # its PID names no process any more
    cache_dir = tiny_copy["root"] / ".cache"
    cache_dir.mkdir()
    abandoned = cache_dir / f"input.txt.0123456789abcdef.tokens.npy.{gone.pid}.tmp"
    in_use = cache_dir / f"input.txt.fedcba9876543210.tokens.npy.{os.getpid()}.tmp"
    abandoned.write_bytes(b"half")
    in_use.write_bytes(b"half")
    result = scripts.run("train.py", *train_args(tiny_copy), cwd=tiny_copy["root"])
    assert result.returncode == 0, result.stderr
    assert not abandoned.exists() and in_use.exists()
    assert f"removed {abandoned}" in result.stderr
    assert list(cache_dir.glob("*.tokens.npy"))            # and the ids were cached as usual


@linux_only("fills the disk with /dev/full, which fails every write as a full disk does")
def test_full_disk_during_a_checkpoint_write_is_one_error_line_and_keeps_the_last_checkpoint(
        scripts, tiny_copy, tmp_path):
    weights = tmp_path / "full"
    result = scripts.run("train.py", *train_args(tiny_copy, weights), cwd=tmp_path, fault=[["enospc", "latest", 40]])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and result.stderr.count("error: ") == 1
    assert "weights-latest.pth" in error and "resume" in error and "MB free" in error
    assert load_checkpoint(weights / "weights-latest.pth")["step"] == 20
    assert_checkpoints_load(weights)
    assert not list(weights.glob("*.tmp"))


def test_weights_folder_removed_during_a_save_is_one_error_line(scripts, tiny_copy, tmp_path):
    weights = tmp_path / "vanishing"
    result = scripts.run("train.py", *train_args(tiny_copy, weights), cwd=tmp_path, fault=[["vanish", "latest", 40]])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: could not write") and result.stderr.count("error: ") == 1
    assert "weights-latest.pth" in error and "run train.py again to resume" in error
    assert not weights.exists()


def test_sigkill_during_the_final_evaluation_then_a_rerun_does_that_evaluation(scripts, tiny_copy, tmp_path):
    weights = tmp_path / "killed"
    killed = scripts.run("train.py", *train_args(tiny_copy, weights), cwd=tmp_path,
                         fault=[["kill_on_print", "final evaluation"]])
    assert killed.returncode == KILLED, killed.stderr
    assert history(weights)[-1]["eval"] == "windows" and history(weights)[-1]["step"] == "60"
    checkpoints = {name: digest for name, digest in file_hashes(weights).items() if name.endswith(".pth")}

    rerun = scripts.run("train.py", *train_args(tiny_copy, weights), cwd=tmp_path)
    assert rerun.returncode == 0 and "stopped during its final evaluation" in rerun.stderr, rerun.stderr
    assert history(weights) == history(tiny_copy["reference"])        # the same final row as the unkilled run
    assert {name: digest for name, digest in file_hashes(weights).items() if name.endswith(".pth")} == checkpoints


def test_ctrl_c_once_stops_and_saves_twice_quits_without_saving(scripts, tiny_copy, tmp_path):
    args = [*train_args(tiny_copy, tmp_path / "w"), "--eval_interval", "5"]
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
        path.write_bytes(pickle.dumps(payload, protocol=int(container[-1])))


BROKEN_CHECKPOINTS = {
    # case: (make the bad file from the good one's bytes, words the error must hold)
    "zero-length": (lambda good, path, marker: path.write_bytes(b""), "empty file"),
    "truncated": (lambda good, path, marker: path.write_bytes(good[:len(good) // 2]), "truncated"),
    "garbage": (lambda good, path, marker: path.write_bytes(random.Random(7).randbytes(len(good))),
                "not a PyTorch checkpoint"),
    "code in torch.save pickle": (lambda good, path, marker: code_pickle(path, marker, "torch.save"), "refused"),
    "code in pickle protocol 2": (lambda good, path, marker: code_pickle(path, marker, "pickle 2"), "refused"),
    "code in pickle protocol 4": (lambda good, path, marker: code_pickle(path, marker, "pickle 4"),
                                  "not a PyTorch checkpoint"),
}


@pytest.mark.parametrize("case", BROKEN_CHECKPOINTS)
def test_broken_checkpoint_is_named_and_refused_by_run_and_train_and_no_code_runs(scripts, tiny_copy, case):
    make, words = BROKEN_CHECKPOINTS[case]
    marker = tiny_copy["root"] / "MARKER"
    for name in ("weights-best.pth", "weights-latest.pth"):   # what run.py, resp. train.py, reads
        path = tiny_copy["weights_dir"] / name
        make(path.read_bytes(), path, marker)
    before = file_hashes(tiny_copy["root"])
    generated = scripts.run("run.py", *run_args(tiny_copy), cwd=tiny_copy["root"])
    assert_one_error_line(generated, "weights-best.pth", words)
    resumed = scripts.run("train.py", *train_args(tiny_copy), cwd=tiny_copy["root"])
    assert_one_error_line(resumed, "weights-latest.pth", words, "--fresh")
    assert not marker.exists()
    assert file_hashes(tiny_copy["root"]) == before


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
def test_damaged_tokenizer_is_named_by_train_and_run_keeps_the_one_its_checkpoint_carries(scripts, tiny_copy, case):
    damage, words = DAMAGED_TOKENIZERS[case]
    damage(tiny_copy["tokenizer_dir"])
    before = file_hashes(tiny_copy["root"])
    assert_one_error_line(scripts.run("train.py", *train_args(tiny_copy), cwd=tiny_copy["root"]), *words)
    ran = scripts.run("run.py", *run_args(tiny_copy), cwd=tiny_copy["root"])
    assert ran.returncode == 0 and ran.stdout.strip(), ran.stderr
    assert file_hashes(tiny_copy["root"]) == before
    assert_checkpoints_load(tiny_copy["weights_dir"])


# ─────────────────────────────────────── edited Model_Params ────────────────────────────────────

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
        (project / "Train_Data" / "input.txt").write_text(text, encoding="utf-8", newline="\n")
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


def test_edited_model_params_makes_train_refuse_to_resume_until_fresh(scripts, tiny_copy, tmp_path):
    # Model_Params.py as the tiny model was trained (conftest's flags), then edited.
    # The settings that are flags only (no line in Model_Params.py) stay flags.
    flags = dict(zip(TINY_TRAIN_FLAGS[::2], TINY_TRAIN_FLAGS[1::2]))
    trained = {name[2:]: type(getattr(Model_Params, name[2:]))(value)
               for name, value in flags.items() if hasattr(Model_Params, name[2:])}
    folders = ["--input", tiny_copy["input"], "--tokenizer-dir", tiny_copy["tokenizer_dir"],
               "--weights-dir", tiny_copy["weights_dir"],
               *[arg for name, value in flags.items() if not hasattr(Model_Params, name[2:]) for arg in (name, value)]]
    before = file_hashes(tiny_copy["weights_dir"])

    # A setting that does not shape the weights: resumes (here: nothing left to do) and says what changed.
    lr = scripts_with_params(tmp_path / "lr", **{**trained, "learning_rate": 0.02})
    result = scripts.run(lr / "train.py", *folders, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "learning_rate 0.01 -> 0.02" in result.stderr and "nothing to do" in result.stderr

    # A setting that does: refused, naming it and --fresh, nothing touched ...
    layers = scripts_with_params(tmp_path / "layers", **{**trained, "num_layers": 3})
    assert_one_error_line(scripts.run(layers / "train.py", *folders, cwd=tmp_path),
                          "weights-latest.pth", "num_layers 2 -> 3", "--fresh")
    assert file_hashes(tiny_copy["weights_dir"]) == before
    # ... until --fresh, which trains the new shape.
    result = scripts.run(layers / "train.py", *folders, "--fresh", "--max-iters", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert assert_checkpoints_load(tiny_copy["weights_dir"])["weights-latest.pth"]["model_config"]["num_layers"] == 3


READS = {  # script: (a setting it reads, a word for it, what the value must be)
    "init.py": ("vocab_size", "big", "a whole number"),
    "train.py": ("num_layers", "six", "a whole number"),
    "run.py": ("temperature", "hot", "a number"),
}


@pytest.mark.parametrize("script", READS)
@pytest.mark.parametrize("case", ["syntax error", "a setting deleted", "a number made a word"])
def test_model_params_broken_by_an_edit_is_one_error_line_and_changes_nothing(scripts, tiny_copy, tmp_path, script,
                                                                             case):
    name, word, kind = READS[script]
    params = scripts_with_params(tmp_path / "scripts") / "Model_Params.py"   # the real one is never touched
    source = params.read_text(encoding="utf-8")
    edited, words = {
        "syntax error": (source.replace("block_size = ", "block_size = (", 1),
                         ["Model_Params.py cannot be read", "SyntaxError", "git checkout"]),
        "a setting deleted": (re.sub(rf"^{name} = .*$", "", source, flags=re.M),
                              [f"Model_Params.py lacks {name}", "git checkout Model_Params.py"]),
        "a number made a word": (re.sub(rf"^{name} = \S+", f"{name} = {word!r}", source, flags=re.M),
                                 [f"Model_Params.py: {name} = {word!r} must be {kind}"]),
    }[case]
    assert edited != source
    params.write_text(edited, encoding="utf-8")
    commands = {"init.py": ["--input", tiny_copy["input"], "--vocab-size", "300", "--out", tiny_copy["tokenizer_dir"]],
                "train.py": train_args(tiny_copy), "run.py": run_args(tiny_copy)}
    before = file_hashes(tiny_copy["root"])
    assert_one_error_line(scripts.run(params.parent / script, *commands[script], cwd=tiny_copy["root"]), *words)
    assert file_hashes(tiny_copy["root"]) == before


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
def test_bad_training_text_is_one_error_line_and_existing_checkpoints_survive(scripts, tiny_copy, case):
    """Even with --fresh, which would replace the checkpoints, nothing is touched before the text is known good."""
    data, words = BAD_TEXTS[case]
    bad = tiny_copy["root"] / "bad.txt"
    if data is not None:
        bad.write_bytes(data)
    before = file_hashes(tiny_copy["weights_dir"])
    result = scripts.run("train.py", *train_args(tiny_copy, input=bad), "--fresh", cwd=tiny_copy["root"])
    assert_one_error_line(result, "bad.txt", *words)
    assert file_hashes(tiny_copy["weights_dir"]) == before


# ──────────────────────────────────────── weights folder ────────────────────────────────────────

@linux_only("needs /sys, a folder that refuses new files even to root")
def test_weights_folder_that_cannot_be_written_is_reported_before_any_step(scripts, tiny_copy, tmp_path):
    # /sys refuses new files even to root (a chmod would not stop root, who runs CI).
    result = scripts.run("train.py", *train_args(tiny_copy, weights_dir="/sys"), cwd=tmp_path)
    assert_one_error_line(result, "cannot write to weights folder /sys", "--weights-dir")
    assert not (tiny_copy["root"] / ".cache").exists()             # stopped before even tokenizing


def test_weights_folder_on_a_missing_path_is_created(scripts, tiny_copy, tmp_path):
    weights = tmp_path / "not" / "there" / "yet"
    result = scripts.run("train.py", *train_args(tiny_copy, weights_dir=weights), "--max-iters", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert assert_checkpoints_load(weights)["weights-latest.pth"]["step"] == 1
