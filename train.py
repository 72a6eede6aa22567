"""Train the transformer on a text file, and report how well it predicts text it never saw, in nats per character.

    python train.py                              # Model_Params defaults, Train_Data/input.txt
    python train.py --emb-len 128 --max-minutes 5
    python train.py --init-from Saved_Weights/pretrained.pth   # fine-tune the shipped model on your text
    torchrun --nproc_per_node 2 train.py         # same flags, one process per CPU/GPU (DDP)

Training is one loop, in `train` below: draw a batch of random windows of the text; ask the model to
guess every next token (the targets y are the inputs x shifted by one); measure how wrong it was
(cross-entropy); move every weight a small step against its gradient; every eval_interval steps,
score the validation text and save. Read the file top to bottom: the three parts of the loop
(`get_batch`, `learning_rate_at`, `evaluate`), the settings, the data, then `train`, which sets up
the model and optimizer (fresh, or exactly as weights-latest.pth left them) and runs the loop. What
a real run needs around the idea (torchrun, mixed precision, the time budget, Ctrl-C, checkpoint
files) is one named call each into support/; a reader may skip those on a first read.

Pretraining and fine-tuning. From random weights (pretraining) the model must learn spelling, words
and grammar from your text alone, and a small text is too little for that. `--init-from
Saved_Weights/pretrained.pth` starts instead from a model that knows them (its shape, weights and
tokenizer) and trains it on your text: fine-tuning. Its rates are lower and its run shorter
(FINE_TUNING), so that the steps adjust what the model knows instead of overwriting it. Watch the
figures: while validation falls with the training loss, the model learns the text; when the training
loss goes on falling but validation rises (in the printed lines and loss.png), it has begun to learn
the training text by heart: overfitting. weights-best.pth keeps the weights from before that began.

What the figures mean (see `evaluate`): loss per token is the mean negative log-likelihood (NLL, in
nats) of the scored tokens, i.e. how surprised the model is by each next token. nats/char = total
NLL of the scored tokens ÷ the characters those tokens spell, where a token counts the characters
whose first UTF-8 byte it holds (so a character split over two tokens counts once). bits/char =
nats/char ÷ ln 2. Per character, runs with different tokenizers compare fairly; per token they do
not (a bigger vocabulary makes fewer tokens, each harder to guess). Everything printed goes to
stderr; stdout stays empty.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from Model import ModelConfig, Transformer
from support.bpe_dropout import merge_parts, split_tokens
from support.checkpoints import (BEST, LATEST, CheckpointError, best_checkpoint, check_writable, checkpoint_tokenizer,
                                 load_resume_state, load_source, move_run_aside, remove_leftover_temps,
                                 restore_training_state, save_atomic, save_resume_state)
from support.devices import DTYPES, autocast, choose_dtype
from support.distributed import (SINGLE, all_reduce_sum, barrier, end_processes, gradient_sync, launched_rank,
                                 model_for_training, start_processes)
from support.history import record, start_history, unfinished_final_evaluation
from support.id_cache import data_fingerprint, load_token_ids
from support.lock import hold_folder
from support.optim import configure_optimizer, set_learning_rate
from support.report import describe
from support.scoring import EvalResult, chars_per_token, final_windows, fixed_windows, score_windows
from support.settings import UserError, check_train_settings, load_params, train_parser
from support.stopping import StopRequest
from support.text_io import set_up_streams
from support import time_budget
from tokenizer import Tokenizer, TokenizerError

REPO = Path(__file__).resolve().parent
# With --init-from (fine-tuning), these defaults replace Model_Params' for the settings not given as
# flags: a model that already knows the language needs gentler steps, and few of them, to learn a new
# text without forgetting what it knew (measured: docs/EXPERIMENTS.md, "Fine-tuning").
FINE_TUNING = {"learning_rate": 6e-4, "muon_lr": 0.005, "warmup_iters": 20, "max_epochs": 8.0}
SHAPE = ("block_size", "emb_len", "num_layers", "num_heads", "positions")   # a checkpoint's, with --init-from
GRAD_CLIP = 1.0            # the gradient's global norm is clipped to this: one bad batch cannot throw the weights far
EVAL_WINDOWS = 200         # validation windows scored at each evaluation, the same ones every time
FINAL_EVAL_TOKENS = 1_000_000   # most validation tokens the final evaluation scores (spread over the split)


# ─────────────────────────────────── the three parts of the loop ───────────────────────────────────

def get_batch(ids: np.ndarray, cfg, generator: torch.Generator, procs, device, parts=None) -> list:
    """One step's batches: grad_accum_steps micro-batches (x, y) for this process, each (batch_size,
    block_size), from windows of block_size + 1 tokens starting at random. y is x shifted one token
    left, so y[b, t] is the token after x[b, t]: every position learns to guess the next token.

    The whole step's batch is drawn on every process, shaped (micro-steps, processes, batch_size), and
    each takes its slice, so the windows do not depend on how many processes share them. With
    bpe_dropout > 0 each merged token is, with that chance, split into the two tokens its merge joined
    (parts: merge_parts; see support/bpe_dropout.py): the text's other spellings train too."""
    shape = (cfg.grad_accum_steps, procs.world_size, cfg.batch_size)
    starts = torch.randint(0, len(ids) - cfg.block_size, shape, generator=generator).numpy()
    if cfg.bpe_dropout > 0:                  # a coin for every token of the step's batch
        split = torch.rand(shape + (cfg.block_size + 1,), generator=generator) < cfg.bpe_dropout
    batches = []
    for micro in range(cfg.grad_accum_steps):
        mine = starts[micro, procs.rank]                                    # (B,) this process's windows
        rows = torch.from_numpy(ids[mine[:, None] + np.arange(cfg.block_size + 1)].astype(np.int64))  # (B, T+1)
        if cfg.bpe_dropout > 0:
            rows = split_tokens(rows, parts, split[micro, procs.rank])      # some tokens as their two parts
        rows = rows.to(device)
        batches.append((rows[:, :-1], rows[:, 1:]))                         # x, and y: x shifted one token
    return batches


