"""The lines train.py prints before its first step: device, model, data, batch, optimizer, resume.

Read this when a line at the start of a run puzzles you. Everything goes to stderr, from rank 0 only.
"""
from __future__ import annotations

from support.checkpoints import LATEST, changed_settings

# Fewer training tokens than this, from scratch: a note says what did better on such a text (a 250 KB
# novel gives about 60,000 with the 4,096-token vocabulary; the plays, 330,000).
SMALL_TEXT_TOKENS = 150_000


def describe(cfg, procs, device, amp_dtype, tokenizer, model, train_ids, val_ids, last_step: int,
             resumed: dict | None, train_config: dict, say) -> None:
    """What this run is about to do (cfg: train.py's settings; train_config: what its checkpoints record)."""
    precision = (f"autocast {str(amp_dtype).removeprefix('torch.')} (float32 master weights)"
                 if amp_dtype else "float32")
    say(f"device {device}, {precision}, {procs.world_size} process(es)")
    say(f"model: {cfg.num_layers} layers × {cfg.emb_len} wide × {cfg.num_heads} heads, {cfg.positions} positions, "
        f"context {cfg.block_size}, vocab {tokenizer.vocab_size} — {model.num_params():,} parameters")
    say(f"data: {cfg.input} — {len(train_ids):,} training and {len(val_ids):,} validation tokens")
    if not cfg.init_from and len(train_ids) < SMALL_TEXT_TOKENS:
        say(f"note: {len(train_ids):,} training tokens are little to learn a language from nothing: on a 250 KB "
            f"novel, fine-tuning the shipped model (--init-from Saved_Weights/pretrained.pth) did better, and "
            f"so did a smaller vocabulary (python init.py --vocab-size 1024) — docs/EXPERIMENTS.md")
    windows = cfg.batch_size * cfg.grad_accum_steps * procs.world_size
    say(f"global batch: {windows} windows = batch_size {cfg.batch_size} × grad_accum_steps "
        f"{cfg.grad_accum_steps} × {procs.world_size} process(es) = {windows * cfg.block_size:,} tokens/step")
    if cfg.max_epochs > 0:
        passes = last_step * windows * cfg.block_size / len(train_ids)
        say(f"max_epochs {cfg.max_epochs:g}: at most {last_step:,} steps, {passes:.1f} passes over the training tokens")
    say(f"optimizer: Muon (peak lr {cfg.muon_lr:g}) for the blocks' matrices, AdamW (peak lr "
        f"{cfg.learning_rate:g}) for the rest" if cfg.optimizer == "muon" else
        f"optimizer: AdamW (peak lr {cfg.learning_rate:g})")
    if resumed is not None:
        best = f", best val {resumed['best_val']:.4f} nats/char" if resumed.get("best_val") is not None else ""
        say(f"resuming from {cfg.weights_dir}/{LATEST} at step {resumed['step']}{best}")
        changed = changed_settings(resumed, train_config)
        if changed:
            say(f"note: settings changed since the checkpoint: {', '.join(changed)}")
    elif cfg.init_from:
        say(f"fine-tuning {cfg.init_from}: its shape, weights and tokenizer, with a fresh optimizer (the "
            f"fine-tuning defaults unless given: see train.py)")
    else:
        say("starting fresh")
