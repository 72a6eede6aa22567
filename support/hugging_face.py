"""GPT-2 in, your model out: Hugging Face checkpoints read into Model.py, and trained models written for transformers.

Read this when you run or fine-tune GPT-2 itself (`run.py --weights gpt2`, `train.py --init-from gpt2`),
or want your model in Hugging Face's layout (`run.py --export-hf DIR`). Model.py with learned
positions and the tanh GELU *is* GPT-2's network, so importing is renaming: GPT-2 stores its linear
layers as Conv1D, whose weight is (in, out), the transpose of nn.Linear's (out, in); everything else
is one tensor for one tensor. Rotary models leave as GPT-NeoX with a sequential residual and every
dimension rotated, which computes the same function (its rotation pairs dimension i with i + D/2, as
Model.rotate does; its fused qkv is laid out head by head). Files are safetensors, read and written
here with the standard library (an 8-byte header length, a JSON header, the raw tensors).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from Model import ModelConfig, Transformer
from support import gpt2_tokenizer
from support.checkpoints import CHECKPOINT_FORMAT_VERSION, CheckpointError, tokenizer_fields
from support.corpus import TokenizerError
from support.files import atomic_write_all

# The names run.py and train.py accept, and the Hub repositories they come from.
GPT2_MODELS = {name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")
INSTALL_HINT = ("pip install huggingface_hub (an optional extra), or give a folder holding "
                + ", ".join(FILES[:1] + ("model.safetensors or pytorch_model.bin",) + FILES[2:]))


def is_gpt2_source(path) -> bool:
    """Whether --weights / --init-from names a Hugging Face GPT-2: gpt2 ... gpt2-xl, or a folder with a config.json."""
    return str(path) in GPT2_MODELS or (Path(path).is_dir() and (Path(path) / "config.json").is_file())


# ─────────────────────────────────────────── import ───────────────────────────────────────────

def gpt2_folder(name_or_path) -> Path:
    """The folder of a GPT-2: a local one as it is, or one of GPT2_MODELS from the Hub's cache,
    downloaded into it first when it is not there yet (needs huggingface_hub)."""
    name = str(name_or_path)
    if name not in GPT2_MODELS:
        return Path(name_or_path)
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"{name} comes from the Hugging Face Hub, which needs huggingface_hub: "
                              f"{INSTALL_HINT}") from None
    try:
        return Path(snapshot_download(GPT2_MODELS[name], allow_patterns=list(FILES)))
    except Exception as e:          # no network, no such file in the cache, a refused download, ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"could not get {name} from the Hugging Face Hub ({type(e).__name__}: "
                              f"{reason[:200]}) — check the network, or download it elsewhere and give its "
                              f"folder ({', '.join(FILES)})") from None


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing — a GPT-2 folder holds {', '.join(FILES)}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def config_from_gpt2(hf: dict, path: Path) -> ModelConfig:
    """GPT-2's config.json -> the ModelConfig of the same network, or a one-line refusal for what
    Model.py does not compute."""
    if hf.get("model_type") != "gpt2":
        raise CheckpointError(f"{path}: model_type {hf.get('model_type')!r} — only GPT-2 (model_type "
                              f"\"gpt2\") loads into Model.py")
    gelus = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "exact"}
    unlike = [f"{k} {hf.get(k)!r}" for k, ok in (
        ("activation_function", hf.get("activation_function", "gelu_new") in gelus),
        ("n_inner", hf.get("n_inner") in (None, 4 * hf.get("n_embd", 0))),
        ("layer_norm_epsilon", hf.get("layer_norm_epsilon", 1e-5) == 1e-5),
        ("scale_attn_weights", hf.get("scale_attn_weights", True) is True),
        ("scale_attn_by_inverse_layer_idx", not hf.get("scale_attn_by_inverse_layer_idx", False)),
        ("tie_word_embeddings", hf.get("tie_word_embeddings", True) is True)) if not ok]
    if unlike:
        raise CheckpointError(f"{path}: {', '.join(unlike)} — Model.py computes GPT-2 with a 4x MLP, "
                              f"LayerNorm eps 1e-5, 1/sqrt(D) attention and a tied head")
    try:
        return ModelConfig(vocab_size=hf["vocab_size"], block_size=hf["n_positions"], emb_len=hf["n_embd"],
                           num_layers=hf["n_layer"], num_heads=hf["n_head"], positions="learned",
                           gelu=gelus[hf.get("activation_function", "gelu_new")])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: bad GPT-2 config ({e})") from None


# Our name -> GPT-2's, for layer i ("{i}"); True where GPT-2 stores the transpose (Conv1D).
GPT2_NAMES = {"tok_emb.weight": ("wte.weight", False), "pos_emb.weight": ("wpe.weight", False),
              "ln_f.weight": ("ln_f.weight", False), "ln_f.bias": ("ln_f.bias", False)}
GPT2_LAYER_NAMES = {"ln1": ("ln_1", False), "attn.qkv": ("attn.c_attn", True), "attn.proj": ("attn.c_proj", True),
                    "ln2": ("ln_2", False), "mlp.up": ("mlp.c_fc", True), "mlp.proj": ("mlp.c_proj", True)}


def gpt2_names(num_layers: int) -> dict[str, tuple[str, bool]]:
    """Every tensor of Model.py's GPT-2: our name -> (GPT-2's name, whether it is stored transposed)."""
    names = dict(GPT2_NAMES)
    for i in range(num_layers):
        for ours, (theirs, conv1d) in GPT2_LAYER_NAMES.items():
            names[f"blocks.{i}.{ours}.weight"] = (f"h.{i}.{theirs}.weight", conv1d)
            names[f"blocks.{i}.{ours}.bias"] = (f"h.{i}.{theirs}.bias", False)
    return names


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of model.safetensors, else of pytorch_model.bin (loaded safely: tensors only)."""
    if (folder / "model.safetensors").is_file():
        return read_safetensors(folder / "model.safetensors")
    if (folder / "pytorch_model.bin").is_file():
        try:
            return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{folder / 'pytorch_model.bin'}: unreadable ({type(e).__name__})") from None
    raise CheckpointError(f"{folder}/: no weights (model.safetensors or pytorch_model.bin)")


