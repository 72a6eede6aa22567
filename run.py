"""Generate text with a trained model: an interactive prompt, one-shot prompts, or a score of a text.

    python run.py                            # interactive: type a prompt, watch the continuation stream
    python run.py --prompt "ROMEO:" --seed 1 # one continuation, then exit
    python run.py < prompts.txt              # one continuation per input line
    python run.py --eval some.txt            # how well the model predicts a text, in nats/bits per char
    python run.py --weights gpt2             # GPT-2 itself (support/hugging_face.py; --export-hf: the way out)

See inside: --show-probs K (what the model weighed before each token), --trace (one forward pass, stage
by stage), --attention FILE.png (where each head looks), --html OUT.html (a page: click any token).

Only generated text goes to stdout (so `> out.txt` is clean); everything else goes to stderr.
Each continuation is followed by one newline. The model is rebuilt from its checkpoint's own
config, so editing Model_Params.py after training does not stop the trained model from running;
run.py reads only the sampling defaults from it. Without --weights it runs your own best checkpoint
from Saved_Weights/ if there is one, else the shipped model, Saved_Weights/pretrained.pth.

Exit codes: 0 done (also Ctrl-D, the end of input); 2 a problem to fix, explained in one line;
130 Ctrl-C, at any moment; 1 stdout closed early (`| head`).
"""
from __future__ import annotations

import argparse
import codecs
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from support.settings import Parser, UserError, checked, load_params
from support.text_io import (END_OF_INPUT, describe_loaded, read_prompts, read_text, set_up_streams, shown_length, shown_path,
                             stdout_closed, stop_value)

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


# Sampling options whose default comes from Model_Params.py: name -> (argparse type, metavar, help).
SAMPLING = {"max_new_tokens": (count_value(0), "N", "tokens to generate per prompt"),
            "temperature": (checked(float, lambda t: t >= 0, "must be a number >= 0 (0 = greedy)"), "T",
                            "sampling temperature, 0 = greedy"),
            "top_k": (checked(int, lambda k: k >= 0, "must be an integer >= 0 (0 = no limit)"), "K",
                      "sample from the K likeliest tokens only, 0 = no limit"),
            "top_p": (checked(float, lambda p: 0 < p <= 1, "must be a number in (0, 1] (1 = no limit)"), "P",
                      "nucleus sampling: the likeliest tokens holding probability P, 1 = no limit")}
SAMPLING_KINDS = {"max_new_tokens": int, "temperature": float, "top_k": int, "top_p": float}


def parse_args(argv, params) -> argparse.Namespace:
    p = Parser(prog="run.py", description="Continue prompts with the trained model, or score a text.",
               removed={"beams": "beam search never earned its place (off by default, no measured gain); use --temperature 0 for a "
                                 "deterministic (greedy) continuation"},
               epilog=f"Prompts: interactive when stdin is a terminal ({END_OF_INPUT} or Ctrl-C quits); otherwise one "
                      "continuation per line of stdin. An empty prompt starts from a new line.")
    task = p.add_mutually_exclusive_group()
    task.add_argument("--prompt", metavar="TEXT", help="continue TEXT once and exit")
    task.add_argument("--eval", metavar="FILE", type=Path,
                      help="score the UTF-8 text in FILE; the last stdout line gives nats/bits per character")
    task.add_argument("--export-hf", type=Path, metavar="DIR", help="write the model and its tokenizer to the new "
                      "folder DIR in Hugging Face's layout (transformers loads it with no code of ours), then exit")
    for name, (kind, metavar, what) in SAMPLING.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, metavar=metavar,
                       help=f"{what} (default Model_Params: {getattr(params, name)})")
    p.add_argument("--seed", type=checked(int, lambda n: 0 <= n < 2 ** 64, "must be an integer from 0 to "
                   "2**64 - 1"), help="random seed: the same seed and prompt give the same text")
    p.add_argument("--stop", type=stop_value, metavar="TEXT", help=r"stop when the generated text contains "
                   r"TEXT (not printed); escapes work, e.g. --stop '\n' ends at the end of the line")
    p.add_argument("--weights", type=Path, metavar="PATH", help="checkpoint file, or a folder: its weights-best.pth, "
                   "else its newest weights-*.pth, else pretrained.pth (default Saved_Weights/); or GPT-2 (gpt2 ... "
                   "gpt2-xl, downloaded with huggingface_hub) or a Hugging Face GPT-2 folder")
    p.add_argument("--tokenizer-dir", type=Path, default=DEFAULT_TOKENIZER_DIR, metavar="DIR",
                   help="tokenizer folder written by init.py, for a checkpoint that does not carry its own "
                        "tokenizer (default tokenizer_save/)")
    p.add_argument("--device", default="auto", help="auto (default: cuda, else mps, else cpu), cpu, cuda, "
                   "cuda:N or mps")
    p.add_argument("--threads", type=count_value(0), default=1, metavar="N",
                   help="CPU threads for torch (default 1: one token at a time gains little from more, and "
                        "on a busy machine they wait on each other; 0 = torch's default, all cores)")
    p.add_argument("--int8", action="store_true", help="run on the CPU, the model's matmuls in int8 (dynamic "
                   "quantization): about 2x faster at GPT-2's size; --eval moves 0.0006 nats/char on the shipped model")
    p.add_argument("--eval-stride", type=count_value(1), metavar="N", help="--eval: tokens a window advances "
                   "by (default block_size // 2; 1 = full context for every token, slowest)")
    look = p.add_argument_group("see inside the model (on stderr or in files; stdout keeps only the text)")
    look.add_argument("--show-probs", type=count_value(1), metavar="K", help="after each token, the K "
                      "likeliest candidates, probabilities after temperature: → drawn, ✗ cut by top-k/top-p "
                      "(-> and x in a console without them)")
    look.add_argument("--trace", action="store_true", help="with --prompt: each stage's tensor shape in one "
                      "forward pass, then the top-5 next tokens (generates nothing)")
    look.add_argument("--attention", type=Path, metavar="FILE.png", help="with --prompt: draw every layer "
                      "and head's attention over the prompt (generates nothing; needs matplotlib)")
    look.add_argument("--html", type=Path, metavar="OUT.html", help="with --prompt or --eval: a page of the run; "
                      "click a token for its probability, alternatives, attention and merges")
    args = p.parse_args(argv)
    check_combination(args)
    for name, (check, _, _) in SAMPLING.items():
        if getattr(args, name) is None:
            try:
                setattr(args, name, check(str(getattr(params, name))))
            except argparse.ArgumentTypeError as e:
                raise UserError(f"Model_Params.py: {name} = {getattr(params, name)!r} {e}") from None
    return args


