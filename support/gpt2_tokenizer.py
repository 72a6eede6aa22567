"""GPT-2's tokenizer files in and out of tokenizer.Tokenizer: read this when you import GPT-2 or export for transformers.

GPT-2's BPE is ours with three differences that Tokenizer holds (see tokenizer.py's docstring): its
256 byte tokens in its own order, "<|endoftext|>" after the merges, and its own pre-split. Its files
write a token's bytes as printable characters, one per byte (bytes_to_unicode): vocab.json maps
that text to the id, merges.txt lists the merges as "left right", in rank order. Their layout is
ours: ids 0..255 the 256 bytes, merge r makes id 256 + r, then the special tokens; a vocabulary
in any other layout (Hugging Face's trainer can make a merge whose text an earlier token already
has) is refused, since its ids could not be ours. Out, any Tokenizer becomes a tokenizer.json that
transformers reads with no code of ours (gpt2_files): the same vocabulary and merges, and the
tokenizer's own pre-split written for Hugging Face's regex engine (Oniguruma).
"""
from __future__ import annotations

import json
from pathlib import Path

from support.corpus import TokenizerError
from support.files import read_problem
from tokenizer import END_OF_TEXT, GPT2_SPLIT_PATTERN, NUM_BYTES, Tokenizer

__all__ = ["END_OF_TEXT", "bytes_to_unicode", "from_gpt2_files", "from_gpt2_vocab", "gpt2_files"]

# Each pre-split for Oniguruma, whose \p{..} and \s agree with Python's on every character its Unicode
# tables assign, save that `re`'s \s adds U+001C..U+001F; SPLIT_PATTERN's letter [^\W\d_] is L, Nl or No.
ONIG_SPLIT_PATTERNS = {
    "default": r" ?[\p{L}\p{Nl}\p{No}]+|'(?:[sdmt]|ll|ve|re)| ?\p{Nd}+| ?[^\s\x1c-\x1f\p{L}\p{N}_]+"
               r"|[\s\x1c-\x1f]+(?![^\s\x1c-\x1f])|[\s\x1c-\x1f]+|_+",
    "gpt2": GPT2_SPLIT_PATTERN,
}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character: a printable Latin-1 byte is itself, the 68 others (controls, the
    space, ...) are chr(256), chr(257), ... in byte order, so a space shows as "Ġ" (chr(288))."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(NUM_BYTES) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(NUM_BYTES + k) for k, b in enumerate(others)}}


def from_gpt2_files(vocab_path, merges_path) -> Tokenizer:
    """The Tokenizer of a GPT-2 vocab.json and merges.txt; a problem is a one-line TokenizerError
    naming the file."""
    vocab_path, merges_path = Path(vocab_path), Path(merges_path)
    try:
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
        lines = merges_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{getattr(e, 'filename', None) or vocab_path}: {read_problem(e)}") from None
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{vocab_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    merges = [tuple(line.split(" ")) for line in lines if line]
    bad = next((line for line in lines if line and len(line.split(" ")) != 2), None)
    if bad is not None:
        raise TokenizerError(f"{merges_path}: {bad!r} is not a merge \"left right\"")
    return from_gpt2_vocab(vocab, merges, vocab_path, merges_path)


def from_gpt2_vocab(vocab: dict, merges: list, vocab_source, merges_source) -> Tokenizer:
    """The Tokenizer of GPT-2's vocabulary (token text -> id) and merges ((left, right) texts, in
    rank order), checked to be in GPT-2's layout; a problem is a TokenizerError naming a source."""
    if not (isinstance(vocab, dict) and all(type(i) is int for i in vocab.values())
            and sorted(vocab.values()) == list(range(len(vocab)))):
        raise TokenizerError(f"{vocab_source}: expected an object mapping token texts to the ids 0, 1, 2, ...")
    text_of = {i: text for text, i in vocab.items()}
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    if len(vocab) < NUM_BYTES or any(len(text_of[i]) != 1 or text_of[i] not in byte_of for i in range(NUM_BYTES)):
        raise TokenizerError(f"{vocab_source}: ids 0 to 255 must be the 256 single-byte tokens (GPT-2's layout)")
    byte_order = [byte_of[text_of[i]] for i in range(NUM_BYTES)]   # distinct: vocab's texts are
    pairs = []
    for rank, merge in enumerate(merges):
        left, right = merge
        made = vocab.get(left + right)
        if made != NUM_BYTES + rank or left not in vocab or right not in vocab:
            raise TokenizerError(f"{merges_source}: merge {rank} ({left} {right}) makes {left + right!r}, which "
                                 f"{vocab_source} gives id {made}, not {NUM_BYTES + rank}: not GPT-2's layout "
                                 f"(merge r makes id 256 + r)")
        pairs.append([vocab[left], vocab[right]])
    special_tokens = {text_of[i]: i for i in range(NUM_BYTES + len(pairs), len(vocab))}
    return Tokenizer.from_merges(pairs, merges_source, byte_order, special_tokens, pre_split="gpt2")


def gpt2_files(tok: Tokenizer, block_size: int) -> dict[str, str]:
    """name -> text of the files with which transformers' AutoTokenizer gives tok's ids:
    tokenizer.json (vocabulary, merges, pre-split) and tokenizer_config.json; for a tokenizer with
    GPT-2's pre-split also vocab.json and merges.txt, which from_gpt2_files reads back."""
    as_text = bytes_to_unicode()
    texts = ["".join(as_text[b] for b in tok.decode_bytes([i])) for i in range(NUM_BYTES + len(tok.merges))]
    vocab: dict[str, int] = {}
    for i, text in enumerate(texts):
        vocab.setdefault(text, i)
    if len(vocab) < len(texts):   # a name for one id only: transformers would lose the other
        twin = next(i for i, text in enumerate(texts) if vocab[text] != i)
        raise TokenizerError(f"tokens {vocab[texts[twin]]} and {twin} have the same bytes, which Hugging "
                             f"Face's layout (a token's text -> its id) cannot hold")
    vocab.update(tok.special_tokens)
    merges = [[texts[a], texts[b]] for a, b in tok.merges]
    specials = [{"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True} for text, i in tok.special_tokens.items()]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    split = {"type": "Split", "pattern": {"Regex": ONIG_SPLIT_PATTERNS[tok.pre_split]},
             "behavior": "Isolated", "invert": False}
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": specials, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split, byte_level]},
        "post_processor": None, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": merges}}
    eot = END_OF_TEXT if tok.end_of_text is not None else None
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": block_size,
              "bos_token": eot, "eos_token": eot, "clean_up_tokenization_spaces": False}
    files = {"tokenizer.json": json.dumps(tokenizer, ensure_ascii=False, indent=1) + "\n",
             "tokenizer_config.json": json.dumps(config, indent=2) + "\n"}
    if tok.pre_split == "gpt2":
        files["vocab.json"] = json.dumps(vocab, ensure_ascii=False) + "\n"
        files["merges.txt"] = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    return files