def gpt2_checkpoint(name_or_path) -> dict:
    """A Hugging Face GPT-2 (a name in GPT2_MODELS, or a folder) as a checkpoint of this project, in
    memory: what run.py runs and train.py --init-from starts from, like any .pth."""
    folder = gpt2_folder(name_or_path)
    config = config_from_gpt2(read_json(folder / "config.json"), folder / "config.json")
    tokenizer = gpt2_tokenizer.from_gpt2_files(folder / "vocab.json", folder / "merges.txt")
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"{folder}/: the tokenizer has {tokenizer.vocab_size} tokens, the model "
                              f"{config.vocab_size} — they do not belong together")
    stored = read_weights(folder)
    prefix = "transformer." if "transformer.wte.weight" in stored else ""
    with torch.device("meta"):                    # the shapes config.json promises, with no memory spent
        expected = Transformer(config).state_dict()
    state = {}
    for ours, (theirs, conv1d) in gpt2_names(config.num_layers).items():
        if prefix + theirs not in stored:
            raise CheckpointError(f"{folder}/: weights lack {prefix + theirs} — not a GPT-2 of this config")
        t = stored[prefix + theirs].float()
        state[ours] = t.t() if conv1d else t       # a view: loading the model makes the one copy
        if state[ours].shape != expected[ours].shape:
            raise CheckpointError(f"{folder}/: {prefix + theirs} has shape {tuple(t.shape)}, which does not match "
                                  f"config.json")
    return {"format_version": CHECKPOINT_FORMAT_VERSION, "kind": "imported", "source": str(name_or_path),
            "model_config": config.to_dict(), "model": state, **tokenizer_fields(tokenizer)}


# ─────────────────────────────────────────── export ───────────────────────────────────────────

