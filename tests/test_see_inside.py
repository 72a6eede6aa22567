"""run.py's see-inside views (--show-probs, --trace, --attention, --eval's per-token surprise) on the
session's tiny model, and the numbers behind them (support/see_inside.py) held to the model's own
computation. The --html page has its own tests: tests/test_page.py."""
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from conftest import (CANDIDATE, ON_CPU, TINY_TEXT, TINY_VOCAB, assert_one_error_line, candidate_lines, run_script,
                      run_tiny)
from Model import ModelConfig, Transformer, merge_heads
from run import eval_windows
from support.scoring import chars_per_token, score_windows
from support.see_inside import attention_maps, candidates_line, quoted, token_surprise, token_texts, trace

# run.py runs on the CPU here (ON_CPU): the tests compare its figures with ones computed here, on the CPU.


# ──────────────────────────────────────────── --show-probs ────────────────────────────────────────────

def test_show_probs_lists_every_drawn_token_and_leaves_stdout_as_it_was(tiny):
    sampling = ("--prompt", "the quick", "--seed", "3", "--temperature", "1.5", "--top-k", "3", "--top-p", "1",
                "--max-new-tokens", "12")
    plain = run_tiny(tiny, *ON_CPU, *sampling)
    shown = run_tiny(tiny, *ON_CPU, *sampling, "--show-probs", "6")
    assert plain.returncode == shown.returncode == 0, shown.stderr
    assert shown.stdout == plain.stdout
    lines = candidate_lines(shown.stderr)
    assert len(lines) == 12                                        # one per generated token
    # The same draws in this process: the drawn token of each line is the one generated.
    model, tokenizer = tiny["model"], tiny["tokenizer"]
    generated = list(model.stream(torch.tensor([tokenizer.encode("the quick")]), 12, temperature=1.5, top_k=3,
                                  top_p=1.0, generator=torch.Generator().manual_seed(3)))
    for line, token in zip(lines, generated):
        drawn = [text for mark, text, _ in line if mark == "→"]
        assert drawn == [quoted(tokenizer.decode_bytes([token]))]
        assert sum(p for _, _, p in line) <= 100 + 0.05 * len(line)   # each shown to 0.1%
        assert [mark == "✗" for mark, _, _ in line[:6]] == [False] * 3 + [True] * 3   # top-k 3 cut the rest


def test_show_probs_when_greedy_always_draws_the_first(tiny):
    result = run_tiny(tiny, *ON_CPU, "--prompt", "the lazy", "--temperature", "0", "--max-new-tokens", "8",
                      "--show-probs", "3")
    assert result.returncode == 0, result.stderr
    lines = candidate_lines(result.stderr)
    assert len(lines) == 8
    assert all(line[0][0] == "→" and len(line) == 3 for line in lines)


def test_candidate_probabilities_are_the_softmax_after_temperature():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, 3.0])
    decode = lambda ids: bytes([ord("a") + ids[0]])              # noqa: E731  token i is the letter i
    for temperature in (0.0, 0.7, 2.0):
        line = candidates_line(logits, 0, decode, 5, temperature, top_k=None, top_p=0.9)
        expected = F.softmax(logits / (temperature or 1.0), dim=-1)
        found = {text: p for _, text, p in ((m, t, float(p)) for m, t, p in CANDIDATE.findall(line))}
        assert list(found) == ['"e"', '"a"', '"b"', '"c"', '"d"']          # likeliest first
        for i, letter in enumerate("abcde"):
            assert found[f'"{letter}"'] == pytest.approx(100 * expected[i].item(), abs=0.05)
        assert ("✗" in line) == (temperature > 0)                  # greedy ignores top-p


def test_quoted_tokens_show_newlines_controls_and_split_characters_on_one_line():
    assert quoted(b"a\nb") == r'"a\nb"'
    assert quoted(b'say "hi"\\') == r'"say \"hi\"\\"'
    assert quoted("é".encode()[:1]) == r'"\xc3"'
    assert quoted(b"\x07") == r'"\x07"'


# ────────────────────────────────────────────── --trace ──────────────────────────────────────────────

def test_trace_shows_every_stage_with_the_model_shapes(tiny):
    result = run_tiny(tiny, *ON_CPU, "--prompt", "the quick", "--trace")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""                                     # nothing generated
    c, T = tiny["config"], len(tiny["tokenizer"].encode("the quick"))
    E, V = c.emb_len, c.vocab_size
    shapes = dict(re.findall(r"^  (\S.*?\S)\s+(\([\d, ]+\))", result.stderr, re.M))
    expected = {"ids": (1, T), "x = token embedding": (1, T, E)}
    for i in range(c.num_layers):
        for stage in ("attention output", "x + attention", "MLP output", "x + MLP"):
            expected[f"block {i} {stage}"] = (1, T, E)
    expected |= {"final LayerNorm": (1, T, E), "logits": (1, T, V)}
    assert shapes == {name: str(shape) for name, shape in expected.items()}
    names = re.findall(r"^  (\S.*?\S)\s+\(", result.stderr, re.M)
    assert names == list(expected)                                 # in the order of the forward pass
    assert len(CANDIDATE.findall(result.stderr.split("next token:")[1])) == 5


def test_trace_starts_from_the_residual_stream_the_first_block_reads(tiny):
    idx = torch.tensor([tiny["tokenizer"].encode("the quick brown fox")])
    for model in (tiny["model"], learned_positions_model()):
        stages, _ = trace(model, idx)
        read = []
        hook = model.blocks[0].register_forward_pre_hook(lambda module, inputs: read.append(inputs[0]))
        try:
            with torch.no_grad():
                model(idx)
        finally:
            hook.remove()
        assert torch.equal(stages[1][1], read[0])
    assert stages[1][0] == "x = token embedding + position embedding"      # learned positions, named


