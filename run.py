"""Generate text with a trained model: an interactive prompt, one-shot prompts, or a score of a text.

    python run.py                            # interactive: type a prompt, watch the continuation stream
    python run.py --prompt "ROMEO:" --seed 1 # one continuation, then exit
    python run.py < prompts.txt              # one continuation per input line
    python run.py --eval some.txt            # how well the model predicts a text, in nats/bits per char

Only generated text goes to stdout (so `> out.txt` is clean); everything else goes to stderr.
Each continuation is followed by one newline. The model is rebuilt from its checkpoint's own
config, so editing Model_Params.py after training does not stop the trained model from running;
run.py reads only the sampling defaults from it.

Exit codes: 0 done (also Ctrl-D, the end of input); 2 a problem to fix, explained in one line
(argparse's usage line for a bad option); 130 Ctrl-C, at any moment; 1 stdout closed early (`| head`).
"""
from __future__ import annotations

import argparse
import codecs
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from support.settings import UserError, checked, load_params

# torch (2-4 s to import here) and the modules that need it are imported inside the functions that
# use them, so that --help and mistakes that need no model answer at once.

SCRIPT_DIR = Path(__file__).resolve().parent
DEFAULT_WEIGHTS_DIR = SCRIPT_DIR / "Saved_Weights"
DEFAULT_TOKENIZER_DIR = SCRIPT_DIR / "tokenizer_save"
EXIT_INTERRUPTED = 130          # the shell's convention for "stopped by Ctrl-C" (128 + SIGINT)


# ───────────────────────────────────────── command line ──────────────────────────────────────────

def count_value(minimum: int):
    """An argparse type: an integer >= minimum."""
    return checked(int, lambda n: n >= minimum, f"must be an integer >= {minimum}")


temperature_value = checked(float, lambda t: t >= 0, "must be a number >= 0 (0 = greedy)")
top_k_value = checked(int, lambda k: k >= 0, "must be an integer >= 0 (0 = no limit)")
top_p_value = checked(float, lambda p: 0 < p <= 1, "must be a number in (0, 1] (1 = no limit)")
seed_value = checked(int, lambda n: 0 <= n < 2 ** 64, "must be an integer from 0 to 2**64 - 1")


def stop_value(text: str) -> str:
    r"""The text after --stop, with backslash escapes such as \n and \t turned into characters."""
    try:
        # Python's escape decoder works on bytes; backslashreplace keeps non-ASCII text intact.
        stop = text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError:
        raise argparse.ArgumentTypeError(f"has a broken backslash escape: {text!r}") from None
    if not stop:
        raise argparse.ArgumentTypeError("must not be empty")
    return stop


# Sampling options whose default comes from Model_Params.py: option name -> its argparse type.
SAMPLING_DEFAULTS = {"max_new_tokens": count_value(0), "temperature": temperature_value,
                     "top_k": top_k_value, "top_p": top_p_value}
SAMPLING_KINDS = {"max_new_tokens": int, "temperature": float, "top_k": int, "top_p": float}


