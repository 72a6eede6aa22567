"""Learn the BPE tokenizer from a text and save it: the first step of the pipeline.

    python init.py [--input PATH] [--vocab-size N] [--out DIR]

Defaults: Train_Data/input.txt, Model_Params.vocab_size, tokenizer_save/. Progress and the summary
go to stderr. The new tokenizer is written into a temporary folder beside DIR and swapped in only
when complete, so a failed run leaves an existing DIR untouched.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import Model_Params
from tokenizer import MAX_VOCAB, NUM_BYTES, Tokenizer, TokenizerError

REPO = Path(__file__).resolve().parent


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit code 2, no traceback."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one `error:` line like every other user mistake."""

    def error(self, message):
        raise UserError(f"{message} (see python init.py --help)")


def parse_args(argv):
    parser = _Parser(description="Learn the BPE tokenizer from a text and save it.")
    parser.add_argument("--input", default=str(REPO / "Train_Data" / "input.txt"),
                        help="UTF-8 text to learn from (default: Train_Data/input.txt)")
    parser.add_argument("--vocab-size", default=str(Model_Params.vocab_size),
                        help=f"tokens in the vocabulary, at least {NUM_BYTES} "
                             f"(default: Model_Params.vocab_size = {Model_Params.vocab_size})")
    parser.add_argument("--out", default=str(REPO / "tokenizer_save"),
                        help="folder to save the tokenizer in (default: tokenizer_save/)")
    return parser.parse_args(argv)


def parse_vocab_size(value: str) -> int:
    try:
        size = int(value)
    except ValueError:
        raise UserError(f"--vocab-size must be a whole number, got {value!r}") from None
    if size < NUM_BYTES:
        raise UserError(f"--vocab-size must be at least {NUM_BYTES} (one token per byte value), "
                        f"got {size}")
    if size > MAX_VOCAB:
        raise UserError(f"--vocab-size can be at most {MAX_VOCAB:,}, got {size:,}")
    return size


def read_text(path: Path) -> str:
    """The whole file as text; missing, empty or non-UTF-8 files are user errors."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"input file {path} not found") from None
    except IsADirectoryError:
        raise UserError(f"input {path} is a folder, not a text file") from None
    except OSError as e:
        raise UserError(f"cannot read input file {path} ({e.strerror})") from None
    if not data:
        raise UserError(f"input file {path} is empty — nothing to learn from")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"input file {path} is not valid UTF-8: bad byte 0x{data[e.start]:02X} "
                        f"at byte offset {e.start}") from None


def sample_line(text: str, max_chars: int = 80) -> str:
    """A line of the text worth showing: the first with some substance, cut to max_chars."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    good = [line for line in lines if len(line) >= 30] or lines or [text]
    return good[0][:max_chars]


def check_out(out: Path) -> None:
    """Fail before training, not after, if out cannot become a folder."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"cannot create --out {out}: {ancestor} is not a folder")


def save_swapped(tok: Tokenizer, out: Path) -> None:
    """Save into a fresh folder beside out, then swap it in; out stays intact if anything fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # a private folder on the same filesystem, so both renames below are atomic
    work = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    new, old = work / "new", work / "old"
    try:
        tok.save(new)
        Tokenizer.load(new)  # read back what was written before trusting it
        if out.exists():
            os.replace(out, old)
        try:
            os.replace(new, out)
        except BaseException:
            if old.exists():
                os.replace(old, out)  # put the previous tokenizer back
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(argv) -> None:
    args = parse_args(argv)
    vocab_size = parse_vocab_size(args.vocab_size)
    input_path, out = Path(args.input), Path(args.out)
    text = read_text(input_path)
    check_out(out)

    start = time.perf_counter()
    tok = Tokenizer()
    tok.train(text, vocab_size, progress=True)
    train_seconds = time.perf_counter() - start
    if tok.vocab_size < vocab_size:
        print(f"warning: no pair left to merge in {input_path}; stopped at vocab size "
              f"{tok.vocab_size} instead of {vocab_size}", file=sys.stderr)

    num_tokens = len(tok.encode(text))
    try:
        save_swapped(tok, out)
    except OSError as e:
        raise UserError(f"cannot save the tokenizer in {out}/ ({e.strerror or e})") from None
    line = sample_line(text)
    summary = [
        f"vocab size:      {tok.vocab_size}",
        f"merges learned:  {len(tok.merges)}",
        f"chars per token: {len(text) / num_tokens:.2f} on {input_path} "
        f"({len(text):,} chars -> {num_tokens:,} tokens)",
        f"time taken:      {train_seconds:.2f} s training, "
        f"{time.perf_counter() - start:.2f} s in all",
        f"sample line:     {line}",
        f"its tokens:      {tok.split(line)}",
        f"saved to:        {out}/ (fingerprint {tok.fingerprint()})",
    ]
    print("\n".join(summary), file=sys.stderr)


def main(argv=None) -> int:
    try:
        run(sys.argv[1:] if argv is None else argv)
    except (UserError, TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing saved", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
