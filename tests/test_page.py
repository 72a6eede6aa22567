"""run.py --html: the page of a run, every token clickable. Its figures are held to the terminal views
and to the model's own computation; in a real browser (headless Chromium) a click shows them, a
hostile text stays text, and the page asks for nothing over the network."""
import json
import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from browser import BROWSER, NO_BROWSER, chromium, open_page
from conftest import ON_CPU, REPO, TINY_TEXT, candidate_lines, run_script, run_tiny
from run import eval_windows
from support import see_inside_page
from support.explain import explain
from support.see_inside import attention_maps, context_starts, streamed_texts
from support.see_inside_page import page_html, permille, write_eval_page, write_generation_page

# Markup, an ampersand, both quotes, a right-to-left override and right-to-left scripts, a lone carriage
# return (a Windows line end, \r\n, is read as \n), an emoji and a tab: the page must show all of it as text.
HOSTILE = ('<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"> &amp; & "double" \'single\' '
           '\u202eoverridden\u202c עברית العربية\r🙂 é\ttab\n')
TEMPERATURE = 1.5


def page_data(path: Path) -> dict:
    """The figures a page embeds: the JSON in its data script."""
    found = re.search(r'<script type="application/json" id="data">(.*?)</script>', path.read_text("utf-8"), re.S)
    return json.loads(found[1])


@pytest.fixture(scope="module")
def generated(tiny, tmp_path_factory):
    """A page of a 40-token continuation on the tiny model (its 16-token window restarts twice), with
    --show-probs 4 on stderr for the same draws."""
    path = tmp_path_factory.mktemp("page") / "continuation.html"
    result = run_tiny(tiny, *ON_CPU, "--prompt", "the quick", "--seed", "3", "--temperature", str(TEMPERATURE),
                      "--top-k", "3", "--top-p", "0.9", "--max-new-tokens", "40", "--show-probs", "4", "--html", path)
    assert result.returncode == 0, result.stderr
    return {"path": path, "result": result, "data": page_data(path)}


@pytest.fixture(scope="module")
def scored(tiny, tmp_path_factory):
    """A page of --eval on a text with HOSTILE inside, run with weights whose path holds markup, the end
    of a script element (in one piece, unlike the text's, which tokens split) and a byte that is not
    UTF-8 (Python spells it as a lone surrogate)."""
    root = tmp_path_factory.mktemp("scored")
    text = TINY_TEXT[:200] + HOSTILE + TINY_TEXT[-60:]
    (root / "text.txt").write_bytes(text.encode("utf-8"))
    (root / "<b>x<").mkdir()
    weights = Path(shutil.copy(tiny["weights"], root / "<b>x<" / "script w\udcff.pth"))
    result = run_script("run.py", "--weights", weights, "--tokenizer-dir", tiny["tokenizer_dir"], "--device", "cpu",
                        "--eval", root / "text.txt", "--html", root / "page.html", timeout=120)
    assert result.returncode == 0, result.stderr
    return {"path": root / "page.html", "text": text, "weights": weights, "result": result,
            "data": page_data(root / "page.html")}


@pytest.fixture(scope="module")
def browser():
    if BROWSER is None:
        pytest.skip(NO_BROWSER)
    with chromium() as context:
        yield context


# ──────────────────────────────────── the figures: those of the terminal ────────────────────────────────────

def test_page_alternatives_are_the_show_probs_figures_of_the_same_draws(generated):
    tokens, result = generated["data"]["tokens"], generated["result"]
    drawn = [token for token in tokens if token["kind"] == "drawn"]
    lines = candidate_lines(result.stderr)
    assert len(drawn) == len(lines) == 40
    for token, line in zip(drawn, lines):
        assert [(mark, text) for _, text, _, mark in token["alternatives"]] == [(mark, text) for mark, text, _ in line]
        for (_, _, p, _), (_, _, percent) in zip(token["alternatives"], line):
            assert abs(100 * p - percent) <= 0.05 + 1e-6                   # stderr shows them to 0.1%
        assert token["p"] == next(p for i, _, p, _ in token["alternatives"] if i == token["id"])
    # The page's tokens are the text: the prompt, and exactly what was printed.
    assert "".join(token["text"] for token in tokens if token["kind"] == "prompt") == "the quick"
    assert "".join(token["text"] for token in drawn) + "\n" == result.stdout


def test_context_starts_are_the_windows_generation_feeds_the_model(tiny):
    model, prompt = tiny["model"], tiny["tokenizer"].encode("the quick")
    fed = []
    hook = model.register_forward_pre_hook(lambda module, inputs: fed.append(inputs[0][0].tolist()))
    try:        # without the cache the model is fed its whole window at every step
        new = list(model.stream(torch.tensor([prompt]), 40, temperature=TEMPERATURE, use_cache=False,
                                generator=torch.Generator().manual_seed(0)))
    finally:
        hook.remove()
    ids = prompt + new
    starts = context_starts(len(ids), model.config.block_size)
    assert fed == [ids[starts[t]:t] for t in range(len(prompt), len(ids))]
    assert len(set(starts.values())) >= 3                                  # the window restarted


