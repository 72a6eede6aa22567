"""Tests of Model.py: the transformer's math and generation. Tiny configs only."""
import ast
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, tiny_config, tiny_model
from Model import (KVCache, ModelConfig, Transformer, attend, attention_weights, keep_likeliest, rotate,
                   sample_next)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: a second thread only adds synchronisation, and on a shared, busy
    machine spinning threads made this file ~7x slower. Restored afterwards for other files."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def peaked_model(seed: int = 0, **overrides) -> Transformer:
    """A tiny model with larger weights, so its next-token distributions are far from uniform and
    differ from position to position (a fresh model predicts nearly uniform, making ties likely)."""
    model = tiny_model(seed, **overrides)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(8.0)
    return model


def prompt(*ids: int) -> torch.Tensor:
    return torch.tensor([list(ids)], dtype=torch.long)


# ───────────────────────────────────────── config ────────────────────────────────────────────────

def test_config_dict_round_trip_gives_equal_config():
    config = tiny_config(dropout=0.25)
    d = config.to_dict()
    assert d == {"vocab_size": 64, "block_size": 32, "emb_len": 32, "num_layers": 2,
                 "num_heads": 4, "dropout": 0.25, "positions": "rotary", "gelu": "exact"}
    assert ModelConfig.from_dict(d) == config


def test_config_from_dict_rejects_unknown_and_missing_keys():
    d = tiny_config().to_dict()
    with pytest.raises(ValueError, match="unknown keys: colour"):
        ModelConfig.from_dict({**d, "colour": "red"})
    del d["num_heads"]
    with pytest.raises(ValueError, match="lacks keys: num_heads"):
        ModelConfig.from_dict(d)


@pytest.mark.parametrize("bad, message", [
    (dict(emb_len=30, num_heads=4), "divisible"),
    (dict(num_layers=0), "num_layers"),
    (dict(dropout=1.0), "dropout"),
    (dict(block_size=8.0), "block_size"),
])
def test_config_rejects_impossible_shapes(bad, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**bad)


# ───────────────────────────────────────── the network ───────────────────────────────────────────

def test_forward_gives_logits_per_position_and_scalar_loss():
    model = tiny_model()
    idx = torch.randint(0, 64, (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 10, 64) and loss is None
    logits, loss = model(idx, torch.randint(0, 64, (3, 10)))
    assert loss.shape == () and torch.isfinite(loss)


def test_loss_is_mean_cross_entropy_over_all_positions():
    model = tiny_model()
    idx, targets = torch.randint(0, 64, (2, 7)), torch.randint(0, 64, (2, 7))
    logits, loss = model(idx, targets)
    by_hand = -F.log_softmax(logits, -1).gather(-1, targets[..., None]).mean()
    assert loss.item() == pytest.approx(by_hand.item(), abs=1e-5)


def test_forward_rejects_window_longer_than_block_size():
    with pytest.raises(ValueError, match="block_size"):
        tiny_model()(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
def test_changing_a_future_token_never_changes_earlier_logits(impl):
    model = tiny_model()
    model.attention_impl = impl
    idx = torch.randint(0, 64, (1, 20))
    changed = idx.clone()
    changed[0, 12] = (idx[0, 12] + 1) % 64
    before, _ = model(idx)
    after, _ = model(changed)
    assert torch.equal(before[:, :12], after[:, :12])
    assert not torch.allclose(before[:, 12:], after[:, 12:])    # the change does reach later ones


def test_explicit_and_sdpa_attention_agree_in_outputs_and_gradients():
    model = tiny_model()
    idx, targets = torch.randint(0, 64, (2, 32)), torch.randint(0, 64, (2, 32))
    results = {}
    for impl in ("sdpa", "explicit"):
        model.zero_grad()
        model.attention_impl = impl
        logits, loss = model(idx, targets)
        loss.backward()
        results[impl] = (logits.detach(), [p.grad.clone() for p in model.parameters()])
    assert torch.allclose(results["sdpa"][0], results["explicit"][0], atol=1e-5)
    for g_sdpa, g_explicit in zip(results["sdpa"][1], results["explicit"][1]):
        assert torch.allclose(g_sdpa, g_explicit, atol=1e-6)


@pytest.mark.parametrize("q_len", [1, 3, 9])
def test_attention_of_last_queries_over_longer_keys_matches_full_attention(q_len):
    # What the KV cache relies on: the last q_len queries against all keys equal those rows of
    # the full causal attention, for both paths.
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 9, 8).unbind(0)
    full = attend(q, k, v, "explicit")
    for impl in ("sdpa", "explicit"):
        part = attend(q[:, :, -q_len:], k, v, impl)
        assert torch.allclose(part, full[:, :, -q_len:], atol=1e-6)


def test_rotary_scores_depend_only_on_how_far_apart_two_tokens_are():
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 6, 8, dtype=torch.float64), torch.randn(1, 2, 6, 8, dtype=torch.float64)
    positions = torch.tensor([0, 1, 2, 5, 9, 20])
    scores = rotate(q, positions) @ rotate(k, positions).transpose(-2, -1)
    for shift in (1, 37, 1000):
        shifted = rotate(q, positions + shift) @ rotate(k, positions + shift).transpose(-2, -1)
        assert torch.allclose(shifted, scores, atol=1e-3)          # angles are float32
    assert torch.allclose(rotate(q, positions).norm(dim=-1), q.norm(dim=-1))    # a rotation: lengths kept
    assert torch.equal(rotate(q, torch.zeros(6, dtype=torch.long)), q)           # position 0: untouched
    # ...and the scores do depend on distance: the same two vectors one apart and five apart differ.
    one, five = (rotate(q[..., :2, :], torch.tensor([0, d])) for d in (1, 5))
    assert not torch.allclose(one[..., 0, :] @ one[..., 1, :].transpose(-2, -1),
                              five[..., 0, :] @ five[..., 1, :].transpose(-2, -1))


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_the_model_reads_word_order(positions):
    # One layer: without its positions (the table's vectors, or rotate()) the last position would
    # average over the earlier tokens in any order. Swapping two of them must change its prediction.
    model = peaked_model(num_layers=1, positions=positions)
    ids = prompt(3, 1, 4, 1, 5, 9)
    swapped = prompt(1, 3, 4, 1, 5, 9)
    assert not torch.allclose(model(ids)[0][0, -1], model(swapped)[0][0, -1])


