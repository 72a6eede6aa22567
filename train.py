"""Train the transformer on a text file, and report how well it predicts text it never saw, in nats per character.

    python train.py                              # Model_Params defaults, Train_Data/input.txt
    python train.py --emb-len 128 --max-minutes 5
    torchrun --nproc_per_node 2 train.py         # same flags, one process per CPU/GPU (DDP)

Training is one loop, and `train_plain` below is all of it in one screen: draw a batch of random
windows of the text; ask the model to guess every next token (the targets y are the inputs x shifted
by one); measure how wrong it was (cross-entropy); move every weight a small step against its
gradient; every eval_interval steps, score the validation text. Read it first.

`train` runs the same loop with what a real run needs around it (a test holds the two bit-identical
with the extras off), in the sections below: 1. settings (Model_Params.py, then `--name VALUE`
overrides); 2. data (tokenized once, split 90/10 by position: training, validation); 3. model and
optimizer, fresh or as weights-latest.pth left them (exact resume; a run of another text or
tokenizer is moved aside first); 4. the loop, plus accumulation, torchrun, mixed precision,
BPE-dropout, a teacher (`distillation_loss`), the time budget and Ctrl-C; 5. every eval_interval
steps, validation, weights-best.pth when it improved, loss_history.csv, then weights-latest.pth (a
run killed at any moment resumes exactly); 6. at the end, the final evaluation. The machinery
lives in support/, each one call away. Everything printed goes to stderr; stdout stays empty.

What the figures mean (see `evaluate`): loss per token is the mean negative log-likelihood (NLL, in
nats) of the scored tokens, i.e. how surprised the model is by each next token. nats/char = total
NLL of the scored tokens ÷ the characters those tokens spell, where a token counts the characters
whose first UTF-8 byte it holds (so a character split over two tokens counts once). bits/char =
nats/char ÷ ln 2. Per character, runs with different tokenizers compare fairly; per token they do
not (a bigger vocabulary makes fewer tokens, each harder to guess).
"""
from __future__ import annotations

import argparse
import math
import random
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from Model import ModelConfig, Transformer
from support import settings, time_budget
from support.bpe_dropout import merge_parts, split_tokens
from support.checkpoints import (BEST, LATEST, CheckpointError, best_checkpoint, check_writable, latest_checkpoint,
                                 load_resume_state, load_teacher, move_run_aside, own_rng_state, remove_leftover_temps,
                                 restore_training_state, save_atomic)
from support.devices import DTYPES, autocast, choose_dtype
from support.distributed import (SINGLE, Processes, all_reduce_sum, barrier, end_processes, gather, gradient_sync,
                                 launched_rank, model_for_training, start_processes)
from support.history import record, start_history, unfinished_final_evaluation
from support.ema import WeightAverage, averaged
from support.lock import hold_folder
from support.optim import OPTIMIZERS, configure_optimizer, set_learning_rate
from support.scoring import EvalResult, chars_per_token, final_windows, fixed_windows, score_windows, windows_to_batch
from support.settings import TRAIN_FLAGS, Parser, UserError, load_params
from support.report import describe, progress_bar, show_progress
from support.stopping import StopRequest
from support.id_cache import data_fingerprint, load_token_ids
from support.validation import POSITIONS
from tokenizer import Tokenizer, TokenizerError

REPO = Path(__file__).resolve().parent
# The settings this script reads from Model_Params.py (not run.py's generation ones), and their kind,
# checked on start: a hand edit that breaks one is a one-line error. TRAIN_FLAGS have no line there.
NEEDED_PARAMS = {"vocab_size": int, "block_size": int, "emb_len": int, "num_layers": int, "num_heads": int,
                 "batch_size": int, "dropout": float, "learning_rate": float, "max_iters": int, "eval_interval": int,
                 "positions": str, "optimizer": str, "bpe_dropout": float, "weight_decay": float, "warmup_iters": int,
                 "min_lr": float, "grad_clip": float, "max_epochs": float, "max_minutes": float}


# ─────────────────────────────────── the loop, in its plainest form ───────────────────────────────────

def get_batch(ids: np.ndarray, batch_size: int, block_size: int, generator: torch.Generator):
    """batch_size windows of block_size + 1 tokens, starting at random -> inputs x and targets y,
    both (batch_size, block_size): y is x shifted one token left, so y[b, t] is the token after x[b, t]."""
    starts = torch.randint(0, len(ids) - block_size, (batch_size,), generator=generator).tolist()
    windows = torch.stack([torch.from_numpy(ids[s:s + block_size + 1].astype(np.int64)) for s in starts])
    return windows[:, :-1], windows[:, 1:]