def parse_args(argv, params) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Continue prompts with the trained model (streamed to stdout), or score a text.",
        epilog="Prompts: interactive when stdin is a terminal (Ctrl-D or Ctrl-C quits); otherwise one "
               "continuation per line of stdin. An empty prompt starts from a new line.")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--prompt", metavar="TEXT", help="continue TEXT once and exit")
    what.add_argument("--eval", metavar="FILE", type=Path,
                      help="score the UTF-8 text in FILE; the last stdout line gives nats/bits per character")
    p.add_argument("--max-new-tokens", type=count_value(0), metavar="N",
                   help=f"tokens to generate per prompt (default Model_Params: {params.max_new_tokens})")
    p.add_argument("--temperature", type=temperature_value, metavar="T",
                   help=f"sampling temperature, 0 = greedy (default Model_Params: {params.temperature})")
    p.add_argument("--top-k", type=top_k_value, metavar="K",
                   help=f"sample from the K likeliest tokens only, 0 = no limit "
                        f"(default Model_Params: {params.top_k})")
    p.add_argument("--top-p", type=top_p_value, metavar="P",
                   help=f"nucleus sampling: the likeliest tokens holding probability P, 1 = no limit "
                        f"(default Model_Params: {params.top_p})")
    p.add_argument("--beams", type=count_value(1), default=1, metavar="N",
                   help="beam search with N beams (deterministic, printed when complete; ignores the "
                        "sampling options); default 1 = sample and stream")
    p.add_argument("--seed", type=seed_value, help="random seed: the same seed and prompt give the same text")
    p.add_argument("--stop", type=stop_value, metavar="TEXT",
                   help=r"stop when the generated text contains TEXT (not printed); escapes work, e.g. "
                        r"--stop '\n' ends at the end of the line")
    p.add_argument("--weights", type=Path, metavar="PATH",
                   help="checkpoint file, or a folder to take weights-best.pth (else the newest "
                        "weights-*.pth) from (default Saved_Weights/)")
    p.add_argument("--tokenizer-dir", type=Path, default=DEFAULT_TOKENIZER_DIR, metavar="DIR",
                   help="tokenizer folder written by init.py (default tokenizer_save/)")
    p.add_argument("--device", default="auto",
                   help="auto (default: cuda, else mps, else cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=count_value(0), default=1, metavar="N",
                   help="CPU threads for torch (default 1: one token at a time gains little from more, and "
                        "on a busy machine they wait on each other; 0 = torch's default, all cores)")
    p.add_argument("--eval-stride", type=count_value(1), metavar="N",
                   help="--eval: tokens a window advances by (default block_size // 2; 1 = full context "
                        "for every token, slowest)")
    args = p.parse_args(argv)
    args.explicit_sampling = [name for name in ("temperature", "top_k", "top_p", "seed")
                              if getattr(args, name) is not None]
    for name, check in SAMPLING_DEFAULTS.items():
        if getattr(args, name) is None:
            try:
                setattr(args, name, check(str(getattr(params, name))))
            except argparse.ArgumentTypeError as e:
                raise UserError(f"Model_Params.py: {name} = {getattr(params, name)!r} {e}") from None
    return args


# ─────────────────────────────────────────── loading ─────────────────────────────────────────────

def find_weights(path: Path | None) -> Path:
    """The checkpoint to run: `path` itself if it is a file; in a folder (default Saved_Weights/)
    weights-best.pth, else the most recently written weights-*.pth."""
    folder = DEFAULT_WEIGHTS_DIR if path is None else path
    if path is not None and not path.is_dir():
        if not path.exists():
            raise UserError(f"{path}: no such checkpoint — train one first (`python train.py`)")
        return path
    best = folder / "weights-best.pth"
    if best.is_file():
        return best
    candidates = sorted(folder.glob("weights-*.pth"), key=lambda f: f.stat().st_mtime)
    if not candidates:
        raise UserError(f"no weights in {folder}/ — train first (`python train.py`), or restore the "
                        f"shipped ones (`git checkout Saved_Weights/weights-best.pth`)")
    return candidates[-1]


def params_differences(config: dict, params) -> list[str]:
    """'name X (checkpoint Y)' for every model-config value that Model_Params.py (X) and the
    checkpoint (Y) disagree on."""
    return [f"{name} {getattr(params, name)!r} (checkpoint {value!r})"
            for name, value in config.items()
            if hasattr(params, name) and getattr(params, name) != value]


@dataclass
class Loaded:
    model: object              # Model.Transformer
    tokenizer: object          # tokenizer.Tokenizer
    device: object             # torch.device