def learning_rate_at(step: int, cfg, horizon: int) -> float:
    """The learning rate for step `step` (0-based): linear warm-up over warmup_iters steps to
    learning_rate, then a cosine curve down to 0 at `horizon` (where the schedule ends), then 0.
    Warm-up keeps the first, large and badly-aimed updates from wrecking the optimizer's still-empty
    running averages (Adam's moments, Muon's momentum)."""
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / cfg.warmup_iters
    span = horizon - cfg.warmup_iters
    progress = min(1.0, (step - cfg.warmup_iters) / span) if span > 0 else 1.0
    return 0.5 * (1 + math.cos(math.pi * progress)) * cfg.learning_rate


def evaluate(model: Transformer, val_ids: np.ndarray, windows: list, chars: torch.Tensor, batch_size: int,
             device=torch.device("cpu"), amp_dtype=None, procs=SINGLE, progress=None) -> EvalResult:
    """How well the model predicts the validation tokens the windows ask for: summed NLL, tokens and
    characters (nats/char: see EvalResult). In eval mode (no dropout), as the model will be used."""
    with model.eval_mode():
        return score_windows(model, val_ids, windows, chars, device, amp_dtype, batch_size, procs, progress)


# ──────────────────────────────────────────── settings ─────────────────────────────────────────────

# The settings this script reads from Model_Params.py (not run.py's generation ones), and their kind,
# checked on start: a hand edit that breaks one is a one-line error. Each is also a --flag.
NEEDED_PARAMS = {"block_size": int, "emb_len": int, "num_layers": int, "num_heads": int, "batch_size": int,
                 "dropout": float, "learning_rate": float, "max_iters": int, "eval_interval": int,
                 "positions": str, "optimizer": str, "muon_lr": float, "bpe_dropout": float,
                 "weight_decay": float, "warmup_iters": int, "grad_accum_steps": int, "max_epochs": float,
                 "max_minutes": float}