def test_page_attention_is_the_models_own_over_the_window_each_token_was_predicted_from(tiny, generated):
    data, model = generated["data"], tiny["model"]
    tokens = data["tokens"]
    ids = [token["id"] for token in tokens]
    assert data["maps"] == ["head 0", "head 1", "all heads (mean)"]
    assert tokens[0]["looks"] is None and tokens[0]["p"] is None          # the first token: nothing before it
    assert {t: token["start"] for t, token in enumerate(tokens) if t} == context_starts(len(ids), 16)
    for t, token in enumerate(tokens[1:], start=1):
        start = token["start"]
        with torch.no_grad():
            rows = attention_maps(model, torch.tensor([ids[start:t]]))[:, :, -1, :]     # (layers, H, t - start)
        expected = 1000 * torch.cat([rows, rows.mean(1, keepdim=True)], dim=1).double()
        looks = torch.tensor(token["looks"], dtype=torch.float64)
        assert looks.shape == expected.shape                              # over the tokens before it, no other
        assert torch.all(looks.sum(-1) == 1000)
        assert torch.all((looks - expected).abs() < 1 + 1e-6)


def test_page_merges_are_those_explain_shows_for_the_token_alone(tiny, generated):
    tokenizer, data = tiny["tokenizer"], generated["data"]
    checked = set()
    for token in data["tokens"]:
        text = tokenizer.decode_bytes([token["id"]]).decode("utf-8", "replace")
        if tokenizer.encode(text) == [token["id"]]:
            lines = [line for line in explain(tokenizer, text, colour=False) if line.startswith("merge #")]
            assert data["merges"][str(token["id"])] == lines
            checked.add(token["id"])
    assert len(checked) >= 5


