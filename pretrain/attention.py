"""Core attention through `torch.nn.functional.scaled_dot_product_attention`: a fast layer spec that needs no
Transformer Engine.

megatron-core's local spec computes attention unfused (baddbmm + softmax + bmm, memory quadratic in the
sequence); Transformer Engine's fused kernels need a TE build, which outside NVIDIA's containers is the hard
part of installing a Megatron stack. PyTorch's SDPA picks flash / memory-efficient kernels on GPU (causal, GQA
without repeating K/V) and a fused math path on CPU. `SDPAttention` is megatron-core's `DotProductAttention`
with only the arithmetic replaced: same constructor, same [s, b, heads, dim] in and [s, b, heads * dim] out,
same masks (None + causal, or a boolean mask where True = masked, e.g. packed SFT's block-diagonal one), and
attention dropout under megatron's RNG tracker, so it drops into the local spec unchanged.

`attention_backend` (model config): `auto` (TE when TE and CUDA are present, else SDPA), `sdpa`, `local`, `te`.
"""
from __future__ import annotations

import copy

import torch
from megatron.core import tensor_parallel
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType

from carebot.errors import ConfigError

BACKENDS = ("auto", "sdpa", "local", "te")


class SDPAttention(DotProductAttention):
    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is not None or attention_bias is not None:
            raise ConfigError("attention_backend sdpa: packed_seq_params / attention_bias need the te backend")
        # [s, b, heads, dim] -> [b, heads, s, dim]
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        mask = None
        if attention_mask is not None:
            mask = ~attention_mask.bool()  # megatron: True = masked; SDPA: True = attend
        causal = mask is None and mask_type == AttnMaskType.causal and q.shape[2] > 1
        p = self.attention_dropout.p if self.training else 0.0
        kw = dict(attn_mask=mask, dropout_p=p, is_causal=causal, scale=self.softmax_scale,
                  enable_gqa=q.shape[1] != k.shape[1])
        if p > 0 and not self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                ctx = torch.nn.functional.scaled_dot_product_attention(q, k, v, **kw)
        else:
            ctx = torch.nn.functional.scaled_dot_product_attention(q, k, v, **kw)
        # [b, heads, s, dim] -> [s, b, heads * dim]
        b, h, s, d = ctx.shape
        return ctx.permute(2, 0, 1, 3).reshape(s, b, h * d)


def sdpa_layer_spec():
    """megatron-core's local GPT layer spec (RMSNorm) with SDPAttention as its core attention."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    spec = copy.deepcopy(get_gpt_layer_local_spec(normalization="RMSNorm"))
    spec.submodules.self_attention.submodules.core_attention = SDPAttention
    return spec
