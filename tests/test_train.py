"""train.py as a user runs it, on a tiny model in temp folders, plus direct checks of its settings
parser, its evaluation arithmetic and its learning-rate schedule.

Every new process pays for importing torch (and AdamW's import of torch._dynamo): seconds each on
a busy machine. So most runs call train.main() in this process, which is the script minus
`sys.exit`; real subprocesses cover what only a process can show: the fixture's init.py + train.py,
a command-line error, Ctrl-C and torchrun.
"""
import csv
import re
import hashlib
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import Model_Params
import train
from conftest import REPO, TINY_TEXT, TINY_VOCAB, run_script
from Model import Transformer
from support import id_cache, time_budget
from support.checkpoints import load_checkpoint, model_from_checkpoint
from support.distributed import SINGLE
from support.lock import LOCK_NAME
from tokenizer import Tokenizer

# A tiny model for in-process runs. The optimizer and the length are pinned (AdamW, no max_epochs),
# so these tests do not change when Model_Params' defaults are retuned; a test that wants Muon says so.
SMALL = ("--block_size", "16", "--emb_len", "32", "--num_layers", "2", "--num_heads", "2",
         "--batch_size", "8", "--warmup_iters", "3", "--learning_rate", "3e-3", "--max_epochs", "0",
         "--optimizer", "adamw")


def paths(tiny, weights_dir=None, **changes) -> list[str]:
    """--input/--tokenizer-dir/--weights-dir flags pointing at the tiny fixture (or replacements)."""
    where = {"input": tiny["input"], "tokenizer-dir": tiny["tokenizer_dir"],
             "weights-dir": weights_dir or tiny["weights_dir"], **changes}
    return [arg for name, value in where.items() for arg in (f"--{name}", str(value))]


def copy_weights(tiny, tmp_path):
    """A private copy of the fixture's weights folder, safe to resume into."""
    return shutil.copytree(tiny["weights_dir"], tmp_path / "weights")


