"""train.py as a user runs it, on a tiny model in temp folders, plus direct checks of its settings
parser, its evaluation arithmetic and its learning-rate schedule.

Every new process pays for importing torch (and AdamW's import of torch._dynamo): seconds each on
a busy machine. So most runs call train.main() in this process, which is the script minus
`sys.exit`; real subprocesses cover what only a process can show: the fixture's init.py + train.py,
a command-line error, Ctrl-C and torchrun.
"""
import csv
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
import torch.nn as nn
import torch.nn.functional as F

import Model_Params
import train
from conftest import REPO, TINY_TEXT, TINY_VOCAB, run_script
from Model import ModelConfig, Transformer
from support.checkpoints import load_checkpoint, model_from_checkpoint
from tokenizer import Tokenizer

SMALL = ("--block_size", "16", "--emb_len", "32", "--num_layers", "2", "--num_heads", "2",
         "--batch_size", "8", "--eval_windows", "8", "--warmup_iters", "3", "--learning_rate", "3e-3")


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


def file_hash(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ──────────────────────────────────────── a normal run ────────────────────────────────────────

def test_training_writes_both_checkpoints_history_and_nothing_else(tiny_trained):
    weights = tiny_trained["weights_dir"]
    assert sorted(p.name for p in weights.iterdir()) == sorted(
        ["weights-latest.pth", "weights-best.pth", "loss_history.csv"]
        + (["loss.png"] if (weights / "loss.png").exists() else []))       # loss.png needs matplotlib
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
                 "bits/char", "whole validation split"):
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
def test_resume_after_stop_gives_same_weights_as_uninterrupted_run(tiny_trained, tmp_path, capsys, optimizer):
    # Dropout and gradient accumulation on, so the dropout generator and the batch generator
    # both have to come back exactly; with Muon, both optimizers' states too.
    flags = (*SMALL, "--max_iters", "12", "--eval_interval", "5", "--dropout", "0.1",
             "--grad_accum_steps", "2", "--seed", "5", "--optimizer", optimizer)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert call_main(capsys, *paths(tiny_trained, whole), *flags)[0] == 0
    code, err = call_main(capsys, *paths(tiny_trained, parts), *flags, "--max-iters", "7")
    assert code == 0, err
    assert load_checkpoint(parts / "weights-latest.pth")["step"] == 7
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
    text_path.write_text(TINY_TEXT, encoding="utf-8")
    data_fp, say = train.data_fingerprint(text_path, tokenizer), lambda msg: None
    first = train.load_token_ids(text_path, data_fp, tokenizer, train.Processes(), say)
    assert first.dtype == np.uint16 and first.tolist() == tokenizer.encode(TINY_TEXT)
    assert len(list((tmp_path / ".cache").glob("*.npy"))) == 1 and not list((tmp_path / ".cache").glob("*.tmp"))
    monkeypatch.setattr(Tokenizer, "encode_file", lambda *args, **kwargs: pytest.fail("tokenized again"))
    again = train.load_token_ids(text_path, data_fp, tokenizer, train.Processes(), say)
    assert np.array_equal(first, again)


# ───────────────────────────────────────── settings ──────────────────────────────────────────

def test_overrides_are_parsed_with_the_defaults_types():
    cfg = train.parse_settings(["--emb_len", "64", "--learning_rate", "2e-3", "--dropout", "0",
                                "--num_heads", "8", "--max-iters", "10", "--max-minutes", "1.5"])
    assert (cfg.emb_len, cfg.num_heads) == (64, 8) and type(cfg.emb_len) is int
    assert cfg.learning_rate == 2e-3 and type(cfg.dropout) is float       # "0" given, float kept
    assert cfg.stop_at == 10 and cfg.max_minutes == 1.5
    assert cfg.batch_size == Model_Params.batch_size                      # untouched default
    assert train.parse_settings([]).max_iters == Model_Params.max_iters


def test_help_lists_every_model_param():
    text = train.build_parser().format_help()
    for name in train.param_defaults():
        assert f"--{name}" in text, name
    for flag in ("--input", "--tokenizer-dir", "--weights-dir", "--max-iters", "--max-minutes", "--device",
                 "--seed", "--fresh", "--compile"):
        assert flag in text


@pytest.mark.parametrize("args, fragment", [
    (["--emb_len", "6.5"], "--emb_len: expected a whole number, got '6.5'"),
    (["--learning_rate", "fast"], "--learning_rate: expected a number"),
    (["--dropout", "nan"], "--dropout: expected a finite number"),
    (["--no_such_param", "1"], "unrecognized arguments"),
    (["--emb_len", "30", "--num_heads", "4"], "divisible"),
    (["--batch_size", "0"], "--batch_size must be at least 1"),
    (["--max-iters", "99999999"], "past the end of the schedule"),
    (["--optimizer", "sgd"], "--optimizer must be one of adamw, muon, got 'sgd'"),
    (["--muon_lr", "0"], "--muon_lr must be above 0"),
])
def test_bad_settings_are_one_line_errors(args, fragment):
    with pytest.raises(train.UserError) as caught:
        train.parse_settings(args)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_bad_type_on_the_command_line_exits_2_with_one_line():
    result = run_script("train.py", "--num_layers", "two")
    assert result.stdout == ""
    assert_one_error_line(result.returncode, result.stderr, "--num_layers", "'two'")


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