def test_page_of_an_eval_holds_the_text_exactly_and_adds_up_to_the_score(scored):
    tokens, text = scored["data"]["tokens"], scored["text"]
    figures = dict(field.split("=") for field in scored["result"].stdout.split())
    assert tokens[0]["kind"] == "start" and tokens[0]["text"] == "" and tokens[0]["p"] is None
    assert "".join(token["text"] for token in tokens) == text
    assert len(tokens) - 1 == int(figures["tokens"])
    nats = sum(-math.log(token["p"]) for token in tokens[1:])
    assert nats / len(text) == pytest.approx(float(figures["nats_per_char"]), rel=1e-5)
    for token in tokens[1:]:
        probs = [p for _, _, p, _ in token["alternatives"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5
        assert token["id"] in [i for i, _, _, _ in token["alternatives"]]


# ───────────────────────────────────────────── the bounds ─────────────────────────────────────────────

def generation_page(tiny, path: Path) -> dict:
    """write_generation_page in this process: a 30-token continuation of "the quick" on the tiny model."""
    model, tokenizer = tiny["model"], tiny["tokenizer"]
    loaded = SimpleNamespace(model=model, tokenizer=tokenizer, device=torch.device("cpu"), banner=["loaded tiny"])
    args = SimpleNamespace(tokenizer_dir=tiny["tokenizer_dir"], show_probs=None, temperature=1.0, top_k=0, top_p=1.0,
                           max_new_tokens=30, seed=0, stop=None)
    prompt = tokenizer.encode("the quick")
    steps = list(model.stream(torch.tensor([prompt]), 30, generator=torch.Generator().manual_seed(0),
                              with_logits=True))
    write_generation_page(path, loaded, args, prompt, steps)
    return page_data(path)


def test_attention_past_the_budget_is_left_out_and_the_page_says_from_where(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(see_inside_page, "ATTENTION_BUDGET", 500)
    data = generation_page(tiny, tmp_path / "page.html")
    has = [token["looks"] is not None for token in data["tokens"][1:]]
    cut = has.index(False) + 1                                            # the first token without
    assert 3 < cut and not any(has[cut - 1:])                             # a run of tokens, then none
    assert sum(np.size(token["looks"]) for token in data["tokens"][1:cut]) <= 500
    assert f"stops at token {cut}:" in data["bounds"]


def test_past_max_maps_only_each_layers_mean_over_its_heads_is_embedded(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(see_inside_page, "MAX_MAPS", 3)                  # the tiny model has 2 × 2
    data = generation_page(tiny, tmp_path / "page.html")
    assert data["maps"] == ["all heads (mean)"]
    for t, token in enumerate(data["tokens"][1:], start=1):
        assert np.shape(token["looks"]) == (2, 1, t - token["start"])
    assert "only each layer's mean" in data["bounds"]


def test_a_long_text_page_shows_its_first_max_tokens(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(see_inside_page, "MAX_TOKENS", 50)
    model, tokenizer = tiny["model"], tiny["tokenizer"]
    text = TINY_TEXT[:1000]
    seq = np.array(tokenizer.encode("\n")[-1:] + tokenizer.encode(text), dtype=np.int64)
    loaded = SimpleNamespace(model=model, tokenizer=tokenizer, device=torch.device("cpu"), banner=[])
    args = SimpleNamespace(tokenizer_dir=tiny["tokenizer_dir"], eval=Path("text.txt"))
    write_eval_page(tmp_path / "page.html", loaded, args, text, seq, eval_windows(len(seq) - 1, 16, 8), [])
    data = page_data(tmp_path / "page.html")
    assert len(data["tokens"]) == 1 + 50
    assert text.startswith("".join(token["text"] for token in data["tokens"]))
    assert all(token["looks"] is not None for token in data["tokens"][1:])
    assert any(f"first 50 of the text's {len(seq) - 1:,} tokens" in line for line in data["summary"])


def test_a_page_of_200_tokens_of_the_shipped_model_stays_under_4_mb(tmp_path):
    result = run_script("run.py", "--weights", REPO / "Saved_Weights" / "pretrained.pth", "--tokenizer-dir",
                        REPO / "tokenizer_save", "--prompt", "ROMEO:", "--seed", "1", "--max-new-tokens", "200",
                        "--html", tmp_path / "page.html", timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "page.html").stat().st_size < 4e6
    tokens = page_data(tmp_path / "page.html")["tokens"]
    assert sum(token["kind"] == "drawn" for token in tokens) == 200


# ─────────────────────────────────────── the page's own pieces ───────────────────────────────────────

@settings(derandomize=True, deadline=None, max_examples=100)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=40).filter(lambda xs: sum(xs) > 1e-6))
def test_permille_rows_sum_to_1000_and_each_is_within_one_thousandth(weights):
    row = np.array(weights) / sum(weights)
    shown = permille(row)
    assert sum(shown) == 1000
    assert all(abs(w - 1000 * p) < 1 for w, p in zip(shown, row))


@settings(derandomize=True, deadline=None, max_examples=100)
@given(st.lists(st.binary(min_size=1, max_size=3), max_size=12))
def test_streamed_texts_join_to_the_bytes_decoded_at_once(pieces):
    texts = streamed_texts(pieces)
    assert len(texts) == len(pieces)
    assert "".join(texts) == b"".join(pieces).decode("utf-8", "replace")


def test_no_text_can_end_the_pages_data_script():
    data = {"text": "</script><script>alert(1)</script><!-- & \udcff \u2028 \"'"}
    page = page_html(data)
    assert page.count("<script") == 2 and page.count("</script") == 2   # the page's own two
    assert page_data_from(page) == data


def page_data_from(page: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)[1])


# ──────────────────────────────────────────── in a browser ────────────────────────────────────────────

def test_clicking_a_token_shows_its_alternatives_and_where_it_looked_over_earlier_tokens_only(generated, browser):
    tokens = generated["data"]["tokens"]
    page, requests, errors = open_page(browser, generated["path"])
    spans = page.locator("#text .tok")
    assert spans.count() == len(tokens)
    restarted = max(t for t, token in enumerate(tokens) if token["kind"] == "drawn")   # the last: after a restart
    for t in (len(tokens) // 3, restarted):
        token = tokens[t]
        spans.nth(t).click()
        rows = page.locator("#alternatives tr")
        probs = [float(rows.nth(i).get_attribute("data-p")) for i in range(rows.count())]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5
        chosen = page.locator("#alternatives tr.chosen")
        assert chosen.count() == 1 and float(chosen.get_attribute("data-p")) == token["p"]
        assert f"{100 * token['p']:.1f}%" in chosen.inner_text()
        page.select_option("#layer", "1")
        page.select_option("#map", "0")
        weights = page.eval_on_selector_all("#text .tok", "spans => spans.map(s => s.dataset.w ?? null)")
        looked = {i: int(w) for i, w in enumerate(weights) if w is not None}
        assert list(looked) == list(range(token["start"], t))             # earlier tokens only: those it saw
        assert sum(looked.values()) == 1000                               # thousandths: the row sums to 1
        assert list(looked.values()) == token["looks"][1][0]
    assert tokens[restarted]["start"] > 0
    assert requests == [generated["path"].resolve().as_uri()] and errors == []


def test_hostile_text_and_file_names_show_as_text_never_as_markup(scored, browser):
    page, requests, errors = open_page(browser, scored["path"])
    assert page.text_content("#text") == scored["text"]
    assert page.evaluate("window.pwned") is None
    assert page.locator("#text *:not(span), #about *:not(li)").count() == 0
    # The path as text, its lone surrogate too (the browser's strings may hold one, as Python's do).
    assert page.locator("#about li").first.text_content() == f"loaded {scored['weights']} (given with --weights)"
    assert requests == [scored["path"].resolve().as_uri()] and errors == []