def build_parser():
    return train_parser(REPO, load_params(NEEDED_PARAMS), NEEDED_PARAMS, DTYPES)


def parse_settings(argv):
    """The run's settings: Model_Params defaults, overridden by flags, checked for sense."""
    cfg = build_parser().parse_args(argv)
    cfg.given = {arg.partition("=")[0][2:].replace("-", "_") for arg in argv if arg.startswith("--")}
    if cfg.init_from:
        for name, value in FINE_TUNING.items():
            setattr(cfg, name, getattr(cfg, name) if name in cfg.given else value)
    check_train_settings(cfg)
    return cfg


def train_config(cfg, world_size: int) -> dict:
    """The settings worth recording in a checkpoint, as plain values."""
    return {**{name: getattr(cfg, name) for name in NEEDED_PARAMS},
            "seed": cfg.seed, "world_size": world_size, "dtype": cfg.dtype, "init_from": cfg.init_from}


# ────────────────────────────────────────────── data ───────────────────────────────────────────────

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


def steps_in_schedule(cfg, n_train_tokens: int, world_size: int) -> int:
    """Where the schedule ends: max_iters, or sooner the step that has read max_epochs passes' worth
    of training tokens (random windows, so a pass reads as many tokens as the split holds)."""
    if cfg.max_epochs == 0:
        return cfg.max_iters
    tokens_per_step = cfg.batch_size * cfg.grad_accum_steps * world_size * cfg.block_size
    return min(cfg.max_iters, max(1, math.ceil(cfg.max_epochs * n_train_tokens / tokens_per_step)))


# ───────────────────────────────── starting from a trained model ─────────────────────────────────

def fine_tuning_start(cfg, weights_dir: Path):
    """--init-from PATH -> (the checkpoint, its tokenizer, the model config): the checkpoint's shape
    with this run's dropout, and its block_size where its positions allow. The run's settings take
    that shape too. Shape flags that contradict the checkpoint are a one-line error."""
    path = Path(cfg.init_from)
    if path.resolve() in ((weights_dir / BEST).resolve(), (weights_dir / LATEST).resolve()):
        raise UserError(f"--init-from {path} is a file this run would write — copy it elsewhere, or pass "
                        f"another --weights-dir")
    source = load_source(path)          # a .pth of this project, or a GPT-2 from Hugging Face
    tokenizer = checkpoint_tokenizer(source, path, cfg.tokenizer_dir)
    shape = dict(source["model_config"])
    clash = [f"--{name.replace('_', '-')} {getattr(cfg, name)}" for name in SHAPE
             if name in cfg.given and name != "block_size" and getattr(cfg, name) != shape[name]]
    if clash:
        raise UserError(f"{', '.join(clash)}: with --init-from the model's shape comes from {path} ("
                        + ", ".join(f"{name} {shape[name]}" for name in SHAPE) + ") — drop those flags")
    if "block_size" in cfg.given:
        if shape["positions"] == "learned" and cfg.block_size > shape["block_size"]:
            raise UserError(f"--block-size {cfg.block_size} is beyond the learned position table of {path} "
                            f"({shape['block_size']} positions) — use at most {shape['block_size']}")
        shape["block_size"] = cfg.block_size
    config = ModelConfig.from_dict({**shape, "dropout": cfg.dropout})
    for name in SHAPE:               # from here on the settings name the model this run trains
        setattr(cfg, name, getattr(config, name))
    return source, tokenizer, config


def starting_weights(source: dict, config: ModelConfig) -> dict:
    """The checkpoint's weights in float32, its learned position table cut to block_size rows."""
    state = {name: t.float() if t.is_floating_point() else t for name, t in source["model"].items()}
    if config.positions == "learned":
        state["pos_emb.weight"] = state["pos_emb.weight"][:config.block_size]
    return state


