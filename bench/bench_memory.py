"""Peak memory of init.py and train.py on a big text (a 100 MB text must stay within 2 GB). Run by hand.

    python bench/bench_memory.py [--mb 100] [--dir DIR] [--vocab-size 2048] [--keep]

Builds a text of about --mb MB in DIR (default: a new temp folder, removed afterwards unless
--keep): Train_Data/input.txt copied with shuffled, re-cased, numbered and misspelt lines, as
bench_corpus.py does, so the text has many distinct chunks. Then runs, as real processes, as a
user would:
  1. python init.py --input BIG --vocab-size N --out DIR/tok
  2. python train.py --input BIG ... --max_iters 1 on a tiny model: tokenizes the text into the
     token cache (DIR/.cache/), one step, then the final evaluation over the validation split.
For each it prints wall time and peak memory:
  - maxrss: the resource module's ru_maxrss of the script's process (os.wait4), which covers its
    own peak and the largest of the worker processes it started;
  - tree peak: the largest memory of the script and all its workers together at one moment
    (proportional set size, so pages a forked worker shares with its parent count once), sampled
    from /proc every 0.1 s: workers run side by side, so this is what the machine must hold.
This process imports nothing heavy, so the children's figures are their own.
bench_corpus.py measures the tokenizer's and the cache's share alone, on varied corpora up to 1 GB;
this one measures whole runs of the two scripts (torch, model and evaluation included).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_corpus import build_corpus  # noqa: E402


def tree_pss(pid: int) -> int:
    """Memory of pid and all its descendants now, in bytes (Linux /proc). Proportional set size:
    pages that forked workers share with their parent are counted once, split between them."""
    children_of: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                children_of.setdefault(int(fields[1]), []).append(int(entry))
            except OSError:
                continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children_of.get(p, []))
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            pass
    return total


def measure(command: list[str], label: str) -> dict:
    """Run command; its wall time, ru_maxrss and sampled tree peak, in bytes."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    peak, done = 0, threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_pss(proc.pid))
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"error: {label} failed (exit {code}):\n{err[-2000:]}")
    return {"seconds": seconds, "maxrss": usage.ru_maxrss * 1024, "tree_peak": peak, "log": err}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=100, help="size of the text in MB (default 100)")
    p.add_argument("--dir", type=Path, help="work folder (default: a new temp folder)")
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    args = p.parse_args()

    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        big = work / "big.txt"
        build_corpus(big, int(args.mb * 1e6), REPO / "Train_Data" / "input.txt")
        size = big.stat().st_size
        print(f"text: {big} — {size:,} bytes (varied copies of Train_Data/input.txt)")

        py = sys.executable
        results = {
            "init.py": measure([py, "init.py", "--input", str(big), "--vocab-size", str(args.vocab_size),
                                "--out", str(work / "tok")], "init.py"),
            "train.py": measure([py, "train.py", "--input", str(big), "--tokenizer-dir", str(work / "tok"),
                                 "--weights-dir", str(work / "weights"), "--max_iters", "1", "--block_size", "64",
                                 "--emb_len", "32", "--num_layers", "1", "--num_heads", "1",
                                 "--batch_size", "32", "--max_minutes", "0"], "train.py"),
        }
        cache = sum(f.stat().st_size for f in (work / ".cache").glob("*.npy"))
        print(f"token cache: {cache:,} bytes")
        for name, r in results.items():
            print(f"{name:9s} {r['seconds']:7.1f} s   maxrss {r['maxrss'] / 1e6:7.0f} MB   "
                  f"tree peak {r['tree_peak'] / 1e6:7.0f} MB")
        worst = max(max(r["maxrss"], r["tree_peak"]) for r in results.values())
        print(f"largest: {worst / 1e6:,.0f} MB — {'within' if worst <= 2e9 else 'OVER'} the 2 GB budget")
    finally:
        if args.keep:
            print(f"kept {work}")
        elif args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