def history(weights_dir) -> list[dict]:
    with open(weights_dir / "loss_history.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(autouse=True)
def one_thread():
    """Train in-process on one thread, as the subprocesses do (OMP_NUM_THREADS=1): on a shared
    2-core machine two threads wait on each other and run many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def call_main(capsys, *args) -> tuple[int, str]:
    """train.main in this process -> (exit code, stderr); stdout must stay empty."""
    code = train.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert out == ""
    return code, err


def assert_one_error_line(code: int, err: str, *fragments: str) -> str:
    """Exit 2 and a single `error:` line (no traceback) containing every fragment."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def press_ctrl_c_during_step(monkeypatch, n: int) -> None:
    """The next train.main run gets a real SIGINT during its n-th step (counted from where it starts)."""
    real, calls = train.set_learning_rate, []

    def set_learning_rate(*args):
        calls.append(1)
        if len(calls) == n:
            signal.raise_signal(signal.SIGINT)
        real(*args)
    monkeypatch.setattr(train, "set_learning_rate", set_learning_rate)


def wait_for_file(path, proc, timeout: float = 300) -> None:
    """Poll until path exists (a busy machine may take long to import torch and start training)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the process ended first: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


def file_hash(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ──────────────────────────────────────── a normal run ────────────────────────────────────────

def test_training_writes_both_checkpoints_history_and_nothing_else(tiny_trained):
    weights = tiny_trained["weights_dir"]
    assert sorted(p.name for p in weights.iterdir()) == sorted(
        ["weights-latest.pth", "weights-best.pth", "loss_history.csv", "loss.png", LOCK_NAME])
    assert (weights / "loss.png").read_bytes().startswith(b"\x89PNG")     # matplotlib drew a real PNG
    latest, best = load_checkpoint(weights / "weights-latest.pth"), load_checkpoint(weights / "weights-best.pth")
    assert latest["kind"] == "latest" and best["kind"] == "best"
    assert latest["step"] == 60 and latest["model_config"]["emb_len"] == 32
    assert {"optimizer", "rng", "rng_per_rank", "train_config", "data_fingerprint"} <= set(latest)
    assert best["tokenizer_fingerprint"] == Tokenizer.load(tiny_trained["tokenizer_dir"]).fingerprint()
    assert math.isclose(best["val_bits_per_char"], best["val_nats_per_char"] / math.log(2))
    assert best["val_nats_per_char"] == latest["best_val"]
    model_from_checkpoint(best, "cpu")                                      # what run.py does
    rows = history(weights)
    assert [int(r["step"]) for r in rows if r["eval"] == "windows"] == [20, 40, 60]
    assert rows[-1]["eval"] == "full" and int(rows[-1]["val_tokens"]) > int(rows[0]["val_tokens"])
    err = tiny_trained["train_stderr"]
    for fact in ("device cpu", "parameters", "training and", "global batch: 8 windows", "starting fresh",
                 "bits/char", "whole validation split", "little to learn a language from nothing"):
        assert fact in err


def test_loss_falls_on_repetitive_text(tiny_trained):
    rows = [r for r in history(tiny_trained["weights_dir"]) if r["eval"] == "windows"]
    val = [float(r["val_loss_per_token"]) for r in rows]
    assert val[0] < math.log(Tokenizer.load(tiny_trained["tokenizer_dir"]).vocab_size)   # learned by step 20
    assert val[-1] < 0.5 * val[0] and val[-1] < 1.0, val
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])


def test_rerun_after_the_end_has_nothing_to_do(tiny_trained, capsys, tmp_path):
    weights = copy_weights(tiny_trained, tmp_path)
    before = file_hash(weights / "weights-latest.pth")
    code, err = call_main(capsys, *paths(tiny_trained, weights), *tiny_trained["train_flags"])
    assert code == 0 and "nothing to do" in err
    assert file_hash(weights / "weights-latest.pth") == before


# ──────────────────────────────────────── exact resume ────────────────────────────────────────

@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_after_ctrl_c_gives_same_weights_as_uninterrupted_run(tiny_trained, tmp_path, capsys, monkeypatch,
                                                                     optimizer):
    # Dropout, BPE-dropout and gradient accumulation on, so the dropout generator and the batch
    # generator (windows and split coins) both have to come back exactly; with Muon, both optimizers'
    # states too.
    flags = (*SMALL, "--max_iters", "12", "--eval_interval", "5", "--dropout", "0.1", "--bpe_dropout", "0.2",
             "--grad_accum_steps", "2", "--seed", "5", "--optimizer", optimizer)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert call_main(capsys, *paths(tiny_trained, whole), *flags)[0] == 0
    press_ctrl_c_during_step(monkeypatch, 7)
    code, err = call_main(capsys, *paths(tiny_trained, parts), *flags)
    assert code == 130 and "stopped at step 7" in err, err
    assert load_checkpoint(parts / "weights-latest.pth")["step"] == 7
    monkeypatch.undo()
    torch.manual_seed(999)                   # whatever the generators hold now must not matter
    code, err = call_main(capsys, *paths(tiny_trained, parts), *flags)
    assert code == 0, err
    assert "resuming from" in err and "at step 7" in err
    assert ("optimizer: Muon (peak lr 0.02)" if optimizer == "muon" else "optimizer: AdamW (peak lr 0.003)") in err

    a, b = load_checkpoint(whole / "weights-latest.pth"), load_checkpoint(parts / "weights-latest.pth")
    assert a["step"] == b["step"] == 12
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    states = [(a["optimizer"], b["optimizer"])] if optimizer == "adamw" else \
        [(a["optimizer"][part], b["optimizer"][part]) for part in ("muon", "adamw")]
    for saved_a, saved_b in states:
        assert saved_a["state"]
        for key, moments in saved_a["state"].items():
            for name, tensor in moments.items():
                assert torch.equal(tensor, saved_b["state"][key][name]), (key, name)
    assert torch.equal(a["rng_per_rank"][0]["torch"], b["rng_per_rank"][0]["torch"])
    assert torch.equal(a["rng"]["batches"], b["rng"]["batches"])
    assert a["best_val"] == b["best_val"]


def test_token_ids_are_cached_compactly_and_reused(tmp_path, monkeypatch):
    tokenizer = Tokenizer()
    tokenizer.train(TINY_TEXT, TINY_VOCAB)
    text_path = tmp_path / "text.txt"
    text_path.write_text(TINY_TEXT, encoding="utf-8", newline="\n")
    data_fp, say = id_cache.data_fingerprint(text_path, tokenizer), lambda msg: None
    first = id_cache.load_token_ids(text_path, data_fp, tokenizer, SINGLE, say)
    assert first.dtype == np.uint16 and first.tolist() == tokenizer.encode(TINY_TEXT)
    assert len(list((tmp_path / ".cache").glob("*.npy"))) == 1 and not list((tmp_path / ".cache").glob("*.tmp"))
    monkeypatch.setattr(Tokenizer, "encode_file", lambda *args, **kwargs: pytest.fail("tokenized again"))
    again = id_cache.load_token_ids(text_path, data_fp, tokenizer, SINGLE, say)
    assert np.array_equal(first, again)


# ───────────────────────────────────────── settings ──────────────────────────────────────────

def test_overrides_are_parsed_with_the_defaults_types():
    cfg = train.parse_settings(["--emb_len", "64", "--learning_rate", "2e-3", "--dropout", "0",
                                "--num_heads", "8", "--max-minutes", "1.5"])
    assert (cfg.emb_len, cfg.num_heads) == (64, 8) and type(cfg.emb_len) is int
    assert cfg.learning_rate == 2e-3 and type(cfg.dropout) is float       # "0" given, float kept
    assert cfg.max_minutes == 1.5
    assert cfg.batch_size == Model_Params.batch_size                      # untouched default
    assert train.parse_settings([]).max_iters == Model_Params.max_iters


def test_help_lists_every_setting_once_in_one_spelling_in_26_options_at_most_and_no_sampling_setting():
    text = train.build_parser().format_help()
    for name in train.NEEDED_PARAMS:
        assert f"--{name.replace('_', '-')} " in text, name
        assert "_" not in name or f"--{name} " not in text, name          # one spelling shown
    for flag in ("--input", "--tokenizer-dir", "--weights-dir", "--max-minutes", "--device", "--seed", "--fresh",
                 "--positions", "--grad-accum-steps", "--muon-lr"):
        assert flag in text
    assert len(re.findall(r"^  --", text, re.MULTILINE)) <= 26
    for sampling in ("--temperature", "--top-k", "--top-p", "--max-new-tokens"):   # run.py's settings
        assert sampling not in text
        with pytest.raises(train.UserError, match="unrecognized arguments"):
            train.parse_settings([sampling, "1"])


def test_every_option_takes_both_spellings_and_max_iters_is_where_the_schedule_ends():
    hyphens = train.parse_settings(["--max-iters", "10", "--emb-len", "64", "--num-heads=8",
                                    "--weights-dir", "w", "--bpe-dropout", "0"])
    underscores = train.parse_settings(["--max_iters", "10", "--emb_len", "64", "--num_heads=8",
                                        "--weights_dir", "w", "--bpe_dropout", "0"])
    assert vars(hyphens) == vars(underscores)
    assert hyphens.max_iters == 10 and hyphens.emb_len == 64 and hyphens.num_heads == 8


@pytest.mark.parametrize("args, fragment", [
    (["--emb_len", "6.5"], "--emb-len: expected a whole number, got '6.5'"),
    (["--learning_rate", "fast"], "--learning-rate: expected a number"),
    (["--dropout", "nan"], "--dropout: expected a finite number"),
    (["--no_such_param", "1"], "unrecognized arguments"),
    (["--emb_len", "30", "--num_heads", "4"], "divisible"),
    (["--batch_size", "0"], "--batch-size must be at least 1"),
    (["--stop-at-step", "9"], "--stop-at-step was removed: press Ctrl-C to stop and save"),
    (["--teacher=x.pth"], "--teacher was removed: learning from a teacher gained"),
    (["--ema_decay", "0.9"], "--ema-decay was removed: the weight average measured worse"),
    (["--vocab-size", "512"], "--vocab-size was removed: the vocabulary is init.py's"),
    (["--optimizer", "sgd"], "--optimizer must be one of adamw, muon, got 'sgd'"),
    (["--muon_lr", "0"], "--muon-lr must be above 0"),
    (["--max_epochs", "-1"], "--max-epochs must not be negative"),
    (["--bpe_dropout", "1"], "--bpe-dropout must be in [0, 1), got 1.0"),
])
def test_bad_settings_are_one_line_errors(args, fragment):
    with pytest.raises(train.UserError) as caught:
        train.parse_settings(args)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_bad_type_on_the_command_line_exits_2_with_one_line():
    result = run_script("train.py", "--num_layers", "two")
    assert result.stdout == ""
    assert_one_error_line(result.returncode, result.stderr, "--num-layers", "'two'")


# ─────────────────────────────────── refusing to start ────────────────────────────────────────

def test_resume_with_other_model_shape_names_it_and_fresh_starts_over(tiny_trained, capsys, tmp_path):
    weights = copy_weights(tiny_trained, tmp_path)
    flags = [*tiny_trained["train_flags"], "--emb_len", "48"]
    code, err = call_main(capsys, *paths(tiny_trained, weights), *flags)
    assert_one_error_line(code, err, "emb_len 32 -> 48", "--fresh")
    code, err = call_main(capsys, *paths(tiny_trained, weights), *flags, "--fresh", "--max-iters", "2")
    assert code == 0, err
    assert load_checkpoint(weights / "weights-latest.pth")["model_config"]["emb_len"] == 48
    assert [r["step"] for r in history(weights)] == ["2", "2"]          # a fresh history


def test_resume_with_the_other_optimizer_is_refused(tiny_trained, capsys, tmp_path):
    weights = copy_weights(tiny_trained, tmp_path)
    before = file_hash(weights / "weights-latest.pth")
    code, err = call_main(capsys, *paths(tiny_trained, weights), *tiny_trained["train_flags"],
                          "--optimizer", "muon")
    assert_one_error_line(code, err, "trained with --optimizer adamw, not muon", "--fresh")
    assert file_hash(weights / "weights-latest.pth") == before


def assert_moved_aside_intact(weights, before: dict, err: str) -> None:
    """The run that was in weights/ sits, byte for byte, in weights/earlier-run-1/, and one line said so."""
    aside = weights / "earlier-run-1"
    assert {name: file_hash(aside / name) for name in before} == before
    assert f"moved the run that was in {weights}/ to {aside}/" in err and "starting fresh" in err


def test_a_run_of_another_tokenizer_is_moved_aside_and_a_new_run_starts(tiny_trained, capsys, tmp_path):
    other = Tokenizer()                      # same size, other merges: only the fingerprint tells
    other.train(TINY_TEXT.upper(), TINY_VOCAB)
    assert other.vocab_size == TINY_VOCAB
    other.save(tmp_path / "tok")
    weights = copy_weights(tiny_trained, tmp_path)
    before = {name: file_hash(weights / name) for name in ("weights-latest.pth", "weights-best.pth", "loss_history.csv")}
    code, err = call_main(capsys, *paths(tiny_trained, weights, **{"tokenizer-dir": tmp_path / "tok"}),
                          *tiny_trained["train_flags"], "--max_iters", "4", "--eval_interval", "2")
    assert code == 0, err
    assert_moved_aside_intact(weights, before, err)
    assert load_checkpoint(weights / "weights-latest.pth")["tokenizer_fingerprint"] == other.fingerprint()


def test_a_run_of_another_text_is_moved_aside_and_a_second_one_beside_it(tiny_trained, capsys, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text(TINY_TEXT.replace("fox", "cat"), encoding="utf-8", newline="\n")
    weights = copy_weights(tiny_trained, tmp_path)
    before = {name: file_hash(weights / name) for name in ("weights-latest.pth", "weights-best.pth", "loss_history.csv")}
    flags = (*tiny_trained["train_flags"], "--max_iters", "4", "--eval_interval", "2")
    code, err = call_main(capsys, *paths(tiny_trained, weights, input=other), *flags)
    assert code == 0, err
    assert_moved_aside_intact(weights, before, err)
    assert [r["step"] for r in history(weights)] == ["2", "4", "4"]          # a history of its own
    second = {name: file_hash(weights / name) for name in before}
    code, err = call_main(capsys, *paths(tiny_trained, weights), *flags)     # back to the first text
    assert code == 0 and f"{weights}/earlier-run-2/" in err, err
    assert {name: file_hash(weights / "earlier-run-2" / name) for name in second} == second


def test_missing_tokenizer_says_run_init_first(tiny_trained, capsys, tmp_path):
    code, err = call_main(capsys, *paths(tiny_trained, tmp_path / "w", **{"tokenizer-dir": tmp_path / "none"}))
    assert_one_error_line(code, err, "init.py")


# ─────────────────────────────────────── stopping early ───────────────────────────────────────

class TickingClock:
    """A clock that moves 10 ms each time it is read: the run's timing then follows the code, not the
    machine's speed, so neither a busy machine nor a slow first step can use up a budget early."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.01
        return self.now


def test_max_minutes_stops_early_with_checkpoint_final_evaluation_and_a_decayed_schedule(
        tiny_trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(time_budget, "clock", TickingClock())
    weights = tmp_path / "w"
    code, err = call_main(capsys, *paths(tiny_trained, weights), *SMALL, "--max_iters", "1000000",
                          "--eval_interval", "1000000", "--max-minutes", "0.02")
    assert code == 0, err
    assert "--max-minutes 0.02 reached" in err and "whole validation split" in err
    step = load_checkpoint(weights / "weights-latest.pth")["step"]
    assert 2 * time_budget.FIT_EVERY <= step < 1_000_000         # 1.2 s of 10 ms ticks: about 100 steps
    assert load_checkpoint(weights / "weights-best.pth")["step"] == step
    rows = history(weights)
    assert [r["eval"] for r in rows] == ["windows", "full"]
    # The schedule was fitted to the budget: the run ends with the learning rate fully decayed.
    peak_lr = float(SMALL[SMALL.index("--learning_rate") + 1])
    assert float(rows[-1]["lr"]) < 0.2 * peak_lr


def test_time_budget_fits_the_horizon_to_the_measured_pace(monkeypatch):
    clock = TickingClock()                    # one read per step below: 10 ms a step
    monkeypatch.setattr(time_budget, "clock", clock)
    budget = time_budget.TimeBudget(max_minutes=1 / 60, previous_minutes=0, started=clock(), max_iters=10_000,
                                    procs=SINGLE, device=torch.device("cpu"))
    horizon, step = budget.start_loop(0), 0
    assert horizon == 10_000                  # nothing measured yet
    while not budget.out_of_time():
        horizon = budget.refit(step, horizon)
        step += 1
    assert horizon != 10_000 and abs(horizon - step) <= 0.1 * step    # the schedule ended where time did


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_trained, tmp_path, capsys):
    weights = copy_weights(tiny_trained, tmp_path)
    before = {name: file_hash(weights / name) for name in ("weights-latest.pth", "weights-best.pth")}
    # An absurd learning rate throws the weights to ~1e37 at once: the next loss overflows to NaN.
    code, err = call_main(capsys, *paths(tiny_trained, weights), *tiny_trained["train_flags"],
                          "--max_iters", "100", "--learning_rate", "1e38")
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: loss became nan") and "still holds step 60" in last
    assert before == {name: file_hash(weights / name) for name in before}
    assert not list(weights.glob("*.tmp"))


# ───────────────────────────────────────── evaluation ─────────────────────────────────────────
# The sums themselves, and which windows train.py scores: tests/test_scoring.py.

def test_evaluation_is_without_dropout_and_leaves_the_model_training(tiny_trained, capsys, tmp_path, monkeypatch):
    seen = []
    real = train.score_windows

    def spy(model, *args, **kwargs):
        seen.append(model.training)
        return real(model, *args, **kwargs)
    monkeypatch.setattr(train, "score_windows", spy)
    modes = []
    real_forward = Transformer.forward

    def forward(self, idx, targets=None):
        if targets is not None:
            modes.append(self.training)
        return real_forward(self, idx, targets)
    monkeypatch.setattr(Transformer, "forward", forward)
    code, err = call_main(capsys, *paths(tiny_trained, tmp_path / "w"), *SMALL, "--max_iters", "6",
                          "--eval_interval", "2", "--dropout", "0.1")
    assert code == 0, err
    assert seen == [False] * 4                   # evaluations at steps 2, 4, 6 and the final one
    assert modes == [True] * 6                   # every training step with dropout on


def test_max_epochs_ends_the_schedule_after_that_many_passes(tiny_trained, tmp_path, capsys):
    code, err = call_main(capsys, *paths(tiny_trained, tmp_path / "w"), *SMALL, "--max_iters", "1000",
                          "--max_epochs", "0.5", "--eval_interval", "1000")
    assert code == 0, err
    n_train = int(re.search(r"— ([\d,]+) training", err).group(1).replace(",", ""))
    steps = math.ceil(0.5 * n_train / (8 * 16))                # half the tokens, 8 windows of 16 a step
    assert 1 < steps < 1000
    assert f"max_epochs 0.5: at most {steps:,} steps" in err
    assert "final, whole validation split" in err and f"at step {steps}:" in err
    cfg = train.parse_settings([*SMALL, "--max_iters", str(steps)])
    [last] = history(tmp_path / "w")[-2:-1]          # the last step's rate: its cosine ended at `steps`
    assert float(last["lr"]) == pytest.approx(train.learning_rate_at(steps - 1, cfg, steps), rel=1e-4)
    assert float(last["lr"]) < train.learning_rate_at(steps - 2, cfg, steps)


def test_adamw_trains_with_an_eps_of_1e_4(tiny_trained, tmp_path, capsys):
    code, err = call_main(capsys, *paths(tiny_trained, tmp_path / "w"), *SMALL, "--max_iters", "2",
                          "--eval_interval", "2", "--optimizer", "adamw")
    assert code == 0, err
    ckpt = load_checkpoint(tmp_path / "w" / "weights-latest.pth")
    assert [g["eps"] for g in ckpt["optimizer"]["param_groups"]] == [1e-4, 1e-4]


def test_learning_rate_warms_up_then_decays_to_zero_where_the_schedule_ends():
    cfg = train.parse_settings(["--learning_rate", "1e-3", "--warmup_iters", "10"])
    lrs = [train.learning_rate_at(step, cfg, 110) for step in range(120)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[60] == pytest.approx(5e-4) and lrs[110] == lrs[119] == 0


# ─────────────────────────────────────── torchrun (DDP) ───────────────────────────────────────

# Started in every process (as sitecustomize): logs each file written or renamed into WATCHED_DIR
# with the rank of the process that did it.
WRITE_LOGGER = """
import builtins, os
_open, _replace, _watched = builtins.open, os.replace, os.environ["WATCHED_DIR"]
def _log(path):
    if str(path).startswith(_watched):
        with _open(os.environ["WRITES_LOG"], "a") as f:
            f.write(os.environ.get("RANK", "-") + " " + str(path) + "\\n")
def _logged_open(file, mode="r", *args, **kwargs):
    if any(c in mode for c in "wax+"):
        _log(file)
    return _open(file, mode, *args, **kwargs)
def _logged_replace(src, dst, *args, **kwargs):
    _log(dst)
    return _replace(src, dst, *args, **kwargs)
builtins.open, os.replace = _logged_open, _logged_replace
"""


def torchrun(nproc: int, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", **(env or {})}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", str(REPO / "train.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env)


def test_two_processes_match_one_with_the_same_global_batch_and_resume_and_only_rank_0_writes(
        tiny_trained, tmp_path, capsys, monkeypatch):
    # float32: the two runs add the same numbers in another order, which bfloat16 autocast (the
    # default on CPUs with native bf16) would round far apart.
    flags = (*SMALL, "--max_iters", "10", "--eval_interval", "5", "--dropout", "0", "--bpe_dropout", "0.2",
             "--device", "cpu", "--dtype", "float32")
    one, two = tmp_path / "one", tmp_path / "two"
    assert call_main(capsys, *paths(tiny_trained, one), *flags)[0] == 0
    # The same run stopped at step 6 by one process, then resumed by two under torchrun with half
    # the batch each: the same global batch, so the same losses up to float rounding.
    press_ctrl_c_during_step(monkeypatch, 6)
    assert call_main(capsys, *paths(tiny_trained, two), *flags)[0] == 130
    logger, writes = tmp_path / "logger", tmp_path / "writes.log"
    logger.mkdir()
    (logger / "sitecustomize.py").write_text(WRITE_LOGGER)
    result = torchrun(2, *paths(tiny_trained, two), *flags, "--batch_size", "4",
                      env={"PYTHONPATH": os.pathsep.join([str(logger), os.environ.get("PYTHONPATH", "")]),
                           "WATCHED_DIR": str(two), "WRITES_LOG": str(writes)})
    assert result.returncode == 0, result.stderr
    ranks = {line.split(" ", 1)[0] for line in writes.read_text().splitlines()}
    assert ranks == {"0"}, writes.read_text()                             # checkpoints, history, plot
    err = result.stderr
    assert "global batch: 8 windows = batch_size 4 × grad_accum_steps 1 × 2 process(es)" in err
    assert err.count("resuming from") == 1 and err.count("step 10: train") == 1      # rank 0 alone speaks

    rows_one, rows_two = history(one), history(two)
    assert [(r["step"], r["eval"]) for r in rows_two] == [("5", "windows"), ("10", "windows"), ("10", "full")]
    by_step = {(r["step"], r["eval"]): float(r["val_loss_per_token"]) for r in rows_two}
    for r in rows_one:                                                   # steps 5, 10 and the full pass
        assert by_step[(r["step"], r["eval"])] == pytest.approx(float(r["val_loss_per_token"]), abs=1e-3)
    a, b = load_checkpoint(one / "weights-latest.pth"), load_checkpoint(two / "weights-latest.pth")
    assert all(torch.allclose(a["model"][k], b["model"][k], atol=1e-4) for k in a["model"])
    assert len(b["rng_per_rank"]) == 2 and b["train_config"]["world_size"] == 2


# ───────────────────────────────────── promises of the loop ─────────────────────────────────────

def test_first_90_percent_of_tokens_train_and_no_training_window_reaches_the_last_10(tmp_path):
    ids = np.arange(1000, dtype=np.uint16)             # each id is its own position
    train_ids, val_ids = train.split_ids(ids, 16, tmp_path / "text.txt")
    assert train_ids.tolist() == list(range(900)) and val_ids.tolist() == list(range(900, 1000))
    cfg = train.parse_settings(["--block_size", "16", "--batch_size", "64", "--grad_accum_steps", "2",
                                "--bpe_dropout", "0"])
    generator, seen = torch.Generator().manual_seed(0), set()
    for _ in range(50):
        batches = train.get_batch(train_ids, cfg, generator, SINGLE, torch.device("cpu"))
        assert len(batches) == 2                                                           # micro-batches
        for x, y in batches:
            assert x.shape == y.shape == (64, 16) and torch.equal(y - x, torch.ones_like(x))  # the next token
            seen.update(y.flatten().tolist())
    assert max(seen) == 899 and min(seen) == 1                                             # not a token beyond


def test_gradient_clipping_bounds_the_global_gradient_norm_at_each_step(tiny_trained, tmp_path, capsys, monkeypatch):
    def norms_at_step(grad_clip: float) -> list[float]:
        norms = []
        monkeypatch.setattr(train, "GRAD_CLIP", grad_clip)

        def configure(model, *args, **kwargs):
            optimizer = real_configure(model, *args, **kwargs)
            step = optimizer.step

            def recording_step(*a, **k):        # the gradients the optimizer is about to apply
                norms.append(torch.linalg.vector_norm(
                    torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])).item())
                return step(*a, **k)
            optimizer.step = recording_step
            return optimizer
        monkeypatch.setattr(train, "configure_optimizer", configure)
        code, err = call_main(capsys, *paths(tiny_trained, tmp_path / str(grad_clip)), *SMALL, "--max_iters", "5",
                              "--dtype", "float32")
        assert code == 0, err
        return norms
    real_configure = train.configure_optimizer
    unclipped, clipped = norms_at_step(math.inf), norms_at_step(0.01)
    assert len(unclipped) == len(clipped) == 5
    assert min(unclipped) > 0.1                          # gradients far above the bound...
    assert all(norm <= 0.01 * (1 + 1e-4) for norm in clipped), clipped     # ...clipped to it


def test_best_checkpoint_keeps_the_best_evaluation_when_validation_gets_worse(tiny_trained, tmp_path, capsys,
                                                                              monkeypatch):
    real_evaluate, calls = train.evaluate, []
    made_up = {1: 2.0, 2: 1.0, 3: 3.0}                  # nats/char of the evaluations at steps 2, 4, 6

    def evaluate(*args, **kwargs):
        result = real_evaluate(*args, **kwargs)
        calls.append(len(args[2]))                        # how many windows: the final evaluation's differ
        nats = made_up.get(len(calls))
        return result if nats is None else train.EvalResult(nats * result.chars, result.tokens, result.chars)
    monkeypatch.setattr(train, "evaluate", evaluate)
    weights = tmp_path / "w"
    code, err = call_main(capsys, *paths(tiny_trained, weights), *SMALL, "--max_iters", "6", "--eval_interval", "2")
    assert code == 0, err
    assert len(calls) == 4 and calls[0] == calls[1] == calls[2] != calls[3]   # and the final evaluation
    best, latest = load_checkpoint(weights / "weights-best.pth"), load_checkpoint(weights / "weights-latest.pth")
    assert best["step"] == 4 and best["val_nats_per_char"] == pytest.approx(1.0)
    assert latest["step"] == 6 and latest["best_val"] == pytest.approx(1.0)
    assert err.count("(best, saved)") == 2


def test_float16_with_gradient_scaler_trains_on_cpu_and_resumes_exactly(tiny_trained, tmp_path, capsys, monkeypatch):
    flags = (*SMALL, "--max_iters", "8", "--eval_interval", "4", "--dtype", "float16", "--seed", "3", "--device", "cpu")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    code, err = call_main(capsys, *paths(tiny_trained, whole), *flags)
    assert code == 0 and "autocast float16" in err, err
    press_ctrl_c_during_step(monkeypatch, 3)
    assert call_main(capsys, *paths(tiny_trained, parts), *flags)[0] == 130
    monkeypatch.undo()
    assert call_main(capsys, *paths(tiny_trained, parts), *flags)[0] == 0
    a, b = load_checkpoint(whole / "weights-latest.pth"), load_checkpoint(parts / "weights-latest.pth")
    assert a["scaler"]["scale"] > 0 and a["scaler"] == b["scaler"]       # the scaler's state came back
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    rows = [r for r in history(whole) if r["eval"] == "windows"]
    assert float(rows[-1]["val_loss_per_token"]) < float(rows[0]["val_loss_per_token"]) + 1   # finite, trained


def test_final_evaluation_scores_at_most_final_eval_tokens_in_the_same_windows_every_run(
        tiny_trained, tmp_path, capsys, monkeypatch):
    def final_row(weights_dir, most=train.FINAL_EVAL_TOKENS) -> dict:
        monkeypatch.setattr(train, "FINAL_EVAL_TOKENS", most)
        code, err = call_main(capsys, *paths(tiny_trained, weights_dir), *SMALL, "--max_iters", "2",
                              "--eval_interval", "2")
        assert code == 0, err
        row = history(weights_dir)[-1]
        assert row["eval"] == "full"
        return row, err
    (bounded, err), (again, _) = final_row(tmp_path / "a", 40), final_row(tmp_path / "b", 40)
    assert 0 < int(bounded["val_tokens"]) <= 40 and int(bounded["val_tokens"]) == 2 * 16   # two windows of 16
    assert bounded == {**again, "minutes": bounded["minutes"]}
    assert "final, 32 of" in err and "validation tokens, in windows spread over the split" in err
    (whole, err), (unbounded, _) = final_row(tmp_path / "c"), final_row(tmp_path / "d", 0)
    assert "whole validation split" in err
    assert {**whole, "minutes": ""} == {**unbounded, "minutes": ""}
    assert int(whole["val_tokens"]) > 40                 # the tiny text's split exceeds the small bound


def test_an_old_run_that_used_a_removed_extra_resumes_and_says_it_goes_on_without_it(tiny_trained, tmp_path, capsys):
    weights = copy_weights(tiny_trained, tmp_path)
    latest = load_checkpoint(weights / "weights-latest.pth")
    latest["train_config"].update(teacher="teacher.pth", ema_decay=0.998)
    torch.save({**latest, "weight_average": {"decay": 0.998, "average": latest["model"]}}, weights / "weights-latest.pth")
    code, err = call_main(capsys, *paths(tiny_trained, weights), *tiny_trained["train_flags"], "--max-iters", "62")
    assert code == 0, err
    assert "teacher teacher.pth -> removed, ema_decay 0.998 -> removed" in err
    assert load_checkpoint(weights / "weights-latest.pth")["step"] == 62


# ─────────────────────────────────── fine-tuning: --init-from ───────────────────────────────────

def test_init_from_fine_tunes_a_checkpoint_with_its_tokenizer_whatever_tokenizer_save_holds(
        tiny_trained, tmp_path, capsys, monkeypatch):
    source = tiny_trained["weights_dir"] / "weights-best.pth"
    before = file_hash(source)
    other = Tokenizer()                                   # what init.py on another text would leave
    other.train("a completely different text, with other merges " * 20, 280)
    other.save(tmp_path / "other")
    flags = ("--init-from", source, "--max-iters", "6", "--eval-interval", "3", "--dropout", "0.1")
    fine = paths(tiny_trained, tmp_path / "fine", **{"tokenizer-dir": tmp_path / "other"})
    code, err = call_main(capsys, *fine, *flags)
    assert code == 0, err
    assert f"fine-tuning {source}" in err and "optimizer: Muon (peak lr 0.005)" in err    # fine-tuning defaults
    assert "context 16, vocab 300" in err                 # the checkpoint's shape and tokenizer, not Model_Params'
    assert "little to learn a language" not in err        # the small-text note is for a start from nothing
    latest = load_checkpoint(tmp_path / "fine" / "weights-latest.pth")
    assert latest["tokenizer_fingerprint"] == Tokenizer.load(tiny_trained["tokenizer_dir"]).fingerprint()
    assert latest["train_config"]["init_from"] == str(source) and latest["train_config"]["learning_rate"] == 6e-4
    # It started from the checkpoint: its first evaluation is already as good as the source's.
    first = history(tmp_path / "fine")[0]
    assert float(first["val_nats_per_char"]) < 2 * load_checkpoint(source)["val_nats_per_char"]
    # The same command, stopped by Ctrl-C and rerun, resumes to the very same weights.
    press_ctrl_c_during_step(monkeypatch, 4)
    parts = paths(tiny_trained, tmp_path / "parts", **{"tokenizer-dir": tmp_path / "other"})
    assert call_main(capsys, *parts, *flags)[0] == 130
    monkeypatch.undo()
    code, err = call_main(capsys, *parts, *flags)
    assert code == 0 and "resuming from" in err, err
    resumed = load_checkpoint(tmp_path / "parts" / "weights-latest.pth")
    assert all(torch.equal(t, resumed["model"][name]) for name, t in latest["model"].items())
    assert file_hash(source) == before                    # the source is only read
    # run.py runs the fine-tuned model with the tokenizer it was trained with, whatever tokenizer_save holds.
    ran = run_script("run.py", "--weights", tmp_path / "fine", "--tokenizer-dir", tmp_path / "other",
                     "--prompt", "the quick", "--max-new-tokens", "5", "--seed", "1", "--device", "cpu")
    assert ran.returncode == 0 and "weights-best.pth" in ran.stderr, ran.stderr


def test_init_from_refuses_in_one_line_what_cannot_work(tiny_trained, tmp_path, capsys):
    source = tiny_trained["weights_dir"] / "weights-best.pth"
    learned = tmp_path / "learned"
    assert call_main(capsys, *paths(tiny_trained, learned), *SMALL, "--positions", "learned", "--max-iters", "1")[0] == 0
    older = load_checkpoint(source)
    del older["tokenizer_merges"]
    torch.save(older, tmp_path / "older.pth")
    Tokenizer().save(tmp_path / "bytes-only")
    cases = [((source, "--emb-len", "64", "--num-heads", "4"),
              ["--emb-len 64, --num-heads 4: with --init-from the model's shape comes from", "emb_len 32"]),
             ((learned / "weights-best.pth", "--block-size", "32"),
              ["--block-size 32 is beyond the learned position table", "use at most 16"]),
             ((tmp_path / "older.pth", "--tokenizer-dir", tmp_path / "bytes-only"),
              ["older.pth: trained with a different tokenizer"]),
             ((tmp_path / "missing.pth",), ["missing.pth: no such checkpoint"]),
             ((tiny_trained["weights_dir"] / "weights-latest.pth", "--weights-dir", tiny_trained["weights_dir"]),
              ["is a file this run would write"])]
    for (path, *extra), fragments in cases:
        code, err = call_main(capsys, *paths(tiny_trained, tmp_path / "w"), "--init-from", path, *extra)
        assert_one_error_line(code, err, *fragments)
    assert not (tmp_path / "w").exists() or not list((tmp_path / "w").glob("*.pth"))


@pytest.mark.parametrize("tokenizer_save", ["as shipped", "after init.py on another text"])
def test_fine_tuning_the_shipped_model_encodes_the_text_with_its_tokenizer(tiny_trained, tmp_path, tokenizer_save):
    shipped = REPO / "Saved_Weights" / "pretrained.pth"
    source = load_checkpoint(shipped)
    folder = REPO / "tokenizer_save" if tokenizer_save == "as shipped" else tiny_trained["tokenizer_dir"]
    before = file_hash(shipped)
    result = run_script("train.py", "--init-from", shipped, "--input", tiny_trained["input"], "--tokenizer-dir",
                        folder, "--weights-dir", tmp_path / "w", "--max-iters", "2", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert f"vocab {source['model_config']['vocab_size']}" in result.stderr
    best = load_checkpoint(tmp_path / "w" / "weights-best.pth")
    assert best["tokenizer_fingerprint"] == source["tokenizer_fingerprint"]
    assert best["model_config"] == {**source["model_config"], "dropout": Model_Params.dropout}
    assert file_hash(shipped) == before