# ──────────────────────────────────────────── --attention ────────────────────────────────────────────

def learned_positions_model() -> Transformer:
    """An untrained model with the original's learned position table, its weights drawn wide enough
    that attention is far from even (so weights from a wrong input would show)."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=TINY_VOCAB, block_size=16, emb_len=32, num_layers=2, num_heads=2,
                                    positions="learned"))
    with torch.no_grad():
        for weights in model.parameters():
            weights.normal_(0, 0.3)
    return model.eval()


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_attention_weights_are_the_ones_each_block_uses(tiny, positions):
    model = tiny["model"] if positions == "rotary" else learned_positions_model()
    assert model.config.positions == positions
    tokenizer = tiny["tokenizer"]
    idx = torch.tensor([tokenizer.encode("the quick brown fox jumps")])
    T = idx.shape[1]
    maps = attention_maps(model, idx)                               # (layers, H, T, T)
    assert maps.shape == (model.config.num_layers, model.config.num_heads, T, T)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    assert torch.all(maps[..., future] == 0)
    assert torch.allclose(maps.sum(-1), torch.ones(maps.shape[:-1]), atol=1e-5)
    # Watch each attention module in a normal forward pass; the weights, applied to its values,
    # give its output.
    seen = []
    hooks = [block.attn.register_forward_hook(lambda m, inputs, out: seen.append((inputs[0], out)))
             for block in model.blocks]
    try:
        with torch.no_grad():
            model(idx)
            for layer, (block, (x, out)) in enumerate(zip(model.blocks, seen)):
                _, _, v = block.attn.heads(x, torch.arange(x.shape[1]))   # (1, H, T, D)
                implied = block.attn.proj(merge_heads(maps[layer][None] @ v))
                assert torch.allclose(implied, out, atol=1e-5)
    finally:
        for hook in hooks:
            hook.remove()


def test_attention_png_is_drawn_for_the_prompt_window(tiny, tmp_path):
    long_prompt = "the quick brown fox jumps over the lazy dog " * 3        # longer than the 16-token context
    result = run_tiny(tiny, *ON_CPU, "--prompt", long_prompt, "--attention", tmp_path / "attention.png")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "longer than the model's context" in result.stderr
    assert (tmp_path / "attention.png").read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in tmp_path.iterdir()] == ["attention.png"]      # no temporary file left


def test_attention_without_matplotlib_says_how_to_install_it(tiny, tmp_path):
    fake = tmp_path / "no_matplotlib" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('matplotlib is not installed here')\n")
    result = run_script("run.py", "--weights", tiny["weights"], "--tokenizer-dir", tiny["tokenizer_dir"],
                        "--prompt", "the", "--attention", tmp_path / "a.png", env={"PYTHONPATH": str(fake.parent)})
    assert_one_error_line(result, "pip install matplotlib")
    assert not (tmp_path / "a.png").exists()


# ───────────────────────────────────── --eval: surprise per token ─────────────────────────────────────

def test_per_token_surprise_adds_up_to_the_scoring_core(tiny):
    model, tokenizer = tiny["model"], tiny["tokenizer"]
    text = TINY_TEXT[:500] + "unseen 生存 🙂\n"
    ids = tokenizer.encode(text)
    seq = np.array(tokenizer.encode("\n")[-1:] + ids, dtype=np.int64)
    windows = eval_windows(len(ids), model.config.block_size, 5)
    surprise = token_surprise(model, seq, windows, torch.device("cpu"))
    core = score_windows(model, seq, windows, chars_per_token(tokenizer), torch.device("cpu"))
    assert len(surprise.nats) == core.tokens == len(ids) and core.chars == len(text)
    assert math.isclose(float(surprise.nats.astype(np.float64).sum()), core.nll, rel_tol=1e-6)
    assert np.all(np.diff(surprise.guess_probs, axis=1) <= 0)       # likeliest first


@settings(derandomize=True, deadline=None, max_examples=50)
@given(st.text(st.sampled_from("ab é生🙂\n\r"), min_size=1, max_size=30))
def test_token_texts_join_back_to_the_text(tiny, text):
    tokenizer = tiny["tokenizer"]
    pieces = [tokenizer.decode_bytes([t]) for t in tokenizer.encode(text)]
    texts = token_texts(text, pieces)
    assert "".join(texts) == text and len(texts) == len(pieces)


# ────────────────────────────────────────── bad combinations ──────────────────────────────────────────

@pytest.mark.parametrize("options, fragment", [
    (("--attention", "x.png"), "--prompt"),
    (("--trace",), "--prompt"),
    (("--trace", "--eval", "Model_Params.py"), "--prompt"),
    (("--html", "x.html"), "--prompt"),
    (("--html", "x.html", "--trace", "--prompt", "x"), "--trace"),
    (("--html", "x.html", "--attention", "x.png", "--prompt", "x"), "--attention"),
    (("--html", "no/such/folder/x.html", "--eval", "Model_Params.py"), "no/such/folder"),
    (("--html", "tests", "--prompt", "x"), "is a folder"),
    (("--show-probs", "3", "--eval", "Model_Params.py"), "--eval"),
    (("--show-probs", "3", "--trace", "--prompt", "x"), "--trace"),
    (("--show-probs", "0", "--prompt", "x"), "--show-probs"),
    (("--attention", "no/such/folder/x.png", "--prompt", "x"), "no/such/folder"),
])
def test_bad_combinations_are_one_line(options, fragment):
    assert_one_error_line(run_script("run.py", *options), fragment)
