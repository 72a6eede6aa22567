"""run.py as a user runs it: subprocesses against a tiny model trained for a moment in a temp folder.

Each process pays for importing torch, so related prompts share one stdin-mode process.
"""
import contextlib
import copy
import errno
import io
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import Model_Params
from conftest import (ON_CPU, REPO, TINY_TEXT, assert_one_error_line, needs_pty, needs_sigint, posix_only,
                      run_script, run_tiny)
import run
from run import eval_windows, find_weights, parse_args
from support import text_io
from support.text_io import shown_length
from tokenizer import Tokenizer

BLOCK = 16                                       # the tiny_trained model's context (conftest)
LONG_NOTE = "longer than the model's context"


@contextlib.contextmanager
def one_thread():
    """Torch on one thread inside the block: on a busy 2-core machine, two threads spinning on tiny
    matmuls run ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ──────────────────────────────────────── generation ────────────────────────────────────────

def test_prompt_writes_only_the_continuation_and_same_seed_gives_same_text(tiny):
    sample = ("--temperature", "1.5", "--top-p", "1", "--max-new-tokens", "40")
    once = run_tiny(tiny, "--prompt", "the quick", "--seed", "7", *sample)
    assert once.returncode == 0, once.stderr
    assert "parameters" in once.stderr and "parameters" not in once.stdout   # load info on stderr
    assert once.stdout.endswith("\n") and len(once.stdout) > 1
    # stdin mode reseeds for every prompt: the same prompt twice gives the --prompt text twice.
    twice = run_tiny(tiny, "--seed", "7", *sample, input="the quick\nthe quick\n")
    assert twice.returncode == 0, twice.stderr
    assert twice.stdout == once.stdout * 2
    other_seed = run_tiny(tiny, "--prompt", "the quick", "--seed", "8", *sample)
    assert other_seed.returncode == 0
    assert other_seed.stdout != once.stdout


def test_every_kind_of_prompt_gets_one_continuation_per_line(tiny):
    long_prompt = "the lazy dog jumps over the quick brown fox " * 20              # > BLOCK tokens
    megabyte = ("the quick brown fox 🙂 " * 50_000)[:1_000_000]
    one_letter_megabyte = "a" * 1_000_000                               # one giant pre-split chunk
    prompts = ["the quick", "", "🙂🎭 emoji", "生存还是毁灭", "tab\tbell\x07 nul\x00 esc\x1b[31m cr\rend",
               long_prompt, long_prompt, megabyte, one_letter_megabyte, "that is"]
    result = run_tiny(tiny, "--stop", r"\n", "--max-new-tokens", "30", "--seed", "1",
                      input="".join(p + "\n" for p in prompts))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.split("\n")
    assert lines.pop() == ""                       # every continuation ends with a newline
    assert len(lines) == len(prompts)
    assert result.stderr.count(LONG_NOTE) == 1     # noted once, not per prompt or per token


def test_a_prompt_longer_than_the_context_continues_as_its_last_block_size_tokens_would(tiny):
    """run.py fed the long prompt, its last BLOCK tokens, and its last BLOCK - 1 tokens (one prompt
    per stdin line, reseeded for each): the first two print the same continuation and the same
    candidates before every token; the third does not, so the match is exact, not approximate."""
    tokenizer = tiny["tokenizer"]
    # The prompt starts with another line than it ends with: keeping its start would show.
    long_prompt = "café au lait n°1. the quick brown fox 5 jumps over the lazy dog; café au lait n°2. the quick brown fox 3"
    ids = tokenizer.encode(long_prompt)
    assert len(ids) > BLOCK + 4
    last, one_fewer = tokenizer.decode(ids[-BLOCK:]), tokenizer.decode(ids[-BLOCK + 1:])
    assert tokenizer.encode(last) == ids[-BLOCK:] and tokenizer.encode(one_fewer) == ids[-BLOCK + 1:]
    result = run_tiny(tiny, "--seed", "3", "--temperature", "1.5", "--max-new-tokens", "8", "--show-probs", "4",
                      input=f"{long_prompt}\n{last}\n{one_fewer}\n")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(LONG_NOTE) == 1
    continuations = result.stdout.split("\n")[:3]
    candidates = [line for line in result.stderr.splitlines() if "%" in line]
    assert len(candidates) == 3 * 8
    per_prompt = [candidates[i * 8:(i + 1) * 8] for i in range(3)]
    assert continuations[0] == continuations[1] and per_prompt[0] == per_prompt[1]
    assert per_prompt[2] != per_prompt[1]


@posix_only("starts run.py with no stdin at all (file descriptor 0 closed, as a shell's `<&-` leaves it)")
def test_closed_stdin_exits_quietly(tiny):
    closed = subprocess.run(
        [sys.executable, str(REPO / "run.py"), "--weights", str(tiny["weights"]),
         "--tokenizer-dir", str(tiny["tokenizer_dir"])], preexec_fn=lambda: os.close(0),
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert closed.returncode == 0, closed.stderr
    assert closed.stdout == "" and "Traceback" not in closed.stderr


class ReaderGone:
    """A stdout whose reader went away (`| head`): every write fails with `error`. fileno: a file of ours,
    which run.py points at devnull."""

    def __init__(self, error: OSError, fd: int):
        self.error, self.fd = error, fd

    def write(self, text):
        raise self.error

    def flush(self):
        pass

    def fileno(self) -> int:
        return self.fd

    def isatty(self) -> bool:
        return False


@pytest.mark.parametrize("error, windows, quiet", [
    (BrokenPipeError(errno.EPIPE, "Broken pipe"), False, True),
    (OSError(errno.EINVAL, "Invalid argument"), True, True),      # how Windows says the pipe is closed
    (OSError(errno.EINVAL, "Invalid argument"), False, False)])   # elsewhere a real error: raised as it is
def test_stdout_closed_early_exits_1_quietly_also_as_windows_reports_it(tiny, tmp_path, monkeypatch, capsys,
                                                                        error, windows, quiet):
    monkeypatch.setattr(text_io, "WINDOWS", windows)
    args = [str(a) for a in ("--weights", tiny["weights"], "--tokenizer-dir", tiny["tokenizer_dir"],
                             "--prompt", "the quick", "--max-new-tokens", "5", *ON_CPU)]
    with open(tmp_path / "stdout", "wb") as stdout, one_thread():
        monkeypatch.setattr(sys, "stdout", ReaderGone(error, stdout.fileno()))
        monkeypatch.setattr(sys, "stdin", io.StringIO())
        if quiet:
            assert run.main(args) == 1
        else:
            with pytest.raises(OSError):
                run.main(args)
    assert "Traceback" not in capsys.readouterr().err


def test_stop_text_ends_the_continuation_before_it(tiny):
    model, tokenizer = tiny["model"], tiny["tokenizer"]
    prompt = torch.tensor([tokenizer.encode("the quick")])
    with one_thread():
        greedy = model.generate(prompt, 40, temperature=0)
    text = tokenizer.decode(greedy[0, prompt.shape[1]:].tolist())
    stop = text[8:14]                               # spans several tokens
    result = run_tiny(tiny, "--prompt", "the quick", "--temperature", "0", "--max-new-tokens", "40",
                      "--stop", stop, *ON_CPU)                 # greedy on the CPU, as above
    assert result.returncode == 0, result.stderr
    assert result.stdout == text[:text.find(stop)] + "\n"


@settings(derandomize=True, deadline=None)
@given(st.lists(st.text("ab\n", max_size=3), max_size=12), st.text("ab\n", min_size=1, max_size=3))
def test_streamed_text_with_a_stop_is_the_text_before_the_stop(pieces, stop):
    """Feeding the pieces one by one through shown_length prints exactly text[:text.find(stop)]."""
    printed, pending = "", ""
    for piece in pieces:
        pending += piece
        n, stopped = shown_length(pending, stop)
        printed, pending = printed + pending[:n], pending[n:]
        if stopped:
            break
    else:
        printed += pending
    text = "".join(pieces)
    assert printed == (text[:text.find(stop)] if stop in text else text)


@settings(derandomize=True, deadline=None)
@given(st.integers(1, 200), st.integers(1, 20), st.data())
def test_eval_windows_score_every_token_once_with_enough_context(n_tokens, block, data):
    stride = data.draw(st.integers(1, block))
    scored = []
    for start, end, skip in eval_windows(n_tokens, block, stride):
        assert 0 <= start < end <= n_tokens and end - start <= block
        targets = range(start + 1 + skip, end + 1)
        scored += targets
        assert all(t - start >= min(t, block - stride + 1) for t in targets)   # context of each
    assert scored == list(range(1, n_tokens + 1))


def test_removed_beams_option_says_to_use_temperature_0():
    assert_one_error_line(run_script("run.py", "--beams", "3"), "--beams was removed", "--temperature 0")


def default_ctrl_c() -> None:
    """In the child before run.py starts: Ctrl-C back to its default, as a person's shell gives it.
    A test run started in the background by a script inherits SIGINT ignored, and Python then
    never turns Ctrl-C into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_in_terminal(tiny, *args):
    """run.py with a pseudo-terminal as stdin, as when a person types. Returns (process, terminal fd)."""
    import pty                        # POSIX only: the tests that come here are marked needs_pty
    terminal, stdin = pty.openpty()
    proc = subprocess.Popen([sys.executable, str(REPO / "run.py"), "--weights", str(tiny["weights"]),
                             "--tokenizer-dir", str(tiny["tokenizer_dir"]), *args],
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=default_ctrl_c)
    os.close(stdin)
    return proc, terminal


