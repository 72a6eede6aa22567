"""Tests of support/checkpoints.py: safe loading and one-line errors for every broken file. (An empty,
truncated or garbage file, and a pickle that would run code, are tried through run.py and train.py:
test_robustness.py::test_broken_checkpoint_is_named_and_refused_by_run_and_train_and_no_code_runs; a
tokenizer that does not match, through run.py: test_run.py::test_tokenizer_that_does_not_match_the_checkpoint_is_refused.)"""
from pathlib import Path

import pytest
import torch

from conftest import tiny_config, tiny_model
from Model import Transformer
from support.checkpoints import CHECKPOINT_FORMAT_VERSION, CheckpointError, load_checkpoint, model_from_checkpoint


def save_checkpoint(path: Path, net: Transformer, **extra) -> dict:
    """Write a checkpoint in the contract's format; `extra` adds or overrides keys."""
    ckpt = {"format_version": CHECKPOINT_FORMAT_VERSION, "kind": "best", "model_config": net.config.to_dict(),
            "model": net.state_dict(), "tokenizer_fingerprint": "abc123", "step": 10,
            "val_nats_per_char": None, **extra}
    torch.save(ckpt, path)
    return ckpt


def test_checkpoint_round_trip_rebuilds_the_same_model_even_from_fp16_weights(tmp_path):
    model = tiny_model()
    save_checkpoint(tmp_path / "w.pth", model)
    rebuilt = model_from_checkpoint(load_checkpoint(tmp_path / "w.pth"), torch.device("cpu"))
    idx = torch.randint(0, 64, (2, 10))
    assert not rebuilt.training
    assert torch.equal(rebuilt(idx)[0], model(idx)[0])

    half = {k: v.half() for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "h.pth", model, model=half)
    rebuilt = model_from_checkpoint(load_checkpoint(tmp_path / "h.pth"), "cpu")
    assert all(p.dtype == torch.float32 for p in rebuilt.parameters())
    assert torch.allclose(rebuilt(idx)[0], model(idx)[0], atol=2e-2)


def assert_one_line_error_naming(path: Path, match: str):
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_load_checkpoint_reports_missing_file(tmp_path):
    assert_one_line_error_naming(tmp_path / "nothing.pth", "no such checkpoint")


def test_load_checkpoint_rejects_other_formats_and_versions(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pth")
    assert_one_line_error_naming(tmp_path / "list.pth", "not a checkpoint of this project")
    save_checkpoint(tmp_path / "v9.pth", tiny_model(), format_version=9)
    assert_one_line_error_naming(tmp_path / "v9.pth", "format_version 9")
    torch.save({"model": tiny_model().state_dict()}, tmp_path / "dict.pth")
    assert_one_line_error_naming(tmp_path / "dict.pth", "no format_version")
    save_checkpoint(tmp_path / "cfg.pth", tiny_model(), model_config={"vocab_size": 64})
    assert_one_line_error_naming(tmp_path / "cfg.pth", "model_config")


def test_model_from_checkpoint_rejects_weights_that_do_not_fit_the_config(tmp_path):
    ckpt = save_checkpoint(tmp_path / "w.pth", tiny_model(), model_config=tiny_config(emb_len=64).to_dict())
    with pytest.raises(CheckpointError, match=r"w.pth: weights do not match the model config \(size mismatch for tok_emb.weight"):
        model_from_checkpoint(ckpt, "cpu", path=tmp_path / "w.pth")


def test_a_weights_file_of_the_original_project_is_refused_saying_so(tmp_path):
    path = tmp_path / "weights-50.pth"
    torch.save(tiny_model().state_dict(), path)              # the original saved the bare state dict
    message = assert_one_line_error_naming(path, "original project's format")
    assert "python train.py" in message


def test_versions_before_positions_were_named_load_as_the_positions_they_held(tmp_path):
    rotary, learned = tiny_model(), tiny_model(positions="learned")
    for version, net, positions in ((2, rotary, "rotary"), (1, learned, "learned")):
        config = {k: v for k, v in net.config.to_dict().items() if k != "positions"}   # not named then
        save_checkpoint(tmp_path / f"v{version}.pth", net, format_version=version, model_config=config)
        ckpt = load_checkpoint(tmp_path / f"v{version}.pth")
        assert ckpt["model_config"]["positions"] == positions and ckpt["format_version"] == CHECKPOINT_FORMAT_VERSION
        again, ids = model_from_checkpoint(ckpt, "cpu"), torch.tensor([[3, 1, 4, 1, 5]])
        assert torch.equal(again(ids)[0], net(ids)[0])