def learning_rate_at(step: int, cfg, horizon: int | None = None) -> float:
    """The learning rate for step `step` (0-based): linear warm-up over warmup_iters steps to
    learning_rate, then a cosine curve down to min_lr at `horizon` (default max_iters), then min_lr.
    Warm-up keeps the first, large and badly-aimed updates from wrecking the optimizer's still-empty
    running averages (Adam's moments, Muon's momentum)."""
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / cfg.warmup_iters
    span = (cfg.max_iters if horizon is None else horizon) - cfg.warmup_iters
    progress = min(1.0, (step - cfg.warmup_iters) / span) if span > 0 else 1.0
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


def evaluate(model: Transformer, val_ids: np.ndarray, windows: list, chars: torch.Tensor, batch_size: int,
             device=torch.device("cpu"), amp_dtype=None, procs: Processes = SINGLE, progress=None) -> EvalResult:
    """How well the model predicts the validation tokens the windows ask for: summed NLL, tokens and
    characters (nats/char: see EvalResult). In eval mode (no dropout), as the model will be used."""
    with model.eval_mode():
        return score_windows(model, val_ids, windows, chars, device, amp_dtype, batch_size, procs, progress)


def train_plain(model: Transformer, train_ids: np.ndarray, val_ids: np.ndarray, chars: torch.Tensor, cfg) -> list:
    """What train() does with one process on the CPU and none of its extras (time budget, teacher,
    weight average, accumulation, BPE-dropout, mixed precision, checkpoints); a test holds the two
    bit-identical. Seed as train() does: torch.manual_seed(seed) before building the model, seed + 2
    after (dropout). chars: characters each token starts. -> the EvalResult of every evaluation."""
    optimizer = configure_optimizer(model, cfg.learning_rate, cfg.weight_decay, optimizer=cfg.optimizer,
                                    muon_lr=cfg.muon_lr, adam_eps=cfg.adam_eps)
    batches = torch.Generator().manual_seed(cfg.seed + 1)                    # which windows each step reads
    windows = fixed_windows(len(val_ids), cfg.block_size, cfg.eval_windows)  # the same at every evaluation
    results = []
    model.train()
    for step in range(cfg.max_iters):
        set_learning_rate(optimizer, learning_rate_at(step, cfg), cfg)
        x, y = get_batch(train_ids, cfg.batch_size, cfg.block_size, batches)  # (B, T) each; y = next tokens
        _, loss = model(x, y)                              # mean cross-entropy over all B × T guesses
        loss.backward()                                    # d loss / d weight, for every weight
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
        optimizer.step()                                   # every weight a small step downhill
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % cfg.eval_interval == 0 or step + 1 == cfg.max_iters:
            results.append(evaluate(model, val_ids, windows, chars, cfg.batch_size))
            print(f"step {step + 1}: train {loss.item():.4f}, val {results[-1].figures()}", file=sys.stderr)
    return results


# ───────────────────────────────────────── 1. settings ───────────────────────────────────────────

def param_defaults() -> dict:
    """Every setting train.py takes from Model_Params.py or a flag alone: name -> default value."""
    return settings.param_defaults(load_params(NEEDED_PARAMS), NEEDED_PARAMS, TRAIN_FLAGS)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="train.py", allow_abbrev=False,
                    description="Train the transformer on a text file. Rerunning resumes exactly from "
                                "weights-latest.pth; everything printed goes to stderr. Every option is "
                                "accepted with - or _ (--max-iters, --max_iters).")
    settings.add_run_options(parser, REPO, DTYPES)
    settings.add_param_options(parser, load_params(NEEDED_PARAMS), param_defaults(), TRAIN_FLAGS)
    return parser


