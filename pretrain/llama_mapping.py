"""The HF LLaMA <-> megatron-core parameter mapping: HF config <-> ModelConfig, and one table row per parameter
family (QKV interleaving by query group, SwiGLU fc1 = [gate; up], vocabulary padding), after Megatron-Bridge's
llama bridge. Pure tensor functions: no process groups, no files beyond config.json."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from carebot.errors import ConfigError
from carebot.run_config import ModelConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
HF_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


class ConvertError(ConfigError):
    """Input the converter cannot handle; the message names the file and what is wrong."""


# --------------------------------------------------------------------------------------------- config
FAMILIES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}  # model_type -> architecture


def read_hf_config(hf_dir: Path) -> dict:
    path = hf_dir / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no config.json (not a HuggingFace model directory)")
    cfg = json.loads(path.read_text())
    archs = cfg.get("architectures") or [FAMILIES.get(cfg.get("model_type"), "LlamaForCausalLM")]
    if FAMILIES.get(cfg.get("model_type")) != archs[0] or len(archs) != 1:
        raise ConvertError(f"{path}: model_type {cfg.get('model_type')!r} / architectures {archs} is not one of "
                           f"{', '.join(FAMILIES.values())}; carebot converts these families only")
    return cfg


def rope_theta(hf: dict) -> float:
    rp = hf.get("rope_parameters") or {}
    return float(rp.get("rope_theta", hf.get("rope_theta", 10000.0)))


# megatron-core's RotaryEmbedding applies Llama-3.1's scaling with these fixed; only `factor` is a parameter
LLAMA3_ROPE_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def rope_scaling_factor(hf: dict, problems: list) -> float | None:
    rp = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = rp.get("rope_type", rp.get("type", "default"))
    if kind == "default":
        return None
    if kind != "llama3":
        problems.append(f"rope scaling {kind!r} (plain RoPE and Llama-3.1's 'llama3' only)")
        return None
    off = [f"{k}={rp.get(k)!r} (megatron-core fixes {v})" for k, v in LLAMA3_ROPE_FIXED.items()
           if rp.get(k) is None or float(rp[k]) != v]
    if off:
        problems.append("llama3 rope scaling with " + ", ".join(off))
    return float(rp.get("factor", 8.0))


def model_config_from_hf(hf: dict, where: str = "config.json") -> ModelConfig:
    """HF LlamaConfig dict -> our ModelConfig; refuses what megatron's LLaMA build cannot express."""
    heads, hidden = hf["num_attention_heads"], hf["hidden_size"]
    problems = []
    scaling = rope_scaling_factor(hf, problems)
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {hf['hidden_act']!r} (SwiGLU needs silu)")
    qwen2 = hf.get("model_type") == "qwen2"  # q/k/v biases, none on o_proj or the MLP
    if not qwen2 and (hf.get("attention_bias") or hf.get("mlp_bias")):
        problems.append("attention/mlp biases (o_proj / MLP biases: only Qwen2's q/k/v biases are supported)")
    if qwen2 and hf.get("use_sliding_window"):
        problems.append("sliding-window attention")
    if hf.get("head_dim") not in (None, hidden // heads):
        problems.append(f"head_dim {hf['head_dim']} != hidden_size / num_attention_heads")
    if problems:
        raise ConvertError(f"{where}: unsupported LLaMA variant: {'; '.join(problems)}")
    return ModelConfig(num_layers=hf["num_hidden_layers"], hidden_size=hidden,
                       ffn_hidden_size=hf["intermediate_size"], num_attention_heads=heads,
                       num_query_groups=hf.get("num_key_value_heads") or heads, rotary_base=rope_theta(hf),
                       norm_epsilon=hf.get("rms_norm_eps", 1e-5),
                       untie_embeddings=not hf.get("tie_word_embeddings", False), qkv_bias=qwen2,
                       rope_scaling_factor=scaling)


def hf_config_from_model(m: ModelConfig, vocab_size: int, dtype: torch.dtype, tokenizer, base: dict | None):
    """Our ModelConfig -> transformers.LlamaConfig / Qwen2Config (keeping the source HF config's extra fields
    when known)."""
    from transformers import LlamaConfig, Qwen2Config

    d = dict(base or {})
    for k in ("transformers_version", "_name_or_path", "torch_dtype", "dtype", "architectures", "model_type"):
        d.pop(k, None)
    d.update(vocab_size=vocab_size, hidden_size=m.hidden_size, intermediate_size=m.ffn_hidden_size,
             num_hidden_layers=m.num_layers, num_attention_heads=m.num_attention_heads,
             num_key_value_heads=m.num_query_groups, head_dim=m.hidden_size // m.num_attention_heads,
             hidden_act="silu", rms_norm_eps=m.norm_epsilon, tie_word_embeddings=not m.untie_embeddings,
             **({} if m.qkv_bias else {"attention_bias": False, "mlp_bias": False}),
             rope_parameters={"rope_type": "default", "rope_theta": float(m.rotary_base)} if m.rope_scaling_factor is None
             else {"rope_type": "llama3", "rope_theta": float(m.rotary_base), "factor": float(m.rope_scaling_factor),
                   **LLAMA3_ROPE_FIXED})
    d.pop("rope_theta", None), d.pop("rope_scaling", None)
    d.setdefault("max_position_embeddings", 8192)
    if tokenizer is not None:
        d.setdefault("bos_token_id", tokenizer.bos_token_id)
        d.setdefault("eos_token_id", tokenizer.eos_token_id)
    cfg = (Qwen2Config if m.qkv_bias else LlamaConfig)(**d)
    cfg.architectures = [FAMILIES["qwen2" if m.qkv_bias else "llama"]]
    cfg.dtype = HF_DTYPE_NAMES[dtype]
    return cfg


# --------------------------------------------------------------------------------------------- mapping
@dataclass(frozen=True)
class Dims:
    heads: int
    groups: int
    head_dim: int
    vocab: int  # real (tokenizer) vocabulary
    padded_vocab: int  # rows of the megatron embedding / output layer


def _qkv_bias_in(ts, d: Dims):
    return _qkv_in(tuple(t[:, None] for t in ts), d)[:, 0]


def _qkv_bias_out(t, d: Dims):
    return tuple(x[:, 0] for x in _qkv_out(t[:, None], d))


def _copy_in(ts, d):
    return ts[0]


def _copy_out(t, d):
    return (t,)


def _qkv_in(ts, d: Dims):
    """HF q/k/v -> megatron fused QKV: per query group, its q heads then its k head then its v head."""
    q, k, v = ts
    h, per = q.shape[1], d.heads // d.groups
    return torch.cat([q.reshape(d.groups, per * d.head_dim, h), k.reshape(d.groups, d.head_dim, h),
                      v.reshape(d.groups, d.head_dim, h)], dim=1).reshape(-1, h)


def _qkv_out(t, d: Dims):
    per, h = d.heads // d.groups, t.shape[1]
    q, k, v = t.reshape(d.groups, (per + 2) * d.head_dim, h).split([per * d.head_dim, d.head_dim, d.head_dim], 1)
    return q.reshape(-1, h), k.reshape(-1, h), v.reshape(-1, h)


def _fc1_in(ts, d):
    """SwiGLU: megatron's linear_fc1 is [gate; up] stacked on the output dim."""
    return torch.cat(ts, dim=0)


def _fc1_out(t, d):
    return tuple(t.chunk(2, dim=0))


def _vocab_in(ts, d: Dims):
    """Pad the vocabulary rows (zeros) up to the size megatron splits evenly across TP ranks."""
    t = ts[0]
    if t.shape[0] != d.vocab:
        raise ConvertError(f"embedding has {t.shape[0]} rows but the vocabulary has {d.vocab} tokens")
    return torch.cat([t, t.new_zeros(d.padded_vocab - d.vocab, t.shape[1])]) if d.padded_vocab > d.vocab else t


def _vocab_out(t, d: Dims):
    return (t[: d.vocab],)


@dataclass(frozen=True)
class Row:
    """One parameter family: megatron name, HF name(s) (`{i}` = layer), and the typed transform both ways."""
    megatron: str
    hf: tuple[str, ...]
    to_megatron: Callable
    to_hf: Callable
    untied_only: bool = False
    qkv_bias_only: bool = False

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.megatron


_L, _A, _M = "decoder.layers.{i}.", "model.layers.{i}.self_attn.", "model.layers.{i}.mlp."
ROWS: tuple[Row, ...] = (
    Row("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), _vocab_in, _vocab_out),
    Row(_L + "input_layernorm.weight", ("model.layers.{i}.input_layernorm.weight",), _copy_in, _copy_out),
    Row(_L + "self_attention.linear_qkv.weight", (_A + "q_proj.weight", _A + "k_proj.weight", _A + "v_proj.weight"),
        _qkv_in, _qkv_out),
    Row(_L + "self_attention.linear_qkv.bias", (_A + "q_proj.bias", _A + "k_proj.bias", _A + "v_proj.bias"),
        _qkv_bias_in, _qkv_bias_out, qkv_bias_only=True),
    Row(_L + "self_attention.linear_proj.weight", (_A + "o_proj.weight",), _copy_in, _copy_out),
    Row(_L + "pre_mlp_layernorm.weight", ("model.layers.{i}.post_attention_layernorm.weight",), _copy_in, _copy_out),
    Row(_L + "mlp.linear_fc1.weight", (_M + "gate_proj.weight", _M + "up_proj.weight"), _fc1_in, _fc1_out),
    Row(_L + "mlp.linear_fc2.weight", (_M + "down_proj.weight",), _copy_in, _copy_out),
    Row("decoder.final_layernorm.weight", ("model.norm.weight",), _copy_in, _copy_out),
    Row("output_layer.weight", ("lm_head.weight",), _vocab_in, _vocab_out, untied_only=True),
)


def expand_rows(m: ModelConfig):
    """(megatron name, HF names, row) for every parameter of the model."""
    for row in ROWS:
        if (row.untied_only and not m.untie_embeddings) or (row.qkv_bias_only and not m.qkv_bias):
            continue
        for i in range(m.num_layers) if row.per_layer else [None]:
            fmt = (lambda s: s.format(i=i)) if i is not None else (lambda s: s)
            yield fmt(row.megatron), tuple(fmt(h) for h in row.hf), row


def dims(m: ModelConfig, vocab: int, padded: int) -> Dims:
    return Dims(m.num_attention_heads, m.num_query_groups, m.hidden_size // m.num_attention_heads, vocab, padded)


# --------------------------------------------------------------------------------------------- HF files
class HFWeights:
    """Lazy reader over an HF dir's safetensors (single file or sharded with an index)."""

    def __init__(self, hf_dir: Path):
        from safetensors import safe_open

        index = hf_dir / "model.safetensors.index.json"
        if index.exists():
            wmap = json.loads(index.read_text())["weight_map"]
        elif (hf_dir / "model.safetensors").exists():
            wmap = None
        else:
            raise FileNotFoundError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json")
        files = sorted(set(wmap.values())) if wmap else ["model.safetensors"]
        self.handles, self.where = {}, {}
        for f in files:
            try:
                h = safe_open(str(hf_dir / f), framework="pt")
            except Exception as e:  # truncated / corrupt shard
                raise ConvertError(f"{hf_dir / f}: cannot read safetensors: {e}") from e
            self.handles[f] = h
            for k in h.keys():
                self.where[k] = f

    def get(self, name: str) -> torch.Tensor:
        if name not in self.where:
            raise ConvertError(f"HF checkpoint has no tensor {name!r}")
        return self.handles[self.where[name]].get_tensor(name)

    def dtype(self) -> torch.dtype:
        return self.get("model.embed_tokens.weight").dtype