def load(args, params, weights: Path) -> Loaded:
    from support.checkpoints import check_tokenizer_fingerprint, load_checkpoint, model_from_checkpoint
    from support.devices import pick_device
    from tokenizer import Tokenizer

    try:
        device = pick_device(args.device)
    except ValueError as e:
        raise UserError(str(e)) from None
    tokenizer = Tokenizer.load(args.tokenizer_dir)
    ckpt = load_checkpoint(weights)
    check_tokenizer_fingerprint(ckpt, tokenizer.fingerprint(), weights)
    model = model_from_checkpoint(ckpt, device, weights)
    c = model.config
    val = ckpt.get("val_nats_per_char")
    print(f"{weights}: {model.num_params() / 1e6:.2f}M parameters, vocab {c.vocab_size}, "
          f"context {c.block_size} tokens, {c.num_layers} layers, step {ckpt.get('step', '?')}"
          + (f", val {val:.3f} nats/char" if isinstance(val, float) else "") + f"; device {device}",
          file=sys.stderr)
    differences = params_differences(ckpt["model_config"], params)
    if differences:
        print(f"note: Model_Params.py differs from this checkpoint: {'; '.join(differences)} — running "
              f"the model as it was trained (train again to use the new values)", file=sys.stderr)
    return Loaded(model, tokenizer, device)


# ────────────────────────────────────────── generation ───────────────────────────────────────────

def shown_length(pending: str, stop: str | None) -> tuple[int, bool]:
    """How much of the not-yet-printed text can be printed now, and whether the stop text was found.

    Text before the first `stop` is printed, `stop` itself is not. A tail that could still grow into
    `stop` (e.g. "\\r" when stop is "\\r\\n") waits for the next token to decide.
    """
    if stop is None:
        return len(pending), False
    at = pending.find(stop)
    if at >= 0:
        return at, True
    for k in range(min(len(stop) - 1, len(pending)), 0, -1):
        if pending.endswith(stop[:k]):
            return len(pending) - k, False
    return len(pending), False


class TextGenerator:
    """Turns prompts into continuations written to `out`, with the settings from the command line."""

    def __init__(self, loaded: Loaded, args: argparse.Namespace, out):
        self.model, self.tokenizer, self.device = loaded.model, loaded.tokenizer, loaded.device
        self.args = args
        self.out = out
        self.noted_long_prompt = False

    def prompt_ids(self, prompt: str) -> list[int]:
        """The token ids the model starts from: the prompt's last block_size tokens (noted once on
        stderr when that cuts the prompt). An empty prompt starts from a newline, as if at the start
        of a line of the text."""
        block = self.model.config.block_size
        # Bytes that are not UTF-8 in a command-line argument arrive as lone surrogates: make them U+FFFD.
        prompt = prompt.encode("utf-8", "surrogatepass").decode("utf-8", "replace") or "\n"
        ids = self.tokenizer.encode(prompt)      # about 0.5 s for 1 MB of text
        if len(ids) > block:
            if not self.noted_long_prompt:
                print(f"note: prompt of {len(ids)} tokens is longer than the model's context; only its "
                      f"last {block} tokens are used", file=sys.stderr)
                self.noted_long_prompt = True
            ids = ids[-block:]
        return ids

    def continue_prompt(self, prompt: str) -> None:
        """Write the continuation of `prompt`, then a newline."""
        import torch

        idx = torch.tensor([self.prompt_ids(prompt)], dtype=torch.long, device=self.device)
        if self.args.beams > 1:
            self._beam_search(idx)
        else:
            # Seeded afresh for every prompt: a prompt's text depends only on it and the seed, not on
            # the prompts before it. Sampling runs on the CPU, so it is a CPU generator on any device.
            generator = None if self.args.seed is None else torch.Generator().manual_seed(self.args.seed)
            self._stream(idx, generator)
        self.out.write("\n")
        self.out.flush()

    def _stream(self, idx, generator) -> None:
        """Print each new token as soon as it is sampled. Tokens are bytes, and one character may span
        several tokens: the incremental decoder holds an incomplete character until it is whole, and
        turns bytes that never form valid UTF-8 into U+FFFD."""
        a = self.args
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        tokens = self.model.stream(idx, a.max_new_tokens, temperature=a.temperature,
                                   top_k=a.top_k or None, top_p=a.top_p, generator=generator)
        pending = ""                                   # decoded, not printed yet (see shown_length)
        for token in tokens:
            pending += decoder.decode(self.tokenizer.decode_bytes([token]))
            n, stopped = shown_length(pending, a.stop)
            self.out.write(pending[:n])
            self.out.flush()
            pending = pending[n:]
            if stopped:
                return
        pending += decoder.decode(b"", final=True)
        self.out.write(pending[:shown_length(pending, a.stop)[0]])

    def _beam_search(self, idx) -> None:
        a = self.args
        # A stop text that is one token can end a beam as soon as it appears.
        stop_ids = self.tokenizer.encode(a.stop) if a.stop else []
        end_token = stop_ids[0] if len(stop_ids) == 1 else None
        out = self.model.beam_search(idx, a.max_new_tokens, a.beams, end_token=end_token)
        text = self.tokenizer.decode(out[0, idx.shape[1]:].tolist())
        self.out.write(text[:shown_length(text, a.stop)[0]])