def parse_settings(argv) -> argparse.Namespace:
    """The run's settings: Model_Params defaults, overridden by flags, checked for sense."""
    cfg = build_parser().parse_args(argv)
    cfg.overridden = {a.split("=")[0][2:].replace("-", "_") for a in argv if a.startswith("--")} & set(param_defaults())
    settings.check_ranges(cfg, above_zero=("learning_rate", "muon_lr", "adam_eps"),
                          at_least=dict(block_size=1, emb_len=1, num_layers=1, num_heads=1, batch_size=1, eval_windows=1,
                                        grad_accum_steps=1, eval_interval=1, max_iters=0, warmup_iters=0, final_eval_tokens=0),
                          not_negative=("learning_rate", "min_lr", "weight_decay", "grad_clip", "max_minutes", "max_epochs"),
                          fractions=("dropout", "ema_decay", "bpe_dropout"), weights=("distill_weight",))
    for name, choices in (("optimizer", OPTIMIZERS), ("positions", POSITIONS)):
        if getattr(cfg, name) not in choices:
            raise UserError(f"--{name} must be one of {', '.join(choices)}, got {getattr(cfg, name)!r}")
    if cfg.emb_len % cfg.num_heads:
        raise UserError(f"--emb-len ({cfg.emb_len}) must be divisible by --num-heads ({cfg.num_heads})")
    for flag, value in (("--stop-at-step", cfg.stop_at), ("--workers", cfg.workers)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if cfg.stop_at is not None and cfg.stop_at > cfg.max_iters:
        raise UserError(f"--stop-at-step {cfg.stop_at} is past the end of the schedule (max_iters "
                        f"{cfg.max_iters}); to train longer pass --max-iters {cfg.stop_at}")
    return cfg


def train_config(cfg, world_size: int) -> dict:
    """The settings worth recording in a checkpoint, as plain values."""
    return {**{name: getattr(cfg, name) for name in param_defaults()},
            "seed": cfg.seed, "world_size": world_size, "dtype": cfg.dtype, "compile": cfg.compile}


# ─────────────────────────────────────────── 2. data ─────────────────────────────────────────────

def split_ids(ids: np.ndarray, block_size: int, input_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """First 90% of the tokens for training, the last 10% for validation (split by position, so
    validation text is text the model never trained on). Each part must hold one window + 1."""
    n_train = int(len(ids) * 0.9)
    train, val = ids[:n_train], ids[n_train:]
    need = block_size + 1
    if len(train) < need or len(val) < need:
        raise UserError(f"{input_path} is too short: {len(ids):,} tokens give {len(train):,} training and "
                        f"{len(val):,} validation tokens, but each part needs at least block_size + 1 = "
                        f"{need} — use a longer text or a smaller --block-size")
    return train, val


# ─────────────────────────────────── 3. model and optimizer ──────────────────────────────────────

@dataclass
class Run:
    """One training run: settings, data, model, optimizer and progress. Built by start_run (fresh,
    or as weights-latest.pth left it); advanced by train."""
    cfg: argparse.Namespace
    procs: Processes                 # this process among torchrun's (rank 0 of 1 when run plainly)
    device: torch.device
    say: object                      # prints a line on stderr (rank 0; the others stay silent)
    tokenizer: Tokenizer
    data_fp: str                     # fingerprint of the token stream (input bytes + vocabulary)
    train_ids: np.ndarray            # (N_train,) the first 90% of the token ids
    val_ids: np.ndarray              # (N_val,) the last 10%
    chars: torch.Tensor              # (V,) characters each token starts
    model: Transformer
    optimizer: object                # AdamW, or Muon with AdamW (support/optim.py)
    scaler: torch.amp.GradScaler     # float16 only: loss scaling (a no-op otherwise)
    amp_dtype: torch.dtype | None    # autocast precision; None = float32
    batch_gen: torch.Generator       # which windows each step trains on; the same on every process
    budget: time_budget.TimeBudget
    windows: dict                    # "eval", "final": validation windows (start, end, skip)
    resumed: dict | None             # the checkpoint this run continues, if any
    weights_dir: Path                # checkpoints, history and plot
    step: int = 0                    # optimizer steps taken
    best_val: float | None = None    # best validation nats/char so far (fixed windows)
    horizon: int = 0                 # step where the schedule ends: max_iters, or sooner to fit max_minutes
    saved_step: int | None = None    # step held by weights-latest.pth, if any
    folder_lock: object = None       # held while the run lives (rank 0): see support/lock.py
    average: WeightAverage | None = None   # the weights' moving average (ema_decay > 0): evaluated, saved as best
    merge_parts: torch.Tensor | None = None  # (V, 2) the two tokens each token was merged from (bpe_dropout)
    teacher: Transformer | None = None     # a trained model to learn from too; frozen, so it adds no graph

    @property
    def end_step(self) -> int:       # where the loop stops: --stop-at-step, else the schedule's end
        return min(self.cfg.stop_at or self.cfg.max_iters, self.horizon)


def start_run(cfg, procs: Processes, device: torch.device, say, started: float) -> Run:
    """Tokenizer, data, model and optimizer: fresh, or as weights-latest.pth left them."""
    weights_dir, input_path = Path(cfg.weights_dir), Path(cfg.input)
    check_writable(weights_dir)
    folder_lock = hold_folder(weights_dir, say) if procs.is_main else None     # a second run here is refused
    tokenizer = Tokenizer.load(cfg.tokenizer_dir)
    if "vocab_size" in cfg.overridden and cfg.vocab_size != tokenizer.vocab_size:
        raise UserError(f"--vocab-size {cfg.vocab_size} differs from the tokenizer in {cfg.tokenizer_dir} "
                        f"({tokenizer.vocab_size} tokens); the vocabulary is set by init.py — run "
                        f"`python init.py --vocab-size {cfg.vocab_size}` first")
    cfg.params_vocab_size, cfg.vocab_size = cfg.vocab_size, tokenizer.vocab_size
    data_fp = data_fingerprint(input_path, tokenizer)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=cfg.block_size, emb_len=cfg.emb_len,
                         num_layers=cfg.num_layers, num_heads=cfg.num_heads, dropout=cfg.dropout, positions=cfg.positions)
    resumed = None                   # checked before tokenizing: a resume that cannot work fails at once
    if (weights_dir / LATEST).exists() and not cfg.fresh:
        # None when it is a run of another text or tokenizer (say, after init.py on your own text).
        resumed = load_resume_state(weights_dir / LATEST, config, tokenizer.fingerprint(), data_fp, cfg.optimizer)
    teacher = load_teacher(cfg.teacher, tokenizer.fingerprint(), cfg.block_size, weights_dir, device) if cfg.teacher else None
    train_ids, val_ids = split_ids(load_token_ids(input_path, data_fp, tokenizer, procs, say, cfg.workers),
                                   cfg.block_size, input_path)
    if resumed is None and procs.is_main and (moved := move_run_aside(weights_dir)):   # the text is good: make room
        say(f"moved the run that was in {weights_dir}/ to {moved}/ ("
            f"{'--fresh' if cfg.fresh else 'not a run of this text and tokenizer'}); starting a new one")
    cfg.max_iters = time_budget.last_step(cfg, len(train_ids), procs.world_size)   # max_iters or max_epochs
    # Seeds: identical initial weights on every process (DDP would copy rank 0's anyway); one batch
    # generator that every process keeps in step, so all draw the same global batch and each takes
    # its own slice of it; dropout masks independent per process.
    torch.manual_seed(cfg.seed)
    model = Transformer(config).to(device)
    batch_gen = torch.Generator().manual_seed(cfg.seed + 1)
    torch.manual_seed(cfg.seed + 2 + procs.rank)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2 ** 32)
    optimizer = configure_optimizer(model, cfg.learning_rate, cfg.weight_decay, optimizer=cfg.optimizer,
                                    muon_lr=cfg.muon_lr, adam_eps=cfg.adam_eps)
    amp_dtype = choose_dtype(cfg.dtype, device)
    # float16 has too few exponent bits for small gradients: scale the loss up, unscale before
    # the step (skipping steps whose gradients overflowed). bfloat16 needs none of this.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    budget = time_budget.TimeBudget(cfg.max_minutes, resumed.get("minutes", 0.0) if resumed else 0.0, started,
                                    cfg.max_iters, procs, device)
    windows = {"eval": fixed_windows(len(val_ids), cfg.block_size, cfg.eval_windows),
               "final": final_windows(len(val_ids), cfg.block_size, cfg.final_eval_tokens)}
    run = Run(cfg, procs, device, say, tokenizer, data_fp, train_ids, val_ids, chars_per_token(tokenizer), model,
              optimizer, scaler, amp_dtype, batch_gen, budget, windows, resumed, weights_dir, horizon=cfg.max_iters,
              folder_lock=folder_lock, teacher=teacher)
    if resumed is not None:
        restore_training_state(resumed, model, optimizer, scaler, batch_gen, procs.rank, procs.world_size,
                               device, cfg.seed, cfg.dropout, say)
        run.step, run.saved_step, run.best_val = resumed["step"], resumed["step"], resumed.get("best_val")
    run.merge_parts = merge_parts(tokenizer.merges, tokenizer.vocab_size)     # once, not every step
    if cfg.ema_decay > 0:            # from the weights as they are now, or as weights-latest.pth kept it
        run.average = WeightAverage(model, cfg.ema_decay, (resumed or {}).get("weight_average"))
    return run


