"""CPT data: megatron-core `BlendedMegatronDatasetBuilder` + `GPTDataset` over weighted .bin/.idx prefixes,
and a stateless micro-batch schedule (a pure function of consumed samples, so resume is exact)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

from pretrain.config import ConfigError, RunConfig


def parse_data_path(data_path: Sequence) -> tuple[list[str], list[float] | None]:
    """Megatron's `w1 p1 w2 p2` (or bare prefixes) -> (prefixes, weights); checks that every prefix exists."""
    items = [str(x) for x in data_path]
    if not items:
        raise ConfigError("data.data_path is empty: give [w1, prefix1, w2, prefix2, ...] or [prefix, ...]")

    def is_num(s: str) -> bool:
        try:
            float(s)
            return True
        except ValueError:
            return False

    if len(items) > 1 and is_num(items[0]):
        if len(items) % 2:
            raise ConfigError(f"data.data_path has an odd number of entries ({len(items)}): expected weight/prefix pairs")
        weights, prefixes = [float(w) for w in items[0::2]], items[1::2]
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"data.data_path weights must be non-negative and not all zero: {weights}")
    else:
        weights, prefixes = None, items
    for p in prefixes:
        missing = [s for s in (".bin", ".idx") if not Path(p + s).exists()]
        if missing:
            raise ConfigError(f"data prefix not found: {p} (missing {' and '.join(p + s for s in missing)}); "
                              "build it with `carebot data tokenize`")
    return prefixes, weights


def build_gpt_datasets(cfg: RunConfig, tokenizer, num_samples: list[int]) -> list[GPTDataset | None]:
    """Train / valid / test datasets for `num_samples` samples each, blended by the data_path weights."""
    prefixes, weights = parse_data_path(cfg.data.data_path)
    ds_cfg = GPTDatasetConfig(
        random_seed=cfg.train.seed, sequence_length=cfg.data.seq_length, blend=(prefixes, weights),
        split=cfg.data.split, tokenizer=tokenizer, path_to_cache=cfg.data.cache_dir,
        reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
        create_attention_mask=False,  # causal mask is built inside attention
    )
    return BlendedMegatronDatasetBuilder(GPTDataset, num_samples, lambda: True, ds_cfg).build()


def collate(samples: list[dict]) -> dict:
    return {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in samples[0]}


def step_microbatches(dataset, consumed: int, micro_batch: int, num_micro: int, dp_rank: int, dp_size: int,
                      collate_fn=collate) -> Iterator[dict]:
    """Micro-batches of one global batch for one DP rank: samples [consumed, consumed + global) laid out
    micro-batch-major, so DP=1 and DP=2 see the same global batch."""
    for j in range(num_micro):
        start = consumed + (j * dp_size + dp_rank) * micro_batch
        yield collate_fn([dataset[(start + i) % len(dataset)] for i in range(micro_batch)])
