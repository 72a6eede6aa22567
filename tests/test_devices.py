"""Tests of support/devices.py: device names and the one precision rule."""
import pytest
import torch

from support import devices
from support.devices import autocast_dtype, choose_dtype, pick_device


def test_pick_device_auto_and_cpu_and_bad_names():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(None).type in ("cpu", "cuda", "mps")
    assert pick_device("auto") == pick_device(None)
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")


@pytest.mark.parametrize("native", [True, False])
def test_cpu_autocasts_to_bf16_exactly_when_it_has_native_bf16(monkeypatch, native):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    assert autocast_dtype(torch.device("cpu")) == (torch.bfloat16 if native else None)
    assert autocast_dtype("cpu") == autocast_dtype(torch.device("cpu"))
    assert choose_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if native else None)
    # A forced --dtype wins over the rule; float32 means no autocast at all.
    assert choose_dtype("float32", torch.device("cpu")) is None
    assert choose_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert choose_dtype("float16", torch.device("cpu")) == torch.float16