# ──────────────────────────────────── batches and the teacher ────────────────────────────────────

def step_batches(train_ids: np.ndarray, cfg, procs: Processes, generator: torch.Generator, device: torch.device,
                 parts: torch.Tensor | None = None):
    """get_batch for a real run: this process's share of one step's global batch, grad_accum_steps
    micro-batches (x, y) of (batch_size, block_size), y shifted one token left. The global batch
    is drawn whole on every process, shaped (micro-steps, processes, batch_size), and each takes its
    slice, so a run's batches do not depend on the number of processes. With bpe_dropout > 0 each
    merged token of a window is, with that chance, split into the two tokens its merge joined
    (BPE-dropout: the text's other spellings, so the pieces of long tokens train too; parts: the
    tokenizer's merge_parts)."""
    shape = (cfg.grad_accum_steps, procs.world_size, cfg.batch_size)
    starts = torch.randint(0, len(train_ids) - cfg.block_size, shape, generator=generator)
    if cfg.bpe_dropout > 0:          # a coin for every token of the global batch, drawn like the starts
        split = torch.rand(shape + (cfg.block_size + 1,), generator=generator) < cfg.bpe_dropout
    for micro in range(cfg.grad_accum_steps):
        respell = partial(split_tokens, parts=parts, split=split[micro, procs.rank]) if cfg.bpe_dropout > 0 else None
        yield windows_to_batch(train_ids, starts[micro, procs.rank].numpy(), cfg.block_size, device, respell)


