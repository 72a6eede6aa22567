"""Time the tokenizer on the corpus: training, encoding, decoding (medians of several runs).

    python bench/bench_tokenizer.py [--input PATH] [--vocab-size 4096] [--repeats 5]
                                    [--no-reference]

Targets on Train_Data/input.txt at vocab 4096 (2-core machine): training <= 1.0 s,
encode >= 5 MB/s, decode >= 20 MB/s. Encoding is timed twice: the first call on a fresh tokenizer,
and later calls, which find every chunk in the tokenizer's chunk cache. The cut into chunks is
also timed alone, made by the regex SPLIT_RE and by the numpy chunk_keys that encode uses. Also
prints characters per token and, for scale, how long the plain trainer tokenizer.train_bpe (a
full recount before every merge) takes for 100 merges.
Timings on a shared machine are noisy: the load average is printed with them, and each figure
comes as wall time and as CPU time (the steadier one while other jobs compete for the cores).
"""

import argparse
import copy
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from support import fast_bpe  # noqa: E402
from support.fast_bpe import chunk_keys, chunk_of_key  # noqa: E402
from tokenizer import SPLIT_RE, Tokenizer, train_bpe  # noqa: E402


def median_time(fn, repeats: int) -> tuple[float, float, object]:
    """Median wall time and median CPU time of fn() over repeats runs, and the last result.

    On a machine shared with other jobs the CPU time is the steadier figure: waiting for a core
    counts in the wall time only.
    """
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default=str(REPO / "Train_Data" / "input.txt"))
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the slow plain trainer")
    args = parser.parse_args()

    text = Path(args.input).read_text(encoding="utf-8")
    megabytes = len(text.encode("utf-8")) / 1e6
    print(f"input: {args.input} ({megabytes:.2f} MB), vocab size {args.vocab_size}, "
          f"median of {args.repeats} runs, load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")

    def train():
        tok = Tokenizer()
        tok.train(text, args.vocab_size)
        return tok

    wall, cpu, tok = median_time(train, args.repeats)
    print(f"train:  {wall:.3f} s wall, {cpu:.3f} s CPU  (target <= 1.0 s)")

    # encode with a tokenizer read back from disk, as train.py and run.py use it
    with tempfile.TemporaryDirectory() as tmp:
        tok.save(tmp)
        tok = Tokenizer.load(tmp)
    # A tokenizer remembers the chunks it has encoded, so the first call on a fresh tokenizer (every
    # distinct chunk merged) and later calls (only the cutting and the lookups) are timed apart.
    # Each first call gets its own copy, made before the clock starts; a copy's cache is empty.
    def first_call():
        copies = [copy.deepcopy(tok) for _ in range(args.repeats)]
        return lambda: copies.pop().encode(text)

    wall, cpu, ids = median_time(first_call(), args.repeats)
    print(f"encode, first call: {megabytes / wall:.1f} MB/s wall, {megabytes / cpu:.1f} MB/s CPU "
          f"({wall:.3f} s, {cpu:.3f} s)  (target >= 5 MB/s)")
    first_wall = wall
    tok.encode(text)
    wall, cpu, warm_ids = median_time(lambda: tok.encode(text), args.repeats)
    assert warm_ids == ids, "the chunk cache changed the encoding"
    print(f"encode, later calls: {megabytes / wall:.1f} MB/s wall, {megabytes / cpu:.1f} MB/s CPU "
          f"({wall:.3f} s, {cpu:.3f} s)  (target >= 5 MB/s)")
    # the cut into chunks: the regex that defines it, and the numpy version encode uses
    regex_wall, _, chunks = median_time(lambda: SPLIT_RE.findall(text), args.repeats)
    numpy_wall, _, keys = median_time(lambda: chunk_keys(text), args.repeats)
    assert list(map(chunk_of_key, keys)) == chunks, "the numpy cut disagrees with SPLIT_RE"
    print(f"cutting into {len(chunks):,} chunks: SPLIT_RE.findall {regex_wall:.3f} s, "
          f"chunk_keys (numpy) {numpy_wall:.3f} s ({regex_wall / numpy_wall:.1f}x faster)")
    # a first call with every chunk merged one by one (the plain path), for the ratio
    bulk_min = fast_bpe.BULK_MIN_CHUNKS
    fast_bpe.BULK_MIN_CHUNKS = float("inf")
    plain_wall, plain_cpu, plain_ids = median_time(first_call(), args.repeats)
    fast_bpe.BULK_MIN_CHUNKS = bulk_min
    assert plain_ids == ids, "the one-by-one path disagrees"
    print(f"encode, first call, chunks merged one by one: {megabytes / plain_wall:.1f} MB/s wall "
          f"({plain_wall:.3f} s; numpy bulk merging is {plain_wall / first_wall:.2f}x faster)")
    # the path train.py takes: the file in ranges on worker processes (here one range per core)
    workers = os.cpu_count() or 1
    # (each time a fresh copy: forked workers would inherit a warm cache)
    wall, _, arrays = median_time(
        lambda: list(copy.deepcopy(tok).encode_file(args.input, workers=workers)), args.repeats)
    print(f"encode_file, {workers} worker processes: {megabytes / wall:.1f} MB/s wall "
          f"({wall:.3f} s)")
    assert [i for a in arrays for i in a] == ids, "encode_file disagrees with encode"
    wall, cpu, decoded = median_time(lambda: tok.decode(ids), args.repeats)
    print(f"decode: {megabytes / wall:.1f} MB/s wall, {megabytes / cpu:.1f} MB/s CPU "
          f"({wall:.3f} s, {cpu:.3f} s)  (target >= 20 MB/s)")
    assert decoded == text, "round trip failed"
    print(f"chars per token: {len(text) / len(ids):.3f} ({len(ids):,} tokens)")

    # one huge chunk (no spaces): each merge's work must stay linear in the chunk's length
    rng = random.Random(0)
    long_word = "".join(rng.choice("abcdefgh") for _ in range(200_000))
    wall, cpu, _ = median_time(lambda: copy.deepcopy(tok).encode(long_word), 1)
    print(f"encode of one 200,000-letter chunk: {wall:.2f} s wall, {cpu:.2f} s CPU")

    if not args.no_reference:
        # the plain twin the tests trust (tokenizer.train_bpe), for scale
        wall, cpu, merges = median_time(lambda: train_bpe(text, 256 + 100), 1)
        print(f"plain trainer (train_bpe), first 100 merges: {wall:.1f} s wall, {cpu:.1f} s CPU "
              f"(one run)")
        assert merges == tok.merges[:100], "plain trainer disagrees"


if __name__ == "__main__":
    main()