def read_prompts(interactive: bool):
    """Yield prompts from stdin: with a '> ' marker on stderr when a person is typing, otherwise one
    per line. The line's newline is not part of the prompt."""
    if interactive:
        print("Type a prompt and press Enter (an empty line starts from a new line); Ctrl-D or Ctrl-C quits.",
              file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:                                   # end of input (Ctrl-D)
            if interactive:
                print(file=sys.stderr)
            return
        yield line[:-2] if line.endswith("\r\n") else line.removesuffix("\n")


# ─────────────────────────────────────────── scoring ─────────────────────────────────────────────

def eval_windows(n_tokens: int, block: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows over a sequence of n_tokens + 1 ids (a start token, then the text's tokens) that
    score every text token exactly once: (start, end, skip) means input ids [start, end) predict
    ids [start + 1, end + 1), of which the first `skip` predictions were already scored.

    The first window scores its tokens with the context they have (1 .. block tokens); each later
    window ends `stride` tokens further (the last one at the end of the text) and scores only its
    new tokens, each with at least block - stride tokens of context.
    """
    end = min(block, n_tokens)
    windows = [(0, end, 0)]
    while end < n_tokens:
        new_end = min(end + stride, n_tokens)
        windows.append((new_end - block, new_end, block - (new_end - end)))
        end = new_end
    return windows


def read_text(path: Path) -> str:
    """The UTF-8 text in `path` (exactly as stored: no newline translation), or a one-line UserError."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a text file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (invalid byte at offset {e.start})") from None
    if not text:
        raise UserError(f"{path}: empty — nothing to score")
    return text


def evaluate(loaded: Loaded, text: str, stride: int | None) -> str:
    """Score `text`; return the figures line.

    Every token of the text is predicted from up to block_size tokens before it. The first token
    has no text before it, so it is predicted after a newline (the same start as an empty prompt),
    and all `tokens` tokens are scored. nats_per_char = total negative log-likelihood in nats ÷
    characters of the text; bits_per_char = nats_per_char / ln 2; nats_per_token = total ÷ tokens.
    """
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    model, tokenizer = loaded.model, loaded.tokenizer
    block = model.config.block_size
    if stride is None:
        stride = max(1, block // 2)
    if stride > block:
        raise UserError(f"--eval-stride {stride} is larger than the model's context ({block} tokens)")
    started = time.perf_counter()
    ids = tokenizer.encode(text)
    newline = tokenizer.encode("\n")[-1]
    seq = torch.tensor([newline] + ids, dtype=torch.long)                    # (1 + tokens,)
    windows = eval_windows(len(ids), block, stride)
    # Every window but the first is block tokens long, so they stack into batches.
    batches = [windows[:1]] + [windows[i:i + 32] for i in range(1, len(windows), 32)]
    total = 0.0
    with torch.inference_mode():
        for group in tqdm(batches, desc="scoring", unit="batch", file=sys.stderr, leave=False,
                          disable=len(batches) < 20):
            x = torch.stack([seq[s:e] for s, e, _ in group]).to(loaded.device)          # (W, L)
            y = torch.stack([seq[s + 1:e + 1] for s, e, _ in group]).to(loaded.device)  # (W, L)
            logits, _ = model(x)                                                        # (W, L, V)
            nll = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")  # (W, L)
            for row, (_, _, skip) in enumerate(group):
                total += nll[row, skip:].sum().item()
    seconds = time.perf_counter() - started
    print(f"scored {len(ids)} tokens in {len(windows)} windows of up to {block} tokens "
          f"(stride {stride}) in {seconds:.1f} s", file=sys.stderr)
    nats_per_char = total / len(text)
    return (f"nats_per_char={nats_per_char:.6f} bits_per_char={nats_per_char / math.log(2):.6f} "
            f"nats_per_token={total / len(ids):.6f} tokens={len(ids)} chars={len(text)}")


# ───────────────────────────────────────────── main ──────────────────────────────────────────────

def run(args, params, weights: Path, eval_text: str | None) -> int:
    if sys.stdout is None:
        raise UserError("stdout is closed — nowhere to write the text")
    # Generated text is arbitrary: never fail on a character the terminal's encoding lacks. Stdin lines
    # end only at "\n" (a "\r" inside a prompt is part of it), and bad UTF-8 in them becomes U+FFFD.
    sys.stdout.reconfigure(errors="replace")
    if sys.stdin is not None and args.prompt is None and args.eval is None:
        sys.stdin.reconfigure(errors="replace", newline="\n")

    if args.threads:
        # Measured on the shared 2-core machine: 2 threads generated ~5x slower than 1 (bench_generate).
        import torch
        torch.set_num_threads(args.threads)
    loaded = load(args, params, weights)
    if args.eval is not None:
        print(evaluate(loaded, eval_text, args.eval_stride), flush=True)
        return 0
    if args.beams > 1 and args.explicit_sampling:
        ignored = ", ".join("--" + name.replace("_", "-") for name in args.explicit_sampling)
        print(f"note: beam search is deterministic; ignoring {ignored}", file=sys.stderr)
    writer = TextGenerator(loaded, args, sys.stdout)
    if args.prompt is not None:
        writer.continue_prompt(args.prompt)
        return 0
    if sys.stdin is None:                      # started with stdin closed: no prompts to read
        print("stdin is closed: no prompts to read (use --prompt TEXT)", file=sys.stderr)
        return 0
    for prompt in read_prompts(interactive=sys.stdin.isatty()):
        writer.continue_prompt(prompt)
    return 0


def main(argv=None) -> int:
    try:
        params = load_params(SAMPLING_KINDS)
        args = parse_args(argv, params)         # bad values: argparse prints usage and exits 2
        # Mistakes that need no model are reported before the slow torch import.
        eval_text = read_text(args.eval) if args.eval is not None else None
        weights = find_weights(args.weights)
        if not args.tokenizer_dir.is_dir():
            raise UserError(f"no tokenizer in {args.tokenizer_dir}/ — run `python init.py` first, or restore "
                            f"the shipped one (`git checkout tokenizer_save/`)")
        from support.checkpoints import CheckpointError   # imports torch
        from tokenizer import TokenizerError
        try:
            return run(args, params, weights, eval_text)
        except (CheckpointError, TokenizerError) as e:
            raise UserError(str(e)) from None
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:                   # Ctrl-C: stop at once, cleanly
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of stdout went away (e.g. `| head`): stop quietly. Point stdout at devnull so
        # Python's final flush does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