def distillation_loss(text_loss: torch.Tensor, logits: torch.Tensor, teacher_logits: torch.Tensor,
                      weight: float) -> torch.Tensor:
    """Knowledge distillation: (1 - weight) × cross-entropy with the text + weight × KL(teacher ‖ model),
    averaged over positions: the teacher's whole distribution says which other tokens were plausible
    too (--teacher PATH, an extra: off by default). logits: (B, T, V) each."""
    log_p = F.log_softmax(logits.float(), dim=-1).flatten(0, 1)           # (B·T, V) the model's
    log_q = F.log_softmax(teacher_logits.float(), dim=-1).flatten(0, 1)   # (B·T, V) the teacher's
    kl = F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")   # Σ q (log q - log p) / (B·T)
    return (1 - weight) * text_loss + weight * kl


class LossNotFinite(Exception):
    """Training diverged: the loss or gradient became NaN or infinite."""


# ──────────────────────────────────────── 4. the loop ────────────────────────────────────────────

def train(run: Run) -> int:
    """Train from run.step to the end of the schedule (or --stop-at-step, the time budget, Ctrl-C),
    evaluating and saving every eval_interval steps; then the final evaluation. -> the exit code."""
    cfg, model, optimizer, scaler = run.cfg, run.model, run.optimizer, run.scaler
    train_model = model_for_training(model, run.procs, run.device, cfg.compile)    # compiled / DDP
    bar = progress_bar(run)                                          # on stderr: loss, lr, tok/s, ETA
    losses, lr, stopped_by = [], learning_rate_at(run.step, cfg, run.horizon), None
    model.train()
    try:
        with StopRequest(run.say, run.procs.distributed) as stop:
            while run.step < run.end_step:
                run.horizon = run.budget.refit(run.step, run.horizon)
                lr = learning_rate_at(run.step, cfg, run.horizon)
                set_learning_rate(optimizer, lr, cfg)
                step_loss = 0.0
                for micro, (x, y) in enumerate(step_batches(run.train_ids, cfg, run.procs, run.batch_gen, run.device, run.merge_parts)):
                    with gradient_sync(train_model, run.procs, micro == cfg.grad_accum_steps - 1):
                        with autocast(run.device, run.amp_dtype):
                            logits, loss = train_model(x, y)         # mean cross-entropy over (B, T)
                            objective = loss if run.teacher is None else distillation_loss(
                                loss, logits, run.teacher(x)[0], cfg.distill_weight)
                        # Dividing by the micro-step count makes the summed gradients a mean.
                        scaler.scale(objective / cfg.grad_accum_steps).backward()
                    step_loss += loss.item() / cfg.grad_accum_steps
                scaler.unscale_(optimizer)                           # float16: the true gradients, to clip
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf).item()
                # One exchange per step: the mean loss over processes, and whether any process wants
                # to stop (Ctrl-C or time), so that all of them stop after this same step.
                loss_sum, stop_votes = all_reduce_sum([step_loss, float(stop.requested or run.budget.out_of_time())],
                                                      run.procs, run.device)
                step_loss = loss_sum / run.procs.world_size
                # float16's scaler skips steps whose gradients overflowed; anywhere else an infinite
                # gradient means training has diverged.
                if not math.isfinite(step_loss) or (not scaler.is_enabled() and not math.isfinite(grad_norm)):
                    raise LossNotFinite(f"loss became {step_loss} at step {run.step + 1}")
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                if run.average is not None:
                    run.average.update(model)
                run.step += 1
                losses.append(step_loss)
                show_progress(bar, run, step_loss, lr)
                if stop_votes:
                    stopped_by = "signal" if stop.requested else "time"
                    break
                if run.step % cfg.eval_interval == 0 and run.step < run.end_step:
                    evaluate_and_save(run, sum(losses) / len(losses), lr)
                    losses = []
        bar.close()                  # now, so that it is not redrawn below the lines that follow
        return finish(run, stopped_by, stop.signum, sum(losses) / len(losses) if losses else None, lr)
    except LossNotFinite as e:
        kept = (f"{run.weights_dir / LATEST} still holds step {run.saved_step}, the last good checkpoint"
                if run.saved_step is not None else "no checkpoint was written")
        raise UserError(f"{e}; stopped without saving — {kept}. Try a lower --learning-rate") from None
    finally:
        bar.close()


