"""Shared fixtures: real data, the real LLaMA-3 tokenizer (built offline), a scratch dir."""
from __future__ import annotations

from pathlib import Path

import pytest

from carebot.paths import cache_dir, data_dir
from tests.helpers import corpus_texts, read_jsonl


@pytest.fixture(scope="session")
def data_root() -> Path:
    return data_dir()


@pytest.fixture(scope="session")
def llama3_tokenizer_dir() -> Path:
    from carebot.tokenizer import build_llama3_tokenizer

    return build_llama3_tokenizer(cache_dir() / "llama3-tokenizer")


@pytest.fixture(scope="session")
def llama3_tokenizer(llama3_tokenizer_dir):
    from carebot.tokenizer import load_tokenizer

    return load_tokenizer(llama3_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_llama3_lm_dir(tmp_path_factory, llama3_tokenizer_dir) -> Path:
    """A tiny random LlamaForCausalLM on the real LLaMA-3 vocab (~8.3M params), saved with its tokenizer as an
    HF model directory (what `pretrain.convert` exports). Seeded: same weights every session."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from carebot.tokenizer import load_tokenizer

    out = tmp_path_factory.mktemp("tiny-llama3-lm")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=True, initializer_range=0.2, bos_token_id=128000, eos_token_id=128009)
    LlamaForCausalLM(cfg).save_pretrained(out)
    load_tokenizer(llama3_tokenizer_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def small_tokenizer_dir(data_root) -> Path:
    """A 4k byte-level BPE trained on real zh+en text, with LLaMA-3's specials and chat template."""
    from carebot.tokenizer import train_small_bpe

    import hashlib

    texts = corpus_texts(data_root)
    # keyed by the text it is trained on: samples/ and the full sets never share a cached tokenizer
    digest = hashlib.sha256("\x00".join(texts).encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return train_small_bpe(texts, cache_dir() / f"bpe4k-v1-{digest}", vocab_size=4096)


@pytest.fixture(scope="session")
def chatml_base_tokenizer_dir(tmp_path_factory, data_root) -> Path:
    """A byte-level BPE shaped like SmolLM2's: `<|endoftext|>` (id 0, also its unk) separates documents,
    `<|im_end|>` is its eos (end of TURN), no BOS, and no single-byte entry for byte 0x04 (which gigatoken
    cannot load). No chat template: a base model's tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [r["text"] for r in read_jsonl(data_root / "general" / "wikitext2_paragraphs_en.jsonl")]
    tk = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    alphabet = [c for c in pre_tokenizers.ByteLevel.alphabet() if c != chr(256 + 4)]  # byte 0x04 maps to U+0104
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=1000, show_progress=False, initial_alphabet=alphabet,
                                                      special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"]))
    out = tmp_path_factory.mktemp("smollm-like")
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>",
                            pad_token="<|im_end|>").save_pretrained(out)
    return out
