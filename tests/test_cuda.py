"""README's tour on a CUDA GPU, through the real scripts: init.py, a few training steps under bf16
autocast, a stopped run resumed to the very weights of an uninterrupted one, and run.py streaming
with its KV cache the tokens that plain generation gives. Skipped, saying so, where no CUDA device is
present; the rest of the suite runs on whatever device `--device auto` finds."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ON_CPU, REPO, TINY_TEXT, TINY_TRAIN_FLAGS, TINY_VOCAB, history, needs_sigint, run_script
from support.checkpoints import load_checkpoint, model_from_checkpoint
from tokenizer import Tokenizer

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="no CUDA device here: these tests run the scripts on one"),
              needs_sigint]          # the tour stops a run with Ctrl-C, then resumes it

ON_CUDA = ("--device", "cuda")
STEPS = 12                   # the whole run; the interrupted one gets Ctrl-C once it has saved a checkpoint
# The tiny model (conftest) for 12 steps, with dropout and BPE-dropout on: resuming must restore
# the GPU's random generator too.
FLAGS = (*TINY_TRAIN_FLAGS, "--max_iters", str(STEPS), "--eval_interval", "4", "--dropout", "0.1",
         "--bpe_dropout", "0.1", *ON_CUDA)


@pytest.fixture(scope="module")
def tour(tmp_path_factory) -> dict:
    """init.py, then train.py on the GPU twice: 12 steps at once, and stopped by Ctrl-C then resumed."""
    root = tmp_path_factory.mktemp("cuda_tour")
    text = root / "input.txt"
    text.write_text(TINY_TEXT, encoding="utf-8", newline="\n")
    init = run_script("init.py", "--input", text, "--vocab-size", TINY_VOCAB, "--out", root / "tokenizer")
    assert init.returncode == 0, init.stderr
    args = {name: ["--input", text, "--tokenizer-dir", root / "tokenizer", "--weights-dir", root / name, *FLAGS]
            for name in ("whole", "resumed")}
    runs = {"whole": run_script("train.py", *args["whole"])}
    stopped = subprocess.Popen([sys.executable, str(REPO / "train.py"), *map(str, args["resumed"])],
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    while not (root / "resumed" / "weights-latest.pth").exists() and stopped.poll() is None:
        time.sleep(0.05)
    stopped.send_signal(signal.SIGINT)
    assert stopped.wait(timeout=300) in (0, 130), stopped.stderr.read()
    runs["resumed"] = run_script("train.py", *args["resumed"])
    assert all(run.returncode == 0 for run in runs.values()), [run.stderr for run in runs.values()]
    return {"root": root, "text": text, "tokenizer_dir": root / "tokenizer", "runs": runs}


def test_training_on_cuda_runs_under_bf16_autocast_and_resumes_to_the_same_weights(tour):
    expected = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"      # older GPUs: fp16 + scaler
    assert f"device cuda, autocast {expected}" in tour["runs"]["whole"].stderr
    assert "resuming from" in tour["runs"]["resumed"].stderr
    whole = load_checkpoint(tour["root"] / "whole" / "weights-latest.pth")
    resumed = load_checkpoint(tour["root"] / "resumed" / "weights-latest.pth")
    assert whole["step"] == resumed["step"] == STEPS
    for name, tensor in whole["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
    # The same evaluations, and the same final one.
    whole_rows, resumed_rows = history(tour["root"] / "whole"), history(tour["root"] / "resumed")
    assert [r for r in resumed_rows if r["eval"] == "windows"] == [r for r in whole_rows if r["eval"] == "windows"]
    assert resumed_rows[-1] == whole_rows[-1] and whole_rows[-1]["eval"] == "full"


def test_run_on_cuda_streams_with_its_cache_the_tokens_of_plain_generation(tour):
    weights = tour["root"] / "whole" / "weights-best.pth"
    tokenizer = Tokenizer.load(tour["tokenizer_dir"])
    new_tokens = 10                                       # prompt and continuation fit in the context
    result = run_script("run.py", "--weights", weights, "--tokenizer-dir", tour["tokenizer_dir"], *ON_CUDA,
                        "--prompt", "the quick", "--temperature", "0", "--max-new-tokens", new_tokens)
    assert result.returncode == 0, result.stderr
    model = model_from_checkpoint(load_checkpoint(weights), torch.device("cuda"), weights)
    prompt = torch.tensor([tokenizer.encode("the quick")], device="cuda")
    plain = model.generate_plain(prompt, new_tokens, temperature=0)                 # no cache
    assert result.stdout == tokenizer.decode(plain[0, prompt.shape[1]:].tolist()) + "\n"


def test_eval_on_cuda_gives_the_cpu_figures(tour):
    weights = tour["root"] / "whole" / "weights-best.pth"
    figures = {}
    for device in (ON_CUDA, ON_CPU):
        result = run_script("run.py", "--weights", weights, "--tokenizer-dir", tour["tokenizer_dir"], *device,
                            "--eval", tour["text"])
        assert result.returncode == 0, result.stderr
        figures[device] = dict(field.split("=") for field in result.stdout.split())
    assert figures[ON_CUDA]["tokens"] == figures[ON_CPU]["tokens"]
    assert float(figures[ON_CUDA]["nats_per_char"]) == pytest.approx(float(figures[ON_CPU]["nats_per_char"]), rel=1e-4)
