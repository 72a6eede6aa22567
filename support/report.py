"""What train.py shows: the lines before its first step (device, model, data, ...), and the progress bar.

Read this when a line at the start of a run puzzles you. Everything goes to stderr, from rank 0 only.
"""
from __future__ import annotations

import sys

from tqdm import tqdm

from support.checkpoints import LATEST, changed_settings


def progress_bar(run) -> tqdm:
    """The training bar (rank 0 only), from run.step to run.end_step (run: train.py's Run)."""
    return tqdm(total=run.end_step, initial=run.step, desc="training", unit="step", file=sys.stderr,
                disable=not run.procs.is_main, dynamic_ncols=True, mininterval=1.0)


def show_progress(bar: tqdm, run, loss: float, lr: float) -> None:
    """One more step on the bar, with the loss, the learning rate and tokens per second."""
    bar.total = run.end_step              # the time budget may have moved it
    bar.update(1)
    if not bar.disable:                   # tqdm's smoothed steps/s × tokens per step
        cfg = run.cfg
        tokens_per_s = (bar.format_dict["rate"] or 0) * cfg.batch_size * cfg.grad_accum_steps \
            * run.procs.world_size * cfg.block_size
        bar.set_postfix_str(f"loss {loss:.3f}, lr {lr:.2e}, {tokens_per_s:,.0f} tok/s", refresh=False)


def describe(run, train_config: dict) -> None:
    """run: train.py's Run, about to train; train_config: the settings its checkpoints record."""
    cfg, say, procs = run.cfg, run.say, run.procs
    precision = (f"autocast {str(run.amp_dtype).removeprefix('torch.')} (float32 master weights)"
                 if run.amp_dtype else "float32")
    say(f"device {run.device}, {precision}, {procs.world_size} process(es){', compiled' if cfg.compile else ''}")
    say(f"model: {cfg.num_layers} layers × {cfg.emb_len} wide × {cfg.num_heads} heads, {cfg.positions} positions, "
        f"context {cfg.block_size}, vocab {run.tokenizer.vocab_size} — {run.model.num_params():,} parameters")
    if cfg.params_vocab_size != run.tokenizer.vocab_size:
        say(f"note: the tokenizer has {run.tokenizer.vocab_size} tokens, Model_Params.vocab_size says "
            f"{cfg.params_vocab_size} (init.py applies it); the model follows the tokenizer")
    say(f"data: {cfg.input} — {len(run.train_ids):,} training and {len(run.val_ids):,} validation tokens")
    windows = cfg.batch_size * cfg.grad_accum_steps * procs.world_size
    say(f"global batch: {windows} windows = batch_size {cfg.batch_size} × grad_accum_steps "
        f"{cfg.grad_accum_steps} × {procs.world_size} process(es) = {windows * cfg.block_size:,} tokens/step")
    if cfg.max_epochs > 0:
        passes = cfg.max_iters * windows * cfg.block_size / len(run.train_ids)
        say(f"max_epochs {cfg.max_epochs:g}: at most {cfg.max_iters:,} steps, {passes:.1f} passes over the training tokens")
    say(f"optimizer: Muon (peak lr {cfg.muon_lr:g}) for the blocks' matrices, AdamW (peak lr "
        f"{cfg.learning_rate:g}) for the rest" if cfg.optimizer == "muon" else
        f"optimizer: AdamW (peak lr {cfg.learning_rate:g})")
    if run.teacher is not None:
        say(f"teacher: {cfg.teacher} ({run.teacher.num_params():,} parameters); loss = "
            f"{1 - cfg.distill_weight:g} × cross-entropy + {cfg.distill_weight:g} × KL(teacher ‖ model)")
    if run.resumed is not None:
        best = f", best val {run.best_val:.4f} nats/char" if run.best_val is not None else ""
        say(f"resuming from {run.weights_dir / LATEST} at step {run.step}{best}")
        changed = changed_settings(run.resumed, train_config)
        if changed:
            say(f"note: settings changed since the checkpoint: {', '.join(changed)}")
    else:
        say("starting fresh")