# ─────────────────────────────── 5. evaluations and checkpoints ──────────────────────────────────

def evaluate_and_save(run: Run, train_loss: float | None, lr: float) -> None:
    """Validation on the fixed windows, one line of figures, weights-best.pth when nats/char
    improved, a history row, and weights-latest.pth. Latest is written last: a run killed before
    it resumes from the previous evaluation and redoes this one exactly, rewriting the other two."""
    started = time_budget.clock()
    with averaged(run.average, run.model):         # the weights to evaluate and keep: see support/ema.py
        result = evaluate(run.model, run.val_ids, run.windows["eval"], run.chars, run.cfg.batch_size, run.device,
                          run.amp_dtype, run.procs)
        improved = math.isfinite(result.nll) and (run.best_val is None or result.nats_per_char < run.best_val)
        if improved and run.procs.is_main:
            save_atomic(best_checkpoint(run.model, step=run.step, result=result, train_config=train_config(
                run.cfg, run.procs.world_size), tokenizer_fp=run.tokenizer.fingerprint()), run.weights_dir / BEST)
    run.budget.timed_evaluation(time_budget.clock() - started, result.tokens, run.windows["final"])
    if not math.isfinite(result.nll):
        raise LossNotFinite(f"validation loss became {result.nll} at step {run.step}")
    run.best_val = result.nats_per_char if improved else run.best_val
    if run.procs.is_main:
        record(run.weights_dir, run.step, run.budget.minutes_so_far(), lr, train_loss, result, "windows", run.say)
    save_latest(run)
    run.say(f"step {run.step}: {'' if train_loss is None else f'train {train_loss:.4f}, '}val {result.figures()}"
            f"{' (best, saved)' if improved else ''}")


def save_latest(run: Run) -> None:
    """weights-latest.pth, with every process's dropout generator (gathered to rank 0)."""
    rng_per_rank = gather(own_rng_state(run.device), run.procs)
    if run.procs.is_main:
        save_atomic(latest_checkpoint(
            run.model, run.optimizer, run.scaler, step=run.step, best_val=run.best_val,
            minutes=run.budget.minutes_so_far(), train_config=train_config(run.cfg, run.procs.world_size),
            tokenizer_fp=run.tokenizer.fingerprint(), data_fp=run.data_fp, batch_gen=run.batch_gen,
            rng_per_rank=rng_per_rank, average=run.average), run.weights_dir / LATEST)
    run.saved_step = run.step