# ──────────────────────────────────────────── the run ──────────────────────────────────────────────

def train(cfg, procs, device, started: float) -> int:
    """Set up (data, model, optimizer: fresh, or as weights-latest.pth left them), then train to the
    end of the schedule, evaluating and saving every eval_interval steps. -> the exit code."""
    say = (lambda msg: tqdm.write(msg, file=sys.stderr)) if procs.is_main else (lambda msg: None)
    weights_dir, input_path = Path(cfg.weights_dir), Path(cfg.input)
    check_writable(weights_dir)
    folder_lock = hold_folder(weights_dir, say) if procs.is_main else None   # noqa: F841 (held while we run)

    # The data: the text as token ids (tokenized once, then cached), split 90/10 by position.
    source = None                    # fine-tuning: the checkpoint the model starts from, and its tokenizer
    if cfg.init_from:
        source, tokenizer, config = fine_tuning_start(cfg, weights_dir)
    else:
        tokenizer = Tokenizer.load(cfg.tokenizer_dir)
        config = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=cfg.block_size, emb_len=cfg.emb_len,
                             num_layers=cfg.num_layers, num_heads=cfg.num_heads, dropout=cfg.dropout,
                             positions=cfg.positions)
    data_fp = data_fingerprint(input_path, tokenizer)
    resumed = None                   # checked before tokenizing: a resume that cannot work fails at once
    if (weights_dir / LATEST).exists() and not cfg.fresh:
        # None when it is a run of another text or tokenizer (say, after init.py on your own text).
        resumed = load_resume_state(weights_dir / LATEST, config, tokenizer.fingerprint(), data_fp, cfg.optimizer)
    train_ids, val_ids = split_ids(load_token_ids(input_path, data_fp, tokenizer, procs, say),
                                   cfg.block_size, input_path)
    if resumed is None and procs.is_main and (moved := move_run_aside(weights_dir)):   # the text is good: make room
        say(f"moved the run that was in {weights_dir}/ to {moved}/ ("
            f"{'--fresh' if cfg.fresh else 'not a run of this text and tokenizer'}); starting a new one")
    last_step = steps_in_schedule(cfg, len(train_ids), procs.world_size)
    chars = chars_per_token(tokenizer)                     # (V,) characters each token starts
    # The same validation windows at every evaluation, no more than fit in the split side by side.
    windows = fixed_windows(len(val_ids), cfg.block_size, min(EVAL_WINDOWS, len(val_ids) // cfg.block_size))
    parts = merge_parts(tokenizer.merges, tokenizer.vocab_size)   # (V, 2) for BPE-dropout

    # The model and optimizer. Seeds: identical initial weights on every process; one batch generator
    # that every process keeps in step (all draw the same step's batch, each takes its slice); dropout
    # masks independent per process.
    torch.manual_seed(cfg.seed)
    model = Transformer(config)
    if source is not None:           # fine-tuning: what the checkpoint learned is where this run starts
        model.load_state_dict(starting_weights(source, config))
    model = model.to(device)
    batches = torch.Generator().manual_seed(cfg.seed + 1)
    torch.manual_seed(cfg.seed + 2 + procs.rank)
    optimizer = configure_optimizer(model, cfg.learning_rate, cfg.weight_decay, optimizer=cfg.optimizer,
                                    muon_lr=cfg.muon_lr)
    amp_dtype = choose_dtype(cfg.dtype, device)          # bfloat16/float16 matmuls, or None: float32
    # float16 has too few exponent bits for small gradients: scale the loss up, unscale before
    # the step (skipping steps whose gradients overflowed). bfloat16 needs none of this.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    step, best_val, saved_step = 0, None, None
    if resumed is not None:
        restore_training_state(resumed, model, optimizer, scaler, batches, procs, device, cfg.seed, cfg.dropout, say)
        step, best_val, saved_step = resumed["step"], resumed.get("best_val"), resumed["step"]
    budget = time_budget.TimeBudget(cfg.max_minutes, (resumed or {}).get("minutes", 0.0), started, last_step, procs, device)
    describe(cfg, procs, device, amp_dtype, tokenizer, model, train_ids, val_ids, last_step, resumed,
             train_config(cfg, procs.world_size), say)
    if procs.is_main:
        remove_leftover_temps(weights_dir, say)

    horizon = min(last_step, budget.start_loop(step))   # where the schedule ends: sooner to fit max_minutes
    lr = learning_rate_at(step, cfg, horizon)

    # Nothing left to train? Then perhaps the final evaluation of a run killed during it.
    at_end = step >= horizon or budget.out_of_time()
    unfinished_lr = unfinished_final_evaluation(weights_dir, step, procs, device) if resumed else None
    if at_end and unfinished_lr is None:
        say(f"nothing to do: {weights_dir / LATEST} is already at step {step}" + (
            f" and has used its {cfg.max_minutes:g}-minute budget; pass --max-minutes M to train longer"
            if budget.out_of_time() else f" (the schedule ends at {last_step}); pass --max-iters N (and "
                                         f"--max-epochs E, if set) to train longer") + ", or --fresh to start over")
        return 0
    if at_end:
        say(f"{weights_dir / LATEST} is at the end of its run (step {step}), but the run stopped during its "
            f"final evaluation: doing that now")
        lr = unfinished_lr
    elif procs.is_main:
        start_history(weights_dir, step if resumed else None)

    # ───────────────────────────── the loop ─────────────────────────────
    def save_latest() -> None:       # weights-latest.pth: everything an exact resume needs, as of now
        save_resume_state(weights_dir / LATEST, model, optimizer, scaler, batches, procs, device, step, best_val,
                          budget.minutes_so_far(), data_fp, tokenizer, train_config(cfg, procs.world_size))

    train_model = model_for_training(model, procs, device)     # under torchrun: DDP averages the gradients
    bar = tqdm(total=horizon, initial=step, desc="training", unit="step", file=sys.stderr,
               disable=not procs.is_main or at_end, dynamic_ncols=True, mininterval=1.0)
    losses = []
    model.train()
    try:
        with StopRequest(say, procs.distributed) as stop, bar:
            while step < horizon and not at_end:
                horizon = budget.refit(step, horizon)           # the time budget may move the end
                lr = learning_rate_at(step, cfg, horizon)
                set_learning_rate(optimizer, lr, cfg)
                step_loss = 0.0
                for micro, (x, y) in enumerate(get_batch(train_ids, cfg, batches, procs, device, parts)):
                    last_micro = micro == cfg.grad_accum_steps - 1
                    with gradient_sync(train_model, procs, last_micro), autocast(device, amp_dtype):
                        _, loss = train_model(x, y)             # mean cross-entropy over (B, T)
                    # Dividing by the micro-step count makes the summed gradients a mean.
                    scaler.scale(loss / cfg.grad_accum_steps).backward()
                    step_loss += loss.item() / cfg.grad_accum_steps
                scaler.unscale_(optimizer)                      # float16: the true gradients, to clip
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP).item()
                # One exchange per step: the mean loss over processes, and whether any process wants
                # to stop (Ctrl-C or time), so that all of them stop after this same step.
                wants_stop = stop.requested or budget.out_of_time()
                loss_sum, stop_votes = all_reduce_sum([step_loss, float(wants_stop)], procs, device)
                step_loss = loss_sum / procs.world_size
                # float16's scaler skips steps whose gradients overflowed; anywhere else an infinite
                # gradient means training has diverged.
                if not math.isfinite(step_loss) or (not scaler.is_enabled() and not math.isfinite(grad_norm)):
                    raise LossNotFinite(f"loss became {step_loss} at step {step + 1}")
                scaler.step(optimizer)                          # every weight a small step downhill
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                losses.append(step_loss)
                bar.total = horizon
                bar.update(1)
                tokens_per_s = (bar.format_dict["rate"] or 0) * cfg.batch_size * cfg.grad_accum_steps \
                    * procs.world_size * cfg.block_size
                bar.set_postfix_str(f"loss {step_loss:.3f}, lr {lr:.2e}, {tokens_per_s:,.0f} tok/s", refresh=False)
                if stop_votes and stop.requested:               # Ctrl-C: save where we are, and go
                    save_latest()
                    say(f"stopped at step {step}; saved {weights_dir / LATEST} — run train.py again to resume")
                    return 128 + stop.signum
                at_end = bool(stop_votes) or step == horizon   # out of time, or at the schedule's end
                if step % cfg.eval_interval == 0 or at_end:
                    # Validation, weights-best.pth when nats/char improved, a history row, then
                    # weights-latest.pth. Latest is written last: a run killed before it resumes from
                    # the previous evaluation and redoes this one exactly, rewriting the other two.
                    result = evaluate(model, val_ids, windows, chars, cfg.batch_size, device, amp_dtype, procs)
                    if not math.isfinite(result.nll):
                        raise LossNotFinite(f"validation loss became {result.nll} at step {step}")
                    improved = best_val is None or result.nats_per_char < best_val
                    best_val = result.nats_per_char if improved else best_val
                    train_loss, losses = sum(losses) / len(losses), []
                    if improved and procs.is_main:
                        save_atomic(best_checkpoint(model, step, result, tokenizer,
                                                    train_config(cfg, procs.world_size)), weights_dir / BEST)
                    if procs.is_main:
                        record(weights_dir, step, budget.minutes_so_far(), lr, train_loss, result, "windows", say)
                    save_latest()
                    saved_step = step
                    say(f"step {step}: train {train_loss:.4f}, val {result.figures()}"
                        f"{' (best, saved)' if improved else ''}")
    except LossNotFinite as e:
        kept = (f"{weights_dir / LATEST} still holds step {saved_step}, the last good checkpoint"
                if saved_step is not None else "no checkpoint was written")
        raise UserError(f"{e}; stopped without saving — {kept}. Try a lower --learning-rate") from None
    if budget.limited and step < last_step:
        say(f"--max-minutes {cfg.max_minutes:g} reached at step {step} (the learning-rate schedule was "
            f"fitted to end there)")

    # The headline figure: the validation split scored once more (at most FINAL_EVAL_TOKENS of it).
    final = final_windows(len(val_ids), cfg.block_size, FINAL_EVAL_TOKENS)
    result = evaluate(model, val_ids, final, chars, cfg.batch_size, device, amp_dtype, procs, "final evaluation")
    if procs.is_main:
        record(weights_dir, step, budget.minutes_so_far(), lr, None, result, "full", say)
    barrier(procs)                   # the others wait for rank 0's writes, then all leave the group together
    targets = len(val_ids) - 1
    scope = ("whole validation split" if result.tokens == targets else
             f"{result.tokens:,} of {targets:,} validation tokens, in windows spread over the split")
    say(f"final, {scope} ({result.tokens:,} tokens, {result.chars:,} chars) at step {step}: {result.figures()}")
    say(f"saved {weights_dir / LATEST} and {weights_dir / BEST} (best val {best_val:.4f} nats/char) after "
        f"{budget.minutes_so_far():.1f} min")
    return 0


class LossNotFinite(Exception):
    """Training diverged: the loss or gradient became NaN or infinite."""


def main(argv=None) -> int:
    set_up_streams()                 # any console, UTF-8 or not
    started = time_budget.clock()    # the time budget counts from here: tokenizing and setting up use it too
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        cfg = parse_settings(argv)
        procs, device = start_processes(cfg.device)
        return train(cfg, procs, device, started)
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
