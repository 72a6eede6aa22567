"""Devices and precision: which processor trains the model, and in which number format.

Read this when you move from a laptop CPU to a GPU, or wonder why a run trains in bfloat16 on one
machine and float32 on another. One rule decides the precision for train.py and the benches.
"""
from __future__ import annotations

import contextlib

import torch

# --dtype values: "auto" follows autocast_dtype(); the others force one (float32 = no autocast).
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str | None = None) -> torch.device:
    """None or "auto": CUDA if present, else Apple MPS, else CPU. Otherwise "cpu", "cuda",
    "cuda:N" or "mps"; ValueError (one line) if unknown or not available here."""
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name is None or name == "auto":
        return torch.device("cuda" if available["cuda"] else "mps" if available["mps"] else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in available:
        raise ValueError(f"unknown device {name!r} — use auto, cpu, cuda, cuda:N or mps")
    if not available[device.type]:
        what = "CUDA" if device.type == "cuda" else "Apple MPS"
        raise ValueError(f"device {name!r} requested but {what} is not available here — use auto or cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: the x86 instructions that make bfloat16 matmuls faster than float32."""
    checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The one precision rule: the low-precision dtype to autocast to on this device, or None for
    plain float32.

    CPU: bfloat16 only with native bf16 instructions. Without them PyTorch emulates bf16 matmuls,
    and a training step of the default model measured about 9x slower than float32 on an AVX2-only
    CPU; with AVX512-BF16 the same step took 0.6x the float32 time. CUDA: bfloat16 where supported
    (Ampere and newer), else float16 (train.py then adds a gradient scaler). MPS: bfloat16 where
    this torch and macOS support it."""
    device = torch.device(device)
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        try:                                    # support depends on the torch and macOS versions
            with torch.autocast("mps", dtype=torch.bfloat16):
                ones = torch.ones(2, 2, device=device)
                (ones @ ones).cpu()
            return torch.bfloat16
        except Exception:
            return None
    return None


def choose_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for --dtype NAME (None = plain float32)."""
    dtype = autocast_dtype(device) if name == "auto" else DTYPES[name]
    return None if dtype == torch.float32 else dtype


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    """Run matmuls in amp_dtype (weights stay float32), or plain float32 when None."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def int8_for_cpu(model):
    """run.py --int8: the model, its matmuls turned to int8 on the CPU, in place (PyTorch's dynamic
    quantization: each weight matrix stored as int8 with one scale per output row, each input scaled
    to int8 as it arrives). Generating a token reads every weight once, so a quarter of float32's
    bytes is about twice the speed at GPT-2's size (bench/bench_gpt2_speed.py). The tied head is
    quantized too (a third of GPT-2's weights): `unembed` becomes an int8 Linear."""
    import warnings
    from torch import nn
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    def quantized(module):
        with warnings.catch_warnings():          # torch.ao.quantization says it is moving to torchao
            warnings.simplefilter("ignore")
            return quantize_dynamic(module, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)

    head = nn.Linear(model.config.emb_len, model.config.vocab_size, bias=False)
    head.weight = nn.Parameter(model.tok_emb.weight.detach().cpu().clone())   # the embedding stays float32
    model = quantized(model.cpu())
    # Set as a plain attribute (a bound method, not a submodule), so it takes the place of the class's unembed.
    model.unembed = quantized(nn.Sequential(head))[0].forward
    return model.eval()
