"""LLaMA-3 on megatron-core `GPTModel`: RMSNorm, SwiGLU, RoPE (theta 500000), GQA, untied embeddings,
no biases. Transformer Engine layer spec when TE and CUDA are present; otherwise megatron-core's local spec with
SDPA core attention (pretrain/attention.py)."""
from __future__ import annotations

import math

import torch
from megatron.core import parallel_state as mpu
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer import TransformerConfig

from carebot.errors import ConfigError
from carebot.run_config import ModelConfig, ParallelConfig


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """Megatron pads the vocabulary so each TP rank holds an equal, aligned slice."""
    m = divisible_by * tp
    return int(math.ceil(vocab_size / m) * m)


def check_model_config(m: ModelConfig, p: ParallelConfig, vocab_size: int) -> None:
    """Clear errors for layouts megatron would reject with an assertion."""
    if m.hidden_size % m.num_attention_heads:
        raise ConfigError(f"hidden_size {m.hidden_size} is not divisible by num_attention_heads {m.num_attention_heads}")
    if m.num_attention_heads % m.num_query_groups:
        raise ConfigError(f"num_attention_heads {m.num_attention_heads} is not a multiple of "
                          f"num_query_groups {m.num_query_groups}")
    if m.num_attention_heads % p.tensor:
        raise ConfigError(f"tensor parallel size {p.tensor} does not divide num_attention_heads "
                          f"{m.num_attention_heads}")
    if m.num_query_groups % p.tensor:
        raise ConfigError(f"tensor parallel size {p.tensor} does not divide num_query_groups (KV heads) "
                          f"{m.num_query_groups}")
    if m.num_layers % p.pipeline:
        raise ConfigError(f"pipeline parallel size {p.pipeline} does not divide num_layers {m.num_layers}")
    attention_backend(m)
    if m.vocab_size is not None and m.vocab_size != vocab_size:
        raise ConfigError(f"vocab size mismatch: model.vocab_size={m.vocab_size} but the tokenizer has "
                          f"{vocab_size} tokens; set model.vocab_size to {vocab_size} (or leave it unset)")


def use_transformer_engine() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def transformer_config(m: ModelConfig, p: ParallelConfig, bf16: bool, **scale) -> TransformerConfig:
    """megatron-core's config of the model; `scale`: the scale knobs' fields (pretrain.scale.transformer_kwargs)."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    on_gpu = torch.cuda.is_available()
    return TransformerConfig(
        num_layers=m.num_layers, hidden_size=m.hidden_size, ffn_hidden_size=m.ffn_hidden_size,
        num_attention_heads=m.num_attention_heads, num_query_groups=m.num_query_groups,
        kv_channels=m.hidden_size // m.num_attention_heads,
        normalization="RMSNorm", layernorm_epsilon=m.norm_epsilon,
        gated_linear_unit=True, activation_func=torch.nn.functional.silu, bias_activation_fusion=on_gpu,
        add_bias_linear=False, add_qkv_bias=m.qkv_bias,
        hidden_dropout=m.hidden_dropout, attention_dropout=m.attention_dropout,
        init_method_std=m.init_method_std,
        tensor_model_parallel_size=p.tensor, pipeline_model_parallel_size=p.pipeline,
        sequence_parallel=p.sequence_parallel and p.tensor > 1 and on_gpu,
        params_dtype=dtype, pipeline_dtype=dtype, bf16=bf16,
        use_cpu_initialization=not on_gpu, perform_initialization=True,
        masked_softmax_fusion=on_gpu, persist_layer_norm=on_gpu, gradient_accumulation_fusion=False,
        apply_rope_fusion=False, bias_dropout_fusion=on_gpu,
        cross_entropy_loss_fusion=False, **scale,
    )


def attention_backend(m: ModelConfig) -> str:
    """The core attention a run uses (see pretrain/attention.py); an impossible choice is one line."""
    from pretrain.attention import BACKENDS

    if m.attention_backend not in BACKENDS:
        raise ConfigError(f"model.attention_backend={m.attention_backend!r}: one of {', '.join(BACKENDS)}")
    if m.attention_backend == "te" and not use_transformer_engine():
        raise ConfigError("model.attention_backend=te needs Transformer Engine and CUDA (pip install -e '.[gpu]'); "
                          "sdpa is the fast path without it")
    if m.attention_backend == "auto":
        return "te" if use_transformer_engine() else "sdpa"
    return m.attention_backend


def layer_spec(m: ModelConfig):
    backend = attention_backend(m)
    if backend == "te":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec
        return get_gpt_layer_with_transformer_engine_spec()
    if backend == "sdpa":
        from pretrain.attention import sdpa_layer_spec
        return sdpa_layer_spec()
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    return get_gpt_layer_local_spec(normalization="RMSNorm")


def build_model(m: ModelConfig, p: ParallelConfig, vocab_size: int, seq_length: int, bf16: bool = False,
                **scale) -> GPTModel:
    """One pipeline stage of the LLaMA-3 model (call after megatron parallel state is initialised)."""
    check_model_config(m, p, vocab_size)
    cfg = transformer_config(m, p, bf16, **scale)
    model = GPTModel(
        config=cfg, transformer_layer_spec=layer_spec(m),
        vocab_size=padded_vocab_size(vocab_size, m.make_vocab_size_divisible_by, p.tensor),
        max_sequence_length=seq_length,
        pre_process=mpu.is_pipeline_first_stage(), post_process=mpu.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=not m.untie_embeddings,
        position_embedding_type="rope", rotary_base=int(m.rotary_base), rotary_percent=1.0,
        rope_scaling=m.rope_scaling_factor is not None, rope_scaling_factor=m.rope_scaling_factor or 8.0,
    )
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    return model


def num_params(m: ModelConfig, vocab_size: int) -> int:
    """Parameter count of the full (unsharded, unpadded) model."""
    h, f, L = m.hidden_size, m.ffn_hidden_size, m.num_layers
    kv = h // m.num_attention_heads * m.num_query_groups
    per_layer = h * (h + 2 * kv) + h * h + 3 * h * f + 2 * h
    emb = vocab_size * h * (2 if m.untie_embeddings else 1)
    return L * per_layer + emb + h


def flops_per_token(m: ModelConfig, vocab_size: int, seq_length: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward; matmuls only, as Megatron counts).

    Per layer forward: 2*h*(h + 2*kv) QKV + 2*h*h output proj + 2*3*h*f SwiGLU + 2*2*s*h attention
    (QK^T and AV over the full, un-masked sequence, as Megatron/PaLM count it); plus 2*h*V logits."""
    h, f, L, s = m.hidden_size, m.ffn_hidden_size, m.num_layers, seq_length
    kv = h // m.num_attention_heads * m.num_query_groups
    per_layer = 2 * h * (h + 2 * kv) + 2 * h * h + 6 * h * f + 4 * s * h
    return 3.0 * (L * per_layer + 2 * h * vocab_size)