def check_combination(args) -> None:
    """Options that only make sense together, or never together: one line, exit 2."""
    views = [f"--{name}" for name in ("trace", "attention") if getattr(args, name)]
    if args.export_hf is not None and args.int8:
        raise UserError("--export-hf writes the float32 model: drop --int8")
    if args.export_hf is not None and args.export_hf.exists() and (not args.export_hf.is_dir() or any(args.export_hf.iterdir())):
        raise UserError(f"--export-hf {args.export_hf}: already exists and is not an empty folder — give a new folder")
    if views and args.prompt is None:
        raise UserError(f"{views[0]} looks at one prompt: add --prompt TEXT")
    if args.html is not None and args.eval is None and args.prompt is None:
        raise UserError("--html shows one run: add --prompt TEXT or --eval FILE")
    clash = (views or [None])[0]
    if args.show_probs and (clash or args.eval):
        raise UserError(f"--show-probs shows sampled generation, which {clash or '--eval'} does not do")
    if args.html and clash:
        raise UserError(f"--html shows sampled generation or a score, which {clash} does not give")


# ─────────────────────────────────────────── loading ─────────────────────────────────────────────

SHIPPED = "pretrained.pth"       # the model that comes with the repo; train.py never writes this name


def find_weights(path: Path | None) -> tuple[Path, str]:
    """The checkpoint to run and why it was chosen: `path` itself if it is a file; in a folder
    (default Saved_Weights/) your weights-best.pth, else your newest weights-*.pth, else the
    shipped pretrained.pth — so training never hides the shipped model, and never loses it."""
    folder = DEFAULT_WEIGHTS_DIR if path is None else path
    if path is not None and not path.is_file():
        from support.hugging_face import is_gpt2_source      # (imports torch)
        if is_gpt2_source(path):                              # gpt2 ... gpt2-xl, or a GPT-2 folder
            return path, "GPT-2 from Hugging Face"
    if path is not None and not path.is_dir():
        if not path.exists():
            raise UserError(f"{path}: no such checkpoint — train one first (`python train.py`)")
        return path, "given with --weights"
    shown = shown_path(folder)
    shipped = folder / SHIPPED
    pick_shipped = f"; the shipped model is {SHIPPED}, use --weights to pick it" if shipped.is_file() else ""
    if (folder / "weights-best.pth").is_file():
        return folder / "weights-best.pth", "your best checkpoint" + pick_shipped
    yours = sorted(folder.glob("weights-*.pth"), key=lambda f: f.stat().st_mtime)
    if yours:
        return yours[-1], "your newest checkpoint, no weights-best.pth yet" + pick_shipped
    if shipped.is_file():
        return shipped, f"the shipped model: no weights of your own in {shown}/ yet"
    raise UserError(f"no weights in {shown}/ — train first (`python train.py`), or restore the shipped "
                    f"model (`git checkout Saved_Weights/{SHIPPED}`)")


