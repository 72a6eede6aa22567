"""How fast our Transformer streams tokens at GPT-2's 124M shape, next to transformers' GPT-2. Run by hand.

    python bench/bench_gpt2_speed.py [--threads 1] [--tokens 64] [--repeats 5] [--prompt-len 16]

No network, no checkpoint: builds transformers' GPT2LMHeadModel with random weights (exact GELU instead
of GPT-2's tanh one, so that both models compute the same function) and our Transformer of the same
shape (vocab 50257, block 1024, 12 layers, 12 heads, emb 768, learned positions), copies the GPT-2
weights into ours, and checks both give the same logits. Then, in interleaved rounds (one run of each
per round, so a neighbour's load on this shared machine hits all of them alike), greedy generation of
--tokens new tokens after a --prompt-len random-token prompt, with the KV cache, on --threads threads:

    theirs fp32    GPT2LMHeadModel.generate(do_sample=False, use_cache=True)
    ours fp32      Transformer.stream(temperature=0)
    ours bf16      the same, model.to(torch.bfloat16)
    ours int8      the same, every Linear and the output head in int8 (run.py --int8: torch's dynamic
                   quantization, int8 weights with one scale per output row, inputs quantized per matmul)

How to read it: tokens/s counts the tokens after the first one (the first also pays for the prompt;
its latency is printed separately); each figure is the median over --repeats rounds, and "x" is
ours / theirs. Generating one token reads every weight once (~500 MB in fp32), so speed follows the
bytes read per token and how fast a kernel turns them into dot products. Last, how far bf16 and int8
move the model: over --quality-tokens random tokens, the largest |log-prob difference| from fp32
over all positions and vocabulary entries, and the change in mean NLL of the next token (random
weights: a weak check of quality, a real check of the mechanism).
"""
import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from Model import ModelConfig, Transformer  # noqa: E402
from support.devices import int8_for_cpu  # noqa: E402
from support.hugging_face import gpt2_names  # noqa: E402

GPT2_SHAPE = dict(vocab_size=50257, block_size=1024, emb_len=768, num_layers=12, num_heads=12, positions="learned")


def gpt2_and_ours():
    """A random GPT2LMHeadModel and our Transformer holding the same weights, both fp32, eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel
    theirs = GPT2LMHeadModel(GPT2Config(activation_function="gelu")).eval()
    ours = Transformer(ModelConfig(**GPT2_SHAPE)).eval()
    stored = theirs.state_dict()
    # The importer's own names (support/hugging_face.py); GPT-2's Conv1D weights are stored transposed.
    ours.load_state_dict({name: stored["transformer." + theirs_name].t() if conv1d else stored["transformer." + theirs_name]
                          for name, (theirs_name, conv1d) in gpt2_names(GPT2_SHAPE["num_layers"]).items()})
    return theirs, ours


def ours_rate(model, prompt, tokens) -> tuple[float, float]:
    """(tokens/s after the first token, seconds to the first token) of one greedy stream."""
    started, times = time.perf_counter(), []
    with torch.inference_mode():
        for _ in model.stream(prompt, tokens, temperature=0):
            times.append(time.perf_counter())
    return (tokens - 1) / (times[-1] - times[0]), times[0] - started


def theirs_rate(model, prompt, tokens) -> tuple[float, float]:
    """The same for transformers' generate; a streamer notes when each token arrives."""
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    clock, started = Clock(), time.perf_counter()
    with torch.inference_mode():
        model.generate(prompt, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, use_cache=True,
                       streamer=clock, pad_token_id=0)
    times = clock.times[1:]                      # the first put() is the prompt
    return (tokens - 1) / (times[-1] - times[0]), times[0] - started


def logprob_change(model, reference, ids) -> tuple[float, float]:
    """(max |log p - log p_ref| over every position and token, mean NLL - mean NLL_ref) on ids (1, T+1)."""
    with torch.inference_mode():
        lp = F.log_softmax(model(ids[:, :-1])[0].float(), dim=-1)[0]
        ref = F.log_softmax(reference(ids[:, :-1])[0].float(), dim=-1)[0]
    target = ids[0, 1:, None]
    nll, nll_ref = -lp.gather(1, target).mean(), -ref.gather(1, target).mean()
    return (lp - ref).abs().max().item(), (nll - nll_ref).item()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (run.py's default is 1)")
    p.add_argument("--tokens", type=int, default=64, help="new tokens per generation")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds; medians are printed")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--quality-tokens", type=int, default=512, help="random tokens for the log-prob check")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    theirs, ours = gpt2_and_ours()
    rng = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, GPT2_SHAPE["vocab_size"], (1, args.prompt_len), generator=rng)
    with torch.inference_mode():
        gap = (theirs(prompt).logits - ours(prompt)[0]).abs().max().item()
    print(f"{ours.num_params() / 1e6:.1f}M parameters; weights copied from GPT-2, largest logit difference "
          f"{gap:.1e}; {args.threads} thread(s), {args.tokens} new tokens after {args.prompt_len}, greedy, "
          f"KV cache; torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16 (AVX512-BF16 or AMX): {torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()}")

    contenders = {
        "theirs fp32": lambda: theirs_rate(theirs, prompt, args.tokens),
        "ours fp32": lambda m=ours: ours_rate(m, prompt, args.tokens),
        "ours bf16": lambda m=copy.deepcopy(ours).to(torch.bfloat16): ours_rate(m, prompt, args.tokens),
        "ours int8": lambda m=int8_for_cpu(copy.deepcopy(ours)): ours_rate(m, prompt, args.tokens),
    }
    for run in contenders.values():              # warm-up: first calls allocate and pick kernels
        run()
    rates = {name: [] for name in contenders}
    firsts = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, run in contenders.items():
            rate, first = run()
            rates[name].append(rate)
            firsts[name].append(first)
    theirs_median = statistics.median(rates["theirs fp32"])
    for name in contenders:
        median = statistics.median(rates[name])
        print(f"{name:12s} {median:6.1f} tokens/s  x{median / theirs_median:.2f} of theirs   first token "
              f"{statistics.median(firsts[name]) * 1000:4.0f} ms   (runs: {', '.join(f'{r:.1f}' for r in rates[name])})")

    ids = torch.randint(0, GPT2_SHAPE["vocab_size"], (1, args.quality_tokens + 1), generator=rng)
    for name, model in [("bf16", copy.deepcopy(ours).to(torch.bfloat16)), ("int8", int8_for_cpu(copy.deepcopy(ours)))]:
        worst, nll = logprob_change(model, ours, ids)
        print(f"{name} vs fp32 on {args.quality_tokens} random tokens: max |log-prob difference| {worst:.3f}, "
              f"mean NLL {nll:+.4f} nats/token")
    return 0


if __name__ == "__main__":
    sys.exit(main())