def read_until_waiting_at_prompt(proc, prompts: int, timeout: float = 60) -> str:
    """Read proc's stderr until the prompt marker "> " has appeared `prompts` times and proc sleeps,
    waiting for the next line; return what was read.

    A Ctrl-C sent a moment earlier could land in the few instructions between Python's last check
    for signals and the read of stdin, and then wait unseen until a line arrives (a race a person
    never hits, but a test sending SIGINT right after the output can)."""
    err, deadline = "", time.monotonic() + timeout
    while err.count("> ") < prompts:
        assert time.monotonic() < deadline, f"no prompt {prompts} in time; stderr so far: {err!r}"
        chunk = os.read(proc.stderr.fileno(), 4096).decode()
        assert chunk, f"stderr closed before prompt {prompts}: {err!r}"
        err += chunk
    stat = f"/proc/{proc.pid}/stat"
    if not os.path.exists(stat):   # not Linux: give it a moment to reach the read
        time.sleep(0.5)
        return err
    while open(stat).read().rsplit(")", 1)[1].split()[0] != "S":   # state: S is sleeping
        assert time.monotonic() < deadline, "run.py never went to sleep at the prompt"
        time.sleep(0.01)
    return err


@needs_pty
@needs_sigint
def test_interactive_session_streams_to_stdout_and_ctrl_c_exits_130(tiny):
    # (Ctrl-D is end of input, the same path as the end of piped stdin in the tests above.)
    proc, terminal = start_in_terminal(tiny, "--stop", r"\n", "--max-new-tokens", "20")
    try:
        os.write(terminal, b"the quick\n")
        continuation = proc.stdout.readline()
        err = read_until_waiting_at_prompt(proc, prompts=2)
        proc.send_signal(signal.SIGINT)              # at the next prompt
        out, rest = proc.communicate(timeout=60)
        err += rest
    finally:
        os.close(terminal)
        if proc.poll() is None:   # failed: leave no run.py behind
            proc.kill()
    assert continuation.endswith("\n") and out == ""
    assert proc.returncode == 130
    assert err.endswith("> > \n") and "Traceback" not in err   # the prompt marker is on stderr