@dataclass
class Loaded:
    model: object              # Model.Transformer
    tokenizer: object          # tokenizer.Tokenizer
    device: object             # torch.device
    banner: list               # the lines that say which checkpoint was loaded, and why


def load(args, params, weights: Path, why: str) -> Loaded:
    from support.checkpoints import load_trained_model
    from support.devices import int8_for_cpu, pick_device
    try:
        device = pick_device("cpu" if args.int8 else args.device)
    except ValueError as e:
        raise UserError(str(e)) from None
    # The tokenizer the model was trained with: the checkpoint's own copy, or (an older file) --tokenizer-dir.
    model, ckpt, tokenizer = load_trained_model(weights, args.tokenizer_dir, device)
    # Which file, why, what it holds; and what an edited Model_Params.py no longer matches.
    banner = describe_loaded(weights, why, model, ckpt, device, params)
    print("\n".join(banner), file=sys.stderr)
    if args.int8:                               # int8 matmuls: about 2x faster at GPT-2's size
        model = int8_for_cpu(model)
    return Loaded(model, tokenizer, device, banner)


# ────────────────────────────────────────── generation ───────────────────────────────────────────

class TextGenerator:
    """Turns prompts into continuations written to `out`, with the settings from the command line."""

    def __init__(self, loaded: Loaded, args: argparse.Namespace, out):
        self.model, self.tokenizer, self.device = loaded.model, loaded.tokenizer, loaded.device
        self.loaded, self.args, self.out = loaded, args, out
        self.noted_long_prompt = False
        self.steps = []                        # --html: each drawn token with its step's logits

    def prompt_ids(self, prompt: str) -> list[int]:
        """The token ids the model starts from: the prompt's last block_size tokens (noted once on
        stderr when that cuts the prompt). An empty prompt starts from start_ids: a new line, or document."""
        block = self.model.config.block_size
        # Bytes that are not UTF-8 in a command-line argument arrive as lone surrogates: make them U+FFFD.
        prompt = prompt.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        ids = self.tokenizer.encode(prompt) if prompt else start_ids(self.tokenizer)   # ~0.5 s per MB
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
        # Seeded afresh for every prompt: a prompt's text depends only on it and the seed, not on
        # the prompts before it. Sampling runs on the CPU, so it is a CPU generator on any device.
        generator = None if self.args.seed is None else torch.Generator().manual_seed(self.args.seed)
        self._stream(idx, generator)
        print(file=self.out, flush=True)
        if self.args.html is not None:         # see inside: a page of this continuation
            from support.see_inside_page import write_generation_page
            write_generation_page(self.args.html, self.loaded, self.args, idx[0].tolist(), self.steps)

    def _stream(self, idx, generator) -> None:
        """Print each new token as soon as it is sampled. A character may span several tokens: the incremental
        decoder holds one until it is whole, and turns bytes that never form valid UTF-8 into U+FFFD."""
        from support import see_inside
        a = self.args
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        tokens = self.model.stream(idx, a.max_new_tokens, temperature=a.temperature, top_k=a.top_k or None,
                                   top_p=a.top_p, generator=generator, with_logits=bool(a.show_probs or a.html))
        pending = ""                                   # decoded, not printed yet (see shown_length)
        for token in tokens:
            if a.show_probs or a.html:                 # see inside: what the model weighed
                token, logits = token
                if a.html:
                    self.steps.append((token, logits))
                if a.show_probs:
                    see_inside.show_candidates(logits, token, self.tokenizer.decode_bytes, a)
            if token == self.tokenizer.end_of_text:      # the model ended the document (GPT-2's <|endoftext|>)
                break
            pending += decoder.decode(self.tokenizer.decode_bytes([token]))
            n, stopped = shown_length(pending, a.stop)
            self.out.write(pending[:n])
            self.out.flush()
            pending = pending[n:]
            if stopped:
                return
        pending += decoder.decode(b"", final=True)
        self.out.write(pending[:shown_length(pending, a.stop)[0]])


def start_ids(tokenizer) -> list[int]:
    """What comes before a text from nothing: <|endoftext|> (a new document) where it exists, else a newline."""
    eot = tokenizer.end_of_text
    return [eot] if eot is not None else tokenizer.encode("\n")[-1:]


