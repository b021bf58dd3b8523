"""CPT data: megatron-core `BlendedMegatronDatasetBuilder` + `GPTDataset` over weighted .bin/.idx prefixes,
and a stateless micro-batch schedule (a pure function of consumed samples, so resume is exact)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

from carebot.errors import ConfigError
from carebot.run_config import RunConfig


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


MAX_SCAN_TOKENS = 1 << 28  # max-id check: whole .bin up to this many tokens, else this many in strided chunks


def check_data(data_path: Sequence, tokenizer_dir: str, vocab_size: int) -> list[str]:
    """Every prefix of `data.data_path` checked against the run's tokenizer before anything is built: a
    readable `.idx` with documents, a `.bin` of exactly the size it describes, the manifest's tokenizer hash
    equal to this tokenizer's, and no token id >= its vocab. One ConfigError line for the first failure."""
    import hashlib

    import numpy as np

    from data_tools.tokens.manifest import manifest_path, read_index

    prefixes, _ = parse_data_path(data_path)
    tj = Path(tokenizer_dir) / "tokenizer.json"
    ours = hashlib.sha256(tj.read_bytes()).hexdigest() if tj.is_file() else None
    for p in prefixes:
        try:
            dtype, lengths, pointers = read_index(p + ".idx")
        except ValueError as e:
            raise ConfigError(f"{e}; rebuild it with `carebot data tokenize`") from None
        if not len(lengths) or not lengths.sum():
            raise ConfigError(f"data prefix {p} holds no tokens ({len(lengths)} documents)")
        size, want = Path(p + ".bin").stat().st_size, int(pointers[-1]) + int(lengths[-1]) * dtype.itemsize
        if size != want:
            raise ConfigError(f"{p}.bin: {size:,} bytes, but its .idx describes {want:,} (truncated, or the two "
                              "files come from different runs); rebuild it with `carebot data tokenize`")
        mp = manifest_path(p)
        theirs = (json.loads(mp.read_text()).get("setup") or {}).get("tokenizer_sha256") if mp.is_file() else None
        if ours and theirs and ours != theirs:
            raise ConfigError(f"data prefix {p} was tokenized with another tokenizer (sha256 {theirs[:12]}) than "
                              f"data.tokenizer {tokenizer_dir} ({ours[:12]}); retokenize, or point data.tokenizer "
                              "at the tokenizer it was made with")
        tokens = np.memmap(p + ".bin", dtype=dtype, mode="r")
        if len(tokens) <= MAX_SCAN_TOKENS:
            top = int(tokens.max())
        else:  # 64 evenly spaced chunks: a corpus of another tokenizer shows ids past our vocab everywhere
            n = MAX_SCAN_TOKENS // 64
            top = max(int(tokens[i : i + n].max()) for i in np.linspace(0, len(tokens) - n, 64).astype(np.int64))
        if top >= vocab_size:
            raise ConfigError(f"data prefix {p} holds token id {top}, but the tokenizer {tokenizer_dir} has "
                              f"{vocab_size} ids: the data was made with another tokenizer; retokenize it")
    return prefixes


def build_gpt_datasets(cfg: RunConfig, tokenizer, num_samples: list[int]) -> list[GPTDataset | None]:
    """Train / valid / test datasets for `num_samples` samples each, blended by the data_path weights."""
    prefixes, weights = parse_data_path(cfg.data.data_path)
    ds_cfg = GPTDatasetConfig(
        random_seed=cfg.train.seed, sequence_length=cfg.data.seq_length, blend=(prefixes, weights),
        split=cfg.data.split, tokenizer=tokenizer, path_to_cache=cfg.data.cache_dir,
        reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
        create_attention_mask=False,  # causal mask is built inside attention
    )
    check_splits(prefixes, ds_cfg, cfg.data.split)
    return BlendedMegatronDatasetBuilder(GPTDataset, num_samples, lambda: True, ds_cfg).build()


def check_splits(prefixes: list[str], ds_cfg: GPTDatasetConfig, split: str) -> None:
    """Every split of every prefix must hold tokens: megatron builds each split with a non-zero share, even one
    no sample is asked of, and on an empty one `GPTDataset._get_num_epochs` loops forever (a bucket of 20
    documents at split 99,1,0 leaves 0 for valid)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    names = ("train", "valid", "test")
    for p in prefixes:
        ds = IndexedDataset(p)
        lengths = ds.sequence_lengths.copy()  # a view of the index's mmap, which closes with `ds`
        del ds
        n = len(lengths)
        for name, bounds in zip(names, ds_cfg.split_matrix):
            if bounds is None:
                continue
            beg, end = int(round(bounds[0] * n)), int(round(bounds[1] * n))  # as megatron cuts the documents
            if int(lengths[beg:end].sum()) == 0:
                raise ConfigError(f"data prefix {p} has {n} document(s): data.split={split} leaves its {name} split "
                                  f"{end - beg} document(s) with no tokens (megatron would hang); give this bucket "
                                  f"more documents, or drop the {name} share (e.g. data.split=100,0,0 without eval)")


def collate(samples: list[dict]) -> dict:
    return {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in samples[0]}


def step_microbatches(dataset, consumed: int, micro_batch: int, num_micro: int, dp_rank: int, dp_size: int,
                      collate_fn=collate) -> Iterator[dict]:
    """Micro-batches of one global batch for one DP rank: samples [consumed, consumed + global) laid out
    micro-batch-major, so DP=1 and DP=2 see the same global batch."""
    for j in range(num_micro):
        start = consumed + (j * dp_size + dp_rank) * micro_batch
        yield collate_fn([dataset[(start + i) % len(dataset)] for i in range(micro_batch)])
