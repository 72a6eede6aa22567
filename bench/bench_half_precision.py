"""Does storing a model in half precision change it? Run by hand, before shipping a model.

    python bench/bench_half_precision.py --weights Saved_Weights/weights-best.pth [--write Saved_Weights/pretrained.pth]

Takes the float32 weights-best.pth of a training run and measures validation nats/char (the whole
validation split of --input, back-to-back windows, as train.py's final pass on a split of this size)
with the weights as trained and rounded to fp16, and prints both. With --write OUT, saves the fp16
copy to OUT when the change is under --tolerance. A file already in fp16 is refused: there is
nothing left to compare it with.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train  # noqa: E402
from support.checkpoints import load_checkpoint, model_from_checkpoint, save_atomic  # noqa: E402
from support.scoring import chars_per_token, score_windows  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def validation_nats_per_char(ckpt: dict, tokenizer: Tokenizer, val: np.ndarray) -> float:
    model = model_from_checkpoint(ckpt, torch.device("cpu"))                  # in eval mode
    windows = train.final_windows(len(val), model.config.block_size, 0)      # the whole split
    return score_windows(model, val, windows, chars_per_token(tokenizer), torch.device("cpu")).nats_per_char


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="a run's float32 weights-best.pth")
    parser.add_argument("--tokenizer-dir", type=Path, default=REPO / "tokenizer_save")
    parser.add_argument("--input", type=Path, default=REPO / "Train_Data" / "input.txt")
    parser.add_argument("--tolerance", type=float, default=0.001, help="largest change allowed, nats/char")
    parser.add_argument("--write", type=Path, metavar="OUT", help="save the fp16 copy here if within tolerance")
    args = parser.parse_args()

    ckpt = load_checkpoint(args.weights)
    stored = {v.dtype for v in ckpt["model"].values() if v.is_floating_point()}
    if stored != {torch.float32}:
        sys.exit(f"error: {args.weights} holds {', '.join(map(str, stored))} weights, not float32 — give the "
                 f"weights-best.pth of a training run")
    torch.set_num_threads(2)
    tokenizer = Tokenizer.load(args.tokenizer_dir)
    ids = np.array(tokenizer.encode(args.input.read_text(encoding="utf-8")), dtype=np.int64)
    _, val = train.split_ids(ids, ckpt["model_config"]["block_size"], args.input)

    half = {**ckpt, "model": {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()}}
    full_figure = validation_nats_per_char(ckpt, tokenizer, val)
    half_figure = validation_nats_per_char(half, tokenizer, val)
    size = lambda c: sum(v.numel() * v.element_size() for v in c["model"].values()) / 2**20  # noqa: E731
    change = half_figure - full_figure
    print(f"float32: {full_figure:.5f} nats/char, {size(ckpt):.1f} MiB of weights")
    print(f"fp16:    {half_figure:.5f} nats/char, {size(half):.1f} MiB of weights")
    print(f"change:  {change:+.5f} nats/char (tolerance {args.tolerance})")
    if args.write:
        if abs(change) >= args.tolerance:
            sys.exit(f"error: the change is over the tolerance; {args.write} not written")
        save_atomic(half, args.write)
        print(f"wrote the fp16 copy to {args.write}")


if __name__ == "__main__":
    main()
