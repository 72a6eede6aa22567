"""loss_history.csv and loss.png: one row per evaluation, trimmed on resume, drawn when it changes.

Read this when you want to plot a run yourself, or wonder why a resumed run's history has no
duplicate rows. Only rank 0 calls these under torchrun.
"""
from __future__ import annotations

import contextlib
import csv
from pathlib import Path

from support.distributed import Processes, all_reduce_sum
from support.files import atomic_write, held_open, held_open_line, retry_while_held, write_failure
from support.settings import UserError

HISTORY_CSV, HISTORY_PNG = "loss_history.csv", "loss.png"
HISTORY_COLUMNS = ("step", "minutes", "lr", "train_loss", "val_loss_per_token", "val_nats_per_char",
                   "val_bits_per_char", "val_tokens", "val_chars", "eval")


def read_history(path: Path) -> list[dict]:
    """The rows of loss_history.csv, as dicts keyed by HISTORY_COLUMNS."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_rows(rows: list[dict]):
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    return write


def start_history(weights_dir: Path, resumed_step: int | None) -> None:
    """A run from step 0 gets a fresh history. A resumed run keeps the complete rows up to its
    checkpoint's step: later rows come from a run killed before its weights-latest.pth was written,
    and the resumed run writes them again."""
    path = weights_dir / HISTORY_CSV
    if not path.exists():
        return
    if resumed_step is None:
        path.unlink()
        return
    rows = read_history(path)
    keep = [row for row in rows if set(row) == set(HISTORY_COLUMNS) and None not in row.values()
            and row["step"].isdigit() and int(row["step"]) <= resumed_step]
    if len(keep) < len(rows):
        try:
            atomic_write(path, _write_rows(keep))
        except OSError as e:
            if held_open(e):
                raise UserError(held_open_line(path)) from None
            raise UserError(f"could not write {path} ({write_failure(e, path.parent)})") from None


def unfinished_final_evaluation(weights_dir: Path, step: int, procs: Processes, device) -> float | None:
    """If the run that wrote the checkpoint at `step` was killed during its final evaluation, the
    learning rate of its last step; else None. The sign: the history ends with a row for the
    checkpoint's own step (its last evaluation, which holds that rate) that is not the final pass.
    Rank 0 reads the file and tells the others, which take part in the evaluation too."""
    lr = None
    with contextlib.suppress(OSError, csv.Error, ValueError):
        rows = read_history(weights_dir / HISTORY_CSV) if procs.is_main else []
        if rows and rows[-1].get("step") == str(step) and rows[-1].get("eval") == "windows":
            lr = float(rows[-1]["lr"])
    missing, lr = all_reduce_sum([float(lr is not None), lr or 0.0], procs, device)
    return lr if missing else None


def record(weights_dir: Path, step: int, minutes: float, lr: float, train_loss: float | None, result,
           kind: str, say) -> None:
    """Append a row to loss_history.csv (with the header when the file is new) and redraw loss.png.
    result: an EvalResult; kind: "windows" (an evaluation) or "full" (the final one)."""
    row = {"step": step, "minutes": f"{minutes:.3f}", "lr": f"{lr:.6g}",
           "train_loss": "" if train_loss is None else f"{train_loss:.6f}",
           "val_loss_per_token": f"{result.loss_per_token:.6f}", "val_nats_per_char": f"{result.nats_per_char:.6f}",
           "val_bits_per_char": f"{result.bits_per_char:.6f}", "val_tokens": result.tokens,
           "val_chars": result.chars, "eval": kind}
    path = weights_dir / HISTORY_CSV
    try:
        new = not path.exists() or path.stat().st_size == 0
        with retry_while_held(open, path, "a", newline="") as f:   # Windows: a spreadsheet may hold it
            writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)
    except OSError as e:
        if held_open(e):
            raise UserError(held_open_line(path)) from None
        raise UserError(f"could not write {path} ({write_failure(e, weights_dir)}) — make room and run "
                        f"train.py again to resume") from None
    try:
        plot_history(path, weights_dir / HISTORY_PNG)
    except Exception as e:                    # a plot is a nicety; never lose a run over it
        say(f"note: could not draw {HISTORY_PNG} ({type(e).__name__}: {e})")


def plot_history(csv_path: Path, png_path: Path) -> None:
    """loss.png from loss_history.csv, if matplotlib is installed (it is optional); never a window."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = [r for r in read_history(csv_path) if r["eval"] == "windows"]
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    train = [(s, float(r["train_loss"])) for s, r in zip(steps, rows) if r["train_loss"]]
    if train:
        ax.plot(*zip(*train), label="train loss / token")
    ax.plot(steps, [float(r["val_loss_per_token"]) for r in rows], label="val loss / token")
    ax.plot(steps, [float(r["val_bits_per_char"]) for r in rows], label="val bits / char")
    ax.set_xlabel("step")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
