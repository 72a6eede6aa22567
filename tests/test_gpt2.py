"""GPT-2 in, your model out (support/hugging_face.py): Hugging Face GPT-2s load into Model.py with
transformers' logits and ids; run.py's views and train.py's fine-tuning work on them; --export-hf
writes folders that transformers loads with the same logits and ids. Offline: every GPT-2 here is a
tiny random one built with transformers, its tokenizer trained with `tokenizers`, saved in GPT-2's files."""
import json
import os

import pytest
import torch

from conftest import (EOT, REPO, ON_CPU, TINY_TRAIN_FLAGS, assert_one_error_line, english_like_text,
                      gpt2_tokenizer_files, run_script)

transformers = pytest.importorskip("transformers", reason="transformers is the oracle (requirements-test.txt)")
pytest.importorskip("tokenizers")

from support.checkpoints import load_checkpoint, load_trained_model  # noqa: E402

GPT2_SHAPES = {"tanh GELU, 4 heads": dict(n_embd=32, n_layer=2, n_head=4, activation_function="gelu_new"),
               "exact GELU, 3 heads": dict(n_embd=48, n_layer=3, n_head=3, activation_function="gelu")}


@pytest.fixture(scope="module")
def gpt2_folders(tmp_path_factory) -> dict:
    """name -> the folder of a tiny random GPT-2 in Hugging Face's layout, one per GPT2_SHAPES entry."""
    folders = {}
    for i, (name, shape) in enumerate(GPT2_SHAPES.items()):
        folder = tmp_path_factory.mktemp(f"gpt2-{i}")
        vocab_size = gpt2_tokenizer_files(folder, english_like_text(30_000, seed=i))
        torch.manual_seed(i)
        config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=64, bos_token_id=vocab_size - 1,
                                         eos_token_id=vocab_size - 1, **shape)
        transformers.GPT2LMHeadModel(config).save_pretrained(folder)
        folders[name] = folder
    return folders


