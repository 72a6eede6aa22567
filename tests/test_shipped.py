"""Guards for the pretrained model that ships in the repo: Saved_Weights/pretrained.pth with
tokenizer_save/. Read-only: nothing here writes to either folder."""
import re

import numpy as np
import torch

import Model_Params
import train
from conftest import REPO, run_script
from test_tour import require_shipped_corpus
from Model import ModelConfig
from support.checkpoints import check_tokenizer_fingerprint, load_checkpoint, model_from_checkpoint
from support.scoring import chars_per_token, final_windows, score_windows
from tokenizer import Tokenizer

WEIGHTS = REPO / "Saved_Weights" / "pretrained.pth"
TOKENIZER_DIR = REPO / "tokenizer_save"
SLICE_TOKENS = 4096          # the first tokens of the validation split: fast, and always the same


def recorded_slice_figure() -> float:
    """The figure README.md records for the check below."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"slice check: ([0-9.]+) nats/char", readme)
    assert match, "README.md lost its 'slice check: <value> nats/char' line"
    return float(match[1])


def test_shipped_weights_load_with_the_shipped_tokenizer():
    tokenizer = Tokenizer.load(TOKENIZER_DIR)
    ckpt = load_checkpoint(WEIGHTS)
    check_tokenizer_fingerprint(ckpt, tokenizer.fingerprint(), WEIGHTS)       # raises on mismatch
    assert ckpt["model_config"]["vocab_size"] == tokenizer.vocab_size


def test_model_params_defaults_describe_the_shipped_model():
    # Otherwise `python run.py` would greet a new user with a "Model_Params differs" note.
    shipped = ModelConfig.from_dict(load_checkpoint(WEIGHTS)["model_config"])
    assert shipped.to_dict() == {name: getattr(Model_Params, name) for name in shipped.to_dict()}


def test_shipped_model_validation_slice_matches_readme():
    require_shipped_corpus()
    torch.manual_seed(0)
    tokenizer = Tokenizer.load(TOKENIZER_DIR)
    ckpt = load_checkpoint(WEIGHTS)
    model = model_from_checkpoint(ckpt, torch.device("cpu"), WEIGHTS)
    text = (REPO / "Train_Data" / "input.txt").read_text(encoding="utf-8")
    ids = np.array(tokenizer.encode(text), dtype=np.int64)
    block_size = model.config.block_size
    _, val = train.split_ids(ids, block_size, REPO / "Train_Data" / "input.txt")
    result = score_windows(model, val[:SLICE_TOKENS + 1], final_windows(SLICE_TOKENS + 1, block_size, 0),
                           chars_per_token(tokenizer), torch.device("cpu"))
    assert abs(result.nats_per_char - recorded_slice_figure()) < 0.02


def test_readme_main_command_prints_shakespeare_like_text():
    out = run_script("run.py", "--prompt", "ROMEO:", "--seed", "1", "--max-new-tokens", "60")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    words = re.findall(r"[A-Za-z']+", out.stdout)
    # English-looking output: many words, and most characters are letters, spaces or punctuation.
    assert len(words) >= 15
    printable = sum(c.isascii() and (c.isprintable() or c == "\n") for c in out.stdout)
    assert printable / len(out.stdout) > 0.98
