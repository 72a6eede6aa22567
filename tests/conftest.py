"""Shared test helpers: where the repo is, how to run one of its scripts as a user would, a tiny
model trained once per session by the real init.py and train.py (`tiny_trained`), and what several
test files use: the scripts run by forked children (`scripts`, `tiny_copy`), the tiny model loaded
(`tiny`), a tiny untrained model, an English-like text, the shipped model's checks, and GPT-2's
tokenizer files made offline with `tokenizers` (`gpt2_tokenizer_files`)."""
import hashlib
import importlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
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


# ───────────── what a test needs of the platform: the suite runs on Windows, macOS and Linux ─────────────

def importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


# Each marker skips, saying why, where the platform lacks what the test itself uses (never what the
# scripts need: they run everywhere). tests/test_suite_portability.py checks that the suite collects
# without these modules and that the tests needing them skip.
needs_fork = pytest.mark.skipif(
    not hasattr(os, "fork"), reason="runs the scripts in children forked from one process that imported "
                                    "torch once (tests/forked_scripts.py): this platform has no os.fork")
needs_pty = pytest.mark.skipif(
    not importable("pty"), reason="stands in for a person's terminal with a pseudo-terminal: this platform "
                                  "has no pty module (POSIX only)")
needs_sigint = pytest.mark.skipif(
    os.name == "nt", reason="presses Ctrl-C by sending SIGINT to one process: Windows sends Ctrl-C "
                            "(CTRL_C_EVENT) to every process on the console, pytest included")


def posix_only(what: str):
    return pytest.mark.skipif(os.name != "posix", reason=f"{what}: POSIX only")


def linux_only(what: str):
    return pytest.mark.skipif(not sys.platform.startswith("linux"), reason=f"{what}: Linux only")


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
# model that has all but memorised the text (val loss ~0.2 nats/token). The optimizer (AdamW) and the
# length (60 steps, no max_epochs) are pinned so that retuning Model_Params' defaults leaves these
# tests' model alone.
TINY_TRAIN_FLAGS = ("--block_size", "16", "--emb_len", "32", "--num_layers", "2", "--num_heads", "2",
                    "--batch_size", "8", "--max_iters", "60", "--max_epochs", "0", "--eval_interval", "20",
                    "--warmup_iters", "5", "--optimizer", "adamw", "--learning_rate", "1e-2",
                    "--weight_decay", "0.1", "--dropout", "0", "--seed", "1")


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory) -> dict:
    """init.py then train.py, run once per session on a small repetitive text in a temp folder.

    Returns paths: "input" (the text), "tokenizer_dir", "weights_dir" (weights-best.pth,
    weights-latest.pth, loss_history.csv), plus "train_flags" (the tiny model's settings) and
    "train_stderr". Treat the folder as read-only: copy it before changing anything.
    """
    root = tmp_path_factory.mktemp("tiny_trained")
    text_path = root / "input.txt"
    text_path.write_text(TINY_TEXT, encoding="utf-8", newline="\n")      # the same bytes on Windows
    tokenizer_dir, weights_dir = root / "tokenizer", root / "weights"
    init = run_script("init.py", "--input", text_path, "--vocab-size", TINY_VOCAB, "--out", tokenizer_dir)
    assert init.returncode == 0, init.stderr
    # On the CPU: tests compare this model's checkpoints and figures with CPU computations.
    train = run_script("train.py", "--input", text_path, "--tokenizer-dir", tokenizer_dir,
                       "--weights-dir", weights_dir, *TINY_TRAIN_FLAGS, *ON_CPU)
    assert train.returncode == 0, train.stderr
    return {"input": text_path, "tokenizer_dir": tokenizer_dir, "weights_dir": weights_dir,
            "train_flags": TINY_TRAIN_FLAGS, "train_stderr": train.stderr}


# ──────────── helpers shared by several test files (torch is imported only where needed) ────────────

def assert_one_error_line(result, *fragments: str) -> str:
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
    from support.lock import LOCK_NAME
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_NAME}


# ─────────────────────────── the tiny model, loaded here, and run.py on it ───────────────────────────

@pytest.fixture(scope="module")
def tiny(tiny_trained) -> dict:
    """The session's tiny model, also loaded in this process: "weights" (its weights-best.pth),
    "tokenizer_dir", "model", "tokenizer", "config". Read-only, like tiny_trained."""
    import torch
    from support.checkpoints import load_checkpoint, model_from_checkpoint
    from tokenizer import Tokenizer
    weights = tiny_trained["weights_dir"] / "weights-best.pth"
    model = model_from_checkpoint(load_checkpoint(weights), torch.device("cpu"), weights)
    return {"weights": weights, "tokenizer_dir": tiny_trained["tokenizer_dir"], "model": model,
            "tokenizer": Tokenizer.load(tiny_trained["tokenizer_dir"]), "config": model.config}


