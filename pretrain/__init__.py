"""Continued pre-training on megatron-core: model, the one trainer, checkpoints."""
