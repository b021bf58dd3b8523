"""The scale knobs, as megatron-core config: activation recomputation, overlapped gradient reduce / parameter
gather, FP8. Nothing here is hand-rolled: each knob is a field of megatron-core's `TransformerConfig`,
`DistributedDataParallelConfig` or `OptimizerConfig`, and megatron-core does the work. `check_scale` turns the
combinations megatron would reject with an assertion deep in set-up (or silently ignore) into one line, before any
process group exists.

| knob | megatron-core field | notes |
|---|---|---|
| `parallel.recompute: none / selective / full` | `recompute_granularity` | selective: the attention core only (cheap, the s^2 part); full: whole layers |
| `parallel.recompute_method: uniform / block`, `parallel.recompute_num_layers` | `recompute_method`, `recompute_num_layers` | full only |
| `parallel.overlap_grad_reduce` | DDP `overlap_grad_reduce` | bucketed all-reduce during backward; not with the distributed optimizer yet |
| `parallel.overlap_param_gather` | DDP + optimizer `overlap_param_gather` | distributed optimizer only (refused for now, see check_scale) |
| `train.fp8: null / hybrid / e4m3` | `fp8`, `fp8_recipe` delayed | Transformer Engine + CUDA only |
| `parallel.context` | `context_parallel_size` | refused: megatron-core's context parallelism lives in TE's attention (the sdpa and local specs have none), and the TE path has had no GPU run here |
"""
from __future__ import annotations

from typing import Any

from carebot.errors import ConfigError
from carebot.run_config import RunConfig

RECOMPUTE = ("none", "selective", "full")
RECOMPUTE_METHODS = ("uniform", "block")
FP8 = ("hybrid", "e4m3")


def check_scale(cfg: RunConfig, te_available: bool) -> None:
    p, m = cfg.parallel, cfg.model
    if p.recompute not in RECOMPUTE:
        raise ConfigError(f"parallel.recompute={p.recompute!r}: one of {', '.join(RECOMPUTE)}")
    if p.recompute_method not in RECOMPUTE_METHODS:
        raise ConfigError(f"parallel.recompute_method={p.recompute_method!r}: one of {', '.join(RECOMPUTE_METHODS)}")
    per_stage = m.num_layers // max(p.pipeline, 1)
    if p.recompute == "full" and not 1 <= p.recompute_num_layers <= per_stage:
        raise ConfigError(f"parallel.recompute_num_layers={p.recompute_num_layers}: between 1 and the "
                          f"{per_stage} layers of a pipeline stage")
    if p.overlap_param_gather and not p.distributed_optimizer:
        raise ConfigError("parallel.overlap_param_gather needs parallel.distributed_optimizer=true (it overlaps the "
                          "distributed optimizer's parameter all-gather)")
    if p.distributed_optimizer and (p.overlap_grad_reduce or p.overlap_param_gather):
        # measured (DP2, gloo): it trains, then megatron-core 0.16 cannot save the distributed optimizer in the
        # checkpoint format used here ("ShardedTensor.flattened_range is not supported")
        raise ConfigError("parallel.overlap_grad_reduce / overlap_param_gather with parallel.distributed_optimizer: "
                          "megatron-core 0.16 cannot checkpoint that optimizer (flattened_range); use overlap_grad_reduce "
                          "without the distributed optimizer")
    if p.context != 1:
        # megatron-core splits the sequence over CP ranks and exchanges K/V inside TEDotProductAttention; its local
        # DotProductAttention (and so SDPAttention) asserts context_parallel_size == 1
        raise ConfigError(f"parallel.context={p.context}: context parallelism runs only inside Transformer Engine's "
                          "attention in megatron-core and is not offered here yet; use recompute=selective (the "
                          "sdpa backend keeps attention memory linear in the sequence)")
    if cfg.train.fp8 is not None:
        if cfg.train.fp8 not in FP8:
            raise ConfigError(f"train.fp8={cfg.train.fp8!r}: null or one of {', '.join(FP8)}")
        if not te_available:
            raise ConfigError(f"train.fp8={cfg.train.fp8} needs Transformer Engine and CUDA (pip install -e '.[gpu]')")


def transformer_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """The TransformerConfig fields of the scale knobs."""
    p = cfg.parallel
    kw: dict[str, Any] = {"recompute_granularity": None if p.recompute == "none" else p.recompute}
    if p.recompute == "full":
        kw.update(recompute_method=p.recompute_method, recompute_num_layers=p.recompute_num_layers)
    if cfg.train.fp8:
        kw.update(fp8=cfg.train.fp8, fp8_recipe="delayed")
    return kw


def ddp_config(cfg: RunConfig):
    from megatron.core.distributed import DistributedDataParallelConfig

    p = cfg.parallel
    return DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=p.overlap_grad_reduce,
                                         overlap_param_gather=p.overlap_param_gather,
                                         use_distributed_optimizer=p.distributed_optimizer)


def optimizer_config(cfg: RunConfig, bf16: bool):
    import torch
    from megatron.core.optimizer import OptimizerConfig

    o, p = cfg.optim, cfg.parallel
    return OptimizerConfig(optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay,
                           adam_beta1=o.adam_beta1, adam_beta2=o.adam_beta2, adam_eps=o.adam_eps, clip_grad=o.clip_grad,
                           bf16=bf16, params_dtype=torch.bfloat16 if bf16 else torch.float32,
                           use_distributed_optimizer=p.distributed_optimizer, overlap_param_gather=p.overlap_param_gather)


def describe(ddp_model, optimizer) -> str:
    """The knobs as megatron-core holds them in the built model, DDP wrapper and optimizer (read back, not echoed)."""
    tf, dc = ddp_model.config, ddp_model.ddp_config
    oc = optimizer.config  # a ChainedOptimizer holds its members' (identical) config too
    layers = ddp_model.module.decoder.layers
    core = type(layers[0].self_attention.core_attention).__name__ if len(layers) else None
    parts = [f"core_attention={core}", f"recompute_granularity={tf.recompute_granularity}", f"recompute_method={tf.recompute_method}",
             f"recompute_num_layers={tf.recompute_num_layers}", f"overlap_grad_reduce={dc.overlap_grad_reduce}",
             f"overlap_param_gather={dc.overlap_param_gather}", f"distributed_optimizer={dc.use_distributed_optimizer}",
             f"optimizer.overlap_param_gather={oc.overlap_param_gather}", f"fp8={tf.fp8}"]
    return " ".join(parts)
