"""Guards for the pretrained model that ships in the repo: Saved_Weights/pretrained.pth with
tokenizer_save/. Each test names that file, whatever else the weights folder holds, and takes the
model's shape from it. Read-only: nothing here writes to either folder."""
import re

import numpy as np
import pytest
import torch

import train
from conftest import REPO, SHIPPED_WEIGHTS, require_shipped_corpus, require_shipped_tokenizer, run_script
from support.checkpoints import check_tokenizer_fingerprint, load_checkpoint, model_from_checkpoint
from support.scoring import chars_per_token, final_windows, score_windows
from tokenizer import Tokenizer

WEIGHTS = REPO / SHIPPED_WEIGHTS
TOKENIZER_DIR = REPO / "tokenizer_save"
SLICE_TOKENS = 4096          # the first tokens of the validation split: fast, and always the same


def recorded_slice_figure() -> float:
    """The figure README.md records for the check below: the one place to update after a reship."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"slice check: ([0-9.]+) nats/char", readme)
    assert match, "README.md lost its 'slice check: <value> nats/char' line"
    return float(match[1])


@pytest.fixture(scope="module")
def shipped_tokenizer() -> Tokenizer:
    require_shipped_tokenizer()
    return Tokenizer.load(TOKENIZER_DIR)


def test_shipped_weights_load_with_the_shipped_tokenizer(shipped_tokenizer):
    ckpt = load_checkpoint(WEIGHTS)
    check_tokenizer_fingerprint(ckpt, shipped_tokenizer.fingerprint(), WEIGHTS)       # raises on mismatch
    assert ckpt["model_config"]["vocab_size"] == shipped_tokenizer.vocab_size


def test_shipped_model_validation_slice_matches_readme(shipped_tokenizer):
    require_shipped_corpus()
    torch.manual_seed(0)
    ckpt = load_checkpoint(WEIGHTS)
    model = model_from_checkpoint(ckpt, torch.device("cpu"), WEIGHTS)
    text = (REPO / "Train_Data" / "input.txt").read_text(encoding="utf-8")
    ids = np.array(shipped_tokenizer.encode(text), dtype=np.int64)
    block_size = model.config.block_size
    _, val = train.split_ids(ids, block_size, REPO / "Train_Data" / "input.txt")
    result = score_windows(model, val[:SLICE_TOKENS + 1], final_windows(SLICE_TOKENS + 1, block_size, 0),
                           chars_per_token(shipped_tokenizer), torch.device("cpu"))
    assert abs(result.nats_per_char - recorded_slice_figure()) < 0.02


def test_readme_main_command_prints_shakespeare_like_text(shipped_tokenizer):
    out = run_script("run.py", "--weights", WEIGHTS, "--tokenizer-dir", TOKENIZER_DIR,
                     "--prompt", "ROMEO:", "--seed", "1", "--max-new-tokens", "60")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    words = re.findall(r"[A-Za-z']+", out.stdout)
    # English-looking output: many words, and most characters are letters, spaces or punctuation.
    assert len(words) >= 15
    printable = sum(c.isascii() and (c.isprintable() or c == "\n") for c in out.stdout)
    assert printable / len(out.stdout) > 0.98