def neox_qkv(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Our fused qkv rows [all queries; all keys; all values] -> GPT-NeoX's, head by head: [q0 k0 v0 q1 ...]."""
    three, rest = 3, t.shape[1:]
    per_head = t.reshape(three, num_heads, -1, *rest)           # (3, H, D, ...)
    return per_head.transpose(0, 1).reshape(t.shape)            # (H, 3, D, ...) flattened


def hf_weights(model: Transformer) -> tuple[dict, dict]:
    """(config.json, tensors) of the Hugging Face architecture that computes what `model` computes."""
    c, state = model.config, {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    act = {"exact": "gelu", "tanh": "gelu_new"}[c.gelu]
    if c.positions == "learned":
        config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
                  "n_positions": c.block_size, "n_embd": c.emb_len, "n_layer": c.num_layers, "n_head": c.num_heads,
                  "activation_function": act, "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True,
                  "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
        tensors = {"transformer." + theirs: state[ours].t().contiguous() if conv1d else state[ours]
                   for ours, (theirs, conv1d) in gpt2_names(c.num_layers).items()}
        return config, tensors
    config = {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "vocab_size": c.vocab_size,
              "max_position_embeddings": c.block_size, "hidden_size": c.emb_len, "num_hidden_layers": c.num_layers,
              "num_attention_heads": c.num_heads, "intermediate_size": 4 * c.emb_len, "hidden_act": act,
              "layer_norm_eps": 1e-5, "use_parallel_residual": False, "attention_bias": True,
              "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0},
              "rotary_pct": 1.0, "rotary_emb_base": 10000, "tie_word_embeddings": True,
              "attention_dropout": 0.0, "hidden_dropout": 0.0}
    layer = {"ln1": "input_layernorm", "attn.qkv": "attention.query_key_value", "attn.proj": "attention.dense",
             "ln2": "post_attention_layernorm", "mlp.up": "mlp.dense_h_to_4h", "mlp.proj": "mlp.dense_4h_to_h"}
    tensors = {"gpt_neox.embed_in.weight": state["tok_emb.weight"],
               "gpt_neox.final_layer_norm.weight": state["ln_f.weight"],
               "gpt_neox.final_layer_norm.bias": state["ln_f.bias"]}
    for i in range(c.num_layers):
        for ours, theirs in layer.items():
            for kind in ("weight", "bias"):
                t = state[f"blocks.{i}.{ours}.{kind}"]
                tensors[f"gpt_neox.layers.{i}.{theirs}.{kind}"] = neox_qkv(t, c.num_heads) if ours == "attn.qkv" else t
    return config, tensors


def export_hf(model: Transformer, tokenizer, folder: Path) -> str:
    """Write `folder` (new or empty) so that transformers' AutoModelForCausalLM and AutoTokenizer load the
    model and its tokenizer with no code of ours: the same ids, the same logits. All files appear together
    or none. -> the line that says so."""
    config, tensors = hf_weights(model)
    eot = tokenizer.end_of_text
    config.update({"bos_token_id": eot, "eos_token_id": eot, "dtype": "float32"})
    try:
        files = gpt2_tokenizer.gpt2_files(tokenizer, model.config.block_size)     # name -> text
    except TokenizerError as e:
        raise CheckpointError(f"cannot export: {e}") from None
    files["config.json"] = json.dumps(config, indent=2) + "\n"
    writers = {folder / name: (lambda tmp, text=text: tmp.write_text(text, encoding="utf-8", newline="\n"))
               for name, text in files.items()}
    writers[folder / "model.safetensors"] = lambda tmp: write_safetensors(tensors, tmp)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_all(writers)
    return f"wrote {folder}/: transformers' AutoModelForCausalLM and AutoTokenizer .from_pretrained load it"


# ─────────────────────────────────────── safetensors ────────────────────────────────────────
# An 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then
# the tensors' bytes back to back (offsets counted from the end of the header).

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = bytearray(path.stat().st_size)        # the tensors below share this memory, no copies
        with open(path, "rb") as f:
            f.readinto(data)
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + size])
        tensors = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            (begin, end), dtype = info["data_offsets"], DTYPES[info["dtype"]]
            raw = torch.frombuffer(data, dtype=torch.uint8, count=end - begin, offset=8 + size + begin) \
                if end > begin else torch.empty(0, dtype=torch.uint8)
            try:
                tensors[name] = raw.view(dtype).reshape(info["shape"])
            except RuntimeError:                     # not aligned for its dtype: copy it first
                tensors[name] = raw.clone().view(dtype).reshape(info["shape"])
        return tensors
    except (OSError, ValueError, KeyError, TypeError, struct.error, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    names = {v: k for k, v in DTYPES.items()}
    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        blob = t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)                      # the tensors start 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for blob in blobs:
            f.write(blob)
