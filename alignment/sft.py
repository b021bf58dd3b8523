"""`carebot sft`: supervised fine-tuning on the one trainer (CareBot Sec. 3.2 / App. C: seq 2048, batch 128,
lr 2e-6 cosine, wd 0.1, dropout 0.1, 2 epochs, 10% validation, best checkpoint kept).

A dialogue is rendered with the tokenizer's own chat template; the loss covers only the assistant replies
(their content and their end-of-turn token), never the user turns, system prompt or template headers.
Packing (off by default) concatenates dialogues into one window with position ids reset per dialogue, no
label crossing a boundary, and a block-diagonal causal attention mask (see docs/alignment.md)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_tools.sft.formats import read_sft
from alignment.chat_data import render_dialogue, shift, split_valid, stage_args, use_chat_template
from carebot.errors import ConfigError
from carebot.run_config import RunConfig
from pretrain.stage_cli import stage_main
from pretrain.trainer import Stage


@dataclass(kw_only=True)
class SFTArgs:
    """`stage_args` of an SFT run. The dialogue files are `data.data_path` (JSONL)."""
    valid_fraction: float = 0.1  # paper: 10% held out for validation
    packing: bool = False
    max_dialogues: int | None = None  # read at most this many per file (smoke runs, tests)
    system_prompt: str | None = None  # prepended as a system turn when a dialogue has none
    chat_template: str | None = None  # llama3 | chatml | FILE.jinja; default: the tokenizer's own (none: error)


# ------------------------------------------------------------------ reading
def read_dialogues(path: str | Path, limit: int | None = None) -> list[list[dict]]:
    """Any SFT dialect `data_tools.sft.formats` reads (OpenAI `messages`, NeMo-Aligner `conversations`, ShareGPT)
    -> chat message lists with the system prompt first. Bad records stop with file:line."""
    return [d.chat_messages() for d in read_sft(path)[:limit]]


# ------------------------------------------------------------------ datasets
class SFTDataset:
    """Fixed-length samples; each index is one window (one dialogue, or several when packed). Length is
    `epochs` x the windows of one epoch, reshuffled per epoch (seeded): the trainer reads `epoch_size`."""

    def __init__(self, docs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], seq_length: int, pad_id: int,
                 packing: bool, epochs: float = 1.0, seed: int = 1234, shuffle: bool = True):
        self.seq, self.pad, self.packing = seq_length, pad_id, packing
        self.windows = self._pack(docs) if packing else [[d] for d in docs]
        self.epoch_size = len(self.windows)
        if not self.epoch_size:
            raise ConfigError("no SFT sample with an assistant token left after rendering / truncation")
        self.n_epochs = max(1, math.ceil(epochs))
        self.orders = [np.random.RandomState(seed + e).permutation(self.epoch_size) if shuffle
                       else np.arange(self.epoch_size) for e in range(self.n_epochs)]

    def _pack(self, docs):
        windows, cur, used = [], [], 0
        for d in docs:  # greedy, in order: a dialogue never straddles two windows
            if cur and used + len(d[0]) > self.seq:
                windows.append(cur)
                cur, used = [], 0
            cur.append(d)
            used += len(d[0])
        return windows + ([cur] if cur else [])

    def __len__(self) -> int:
        return self.epoch_size * self.n_epochs

    def __getitem__(self, i: int) -> dict:
        e, j = divmod(int(i), self.epoch_size)
        docs = self.windows[self.orders[e][j]]
        s = self.seq
        tokens = np.full(s, self.pad, dtype=np.int64)
        labels = np.full(s, self.pad, dtype=np.int64)
        loss_mask = np.zeros(s, dtype=np.float32)
        position_ids = np.arange(s, dtype=np.int64)
        seg = np.full(s, -1, dtype=np.int64)
        off = 0
        for k, (t, l, m) in enumerate(docs):
            n = len(t)
            tokens[off:off + n], labels[off:off + n], loss_mask[off:off + n] = t, l, m
            position_ids[off:off + n] = np.arange(n)
            seg[off:off + n] = k
            off += n
        out = {"tokens": torch.from_numpy(tokens), "labels": torch.from_numpy(labels),
               "loss_mask": torch.from_numpy(loss_mask), "position_ids": torch.from_numpy(position_ids)}
        if self.packing:  # True = masked: causal and within one dialogue (padding is its own segment)
            seg[off:] = len(docs)
            segt = torch.from_numpy(seg)
            same = segt[:, None] == segt[None, :]
            out["attention_mask"] = (~(same & torch.ones(s, s, dtype=torch.bool).tril()))[None]
        return out


def tokenize_dialogues(tokenizer, dialogues: list[list[dict]], seq_length: int, system_prompt: str | None = None):
    """Render + shift every dialogue; longer than the window: truncated; no assistant token left: dropped."""
    docs, dropped, truncated = [], 0, 0
    for msgs in dialogues:
        if system_prompt and msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": system_prompt}] + msgs
        ids, mask = render_dialogue(tokenizer, msgs)
        if len(ids) > seq_length + 1:
            ids, mask, truncated = ids[:seq_length + 1], mask[:seq_length + 1], truncated + 1
        doc = shift(ids, mask)
        if doc[2].sum() == 0:
            dropped += 1
            continue
        docs.append(doc)
    return docs, {"dialogues": len(dialogues), "kept": len(docs), "truncated": truncated, "dropped": dropped}


def load_sft_data(cfg: RunConfig) -> tuple[SFTArgs, list[list[dict]]]:
    """Stage args + every dialogue; bad input stops here with one line (called before any process group)."""
    args = stage_args(cfg, SFTArgs)
    if args.packing and torch.cuda.is_available():
        raise ConfigError("stage_args.packing needs megatron's unfused softmax path (CPU): with fused / TE "
                          "attention the explicit mask is ignored; set stage_args.packing=false")
    if not cfg.data.data_path:
        raise ConfigError("data.data_path is empty: give SFT dialogue JSONL files ([a.jsonl, b.jsonl])")
    dialogues = []
    for p in cfg.data.data_path:
        if not Path(str(p)).exists():
            raise ConfigError(f"SFT data file not found: {p}")
        dialogues += read_dialogues(p, args.max_dialogues)
    return args, dialogues


def build_sft_datasets(cfg: RunConfig, tokenizer, num_samples: list[int]):
    args, dialogues = load_sft_data(cfg)
    train, valid = split_valid(dialogues, args.valid_fraction, cfg.train.seed)
    hf = tokenizer.hf
    use_chat_template(hf, args.chat_template, cfg.data.tokenizer)
    pad = hf.pad_token_id if hf.pad_token_id is not None else tokenizer.eod
    s = cfg.data.seq_length
    train_docs, stats = tokenize_dialogues(hf, train, s, args.system_prompt)
    train_ds = SFTDataset(train_docs, s, pad, args.packing, cfg.train.epochs or 1.0, cfg.train.seed)
    valid_ds = None
    if valid:
        valid_docs, vstats = tokenize_dialogues(hf, valid, s, args.system_prompt)
        valid_ds = SFTDataset(valid_docs, s, pad, args.packing, shuffle=False) if valid_docs else None
        stats["valid"] = vstats
    import torch.distributed as dist
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"[carebot] sft data: {json.dumps(stats)}; {train_ds.epoch_size} train windows/epoch"
              f"{' (packed)' if args.packing else ''}", flush=True)
    return train_ds, valid_ds


SFT = Stage(name="sft", build_datasets=build_sft_datasets)


def _stage(cfg) -> Stage:
    load_sft_data(cfg)
    return SFT


def main(argv: list[str] | None = None) -> int:
    return stage_main(argv, "carebot sft", __doc__, _stage)


if __name__ == "__main__":
    from carebot.cli import script

    script(main, "carebot sft")
