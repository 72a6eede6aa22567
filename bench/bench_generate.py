"""How quickly run.py answers, and how fast the model writes. Run by hand; prints medians.

    python bench/bench_generate.py [--weights PATH] [--tokenizer-dir DIR] [--runs 5] [--tokens 200]

1. Time to first token: from starting `python run.py --prompt ...` until the first byte of its
   continuation arrives on stdout (what a user waits for; includes importing torch and loading).
   For scale, the time of a bare `python -c "import torch"`.
2. New tokens/s of Transformer.stream with and without the KV cache, in this process, on the given
   model (default: the shipped Saved_Weights/pretrained.pth with tokenizer_save/), with run.py's
   default sampling settings from Model_Params, on 1 CPU thread (run.py's default) and on 2.
"""
import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?\n"


def time_to_first_byte(command: list[str]) -> tuple[float, float]:
    """(seconds until the command's first stdout byte, seconds until it exits)."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
    first = proc.stdout.read(1)
    first_at = time.perf_counter() - started
    proc.stdout.read()
    proc.wait()
    if proc.returncode != 0 or not first:
        sys.exit(f"error: {' '.join(command)} failed (exit {proc.returncode})")
    return first_at, time.perf_counter() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=REPO / "Saved_Weights" / "pretrained.pth")
    p.add_argument("--tokenizer-dir", type=Path, default=REPO / "tokenizer_save")
    p.add_argument("--runs", type=int, default=5, help="repetitions; medians are printed")
    p.add_argument("--tokens", type=int, default=200, help="new tokens per generation run")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", default="1,2", help="torch CPU thread counts to measure, comma-separated")
    args = p.parse_args()
    if not Path(args.weights).is_file():
        print(f"error: no weights at {args.weights} — train first (`python train.py`), restore the shipped "
              f"one (`git checkout Saved_Weights/pretrained.pth`), or pass --weights", file=sys.stderr)
        return 2
    if not (Path(args.tokenizer_dir) / "merges.json").is_file():
        print(f"error: no tokenizer in {args.tokenizer_dir}/ — run `python init.py`, or pass --tokenizer-dir",
              file=sys.stderr)
        return 2

    # 1. time to first token, in fresh processes
    run_py = [sys.executable, str(REPO / "run.py"), "--weights", str(args.weights), "--tokenizer-dir",
              str(args.tokenizer_dir), "--device", args.device, "--prompt", PROMPT, "--max-new-tokens", "20",
              "--seed", "0"]
    import_torch = [sys.executable, "-c", "import torch; print(1)"]
    firsts = [time_to_first_byte(run_py)[0] for _ in range(args.runs)]
    imports = [time_to_first_byte(import_torch)[0] for _ in range(args.runs)]
    print(f"time to first token (run.py --prompt, fresh process): median {statistics.median(firsts):.2f} s "
          f"(runs: {', '.join(f'{t:.2f}' for t in firsts)}); bare `import torch`: "
          f"median {statistics.median(imports):.2f} s")

    # 2. tokens/s with and without the cache
    import torch
    import Model_Params
    from support.checkpoints import load_checkpoint, model_from_checkpoint
    from support.devices import pick_device
    from tokenizer import Tokenizer

    device = pick_device(args.device)
    tokenizer = Tokenizer.load(args.tokenizer_dir)
    model = model_from_checkpoint(load_checkpoint(args.weights), device, args.weights)
    c = model.config
    print(f"model: {model.num_params() / 1e6:.2f}M parameters, {c.num_layers} layers, emb {c.emb_len}, "
          f"context {c.block_size}; device {device}; {args.tokens} new tokens per run, temperature "
          f"{Model_Params.temperature}, top_p {Model_Params.top_p}, top_k {Model_Params.top_k or None}")
    idx = torch.tensor([tokenizer.encode(PROMPT)[-c.block_size:]], device=device)
    for threads in map(int, args.threads.split(",")):
        torch.set_num_threads(threads)
        rates = {}
        for use_cache in (True, False):
            seconds = []
            for run in range(args.runs):
                generator = torch.Generator().manual_seed(run)
                started = time.perf_counter()
                new = list(model.stream(idx, args.tokens, temperature=Model_Params.temperature,
                                        top_k=Model_Params.top_k or None, top_p=Model_Params.top_p,
                                        use_cache=use_cache, generator=generator))
                seconds.append(time.perf_counter() - started)
                assert len(new) == args.tokens
            rates[use_cache] = args.tokens / statistics.median(seconds)
            each = ", ".join(f"{args.tokens / s:.1f}" for s in seconds)
            print(f"{threads} thread(s), {'with' if use_cache else 'without'} KV cache: median "
                  f"{rates[use_cache]:.1f} new tokens/s (runs: {each})")
        print(f"{threads} thread(s): cache speed-up {rates[True] / rates[False]:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
