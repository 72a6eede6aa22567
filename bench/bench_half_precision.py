"""Does storing the shipped weights in half precision change the model? Measures validation
nats/char (train.py's final full pass over the validation split) with the weights as stored and
rounded to fp16; with --write, saves the fp16 copy in place when the change is under --tolerance.

    python bench/bench_half_precision.py [--weights Saved_Weights/weights-best.pth] [--write]
"""
import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train  # noqa: E402
from support.checkpoints import load_checkpoint, model_from_checkpoint  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def validation_nats_per_char(ckpt: dict, tokenizer: Tokenizer, val: np.ndarray) -> float:
    model = model_from_checkpoint(ckpt, torch.device("cpu"))
    windows = train.full_pass_windows(len(val), model.config.block_size)
    return train.evaluate(model, val, windows, train.chars_per_token(tokenizer), torch.device("cpu")).nats_per_char


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=REPO / "Saved_Weights" / "weights-best.pth")
    parser.add_argument("--tokenizer-dir", type=Path, default=REPO / "tokenizer_save")
    parser.add_argument("--input", type=Path, default=REPO / "Train_Data" / "input.txt")
    parser.add_argument("--tolerance", type=float, default=0.005)
    parser.add_argument("--write", action="store_true", help="store the fp16 weights if within tolerance")
    args = parser.parse_args()

    tokenizer = Tokenizer.load(args.tokenizer_dir)
    ckpt = load_checkpoint(args.weights)
    ids = np.array(tokenizer.encode(args.input.read_text(encoding="utf-8")), dtype=np.int64)
    _, val = train.split_ids(ids, ckpt["model_config"]["block_size"], args.input)

    half = {**ckpt, "model": {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()}}
    full_figure = validation_nats_per_char(ckpt, tokenizer, val)
    half_figure = validation_nats_per_char(half, tokenizer, val)
    size = lambda c: sum(v.numel() * v.element_size() for v in c["model"].values()) / 2**20  # noqa: E731
    print(f"stored ({next(iter(ckpt['model'].values())).dtype}): {full_figure:.5f} nats/char, "
          f"{size(ckpt):.1f} MiB of weights", file=sys.stderr)
    print(f"fp16:              {half_figure:.5f} nats/char, {size(half):.1f} MiB of weights", file=sys.stderr)
    change = abs(half_figure - full_figure)
    print(f"change: {change:.5f} nats/char (tolerance {args.tolerance})", file=sys.stderr)
    if args.write and change < args.tolerance:
        tmp = args.weights.with_name(args.weights.name + ".tmp")
        torch.save(half, tmp)
        os.replace(tmp, args.weights)
        print(f"wrote fp16 weights to {args.weights}", file=sys.stderr)


if __name__ == "__main__":
    main()