def run_tiny(tiny, *args, input=None):
    """run.py on the tiny model (on the device --device auto finds, unless args pass ON_CPU)."""
    return run_script("run.py", "--weights", tiny["weights"], "--tokenizer-dir", tiny["tokenizer_dir"],
                      *args, input=input, timeout=120)


# One --show-probs candidate: an optional "… " (the drawn token, below the K likeliest), a mark, the
# quoted token text, its probability in percent.
CANDIDATE = re.compile(r'(?:… )?(→|✗)?("(?:[^"\\]|\\.)*") (\d+\.\d)%')


def candidate_lines(stderr: str) -> list[list[tuple[str, str, float]]]:
    """--show-probs lines of stderr, each as [(mark, quoted token, percent)]."""
    return [[(mark, token, float(p)) for mark, token, p in CANDIDATE.findall(line)]
            for line in stderr.splitlines() if CANDIDATE.match(line)]


# ──────────────── the scripts run by forked children (tests/forked_scripts.py), on a copy ────────────────

@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    maxrss_kb: int               # the child's peak resident memory
    timed_out: bool


class ForkedScripts:
    """Runs scripts through forked_scripts.py: run(script, *args, cwd=...) -> Result. The server imports
    torch once; each run is a forked child running the real script file as `__main__` (a fraction of a
    second instead of 4 s or more), where faults (SIGKILL inside a checkpoint write, a full disk) are
    injected too."""

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
    """The ForkedScripts server; a test that uses it skips where there is no fork (see below)."""
    server = ForkedScripts()
    yield server
    server.close()


def pytest_collection_modifyitems(items):
    # Marked here, once, rather than on each test that uses `scripts`: the skip then comes before
    # any fixture is set up (the session's tiny model is not trained for a test that will skip).
    for item in items:
        if "scripts" in getattr(item, "fixturenames", ()):
            item.add_marker(needs_fork)


@pytest.fixture
def tiny_copy(tiny_trained, tmp_path) -> dict:
    """A private copy of the session's tiny run in tmp_path ("root"): its "input", "tokenizer_dir" and
    "weights_dir"; "reference" is the original weights folder, to compare with."""
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


def assert_checkpoints_load(weights_dir: Path) -> dict:
    """Every weights-*.pth in the folder loads safely and rebuilds its model, as run.py does."""
    from support.checkpoints import load_checkpoint, model_from_checkpoint
    loaded = {}
    for path in sorted(weights_dir.glob("weights-*.pth")):
        loaded[path.name] = load_checkpoint(path)
        model_from_checkpoint(loaded[path.name], "cpu", path)
    return loaded


