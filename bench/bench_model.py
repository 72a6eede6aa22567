"""Speed of Model.py, run by hand (never by the tests): training tokens/s and MFU, generation tokens/s.

    python bench/bench_model.py                      # both configs, fp32 (+ bf16 where the CPU has it), generation
    python bench/bench_model.py --configs large --precisions fp32,bf16 --steps 3
    python bench/bench_model.py --only gen --gen-tokens 500

MFU (model FLOPs utilisation) = model FLOPs per second / the machine's matmul rate for the same
precision, measured in the same run on the model's own largest matmul shape (an nn.Linear of
(batch·block, emb) × (emb, 4·emb)). Model FLOPs per token = 6·(weights used in matmuls) + 12·layers·block·emb
(forward + backward; attention counted in full, the usual convention). Every figure is a median
over repeats, because the machine may be shared; compare ratios within one run.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from Model import ModelConfig, Transformer  # noqa: E402
from support.devices import autocast_dtype  # noqa: E402
from support.optim import configure_optimizer  # noqa: E402

CONFIGS = {   # name: (model config, batch size) — a small and a large training config
    "small": (ModelConfig(vocab_size=1024, block_size=64, emb_len=128, num_layers=4, num_heads=4, dropout=0.0), 12),
    "large": (ModelConfig(vocab_size=1024, block_size=256, emb_len=384, num_layers=6, num_heads=6, dropout=0.0), 16),
}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(rows: int, emb: int, dtype: torch.dtype, repeats: int) -> float:
    """FLOP/s of the model's biggest matmul shape, (rows, emb) × (emb, 4·emb), in `dtype`."""
    x = torch.randn(rows, emb).to(dtype)
    w = torch.randn(4 * emb, emb).to(dtype)
    seconds = median_seconds(lambda: F.linear(x, w), repeats)
    return 2 * rows * emb * 4 * emb / seconds


def flops_per_token(model: Transformer) -> float:
    c = model.config
    matmul_weights = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2)
    return 6 * matmul_weights + 12 * c.num_layers * c.block_size * c.emb_len


def bench_training(name: str, precision: str, attention: str, steps: int) -> None:
    config, batch = CONFIGS[name]
    torch.manual_seed(0)
    model = Transformer(config).train()
    model.attention_impl = attention
    optimizer = configure_optimizer(model, 1e-4, 0.1)
    dtype = PRECISIONS[precision]
    x = torch.randint(0, config.vocab_size, (batch, config.block_size))
    y = torch.randint(0, config.vocab_size, (batch, config.block_size))

    def step():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # Interleave steps and matmul measurements so both see the same machine load.
    step_times, rates = [], []
    step()                                                       # warm-up (allocations, kernels)
    for _ in range(steps):
        step_times.append(median_seconds(step, repeats=1, warmup=0))
        rates.append(matmul_rate(batch * config.block_size, config.emb_len, dtype or torch.float32, repeats=3))
    seconds, rate = statistics.median(step_times), statistics.median(rates)
    tokens_per_s = batch * config.block_size / seconds
    mfu = flops_per_token(model) * tokens_per_s / rate
    print(f"train {name:5s} {precision} {attention:8s}: {tokens_per_s:8.0f} tok/s  step {seconds * 1e3:7.0f} ms  "
          f"matmul {rate / 1e9:6.1f} GFLOP/s  MFU {100 * mfu:5.1f}%", flush=True)


def bench_generation(new_tokens: int, repeats: int) -> None:
    config, _ = CONFIGS["large"]
    torch.manual_seed(0)
    model = Transformer(config).eval()
    prompt = torch.randint(0, config.vocab_size, (1, 16))
    results = {}
    for use_cache in (True, False):
        n = new_tokens
        # Without the cache one run takes minutes: time it once, after the cached runs warmed up.
        seconds = median_seconds(lambda: model.generate(prompt, n, temperature=0, use_cache=use_cache),
                                 repeats=repeats if use_cache else 1, warmup=1 if use_cache else 0)
        results[use_cache] = n / seconds
        print(f"generate large, block {config.block_size}, {n} new tokens, cache={use_cache!s:5s}: "
              f"{n / seconds:7.1f} tok/s", flush=True)
    print(f"cache speed-up: {results[True] / results[False]:.1f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="small,large", help="comma list of: small, large")
    parser.add_argument("--precisions", default=None,
                        help="comma list of fp32, bf16 (default: fp32, plus bf16 if autocast_dtype says the CPU has it)")
    parser.add_argument("--attention", default="sdpa", help="comma list of: sdpa, explicit")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per case (median)")
    parser.add_argument("--gen-tokens", type=int, default=500)
    parser.add_argument("--only", choices=["train", "gen"], default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    precisions = args.precisions or ("fp32,bf16" if autocast_dtype("cpu") == torch.bfloat16 else "fp32")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, autocast_dtype(cpu) = {autocast_dtype('cpu')}", flush=True)
    if args.only != "gen":
        for name in args.configs.split(","):
            for precision in precisions.split(","):
                for attention in args.attention.split(","):
                    bench_training(name, precision, attention, args.steps)
    if args.only != "train":
        bench_generation(args.gen_tokens, repeats=3)


if __name__ == "__main__":
    main()
