"""Continued pre-training on megatron-core: model, the one trainer, checkpoints."""
import carebot  # noqa: F401  (first: a torchrun rank dies with its launcher)