# ─────────────────────────────────────────── scoring ─────────────────────────────────────────────

def eval_windows(n_tokens: int, block: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows over a sequence of n_tokens + 1 ids (a start token, then the text's tokens) that score
    every text token exactly once: (start, end, skip) means input ids [start, end) predict ids
    [start + 1, end + 1), of which the first `skip` predictions were already scored. The first window
    scores its tokens with the context they have (1 .. block tokens); each later one ends `stride` tokens
    further (the last at the end of the text) and scores only its new tokens, each with >= block - stride
    tokens of context."""
    end = min(block, n_tokens)
    windows = [(0, end, 0)]
    while end < n_tokens:
        new_end = min(end + stride, n_tokens)
        windows.append((new_end - block, new_end, block - (new_end - end)))
        end = new_end
    return windows


def evaluate(loaded: Loaded, text: str, args) -> str:
    """Score `text`; return the figures line (and with --html, write the page of the text). Every token
    is predicted from up to block_size tokens before it; the first, with no text before it, after
    start_ids (as an empty prompt). nats_per_char = total negative log-likelihood in nats ÷ characters
    of the text; bits_per_char = nats_per_char / ln 2; nats_per_token = total ÷ tokens."""
    import numpy as np
    from support.scoring import chars_per_token, score_windows
    model, tokenizer = loaded.model, loaded.tokenizer
    block = model.config.block_size
    stride = args.eval_stride or max(1, block // 2)          # default: windows overlap by half
    if stride > block:
        raise UserError(f"--eval-stride {stride} is larger than the model's context ({block} tokens)")
    started = time.perf_counter()
    ids = tokenizer.encode(text)
    seq = np.array(start_ids(tokenizer) + ids, dtype=np.int64)                # (1 + tokens,)
    windows = eval_windows(len(ids), block, stride)
    # The same scoring core as train.py's evaluations (support/scoring.py), on these windows. The
    # characters it counts are those the scored tokens start: here every character of the text.
    result = score_windows(model, seq, windows, chars_per_token(tokenizer), loaded.device,
                           progress="scoring" if len(windows) > 640 else None)
    scored = f"scored {len(ids)} tokens in {len(windows)} windows of up to {block} tokens (stride {stride})"
    print(f"{scored} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    figures = (f"nats_per_char={result.nats_per_char:.6f} bits_per_char={result.bits_per_char:.6f} "
               f"nats_per_token={result.loss_per_token:.6f} tokens={result.tokens} chars={result.chars}")
    if args.html is not None:                  # see inside: the surprise of every token, and more
        from support.see_inside_page import write_eval_page
        write_eval_page(args.html, loaded, args, text, seq, windows, [scored, figures])
    return figures


# ───────────────────────────────────────────── main ──────────────────────────────────────────────

def run(args, params, weights: Path, why: str, eval_text: str | None) -> int:
    if sys.stdout is None:
        raise UserError("stdout is closed — nowhere to write the text")
    if args.threads:
        # Measured on the shared 2-core machine: 2 threads generated ~5x slower than 1 (bench_generate).
        import torch
        torch.set_num_threads(args.threads)
    loaded = load(args, params, weights, why)
    if args.export_hf is not None:
        from support.hugging_face import export_hf
        print(export_hf(loaded.model, loaded.tokenizer, args.export_hf), file=sys.stderr)
        return 0
    if args.eval is not None:
        print(evaluate(loaded, eval_text, args), flush=True)
        return 0
    if args.trace or args.attention is not None:       # see inside one forward pass: nothing generated
        from support.see_inside_files import look_inside
        look_inside(loaded, args, TextGenerator(loaded, args, sys.stdout).prompt_ids(args.prompt))
        return 0
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
    set_up_streams()                            # any console, UTF-8 or not: support/text_io.py
    try:
        params = load_params(SAMPLING_KINDS)
        args = parse_args(argv, params)
        # Mistakes that need no model are reported before the slow torch import.
        eval_text = read_text(args.eval) if args.eval is not None else None
        if args.attention or args.html:
            from support.see_inside_files import check_can_write
            check_can_write(args.attention, args.html)
        weights, why = find_weights(args.weights)
        from support.checkpoints import CheckpointError   # imports torch
        from tokenizer import TokenizerError
        try:
            return run(args, params, weights, why, eval_text)
        except (CheckpointError, TokenizerError) as e:
            raise UserError(str(e)) from None
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:                   # Ctrl-C: stop at once, cleanly
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:
        if not stdout_closed(e):
            raise
        # The reader of stdout went away (e.g. `| head`): stop quietly. Point stdout at devnull so
        # Python's final flush does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