def test_without_positions_word_order_would_be_invisible():
    # The control for the test above: rotary positions switched off inside attention, no table.
    model = peaked_model(num_layers=1, positions="rotary")
    model.blocks[0].attn.rotary = False
    ids, swapped = prompt(3, 1, 4, 1, 5, 9), prompt(1, 3, 4, 1, 5, 9)
    assert torch.allclose(model(ids)[0][0, -1], model(swapped)[0][0, -1], atol=1e-5)


def test_learned_positions_are_a_table_added_to_the_token_vectors():
    model = tiny_model(positions="learned")
    assert model.pos_emb.weight.shape == (32, 32) and tiny_model(positions="rotary").pos_emb is None
    ids = prompt(3, 1, 4)
    expected = model.tok_emb(ids) + model.pos_emb.weight[:3]                   # position t gets row t
    assert torch.equal(model.embed(ids, torch.arange(3)), expected)
    assert not any(block.attn.rotary for block in model.blocks)               # nothing turned inside
    assert model.num_params() == tiny_model().num_params() + 32 * 32


def test_attention_impl_rejects_unknown_names():
    with pytest.raises(ValueError, match="attention_impl"):
        tiny_model().attention_impl = "fast-ish"


def test_loss_at_init_on_random_tokens_is_within_0_1_of_ln_vocab():
    model = tiny_model(vocab_size=512)
    torch.manual_seed(1)
    idx, targets = torch.randint(0, 512, (8, 32)), torch.randint(0, 512, (8, 32))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(512)) < 0.1


def test_init_scales_residual_projections_by_depth():
    model = tiny_model(num_layers=8, emb_len=64)
    residual_std = 0.02 / math.sqrt(2 * 8)
    for block in model.blocks:
        assert block.attn.proj.weight.std().item() == pytest.approx(residual_std, rel=0.1)
        assert block.mlp.proj.weight.std().item() == pytest.approx(residual_std, rel=0.1)
        assert block.mlp.up.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_output_head_is_the_token_embedding():
    model = tiny_model()
    idx = torch.tensor([[1, 2, 3, 4, 5]])                # token 7 is not in the input
    final = {}
    model.ln_f.register_forward_hook(lambda module, args, out: final.update(x=out))
    logits, _ = model(idx)
    assert torch.allclose(logits, final["x"] @ model.tok_emb.weight.T, atol=1e-6)
    with torch.no_grad():
        model.tok_emb.weight[7] += 1.0                   # only the output side can feel this
    moved, _ = model(idx)
    assert not torch.allclose(logits[..., 7], moved[..., 7])
    assert torch.equal(logits[..., :7], moved[..., :7])   # the other tokens' logits did not move