def test_resume_with_retrained_tokenizer_is_refused(tiny_trained, capsys, tmp_path):
    other = Tokenizer()                      # same size, other merges: only the fingerprint tells
    other.train(TINY_TEXT.upper(), TINY_VOCAB)
    assert other.vocab_size == TINY_VOCAB
    other.save(tmp_path / "tok")
    code, err = call_main(capsys, *paths(tiny_trained, copy_weights(tiny_trained, tmp_path),
                                         **{"tokenizer-dir": tmp_path / "tok"}), *tiny_trained["train_flags"])
    assert_one_error_line(code, err, "different tokenizer", "--fresh")


def test_resume_with_other_input_is_refused(tiny_trained, capsys, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text(TINY_TEXT.replace("fox", "cat"), encoding="utf-8")
    code, err = call_main(capsys, *paths(tiny_trained, copy_weights(tiny_trained, tmp_path), input=other),
                          *tiny_trained["train_flags"])
    assert_one_error_line(code, err, "different input", "--fresh")


def test_missing_tokenizer_says_run_init_first(tiny_trained, capsys, tmp_path):
    code, err = call_main(capsys, *paths(tiny_trained, tmp_path / "w", **{"tokenizer-dir": tmp_path / "none"}))
    assert_one_error_line(code, err, "init.py")


def test_input_too_short_for_one_block_is_a_clear_error(tiny_trained, capsys, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("the quick brown fox jumps over the lazy dog\n", encoding="utf-8")
    code, err = call_main(capsys, *paths(tiny_trained, tmp_path / "w", input=short), "--block_size", "16")
    assert_one_error_line(code, err, "too short", "block_size")
    assert not (tmp_path / "w" / "weights-latest.pth").exists()


def test_unwritable_weights_folder_is_reported_before_training(tiny_trained, capsys, tmp_path):
    blocker = tmp_path / "a-file"            # tests run as root, so a chmod would not stop a write
    blocker.write_text("not a folder")
    code, err = call_main(capsys, *paths(tiny_trained, blocker / "weights"), *tiny_trained["train_flags"])
    assert_one_error_line(code, err, "cannot write to weights folder", "--weights-dir")


# ─────────────────────────────────────── stopping early ───────────────────────────────────────

def test_max_minutes_stops_early_with_checkpoint_and_final_evaluation(tiny_trained, tmp_path, capsys):
    weights = tmp_path / "w"
    start = time.monotonic()
    code, err = call_main(capsys, *paths(tiny_trained, weights), *SMALL, "--max_iters", "1000000",
                          "--eval_interval", "1000000", "--max-minutes", "0.02")
    assert code == 0, err
    assert time.monotonic() - start < 30
    assert "--max-minutes 0.02 reached" in err and "whole validation split" in err
    step = load_checkpoint(weights / "weights-latest.pth")["step"]
    assert 1 <= step < 1_000_000
    assert load_checkpoint(weights / "weights-best.pth")["step"] == step
    rows = history(weights)
    assert [r["eval"] for r in rows] == ["windows", "full"]
    # The schedule was fitted to the budget: the run ends with the learning rate fully decayed.
    peak_lr = float(SMALL[SMALL.index("--learning_rate") + 1])
    assert float(rows[-1]["lr"]) < 0.2 * peak_lr


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


def test_ctrl_c_saves_a_resumable_checkpoint_without_traceback(tiny_trained, tmp_path):
    weights = tmp_path / "w"
    cmd = [sys.executable, str(REPO / "train.py"), *paths(tiny_trained, weights), *SMALL,
           "--max_iters", "1000000", "--eval_interval", "5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not (weights / "weights-latest.pth").exists() and time.monotonic() < deadline:
            time.sleep(0.1)                      # first checkpoint (step 5): training is under way
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert out == "" and "Traceback" not in err
    step = load_checkpoint(weights / "weights-latest.pth")["step"]
    assert f"stopped at step {step}; saved" in err and step >= 5


# ───────────────────────────────────────── evaluation ─────────────────────────────────────────

class Uniform(nn.Module):
    """A 'model' that gives every token the same probability: NLL = ln V per token, exactly."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, idx, targets=None):
        return torch.zeros(*idx.shape, self.vocab_size), None


def test_bits_per_char_of_a_uniform_model_is_the_hand_computed_value():
    # Byte tokens only, so each token is one byte: 8 bits per token under a uniform guess, and
    # bits/char = 8 × bytes ÷ characters of what was scored.
    tokenizer = Tokenizer()
    text = "héllo wörld, ça va?\n" * 5                  # 20 chars, 23 bytes per line
    ids = np.array(tokenizer.encode(text), dtype=np.uint16)
    chars = train.chars_per_token(tokenizer)
    result = train.evaluate(Uniform(256), ids, train.full_pass_windows(len(ids), 16), chars,
                            torch.device("cpu"), batch_size=3)
    # Every token but the first is scored once; the first is "h", one byte and one character.
    assert (result.tokens, result.chars) == (115 - 1, 100 - 1)
    assert math.isclose(result.bits_per_char, 8 * 114 / 99, rel_tol=1e-6)         # float32 logits
    assert math.isclose(result.loss_per_token, math.log(256), rel_tol=1e-6)


def test_evaluation_matches_plain_cross_entropy_and_counts_characters():
    tokenizer = Tokenizer()
    tokenizer.train(TINY_TEXT, 280)
    ids = np.array(tokenizer.encode(TINY_TEXT), dtype=np.uint16)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(tokenizer.vocab_size, 8, 16, 1, 2, 0.0))
    chars = train.chars_per_token(tokenizer)
    windows = train.full_pass_windows(len(ids), 8)
    assert windows[-1][1] < 8                            # a short last window is scored too
    result = train.evaluate(model, ids, windows, chars, torch.device("cpu"), batch_size=5)

    nll = 0.0
    with torch.no_grad():
        for start, length in windows:
            x = torch.tensor(ids[start:start + length], dtype=torch.long)[None]
            y = torch.tensor(ids[start + 1:start + length + 1], dtype=torch.long)
            nll += F.cross_entropy(model(x)[0][0], y, reduction="sum").item()
    scored_text = tokenizer.decode(ids[1:].tolist())     # the text starts with a whole-character token
    assert result.tokens == len(ids) - 1
    assert result.chars == len(scored_text) == len(TINY_TEXT) - len(tokenizer.decode(ids[:1].tolist()))
    assert math.isclose(result.nll, nll, rel_tol=1e-5)
    assert math.isclose(result.bits_per_char, nll / len(scored_text) / math.log(2), rel_tol=1e-5)


def test_fixed_windows_are_the_same_every_time_and_inside_the_split():
    a, b = train.fixed_windows(1000, 16, 50), train.fixed_windows(1000, 16, 50)
    assert a == b and len(a) == 50
    assert all(0 <= s and s + 16 + 1 <= 1000 for s, _ in a)


def test_learning_rate_warms_up_then_decays_to_the_floor():
    cfg = train.parse_settings(["--learning_rate", "1e-3", "--min_lr", "1e-4", "--warmup_iters", "10",
                                "--max_iters", "110"])
    lrs = [train.learning_rate_at(step, cfg) for step in range(120)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[60] == pytest.approx(5.5e-4) and lrs[110] == lrs[119] == pytest.approx(1e-4)


# ─────────────────────────────────────── torchrun (DDP) ───────────────────────────────────────

def torchrun(nproc: int, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", str(REPO / "train.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env)


def test_two_processes_match_one_with_the_same_global_batch_and_resume(tiny_trained, tmp_path, capsys):
    # float32: the two runs add the same numbers in another order, which bfloat16 autocast (the
    # default on CPUs with native bf16) would round far apart.
    flags = (*SMALL, "--max_iters", "10", "--eval_interval", "5", "--dropout", "0", "--device", "cpu",
             "--dtype", "float32")
    one, two = tmp_path / "one", tmp_path / "two"
    assert call_main(capsys, *paths(tiny_trained, one), *flags)[0] == 0
    # The same run stopped at step 6 by one process, then resumed by two under torchrun with half
    # the batch each: the same global batch, so the same losses up to float rounding.
    assert call_main(capsys, *paths(tiny_trained, two), *flags, "--max-iters", "6")[0] == 0
    result = torchrun(2, *paths(tiny_trained, two), *flags, "--batch_size", "4")
    assert result.returncode == 0, result.stderr
    err = result.stderr
    assert "global batch: 8 windows = batch_size 4 × grad_accum_steps 1 × 2 process(es)" in err
    assert err.count("resuming from") == 1 and err.count("step 10: train") == 1      # rank 0 alone speaks

    rows_one, rows_two = history(one), history(two)
    assert [(r["step"], r["eval"]) for r in rows_two] == [("5", "windows"), ("6", "windows"),
                                                          ("6", "full"), ("10", "windows"), ("10", "full")]
    by_step = {(r["step"], r["eval"]): float(r["val_loss_per_token"]) for r in rows_two}
    for r in rows_one:                                                   # steps 5, 10 and the full pass
        assert by_step[(r["step"], r["eval"])] == pytest.approx(float(r["val_loss_per_token"]), abs=1e-3)
    a, b = load_checkpoint(one / "weights-latest.pth"), load_checkpoint(two / "weights-latest.pth")
    assert all(torch.allclose(a["model"][k], b["model"][k], atol=1e-4) for k in a["model"])
    assert len(b["rng_per_rank"]) == 2 and b["train_config"]["world_size"] == 2