def hf_logits(folder, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(ids).logits


TEXTS = ["Hello world, it's a test: don't stop.", "café naïve 東京 Жизнь 🙂 ² ½ Ⅻ", "  spaces\t\ttabs\n\n\nlines  ",
         "12345 67,890 3.14", "self._x = a_b__c  # code", f"one{EOT}two {EOT}"]


@pytest.mark.parametrize("shape", GPT2_SHAPES)
def test_an_imported_gpt2_gives_transformers_logits_and_ids(gpt2_folders, shape):
    folder = gpt2_folders[shape]
    model, ckpt, tokenizer = load_trained_model(folder, None, torch.device("cpu"))
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    for text in TEXTS:
        assert tokenizer.encode(text, allowed_special=True) == hf_tokenizer.encode(text), text
        assert tokenizer.decode(tokenizer.encode(text)) == text
    assert EOT in tokenizer.decode(tokenizer.encode(TEXTS[-1])) and tokenizer.end_of_text not in tokenizer.encode(TEXTS[-1])
    ids = torch.tensor([tokenizer.encode(" ".join(TEXTS))[:64]])
    with torch.no_grad():
        ours, _ = model(ids)
    assert (ours - hf_logits(folder, ids)).abs().max() < 1e-4
    assert ckpt["model_config"]["gelu"] == ("tanh" if "tanh" in shape else "exact")


def export_and_compare(weights, tokenizer_dir, tmp_path, architecture: str):
    """run.py --export-hf, then transformers' Auto classes on the folder: same ids, same logits."""
    out = tmp_path / "exported"
    result = run_script("run.py", "--weights", weights, "--tokenizer-dir", tokenizer_dir, "--export-hf", out, *ON_CPU)
    assert result.returncode == 0 and result.stdout == "", result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [architecture]
    model, _, tokenizer = load_trained_model(weights, tokenizer_dir, torch.device("cpu"))
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    text = " ".join(TEXTS[:-1]) + " the quick brown fox"
    ids = tokenizer.encode(text)
    assert hf_tokenizer.encode(text) == ids and hf_tokenizer.decode(ids) == text
    window = torch.tensor([ids[:model.config.block_size]])
    with torch.no_grad():
        ours, _ = model(window)
    assert (ours - hf_logits(out, window)).abs().max() < 1e-4
    return out


def test_export_of_a_rotary_model_loads_in_transformers_as_gpt_neox(tiny, tmp_path):
    export_and_compare(tiny["weights"], tiny["tokenizer_dir"], tmp_path, "GPTNeoXForCausalLM")


def test_export_of_a_learned_positions_model_loads_in_transformers_as_gpt2(tiny_trained, tmp_path):
    weights = tmp_path / "learned"
    trained = run_script("train.py", "--input", tiny_trained["input"], "--tokenizer-dir", tiny_trained["tokenizer_dir"],
                         "--weights-dir", weights, *TINY_TRAIN_FLAGS, "--positions", "learned", "--max-iters", "4", *ON_CPU)
    assert trained.returncode == 0, trained.stderr
    export_and_compare(weights / "weights-best.pth", tiny_trained["tokenizer_dir"], tmp_path, "GPT2LMHeadModel")


def test_a_gpt2_exported_again_is_the_gpt2_it_was(gpt2_folders, tmp_path):
    folder = gpt2_folders["tanh GELU, 4 heads"]
    out = export_and_compare(folder, tmp_path / "unused", tmp_path, "GPT2LMHeadModel")
    assert transformers.AutoTokenizer.from_pretrained(out).encode(EOT) == [json.loads(
        (folder / "vocab.json").read_text())[EOT]]


def test_export_refuses_a_folder_that_holds_files_and_options_that_generate(tiny, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    result = run_script("run.py", "--weights", tiny["weights"], "--export-hf", tmp_path / "taken")
    assert_one_error_line(result, "already exists and is not an empty folder")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    result = run_script("run.py", "--weights", tiny["weights"], "--export-hf", tmp_path / "new", "--prompt", "x")
    assert_one_error_line(result, "--export-hf", "not allowed with", "--prompt")
    result = run_script("run.py", "--weights", tiny["weights"], "--export-hf", tmp_path / "new", "--int8")
    assert_one_error_line(result, "--export-hf writes the float32 model: drop --int8")
    assert not (tmp_path / "new").exists()


def test_run_py_views_work_on_an_imported_gpt2(gpt2_folders, tmp_path):
    folder = gpt2_folders["tanh GELU, 4 heads"]
    common = ("--weights", folder, "--seed", "1", *ON_CPU)
    shown = run_script("run.py", *common, "--prompt", "the king", "--max-new-tokens", "4", "--show-probs", "3")
    assert shown.returncode == 0 and "imported from Hugging Face" in shown.stderr, shown.stderr
    assert shown.stderr.count("%") >= 4 * 3                          # K candidates for each token
    traced = run_script("run.py", *common, "--prompt", "the king", "--trace")
    assert traced.returncode == 0 and "(1, " in traced.stderr, traced.stderr
    (tmp_path / "text.txt").write_text("the king is dead, long live the queen.\n", encoding="utf-8")
    scored = run_script("run.py", *common, "--eval", tmp_path / "text.txt", "--html", tmp_path / "page.html")
    assert scored.returncode == 0 and "nats_per_char=" in scored.stdout, scored.stderr
    assert (tmp_path / "page.html").stat().st_size > 1000


def test_generation_stops_at_end_of_text(gpt2_folders, tmp_path):
    """A GPT-2 made to always answer <|endoftext|> (its embedding row large, the final LayerNorm's
    output that row) continues every prompt with nothing: generation stops at the end of the document."""
    from support.hugging_face import read_safetensors, write_safetensors
    folder = tmp_path / "eot"
    source = gpt2_folders["tanh GELU, 4 heads"]
    folder.mkdir()
    for name in ("config.json", "vocab.json", "merges.txt"):
        (folder / name).write_bytes((source / name).read_bytes())
    tensors = read_safetensors(source / "model.safetensors")
    eot = json.loads((source / "vocab.json").read_text())[EOT]
    tensors["transformer.wte.weight"][eot] = 1.0
    tensors["transformer.ln_f.weight"].zero_()
    tensors["transformer.ln_f.bias"].fill_(1.0)
    write_safetensors(tensors, folder / "model.safetensors")
    result = run_script("run.py", "--weights", folder, "--prompt", "the king", "--temperature", "0", *ON_CPU)
    assert result.returncode == 0 and result.stdout == "\n", (result.stdout, result.stderr)


def test_fine_tuning_an_imported_gpt2_runs_and_resumes_exactly(gpt2_folders, tmp_path):
    folder = gpt2_folders["exact GELU, 3 heads"]
    (tmp_path / "text.txt").write_text(english_like_text(20_000, seed=7), encoding="utf-8")
    flags = ("--init-from", folder, "--input", tmp_path / "text.txt", "--block-size", "32", "--batch-size", "4",
             "--max-iters", "6", "--eval-interval", "3", *ON_CPU)
    whole = run_script("train.py", *flags, "--weights-dir", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    parts = [run_script("train.py", *flags, "--weights-dir", tmp_path / "parts", "--max-iters", str(n)) for n in (3, 6)]
    assert all(p.returncode == 0 for p in parts) and "resuming from" in parts[1].stderr, parts[1].stderr
    a, b = (load_checkpoint(tmp_path / w / "weights-latest.pth") for w in ("whole", "parts"))
    assert a["model_config"]["gelu"] == "exact" and a["model_config"]["vocab_size"] == 401
    assert a["train_config"]["init_from"] == str(folder)
    assert all(torch.equal(t, b["model"][name]) for name, t in a["model"].items())
    ran = run_script("run.py", "--weights", tmp_path / "whole", "--prompt", "the", "--max-new-tokens", "3", *ON_CPU)
    assert ran.returncode == 0, ran.stderr


def hub_cache(root, folder):
    """A Hugging Face hub cache holding `folder` as openai-community/gpt2 (what a download leaves)."""
    snapshot = root / "models--openai-community--gpt2" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (root / "models--openai-community--gpt2" / "refs").mkdir()
    (root / "models--openai-community--gpt2" / "refs" / "main").write_text("0123abc")


def test_gpt2_by_name_comes_from_the_hub_cache_and_says_what_is_missing(gpt2_folders, tmp_path):
    pytest.importorskip("huggingface_hub")
    hub_cache(tmp_path / "cache", gpt2_folders["tanh GELU, 4 heads"])
    offline = {"HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    ran = run_script("run.py", "--weights", "gpt2", "--prompt", "the", "--max-new-tokens", "3", *ON_CPU, env=offline)
    assert ran.returncode == 0 and "imported from Hugging Face: gpt2" in ran.stderr, ran.stderr
    missing = run_script("run.py", "--weights", "gpt2-xl", "--prompt", "the", env=offline)
    assert_one_error_line(missing, "could not get gpt2-xl from the Hugging Face Hub", "give its folder")
    (tmp_path / "no_hub" / "huggingface_hub").mkdir(parents=True)      # as if it were not installed
    (tmp_path / "no_hub" / "huggingface_hub" / "__init__.py").write_text("raise ImportError('not installed')")
    without = run_script("run.py", "--weights", "gpt2", "--prompt", "the",
                         env={"PYTHONPATH": os.pathsep.join([str(tmp_path / "no_hub"), str(REPO)])})
    assert_one_error_line(without, "pip install huggingface_hub")
    trained = run_script("train.py", "--init-from", "gpt2-xl", "--weights-dir", tmp_path / "w", env=offline)
    assert_one_error_line(trained, "could not get gpt2-xl")


def test_a_folder_that_is_not_a_gpt2_is_one_line(gpt2_folders, tmp_path):
    source = gpt2_folders["tanh GELU, 4 heads"]

    def folder(name, change):
        made = tmp_path / name
        made.mkdir()
        for f in source.iterdir():
            (made / f.name).write_bytes(f.read_bytes())
        change(made)
        return made

    def retype(made):
        config = json.loads((made / "config.json").read_text())
        (made / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))

    cases = {folder("llama", retype): "model_type 'llama' — only GPT-2",
             folder("no-merges", lambda m: (m / "merges.txt").unlink()): "merges.txt",
             folder("no-weights", lambda m: (m / "model.safetensors").unlink()): "no weights (model.safetensors or",
             folder("cut", lambda m: (m / "model.safetensors").write_bytes(b"\x08" + bytes(7) + b"{")):
                 "not a readable safetensors file"}
    for path, fragment in cases.items():
        assert_one_error_line(run_script("run.py", "--weights", path, "--prompt", "x"), fragment)
    assert_one_error_line(run_script("train.py", "--init-from", tmp_path / "llama", "--weights-dir", tmp_path / "w"),
                          "only GPT-2")