def test_num_params_counts_every_weight_once():
    c = tiny_config()
    E, L, V = c.emb_len, c.num_layers, c.vocab_size
    per_block = (2 * 2 * E) + (E * 3 * E + 3 * E) + (E * E + E) + (E * 4 * E + 4 * E) + (4 * E * E + E)
    assert tiny_model().num_params() == V * E + L * per_block + 2 * E          # positions have no weights


def test_bf16_autocast_forward_is_close_to_fp32():
    model = tiny_model()
    idx, targets = torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16))
    _, loss32 = model(idx, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss16 = model(idx, targets)
    assert loss16.dtype == torch.float32
    assert loss16.item() == pytest.approx(loss32.item(), abs=0.02)


# ───────────────────────────────────────── generation ────────────────────────────────────────────

@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_kv_cache_matches_full_recomputation_over_200_sampled_steps(positions):
    # Sampled, not greedy: a random model falls into repeating one token when greedy, and a varied
    # sequence exercises the cache better. Same seed, same draws.
    model = peaked_model(block_size=256, positions=positions)
    start = prompt(3, 1, 4, 1, 5)
    cached, recomputed = (model.generate(start, 200, generator=torch.Generator().manual_seed(1), use_cache=use)
                          for use in (True, False))
    assert torch.equal(cached, recomputed)
    assert len(set(cached[0, 5:].tolist())) > 3           # not a degenerate constant sequence

    # Logits: feed the same sequence through the cache one token at a time, compare each step's
    # logits with the ones a single full forward pass gives for that position.
    with torch.no_grad():
        full, _ = model(cached)                             # (1, 205, V)
        cache = KVCache(model.config)
        step_logits = [model(start, kv_cache=cache)[0][:, -1]]
        for t in range(5, cached.shape[1] - 1):
            step_logits.append(model(cached[:, t:t + 1], kv_cache=cache)[0][:, -1])
    assert cache.length == cached.shape[1] - 1
    assert torch.allclose(torch.cat(step_logits), full[0, 4:-1], atol=1e-4)


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_cache_on_and_off_give_the_same_text_under_default_sampling(positions):
    model = peaked_model(positions=positions)                   # block_size 32: the window restarts
    for seed in (1, 2, 3):
        texts = [model.generate(prompt(3, 1, 4), 80, temperature=0.8, top_p=0.95, use_cache=use_cache,
                                generator=torch.Generator().manual_seed(seed)) for use_cache in (True, False)]
        assert torch.equal(texts[0], texts[1])
    assert not torch.equal(texts[0], model.generate(prompt(3, 1, 4), 80, temperature=0))   # it did sample


def reference_window_generation(model: Transformer, idx: torch.Tensor, n: int) -> list[int]:
    """The documented strategy, written the slow way: predict from the window, which grows until
    it would pass block_size and then restarts from the last block_size // 2 tokens."""
    block, keep = model.config.block_size, model.config.block_size // 2
    seq, start, out = idx[0].tolist(), max(0, idx.shape[1] - block), []
    for _ in range(n):
        if len(seq) - start > block:
            start = len(seq) - keep
        with torch.no_grad():
            logits, _ = model(torch.tensor([seq[start:]]))
        seq.append(int(logits[0, -1].argmax()))
        out.append(seq[-1])
    return out


@pytest.mark.parametrize("prompt_len", [3, 40])
def test_generation_past_block_size_follows_documented_window_strategy(prompt_len):
    model = peaked_model(block_size=16)
    torch.manual_seed(2)
    start = torch.randint(0, 64, (1, prompt_len))
    expected = reference_window_generation(model, start, 70)
    for use_cache in (True, False):
        out = model.generate(start, 70, temperature=0, use_cache=use_cache)
        assert out.shape == (1, prompt_len + 70)
        assert torch.equal(out[:, :prompt_len], start)
        assert out[0, prompt_len:].tolist() == expected


def test_sampling_with_top_k_1_equals_greedy():
    model = peaked_model()
    start = prompt(5, 6)
    greedy = model.generate(start, 40, temperature=0)
    top1 = model.generate(start, 40, temperature=1.5, top_k=1, generator=torch.Generator().manual_seed(9))
    assert torch.equal(greedy, top1)


def test_top_p_never_samples_outside_the_nucleus():
    # Probabilities 0.5, 0.3, 0.1, 0.06, 0.04: with top_p 0.75 the nucleus is tokens {0, 1}.
    probs = torch.tensor([0.5, 0.3, 0.1, 0.06, 0.04])
    logits = probs.log().expand(4000, 5)
    draws = sample_next(logits, top_p=0.75, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {0, 1}
    # ... and within the nucleus the relative odds are kept (0.5 : 0.3 -> 62.5%).
    assert (draws == 0).float().mean().item() == pytest.approx(0.625, abs=0.03)


def test_top_k_never_samples_outside_the_k_likeliest():
    logits = torch.tensor([0.1, 3.0, 0.2, 2.0, 1.0, -1.0]).expand(2000, 6)
    draws = sample_next(logits, top_k=3, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {1, 3, 4}


def test_temperature_zero_is_argmax():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 1.0, 4.9]])
    assert sample_next(logits, temperature=0).tolist() == [1, 0]