# ───────────────────────────────────────────── --eval ─────────────────────────────────────────────

def hand_total_nll(model, seq: torch.Tensor, stride: int) -> float:
    """Sum over t = 1..N of -log p(seq[t] | its context), one forward pass per token.

    Documented rule: tokens 1..BLOCK see everything before them; a later token t is scored by the
    window ending at e = min(BLOCK + ceil((t - BLOCK) / stride) * stride, N), which starts at e - BLOCK."""
    n = len(seq) - 1
    total = 0.0
    with torch.no_grad(), one_thread():
        for t in range(1, n + 1):
            start = 0 if t <= BLOCK else min(BLOCK + math.ceil((t - BLOCK) / stride) * stride, n) - BLOCK
            logits, _ = model(seq[None, start:t])
            total += F.cross_entropy(logits[0, -1], seq[t]).item()
    return total


def parse_figures(stdout: str) -> dict:
    last = stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"nats_per_char=\S+ bits_per_char=\S+ nats_per_token=\S+ tokens=\d+ chars=\d+", last)
    return {k: float(v) for k, v in (field.split("=") for field in last.split())}


def test_eval_figures_match_a_hand_computation(tiny, tmp_path):
    text = TINY_TEXT[:300] + "unseen — 生存还是毁灭 🙂\n" + TINY_TEXT[-100:]
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8", newline="\n")
    result = run_tiny(tiny, "--eval", path, *ON_CPU)          # the hand computation runs on the CPU
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    got = parse_figures(result.stdout)

    tokenizer = tiny["tokenizer"]
    ids = tokenizer.encode(text)
    seq = torch.tensor(tokenizer.encode("\n") + ids)           # the first token is scored after "\n"
    total = hand_total_nll(tiny["model"], seq, stride=BLOCK // 2)     # the documented default stride
    assert len(ids) > 3 * BLOCK                                # several windows
    assert got["tokens"] == len(ids) and got["chars"] == len(text)
    assert got["nats_per_char"] == pytest.approx(total / len(text), rel=1e-4)
    assert got["bits_per_char"] == pytest.approx(total / len(text) / math.log(2), rel=1e-4)
    assert got["nats_per_token"] == pytest.approx(total / len(ids), rel=1e-4)


def test_int8_quantizes_every_matmul_and_scores_within_a_hundredth(tiny, tmp_path):
    from support.devices import int8_for_cpu
    model = tiny["model"]
    int8 = int8_for_cpu(copy.deepcopy(model))
    assert "quantized" in type(int8.blocks[0].attn.qkv).__module__ and "quantized" in type(int8.blocks[-1].mlp.proj).__module__
    x = torch.randn(1, 5, model.config.emb_len)
    exact, quantized = model.unembed(x), int8.unembed(x)
    assert not torch.equal(quantized, exact)                   # the head is int8 too, not the float32 method
    assert (quantized - exact).abs().max() < 0.05 * exact.abs().max()
    path = tmp_path / "text.txt"
    path.write_text(TINY_TEXT[:2000], encoding="utf-8", newline="\n")
    plain, fast = (parse_figures(run_tiny(tiny, "--eval", path, *ON_CPU, *extra).stdout) for extra in ((), ("--int8",)))
    assert abs(fast["nats_per_char"] - plain["nats_per_char"]) < 0.01
    generated = run_tiny(tiny, "--int8", "--prompt", "the quick", "--seed", "1", "--max-new-tokens", "8", *ON_CPU)
    assert generated.returncode == 0 and generated.stdout.strip(), generated.stderr


def test_eval_of_a_bad_file_is_one_line(tiny, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "empty.txt").write_bytes(b"")
    for name, fragment in [("missing.txt", "not found"), ("latin1.txt", "not UTF-8"),
                           ("empty.txt", "empty")]:
        assert_one_error_line(run_tiny(tiny, "--eval", tmp_path / name), name, fragment)


# ─────────────────────────────────────── loading problems ───────────────────────────────────────

def copy_scripts(tmp_path):
    """The repo's scripts in a folder of their own, so a test can edit its Model_Params.py."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    for path in REPO.glob("*.py"):
        shutil.copy(path, scripts / path.name)
    shutil.copytree(REPO / "support", scripts / "support", ignore=shutil.ignore_patterns("__pycache__"))
    return scripts


def test_edited_model_params_still_runs_the_trained_model_and_names_the_differences(tiny, tmp_path):
    scripts = copy_scripts(tmp_path)
    params = scripts / "Model_Params.py"
    source = params.read_text(encoding="utf-8")
    for name, value in tiny["config"].to_dict().items():     # Model_Params as at training time...
        source = re.sub(rf"^{name} = \S+", f"{name} = {value!r}", source, flags=re.M)
    source = source.replace(f"block_size = {BLOCK}", "block_size = 256")   # ...then edited
    source = source.replace("num_layers = 2", "num_layers = 12")
    params.write_text(source, encoding="utf-8")
    # Default weights folder beside the script, holding only weights-latest.pth: the fallback.
    (scripts / "Saved_Weights").mkdir()
    shutil.copy(tiny["weights"].with_name("weights-latest.pth"), scripts / "Saved_Weights")
    result = run_script(scripts / "run.py", "--tokenizer-dir", tiny["tokenizer_dir"],
                        "--prompt", "the quick", "--max-new-tokens", "5")
    assert result.returncode == 0, result.stderr
    assert "weights-latest.pth" in result.stderr
    notes = [line for line in result.stderr.splitlines() if "Model_Params.py differs" in line]
    assert len(notes) == 1
    assert f"block_size 256 (checkpoint {BLOCK})" in notes[0] and "num_layers 12 (checkpoint 2)" in notes[0]
    assert "emb_len" not in notes[0] and "vocab_size" not in notes[0]


def test_a_checkpoint_runs_with_its_own_tokenizer_and_an_older_one_needs_the_matching_folder(tiny, tmp_path):
    other = Tokenizer()
    other.train("a completely different text, with other merges " * 20, 280)
    other.save(tmp_path / "other")
    args = ("--tokenizer-dir", tmp_path / "other", "--prompt", "the quick", "--seed", "1", "--max-new-tokens", "8")
    # A checkpoint carries its tokenizer's merges: another tokenizer folder does not matter.
    carried, usual = run_script("run.py", "--weights", tiny["weights"], *args), run_tiny(tiny, *args[2:])
    assert carried.returncode == 0 and carried.stdout == usual.stdout, carried.stderr
    # A file from before checkpoints carried them needs the tokenizer it was trained with.
    ckpt = torch.load(tiny["weights"], weights_only=True)
    del ckpt["tokenizer_merges"]
    torch.save(ckpt, tmp_path / "older.pth")
    result = run_script("run.py", "--weights", tmp_path / "older.pth", *args)
    assert_one_error_line(result, "older.pth: trained with a different tokenizer", other.fingerprint(),
                          "retrain with `python train.py`")


def test_no_weights_says_train_first_or_restore(tmp_path):
    scripts = copy_scripts(tmp_path)                           # no Saved_Weights/ beside this copy
    result = run_script(scripts / "run.py", "--prompt", "hi")
    assert_one_error_line(result, "train.py", "git checkout Saved_Weights/pretrained.pth")


@pytest.mark.parametrize("option", [
    ("--temperature", "-1"), ("--temperature", "nan"), ("--top-p", "0"), ("--top-p", "1.5"),
    ("--top-k", "-1"), ("--top-k", "2.5"), ("--max-new-tokens", "-1"),
    ("--stop", ""), ("--stop", "\\"), ("--seed", "-1"), ("--seed", str(2 ** 64)),
    ("--eval-stride", "0"), ("--threads", "-1"),
])
def test_bad_option_values_are_one_line_errors(option):
    assert_one_error_line(run_script("run.py", *option), option[0])


def test_every_option_takes_both_spellings_and_help_shows_one():
    underscores = ["--max_new_tokens", "5", "--top_p", "0.5", "--top_k", "3", "--tokenizer_dir", "x",
                   "--eval_stride", "3", "--eval", "f"]
    hyphens = [a.replace("_", "-") if a.startswith("--") else a for a in underscores]
    assert vars(parse_args(underscores, Model_Params)) == vars(parse_args(hyphens, Model_Params))
    options = set(re.findall(r"(?<![\w-])--[a-z][a-z_-]*", run_script("run.py", "--help").stdout))
    assert {"--max-new-tokens", "--eval-stride"} <= options and not [o for o in options if "_" in o], options


def test_prompt_and_eval_exclude_each_other():
    # An existing file: the refusal must come from the two options, not from a missing file.
    result = run_script("run.py", "--prompt", "x", "--eval", REPO / "Model_Params.py")
    assert_one_error_line(result, "--eval", "--prompt", "not allowed")



# ───────────────────────────────────────── which weights ─────────────────────────────────────────

def test_default_weights_are_the_shipped_model_until_you_have_your_own(tiny, tmp_path):
    scripts = copy_scripts(tmp_path)
    weights = scripts / "Saved_Weights"
    weights.mkdir()
    shutil.copy(tiny["weights"], weights / "pretrained.pth")
    args = ("--tokenizer-dir", tiny["tokenizer_dir"], "--prompt", "the", "--max-new-tokens", "1")
    shipped = run_script(scripts / "run.py", *args, cwd=scripts)
    assert shipped.returncode == 0, shipped.stderr
    assert "loaded Saved_Weights/pretrained.pth (the shipped model: no weights of your own" in shipped.stderr
    shutil.copy(tiny["weights"], weights / "weights-best.pth")
    yours = run_script(scripts / "run.py", *args, cwd=scripts)
    assert yours.returncode == 0, yours.stderr
    assert "loaded Saved_Weights/weights-best.pth (your best checkpoint; the shipped model is pretrained.pth, " \
           "use --weights to pick it)" in yours.stderr


def test_weights_folder_gives_best_else_newest_else_pretrained(tmp_path):
    for name, mtime in [("pretrained.pth", 300), ("weights-a.pth", 100), ("weights-b.pth", 200),
                        ("weights-c.pth", 150)]:
        (tmp_path / name).write_bytes(b"")
        os.utime(tmp_path / name, (mtime, mtime))
    chosen, why = find_weights(tmp_path)
    assert chosen == tmp_path / "weights-b.pth" and "newest" in why    # not the newer pretrained.pth
    (tmp_path / "weights-best.pth").write_bytes(b"")
    os.utime(tmp_path / "weights-best.pth", (50, 50))
    assert find_weights(tmp_path)[0] == tmp_path / "weights-best.pth"
    for path in tmp_path.glob("weights-*.pth"):
        path.unlink()
    assert find_weights(tmp_path) == (tmp_path / "pretrained.pth",
                                      f"the shipped model: no weights of your own in {tmp_path}/ yet")
