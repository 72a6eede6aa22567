"""Where the validation loss goes: the loss on target tokens rare in training, and on the rest. Run by hand.

    python bench/bench_rare_tokens.py [--weights A.pth B.pth ...]

Scores the whole validation split of --input (back-to-back windows, as train.py's final pass on a
split of this size) with every weights file given (default: Saved_Weights/pretrained.pth), and splits
the result by how often each target token occurs in the training tokens: never, 1 to 4 times, or
more. For each part it prints the tokens, their mean loss and their share of the nats/char figure
(the parts' shares add up to the whole figure, printed first).
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train  # noqa: E402
from support.checkpoints import load_checkpoint, model_from_checkpoint  # noqa: E402
from support.scoring import chars_per_token, score_windows  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, nargs="+", default=[REPO / "Saved_Weights" / "pretrained.pth"])
    parser.add_argument("--tokenizer-dir", type=Path, default=REPO / "tokenizer_save")
    parser.add_argument("--input", type=Path, default=REPO / "Train_Data" / "input.txt")
    args = parser.parse_args()

    tokenizer = Tokenizer.load(args.tokenizer_dir)
    chars = chars_per_token(tokenizer)
    ids = np.array(tokenizer.encode(args.input.read_text(encoding="utf-8")), dtype=np.int64)
    for path in args.weights:
        ckpt = load_checkpoint(path)
        model = model_from_checkpoint(ckpt, torch.device("cpu"))                # in eval mode
        block_size = model.config.block_size
        train_ids, val_ids = train.split_ids(ids, block_size, args.input)
        seen = torch.from_numpy(np.bincount(train_ids, minlength=tokenizer.vocab_size))   # (V,)
        windows = train.final_windows(len(val_ids), block_size, 0)               # the whole split
        parts = {"never in training": seen == 0, "1 to 4 times": (seen >= 1) & (seen <= 4),
                 "5 or more times": seen >= 5}
        whole = score_windows(model, val_ids, windows, chars, torch.device("cpu"))
        print(f"{path}: {whole.nats_per_char:.4f} nats/char over {whole.tokens:,} tokens, {whole.chars:,} chars")
        for name, targets in parts.items():
            part = score_windows(model, val_ids, windows, chars, torch.device("cpu"), targets=targets)
            mean = part.nll / part.tokens if part.tokens else float("nan")
            print(f"  target {name:<18} {part.tokens:>7,} tokens ({part.tokens / whole.tokens:6.1%})  "
                  f"mean loss {mean:6.2f} nats  share {part.nll / whole.chars:.4f} nats/char")


if __name__ == "__main__":
    main()