def test_same_seed_reproduces_the_same_tokens_and_another_seed_differs():
    model = tiny_model()
    start = prompt(1, 2, 3)

    def sample(seed):
        return model.generate(start, 30, temperature=1.0, top_p=0.9,
                              generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sample(7), sample(7))
    assert not torch.equal(sample(7), sample(8))


def test_stream_yields_the_same_tokens_as_generate():
    model = tiny_model()
    start = prompt(4, 2)
    kwargs = dict(temperature=0.9, top_k=20, top_p=0.95)
    streamed = list(model.stream(start, 25, generator=torch.Generator().manual_seed(3), **kwargs))
    generated = model.generate(start, 25, generator=torch.Generator().manual_seed(3), **kwargs)
    assert streamed == generated[0, 2:].tolist()
    assert all(isinstance(t, int) for t in streamed)


def test_stream_can_be_stopped_early_by_the_caller():
    model = tiny_model()
    taken = []
    for token in model.stream(prompt(1), 1000, temperature=0):
        taken.append(token)
        if len(taken) == 3:
            break
    assert taken == model.generate(prompt(1), 3, temperature=0)[0, 1:].tolist()


def test_generation_restores_training_mode_and_records_no_gradients():
    model = tiny_model(dropout=0.5).train()
    out = model.generate(prompt(1, 2), 5, temperature=0)
    assert model.training
    assert not out.requires_grad
    # Dropout was off while generating: greedy output is the same every time.
    assert torch.equal(out, model.generate(prompt(1, 2), 5, temperature=0))


@pytest.mark.parametrize("settings, message", [
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=-2), "top_k"),
])
def test_nonsense_sampling_settings_raise_clear_valueerror_before_any_token(settings, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message) as info:
        model.stream(prompt(1), 5, **settings)             # no iteration needed to get the error
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=message):
        model.generate(prompt(1), 5, **settings)


def test_bad_prompts_raise_valueerror():
    model = tiny_model()
    with pytest.raises(ValueError, match="prompt"):
        model.generate(torch.tensor([1, 2]), 3)
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        model.generate(prompt(1, 64), 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(prompt(1), -1)


def test_model_module_never_imports_a_script():
    tree = ast.parse((REPO / "Model.py").read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"init", "train", "run"}
    assert imported <= {"__future__", "contextlib", "dataclasses", "math", "typing", "torch", "support"}


def test_plain_generation_draws_the_same_tokens_as_the_cached_stream_within_the_context():
    model = peaked_model()
    for temperature, seed in ((0, 0), (0.8, 1), (1.3, 2)):
        plain = model.generate_plain(prompt(1, 2, 3), 20, temperature, torch.Generator().manual_seed(seed))
        cached = model.generate(prompt(1, 2, 3), 20, temperature, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(plain, cached)                  # 3 + 20 tokens fit in block_size 32


def test_stream_with_logits_yields_each_step_distribution_and_the_same_tokens():
    model = peaked_model()
    pairs = list(model.stream(prompt(5), 6, temperature=0, with_logits=True))
    tokens = list(model.stream(prompt(5), 6, temperature=0))
    assert [t for t, _ in pairs] == tokens
    assert all(logits.shape == (64,) and logits.argmax().item() == t for t, logits in pairs)


def test_keep_likeliest_rules_out_what_top_k_and_top_p_remove():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(keep_likeliest(logits, 2, None)).tolist() == [[False, False, True, True]]
    # top-p 0.7: 0.5 alone is below 0.7, 0.5 + 0.3 reaches it; the rest go.
    assert torch.isinf(keep_likeliest(logits, None, 0.7)).tolist() == [[False, False, True, True]]
    assert not torch.isinf(keep_likeliest(logits, None, 1.0)).any()


def test_attention_weights_are_distributions_over_the_visible_past_only():
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    weights = attention_weights(q, k)                                  # (B, H, T, T)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 3, 5))
    visible = torch.ones(5, 5).tril().bool()
    assert torch.all(weights[..., ~visible] == 0) and torch.all(weights[..., visible] > 0)