def final_evaluation(run: Run, lr: float) -> None:
    """The headline figure: the validation split scored once more (at most final_eval_tokens of it)."""
    with averaged(run.average, run.model):
        final = evaluate(run.model, run.val_ids, run.windows["final"], run.chars, run.cfg.batch_size, run.device,
                         run.amp_dtype, run.procs, progress="final evaluation")
    if run.procs.is_main:
        record(run.weights_dir, run.step, run.budget.minutes_so_far(), lr, None, final, "full", run.say)
    barrier(run.procs)               # the others wait for rank 0's writes, then all leave the group together
    targets = len(run.val_ids) - 1
    scope = ("whole validation split" if final.tokens == targets else
             f"{final.tokens:,} of {targets:,} validation tokens, in windows spread over the split")
    run.say(f"final, {scope} ({final.tokens:,} tokens, {final.chars:,} chars) at step {run.step}: {final.figures()}")
    run.say(f"saved {run.weights_dir / LATEST} and {run.weights_dir / BEST} (best val "
            f"{run.best_val:.4f} nats/char) after {run.budget.minutes_so_far():.1f} min")


# ────────────────────────────────── 6. the start and the end ─────────────────────────────────────

def ready_to_train(run: Run) -> bool:
    """False, having said why, when there is nothing to train; then a run killed during its final
    evaluation does that evaluation now. True once the history is ready for this run's rows."""
    run.horizon = run.budget.start_loop(run.step)       # with a time budget, from the earlier pace
    at_end, out_of_time = run.step >= run.end_step, run.budget.out_of_time()
    last_lr = unfinished_final_evaluation(run.weights_dir, run.step, run.procs, run.device) if run.resumed else None
    latest, fresh = run.weights_dir / LATEST, "or --fresh to start over"
    if (at_end or out_of_time) and last_lr is not None:
        run.say(f"{latest} is at the end of its run (step {run.step}), but the run stopped during its final "
                f"evaluation: doing that now")
        final_evaluation(run, last_lr)
    elif at_end:
        run.say(f"nothing to do: {latest} is already at step {run.step} (stop at {run.end_step}); pass "
                f"--max-iters N (and --max-epochs E, if set) to train longer, {fresh}")
    elif out_of_time:
        run.say(f"nothing to do: {latest} has used its {run.cfg.max_minutes:g}-minute budget ("
                f"{run.budget.minutes_so_far():.1f} min); pass --max-minutes M to train longer, {fresh}")
    elif run.procs.is_main:
        start_history(run.weights_dir, run.step if run.resumed else None)
    return not (at_end or out_of_time)


def finish(run: Run, stopped_by: str | None, signum: int | None, train_loss: float | None, lr: float) -> int:
    """After the loop. Ctrl-C: save and exit 128 + the signal's number. Otherwise a last
    checkpoint (unless this step has one) and the final evaluation; exit 0."""
    cfg = run.cfg
    if stopped_by == "signal":
        save_latest(run)
        run.say(f"stopped at step {run.step}; saved {run.weights_dir / LATEST} — run train.py again to resume")
        return 128 + signum
    if stopped_by == "time" or (run.budget.limited and run.step < (cfg.stop_at or cfg.max_iters)):
        run.say(f"--max-minutes {cfg.max_minutes:g} reached at step {run.step} (the learning-rate schedule "
                f"was fitted to end there)")
    if run.saved_step != run.step:
        evaluate_and_save(run, train_loss, lr)
    final_evaluation(run, lr)
    return 0


def main(argv=None) -> int:
    started = time_budget.clock()    # the budget counts from here: tokenizing and setting up use it too
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        cfg = parse_settings(argv)
        procs, device = start_processes(cfg.device)
        say = (lambda msg: tqdm.write(msg, file=sys.stderr)) if procs.is_main else (lambda msg: None)
        run = start_run(cfg, procs, device, say, started)   # first: a mistake in the settings stays one line
        describe(run, train_config(cfg, procs.world_size))
        if procs.is_main:
            remove_leftover_temps(run.weights_dir, say)
        return train(run) if ready_to_train(run) else 0
    except (UserError, TokenizerError, CheckpointError) as e:
        if launched_rank() == 0:     # under torchrun every process hits the same mistake: say it once
            print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:        # a second Ctrl-C (support/stopping.py)
        if launched_rank() == 0:
            print("\ninterrupted; nothing more saved", file=sys.stderr)
        return 130
    finally:
        end_processes()


if __name__ == "__main__":
    sys.exit(main())
