"""Learn the BPE tokenizer from a text and save it: the first step of the pipeline.

    python init.py [--input PATH] [--vocab-size N] [--out DIR] [--sample-bytes N]
    python init.py --explain TEXT [--out DIR]     # show how the saved tokenizer splits TEXT

Defaults: Train_Data/input.txt, Model_Params.vocab_size, tokenizer_save/, a 100 MB sample.
Progress and the summary go to stderr. The new tokenizer is written into a temporary folder
beside DIR and swapped in only when complete, so a failed run leaves an existing DIR untouched.

The text is never held as one string: it is read a piece at a time and only the counts of its
distinct chunks are kept. A file larger than --sample-bytes is learned from a sample of that size,
taken as 1 MB windows spread evenly over the file (support/corpus.py).
"""

import sys
import time
from pathlib import Path

from tqdm import tqdm

from support import explain
from support.corpus import (DEFAULT_SAMPLE_BYTES, count_chunks, crlf_note, input_size, parse_size,
                            read_pieces, read_sample, sample_ranges)
from support.files import replace_folder, write_failure
from support.settings import Parser, UserError, load_params
from support.text_io import set_up_streams
from tokenizer import MAX_VOCAB, NUM_BYTES, SPLIT_RE, Tokenizer, TokenizerError

REPO = Path(__file__).resolve().parent


def parse_args(argv):
    vocab_size = load_params({"vocab_size": int}).vocab_size
    parser = Parser(prog="init.py", description="Learn the BPE tokenizer from a text and save it.")
    parser.add_argument("--input", default=str(REPO / "Train_Data" / "input.txt"),
                        help="UTF-8 text to learn from (default: Train_Data/input.txt)")
    parser.add_argument("--vocab-size", default=str(vocab_size),
                        help=f"tokens in the vocabulary, at least {NUM_BYTES} "
                             f"(default: Model_Params.vocab_size = {vocab_size})")
    parser.add_argument("--out", default=str(REPO / "tokenizer_save"),
                        help="folder to save the tokenizer in (default: tokenizer_save/)")
    parser.add_argument("--sample-bytes", default=str(DEFAULT_SAMPLE_BYTES),
                        help="learn from at most this much of the input, in 1 MB windows spread "
                             "over it; k, M, G suffixes allowed, e.g. 500M (default: 100M; the "
                             "whole file when smaller)")
    parser.add_argument("--explain", metavar="TEXT",
                        help="train nothing: show, step by step, how the tokenizer saved in --out "
                             "splits TEXT into tokens (on stdout)")
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


def parse_sample_bytes(value: str) -> int:
    """"100000000", "100M", "500 MB", "2G" -> bytes (k, M, G are powers of 1000)."""
    size = parse_size(value)
    if size is None:
        raise UserError(f"--sample-bytes must be a number of bytes, optionally with k, M or G "
                        f"(e.g. 200M), got {value!r}")
    if size < 1:
        raise UserError("--sample-bytes must be at least 1")
    return size


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


def save_checked(tok: Tokenizer, folder: Path) -> None:
    """Save tok into a fresh folder and read it back before trusting it (see replace_folder)."""
    tok.save(folder)
    Tokenizer.load(folder)


def run(argv) -> None:
    args = parse_args(argv)
    if args.explain is not None:
        if not args.explain:
            raise UserError("--explain needs some text, e.g. --explain 'To be, or not to be'")
        tok = Tokenizer.load(args.out)
        tok.encode(args.explain)   # a text that cannot be encoded fails here, as one line
        print("\n".join(explain.explain(tok, args.explain, explain.use_colour(sys.stdout))))
        return
    vocab_size = parse_vocab_size(args.vocab_size)
    sample_bytes = parse_sample_bytes(args.sample_bytes)
    input_path, out = Path(args.input), Path(args.out)
    size = input_size(input_path)
    check_out(out)

    start = time.perf_counter()
    try:
        ranges = sample_ranges(input_path, size, sample_bytes)
        sampled = sum(end - begin for begin, end in ranges)
        # delay: a bar only when reading takes a while, not for a small file
        with tqdm(total=sampled, unit="B", unit_scale=True, desc="reading", file=sys.stderr,
                  delay=0.5) as bar:
            chunk_counts = count_chunks(read_sample(input_path, ranges, bar), SPLIT_RE)
        first_piece = next(read_pieces(input_path, *ranges[0]), "")
        note = crlf_note(input_path)   # "\r\n" was read as "\n" (support/corpus.py): say so once
    except OSError as e:
        raise UserError(f"cannot read input file {input_path} ({e.strerror or e})") from None
    if note:
        print(note, file=sys.stderr)
    tok = Tokenizer()
    tok.train_from_chunk_counts(chunk_counts, vocab_size, progress=True)
    train_seconds = time.perf_counter() - start
    if tok.vocab_size < vocab_size:
        print(f"warning: no pair left to merge in {input_path}; stopped at vocab size "
              f"{tok.vocab_size} instead of {vocab_size}", file=sys.stderr)

    # chars per token of the text read (the sample, for a large file), from the chunk counts:
    # the same figure as encoding that text, encoding each distinct chunk once.
    num_tokens = tok.count_tokens(chunk_counts)
    num_chars = sum(len(chunk) * n for chunk, n in chunk_counts.items())
    where = (f"{input_path}" if sampled == size else
             f"a {sampled:,}-byte sample of {input_path} ({len(ranges)} "
             f"{'window' if len(ranges) == 1 else 'windows'} over its {size:,} bytes)")
    try:
        replace_folder(out, lambda new: save_checked(tok, new))
    except OSError as e:
        raise UserError(f"cannot save the tokenizer in {out}/ ({write_failure(e, out.parent)})") from None
    line = sample_line(first_piece)
    summary = [
        f"vocab size:      {tok.vocab_size}",
        f"merges learned:  {len(tok.merges)}",
        f"chars per token: {num_chars / num_tokens:.2f} on {where} "
        f"({num_chars:,} chars -> {num_tokens:,} tokens)",
        f"time taken:      {train_seconds:.2f} s training, "
        f"{time.perf_counter() - start:.2f} s in all",
        f"sample line:     {line}",
        f"its tokens:      {tok.split(line)}",
        f"saved to:        {out}/ (fingerprint {tok.fingerprint()})",
    ]
    print("\n".join(summary), file=sys.stderr)


def main(argv=None) -> int:
    set_up_streams()                 # any console, UTF-8 or not
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