def history(weights_dir: Path) -> list[dict]:
    """loss_history.csv without the wall-clock column (the one thing that differs between runs)."""
    import csv
    with open(weights_dir / "loss_history.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "minutes"} for row in csv.DictReader(f)]


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


# ───────────────────────────────── a tiny model made here (Model.py) ─────────────────────────────────

def tiny_config(**overrides):
    from Model import ModelConfig
    fields = dict(vocab_size=64, block_size=32, emb_len=32, num_layers=2, num_heads=4, dropout=0.0)
    return ModelConfig(**{**fields, **overrides})


def tiny_model(seed: int = 0, **overrides):
    import torch
    from Model import Transformer
    torch.manual_seed(seed)
    return Transformer(tiny_config(**overrides)).eval()


# ─────────────────────────────── an English-like text, made here ───────────────────────────────

# Common words (frequent ones first: they are drawn with Zipf-like weights, as in real text), with
# contractions, names, and words in other scripts; numbers and punctuation are added as it is made.
WORDS = """the and to of I you a my in that is not it with me be his your this but he have as for thy
so will what thou her by all no do shall if are our him on lord king good now sir come more they or
let well here how would love there she o them man then than night time when why must hath may one
go see make know upon say am like speak where tell should death did can heart father mother house
world nothing life sweet blood queen great give think every fair eyes friend day never were these
some much old own poor dead most hand look stay word yet again mind first such nor true men heaven
don't it's I'll we've you're 'tis o'er can't madam Hamlet Romeo Juliet Macbeth Othello Caesar Lear
Viola Prospero Ophelia café naïve déjà Straße Ωμέγα Жизнь 東京 über señor façade — """.split()
NAMES = ["HAMLET", "ROMEO", "JULIET", "MACBETH", "OTHELLO", "LEAR", "VIOLA", "PROSPERO", "KING", "QUEEN"]


@lru_cache(maxsize=None)
def english_like_text(num_chars: int = 300_000, seed: int = 0) -> str:
    """A deterministic English-like text of about num_chars (never Train_Data/input.txt, which users
    replace): speeches by named speakers, made of sentences of Zipf-weighted words with commas,
    numbers, questions, blank lines, indentation, some non-ASCII words and the odd emoji."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(len(WORDS))]
    parts, size = [], 0
    while size < num_chars:
        lines = [f"{rng.choice(NAMES)}."]
        for _ in range(rng.randint(1, 4)):
            words = rng.choices(WORDS, weights, k=rng.randint(3, 14))
            words[0] = words[0][:1].upper() + words[0][1:]
            for k in range(1, len(words)):
                roll = rng.random()
                if roll < 0.08:
                    words[k - 1] += ","
                elif roll < 0.11:
                    words[k] = str(rng.choice([rng.randint(0, 99), rng.randint(1000, 2024),
                                               rng.randint(10 ** 5, 10 ** 7)]))
                elif roll < 0.12:
                    words[k] = rng.choice(["3.14", "1,000", "(aside)", "[Exit]", "😀", "snake_case",
                                           "“well”", "e-mail", "--", "&c."])
            indent = rng.choice(["", "", "", "  ", "    ", "\t"])
            lines.append(indent + " ".join(words) + rng.choice([".", ".", ".", "?", "!", ";", ":"]))
        text = "\n".join(lines) + rng.choice(["\n\n", "\n\n", "\n", "\n\n\n", " \n\n"])
        parts.append(text)
        size += len(text)
    return "".join(parts)


# ───────────────────────── the shipped model (Saved_Weights/pretrained.pth) ─────────────────────────

# Train_Data/input.txt as shipped. The tour is checked on that text: on another one, init.py
# rightly makes another tokenizer.
SHIPPED_CORPUS_SHA256 = "51e179f2503a09b911e993aba609bb1180a21a72ab9b7561ba68c09bb6db4a28"
SHIPPED_WEIGHTS = Path("Saved_Weights") / "pretrained.pth"


def committed_unchanged(path: str) -> bool | None:
    """Whether `path` (relative to the repo) is as the last commit has it; None without git."""
    try:
        result = subprocess.run(["git", "status", "--porcelain", "--", path], cwd=REPO, capture_output=True,
                                text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() == "" if result.returncode == 0 else None


def require_shipped(path: str, as_shipped: bool, problem: str) -> None:
    """Skip (saying why) when the user changed `path` so that `problem` holds, or when without git
    there is no telling; fail when it is as committed, since then the shipped files disagree."""
    if as_shipped:
        return
    if committed_unchanged(path):
        pytest.fail(f"{path} is as committed, yet {problem}")
    pytest.skip(f"{path} is not as shipped ({problem}); this check needs the shipped one: `git checkout {path}`")


def require_shipped_corpus() -> None:
    digest = hashlib.sha256((REPO / "Train_Data" / "input.txt").read_bytes()).hexdigest()
    require_shipped("Train_Data/input.txt", digest == SHIPPED_CORPUS_SHA256,
                    "its sha256 is not the shipped corpus's; you replaced it, as README invites")


def require_shipped_tokenizer() -> None:
    from support.checkpoints import load_checkpoint
    from tokenizer import Tokenizer, TokenizerError
    try:
        fingerprint = Tokenizer.load(REPO / "tokenizer_save").fingerprint()
    except TokenizerError:
        fingerprint = None
    shipped = load_checkpoint(REPO / SHIPPED_WEIGHTS)["tokenizer_fingerprint"]
    require_shipped("tokenizer_save", fingerprint == shipped,
                    f"it is not the tokenizer {SHIPPED_WEIGHTS} was trained with")


# ─────────────────── GPT-2's tokenizer files, made offline (tests/test_tokenizer.py, tests/test_gpt2.py) ───────────────────

EOT = "<|endoftext|>"


def gpt2_tokenizer_files(folder, text: str, vocab_size: int = 400) -> int:
    """Train a byte-level BPE with `tokenizers` and save it as GPT-2 does (vocab.json with <|endoftext|>
    last, merges.txt). -> the vocabulary size."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator([text], trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf.model.save(str(folder))
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    vocab[EOT] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    return len(vocab)
