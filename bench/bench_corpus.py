"""Corpora larger than memory: tokenizer training on a sample, tokenization speed and peak memory.

    python bench/bench_corpus.py [--sizes 100M,1G] [--workers 1,2] [--tmp DIR] [--keep]

Builds each corpus in a temporary folder from Train_Data/input.txt, one varied copy after another
(lines shuffled, some upper- or lower-cased, numbered or misspelt), so the text has many distinct
chunks rather than the same play repeated. Then, each in a fresh process, as a user would run them:

  init    python init.py --input CORPUS (default --sample-bytes): read the sample, count chunks,
          learn Model_Params.vocab_size tokens
  tokens  what train.py does before training: hash the file, then tokenize it into the
          memory-mapped cache with N worker processes (support/id_cache.load_token_ids)

For each it reports wall time, MB/s, CPU seconds of all its processes (on a busy machine the
steadier figure: if 2 workers use no more CPU than 1, they would run twice as fast on 2 idle
cores), the peak RSS of the largest single process (the kernel's ru_maxrss) and the peak PSS of all
its processes together (sampled from /proc every 0.2 s; PSS shares the pages that forked workers
have in common, so the sum does not count them twice). Target: both at most 2 GB. The files are
deleted at the end unless --keep.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SIZES = {"k": 10 ** 3, "M": 10 ** 6, "G": 10 ** 9}


def parse_size(text: str) -> int:
    return int(float(text[:-1]) * SIZES[text[-1]]) if text[-1] in SIZES else int(text)


# ─────────────────────────────────────────── the corpus ───────────────────────────────────────────

def varied_copy(lines: list[str], copy: int) -> str:
    """One copy of the text, changed in ways that add new chunks: its own line order, shouting and
    whispering lines, numbered lines, and misspelt words."""
    rng = random.Random(copy)
    lines = lines[:]
    rng.shuffle(lines)
    out = []
    for number, line in enumerate(lines):
        roll = rng.random()
        if roll < 0.05:
            line = line.upper()
        elif roll < 0.10:
            line = line.lower()
        elif roll < 0.20:
            line = f"{copy}.{number} {line}"
        elif roll < 0.30:
            words = line.split(" ")
            k = rng.randrange(len(words))
            w = words[k]
            if len(w) > 3:  # swap two letters inside one word
                i = rng.randrange(1, len(w) - 2)
                words[k] = w[:i] + w[i + 1] + w[i] + w[i + 2:]
            line = " ".join(words)
        out.append(line)
    return "\n".join(out) + "\n"


def build_corpus(path: Path, size: int, source: Path) -> None:
    lines = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    written, copy = 0, 0
    with open(path, "wb") as f:
        while written < size:
            data = varied_copy(lines, copy).encode("utf-8")[:size - written]
            f.write(data)
            written += len(data)
            copy += 1
    # the cut may end inside a character: drop its bytes so the file stays valid UTF-8
    with open(path, "rb+") as f:
        f.seek(max(0, size - 4))
        tail = f.read()
        keep = len(tail.decode("utf-8", errors="ignore").encode("utf-8"))
        f.truncate(max(0, size - 4) + keep)


# ──────────────────────────────────────────── measuring ───────────────────────────────────────────

def tree_pss_bytes(root: int) -> int:
    """Sum of the PSS of root and all its descendants, from /proc (Linux)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                parents[int(entry)] = int(fields[1])
            except OSError:
                pass
    tree, grew = {root}, True
    while grew:
        new = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= new
        grew = bool(new)
    total = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def measure(cmd: list[str], log: Path) -> dict:
    """Run cmd; its wall time, exit code, stderr, CPU time and ru_maxrss (of it and the processes it
    waited for: the largest one), and the peak PSS of its process tree."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    with open(log, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=REPO, env=env)
        peak, done = [0], threading.Event()

        def sample():
            while not done.wait(0.2):
                peak[0] = max(peak[0], tree_pss_bytes(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)   # the rusage of this child and its descendants
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall": wall, "code": proc.returncode, "stdout": stdout.decode(),
            "stderr": log.read_text(errors="replace"), "cpu": usage.ru_utime + usage.ru_stime,
            "max_rss": usage.ru_maxrss * 1024, "peak_pss": peak[0]}


def tokenize_only(input_path: str, tokenizer_dir: str, workers: int) -> None:
    """Internal mode, run in a fresh process: what train.py does with its input before training."""
    from support import id_cache
    from support.distributed import SINGLE
    from tokenizer import Tokenizer
    tok = Tokenizer.load(tokenizer_dir)
    path = Path(input_path)
    start = time.perf_counter()
    data_fp = id_cache.data_fingerprint(path, tok)
    hashed = time.perf_counter()
    ids = id_cache.load_token_ids(path, data_fp, tok, SINGLE, lambda msg: None, workers)
    done = time.perf_counter()
    print(json.dumps({"hash_s": hashed - start, "tokenize_s": done - hashed, "tokens": len(ids),
                      "cache": str(id_cache.cache_path_for(path, data_fp, tok))}))


# ───────────────────────────────────────────── main ──────────────────────────────────────────────

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100M,1G", help="corpus sizes, e.g. 100M,1G")
    parser.add_argument("--workers", default="1,2", help="worker counts to tokenize with")
    parser.add_argument("--tmp", default=None, help="folder for the corpora (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="keep the corpora and caches")
    parser.add_argument("--tokenize-only", nargs=3, metavar=("INPUT", "TOKENIZER_DIR", "WORKERS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tokenize_only:
        tokenize_only(args.tokenize_only[0], args.tokenize_only[1], int(args.tokenize_only[2]))
        return

    work = Path(tempfile.mkdtemp(prefix="bench_corpus-", dir=args.tmp))
    rows = []
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; files in {work}", flush=True)
    try:
        for size_text in args.sizes.split(","):
            size = parse_size(size_text)
            folder = work / size_text
            folder.mkdir()
            corpus = folder / "corpus.txt"
            start = time.perf_counter()
            build_corpus(corpus, size, REPO / "Train_Data" / "input.txt")
            mb = corpus.stat().st_size / 1e6
            print(f"\n{size_text}: built {corpus} ({mb:,.1f} MB) in {time.perf_counter() - start:.0f} s",
                  flush=True)

            tok_dir = folder / "tok"
            r = measure([sys.executable, str(REPO / "init.py"), "--input", str(corpus), "--out", str(tok_dir)],
                        folder / "init.log")
            if r["code"] != 0:
                sys.exit(f"init.py failed:\n{r['stderr']}")
            summary = [line for line in r["stderr"].splitlines() if line.startswith(("chars per", "time taken"))]
            print("  init: " + "\n        ".join(summary), flush=True)
            rows.append((size_text, "init.py (sample)", "1", r["wall"], r["cpu"], None, r["max_rss"], r["peak_pss"]))

            hashes = set()
            for workers in args.workers.split(","):
                shutil.rmtree(folder / ".cache", ignore_errors=True)
                r = measure([sys.executable, str(Path(__file__).resolve()), "--tokenize-only", str(corpus),
                             str(tok_dir), workers], folder / f"tokens-{workers}.log")
                if r["code"] != 0:
                    sys.exit(f"tokenizing failed:\n{r['stderr']}")
                info = json.loads(r["stdout"].strip().splitlines()[-1])
                rate = mb / info["tokenize_s"]
                print(f"  {workers} worker(s): hash {info['hash_s']:.1f} s, tokenize {info['tokenize_s']:.1f} s "
                      f"= {rate:.2f} MB/s, {info['tokens']:,} tokens, load average {os.getloadavg()[0]:.1f}",
                      flush=True)
                rows.append((size_text, "tokenize (train.py)", workers, r["wall"], r["cpu"], rate, r["max_rss"],
                             r["peak_pss"]))
                hashes.add(subprocess.run(["sha256sum", info["cache"]], capture_output=True,
                                          text=True).stdout.split()[0])
            print(f"  token caches identical across worker counts: {len(hashes) == 1}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print("\n| corpus | step | workers | wall s | CPU s | tokenize MB/s | peak RSS, largest process "
          "| peak PSS, all processes |")
    print("|---|---|---|---|---|---|---|---|")
    for size_text, step, workers, wall, cpu, rate, rss, pss in rows:
        rate_text = f"{rate:.2f}" if rate is not None else "—"
        print(f"| {size_text} | {step} | {workers} | {wall:.0f} | {cpu:.0f} | {rate_text} | {rss / 2 ** 20:,.0f} MiB "
              f"| {pss / 2 ** 20:,.0f} MiB |")


if __name__ == "__main__":
    main()
