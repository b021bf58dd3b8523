"""`carebot dpo`: direct preference optimisation on the one trainer (CareBot Sec. 3.3 / App. C: beta 0.03,
lr 1e-7, batch 96 pairs, 2 epochs, warmup + cosine; reference policy = the SFT model at `init_from`).

The chosen and rejected answers of a pair are rows 2i and 2i+1 of one micro-batch (rows_per_sample=2), so
both meet in the same loss call on the last pipeline stage. A sequence's log-prob is -sum(per-token loss x
response mask) (or the mean over response tokens, `average_log_probs`). Reference log-probs come either from
one forward pass over the data before training (`reference: precomputed`, stored in OUT/reference_logps.pt;
training then holds one model) or from a live pass with the frozen reference weights swapped in before every
step (`reference: live`). Both run the same forward on the same micro-batch shapes: their results are equal.

Losses (rewards r = beta * (log pi - log pi_ref), delta = (log-ratio chosen) - (log-ratio rejected)):
  dpo        -(1-eps) logsigmoid(beta delta) - eps logsigmoid(-beta delta)   (eps: label smoothing, cDPO)
  ipo        (delta - 1/(2 beta))^2
  rpo_sq     (beta delta - s (g_c - g_r))^2                  (g: ground-truth rewards of the pair, s: scale)
  rpo_bwd_kl KL(Bern(sigmoid(s dg)) || Bern(sigmoid(beta delta)))
  rpo_fwd_kl KL(Bern(sigmoid(beta delta)) || Bern(sigmoid(s dg)))
total = preference_loss_weight * preference + sft_loss_weight * (token-mean NLL of the chosen answers)."""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from alignment.chat_data import render_dialogue, shift, split_valid, stage_args, use_chat_template
from data_tools.sft.formats import read_pairs
from pretrain import checkpoint as ckpt
from carebot.errors import ConfigError
from carebot.run_config import RunConfig
from pretrain.stage_cli import stage_main
from pretrain.trainer import Stage

LOSSES = ("dpo", "ipo", "rpo_sq", "rpo_bwd_kl", "rpo_fwd_kl")


@dataclass(kw_only=True)
class DPOArgs:
    """`stage_args` of a DPO run. The pair files are `data.data_path` (any dialect data_tools.sft.formats reads)."""
    loss: str = "dpo"
    beta: float = 0.03  # paper; NeMo-Aligner calls it ref_policy_kl_penalty
    label_smoothing: float = 0.0  # dpo only
    average_log_probs: bool = False  # mean instead of sum of the response's token log-probs
    preference_loss_weight: float = 1.0
    sft_loss_weight: float = 0.0
    gt_reward_scale: float = 1.0  # rpo_*: scale of the pair's ground-truth reward difference
    reference: str = "precomputed"  # precomputed | live
    valid_fraction: float = 0.0
    max_pairs: int | None = None  # read at most this many pairs per file (smoke runs, tests)
    chat_template: str | None = None  # llama3 | chatml | FILE.jinja; default: the tokenizer's own (none: error)


def check_args(a: DPOArgs) -> DPOArgs:
    if a.loss not in LOSSES:
        raise ConfigError(f"stage_args.loss={a.loss!r}: one of {', '.join(LOSSES)}")
    if a.reference not in ("precomputed", "live"):
        raise ConfigError(f"stage_args.reference={a.reference!r}: precomputed or live")
    if a.beta <= 0 or not 0 <= a.label_smoothing < 0.5:
        raise ConfigError("stage_args: beta must be > 0 and label_smoothing in [0, 0.5)")
    return a


# ------------------------------------------------------------------ math
def sequence_logps(per_token_loss: torch.Tensor, mask: torch.Tensor, average: bool) -> torch.Tensor:
    """Per-row log-prob of the response: -sum(token loss x mask), or its mean over response tokens."""
    mask = mask.to(per_token_loss.device).float()
    lp = -(per_token_loss.float() * mask).sum(-1)
    return lp / mask.sum(-1).clamp(min=1.0) if average else lp


def preference_loss(a: DPOArgs, pc, pr, rc, rr, gt_c=None, gt_r=None) -> torch.Tensor:
    """Per-pair preference loss from policy (pc, pr) and reference (rc, rr) log-probs of chosen / rejected."""
    delta = (pc - rc) - (pr - rr)
    b = a.beta
    if a.loss == "dpo":
        eps = a.label_smoothing
        return -(1 - eps) * F.logsigmoid(b * delta) - eps * F.logsigmoid(-b * delta)
    if a.loss == "ipo":
        return (delta - 1.0 / (2.0 * b)) ** 2
    if gt_c is None:
        raise ConfigError(f"loss {a.loss} needs chosen_reward / rejected_reward on every pair")
    gdelta = a.gt_reward_scale * (gt_c - gt_r)
    if a.loss == "rpo_sq":
        return (b * delta - gdelta) ** 2
    logp = torch.stack([F.logsigmoid(b * delta), F.logsigmoid(-b * delta)])  # model's P(chosen wins), P(loses)
    logq = torch.stack([F.logsigmoid(gdelta), F.logsigmoid(-gdelta)])  # ground truth's
    if a.loss == "rpo_bwd_kl":
        return (logq.exp() * (logq - logp)).sum(0)
    return (logp.exp() * (logp - logq)).sum(0)  # rpo_fwd_kl


def dpo_loss(a: DPOArgs, batch: dict, per_token_loss: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Trainer loss function: rows 2i / 2i+1 are chosen / rejected; batch['ref_logps'] holds the reference's."""
    mask = batch["loss_mask"]
    logps = sequence_logps(per_token_loss, mask, a.average_log_probs)
    ref = batch["ref_logps"].to(logps.device)
    pc, pr, rc, rr = logps[0::2], logps[1::2], ref[0::2], ref[1::2]
    gt = batch.get("gt_rewards")
    gt_c, gt_r = (None, None) if gt is None or torch.isnan(gt).any() else (gt[0::2].to(logps.device),
                                                                          gt[1::2].to(logps.device))
    pref = preference_loss(a, pc, pr, rc, rr, gt_c, gt_r).mean()
    ntok = mask[0::2].to(logps.device).float().sum(-1).clamp(min=1.0)
    sft = (-(logps[0::2] if a.average_log_probs else logps[0::2] / ntok)).mean()
    loss = a.preference_loss_weight * pref + a.sft_loss_weight * sft
    with torch.no_grad():
        rew_c, rew_r = a.beta * (pc - rc), a.beta * (pr - rr)
        logs = {"loss": loss.detach().clone(), "preference_loss": pref.detach().clone(), "sft_loss": sft.detach(),
                "rewards_chosen": rew_c.mean(), "rewards_rejected": rew_r.mean(),
                "reward_margin": (rew_c - rew_r).mean(), "reward_accuracy": (rew_c > rew_r).float().mean(),
                "logps_chosen": pc.mean(), "logps_rejected": pr.mean()}
    return loss, logs


# ------------------------------------------------------------------ data
class DPODataset:
    """One sample = one pair: tensors of 2 rows (chosen, rejected) + the pair index (for stored reference
    log-probs). Length = epochs x pairs, reshuffled per epoch (seeded); the trainer reads `epoch_size`."""

    def __init__(self, rows: list[dict], epochs: float = 1.0, seed: int = 1234, shuffle: bool = True):
        self.rows = rows
        self.epoch_size = len(rows)
        self.n_epochs = max(1, math.ceil(epochs))
        self.orders = [np.random.RandomState(seed + e).permutation(self.epoch_size) if shuffle
                       else np.arange(self.epoch_size) for e in range(self.n_epochs)]
        self.ref: torch.Tensor | None = None  # [pairs, 2] reference log-probs once precomputed

    def __len__(self) -> int:
        return self.epoch_size * self.n_epochs

    def pair(self, k: int) -> dict:
        out = dict(self.rows[k])
        out["index"] = torch.tensor([k])
        if self.ref is not None:
            out["ref_logps"] = self.ref[k]
        return out

    def __getitem__(self, i: int) -> dict:
        e, j = divmod(int(i), self.epoch_size)
        return self.pair(int(self.orders[e][j]))


def collate_pairs(samples: list[dict]) -> dict:
    """Concatenate along rows: [c0, r0, c1, r1, ...]."""
    return {k: torch.cat([s[k] for s in samples]) for k in samples[0]}


def fit_pair(c: tuple[list, list], r: tuple[list, list], window: int, bos: int | None):
    """Fit a (chosen, rejected) pair of rendered (ids, mask) into `window` tokens the way DPO needs: the two
    keep the SAME prompt, cut from the LEFT (the end of a dialogue is what the reply answers) just enough for
    the longer reply to fit, but never to less than half the window (a leading BOS is kept); only then are
    replies cut from the right. Returns both fitted, the prompt tokens cut and whether a reply was cut."""
    p = min(next((i for i, m in enumerate(x[1]) if m), len(x[1])) for x in (c, r))  # shared prompt length
    longest = max(len(c[0]), len(r[0])) - p
    keep_bos = int(bos is not None and p > 0 and c[0][0] == bos)
    cut = min(max(0, p + longest - window), max(0, p - max(window // 2, keep_bos)))
    out = []
    for ids, mask in (c, r):
        if cut:
            ids, mask = ids[:keep_bos] + ids[keep_bos + cut:], mask[:keep_bos] + mask[keep_bos + cut:]
        out.append((ids[:window], mask[:window]))
    return out[0], out[1], cut, max(len(c[0]), len(r[0])) - cut > window


def _row(ids: list, mask: list, seq: int, pad: int) -> dict:
    t, l, m = shift(ids, mask)
    n = len(t)
    row = {"tokens": np.full(seq, pad), "labels": np.full(seq, pad), "loss_mask": np.zeros(seq, np.float32)}
    row["tokens"][:n], row["labels"][:n], row["loss_mask"][:n] = t, l, m
    return row


def tokenize_pairs(tokenizer, pairs, seq: int, pad: int) -> tuple[list[dict], dict]:
    rows = []
    stats = {"pairs": len(pairs), "kept": 0, "prompt_cut_left": 0, "reply_cut": 0, "dropped_empty_response": 0}
    for p in pairs:
        c, r, cut, reply_cut = fit_pair(render_dialogue(tokenizer, p.prompt + [{"role": "assistant", "content": p.chosen}], only_last=True),
                                        render_dialogue(tokenizer, p.prompt + [{"role": "assistant", "content": p.rejected}], only_last=True),
                                        seq + 1, tokenizer.bos_token_id)
        stats["prompt_cut_left"] += cut > 0
        stats["reply_cut"] += reply_cut
        c, r = _row(*c, seq, pad), _row(*r, seq, pad)
        if c["loss_mask"].sum() == 0 or r["loss_mask"].sum() == 0:  # a reply that renders to no token
            stats["dropped_empty_response"] += 1
            continue
        g = [p.meta.get("chosen_reward"), p.meta.get("rejected_reward")]
        rows.append({k: torch.from_numpy(np.stack([c[k], r[k]])) for k in c}
                    | {"position_ids": torch.arange(seq).repeat(2, 1),
                       "gt_rewards": torch.tensor([math.nan if v is None else float(v) for v in g])})
    stats["kept"] = len(rows)
    return rows, stats


def load_pairs(cfg: RunConfig) -> tuple[DPOArgs, list]:
    """Stage args + every pair; bad input stops here with one line (called before any process group)."""
    a = check_args(stage_args(cfg, DPOArgs))
    if not cfg.data.data_path:
        raise ConfigError("data.data_path is empty: give DPO pair JSONL files")
    pairs = []
    for p in cfg.data.data_path:
        if not Path(str(p)).exists():
            raise ConfigError(f"DPO pair file not found: {p}")
        pairs += read_pairs(p)[:a.max_pairs]
    if a.loss.startswith("rpo") and any(p.meta.get("chosen_reward") is None or p.meta.get("rejected_reward") is None
                                        for p in pairs):
        raise ConfigError(f"stage_args.loss={a.loss} needs chosen_reward and rejected_reward on every pair")
    return a, pairs


def build_dpo_datasets(cfg: RunConfig, tokenizer, num_samples: list[int]):
    a, pairs = load_pairs(cfg)
    train, valid = split_valid(pairs, a.valid_fraction, cfg.train.seed)
    hf = tokenizer.hf
    use_chat_template(hf, a.chat_template, cfg.data.tokenizer)
    pad = hf.pad_token_id if hf.pad_token_id is not None else tokenizer.eod
    s = cfg.data.seq_length
    train_rows, stats = tokenize_pairs(hf, train, s, pad)
    if not train_rows:
        raise ConfigError("no DPO pair left after rendering / truncation: raise data.seq_length")
    valid_ds = None
    if valid:
        valid_rows, stats["valid"] = tokenize_pairs(hf, valid, s, pad)
        valid_ds = DPODataset(valid_rows, shuffle=False) if valid_rows else None
    import torch.distributed as dist
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"[carebot] dpo data: {json.dumps(stats)}", flush=True)
    return DPODataset(train_rows, cfg.train.epochs or 1.0, cfg.train.seed), valid_ds


# ------------------------------------------------------------------ the reference policy
def _ref_loss(a: DPOArgs, batch: dict, per_token_loss: torch.Tensor):
    logps = sequence_logps(per_token_loss, batch["loss_mask"], a.average_log_probs)
    return per_token_loss.sum() * 0.0, {"logps": logps.detach().clone()}


class Reference:
    """The frozen reference policy: the `init_from` weights, swapped into the model for forward-only passes."""

    def __init__(self, a: DPOArgs):
        self.a = a
        self.weights: list[torch.Tensor] | None = None

    def _params(self, trainer):
        return [p for p in trainer.unwrapped.parameters()]

    def load(self, trainer) -> None:
        params = self._params(trainer)
        if trainer.iteration == 0:  # fresh run: the model holds the init_from weights right now
            self.weights = [p.detach().clone() for p in params]
            return
        init = trainer.cfg.checkpoint.init_from
        src = ckpt.resolve(init) if init else None
        if src is None:
            raise ConfigError("DPO resumed without checkpoint.init_from: the reference policy is unknown")
        current = [p.detach().clone() for p in params]
        ckpt.load(src, trainer.unwrapped)  # weights only
        self.weights = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, c in zip(params, current):
                p.copy_(c)

    @torch.no_grad()
    def logps(self, trainer, batches: list[dict]) -> list[torch.Tensor]:
        """Reference log-probs of each micro-batch (last pipeline stage; [] elsewhere)."""
        params = self._params(trainer)
        current = [p.detach().clone() for p in params]
        for p, w in zip(params, self.weights):
            p.copy_(w)
        try:
            outs = trainer.forward_only(batches, partial(_ref_loss, self.a))
        finally:
            for p, c in zip(params, current):
                p.copy_(c)
        return [o["logps"] for o in outs]


def _fingerprint(cfg: RunConfig, a: DPOArgs, n: int) -> str:
    key = json.dumps([str(cfg.checkpoint.init_from), [str(p) for p in cfg.data.data_path], cfg.data.seq_length,
                      a.average_log_probs, a.max_pairs, a.valid_fraction, cfg.train.micro_batch_size, n])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def precompute(trainer, ref: Reference, ds: DPODataset) -> torch.Tensor:
    """Reference log-probs of every pair, in micro-batches of the training shape (mbs pairs; the last group is
    filled by wrapping so every forward has the same shape). DP ranks share the groups; the table is then
    gathered over DP and broadcast from the last pipeline stage, so every rank holds it."""
    import torch.distributed as dist
    from megatron.core import parallel_state as mpu
    from tqdm import tqdm

    mbs, n = trainer.cfg.train.micro_batch_size, ds.epoch_size
    groups = [[(g * mbs + i) % n for i in range(mbs)] for g in range(math.ceil(n / mbs))]
    mine = groups[trainer.dp_rank::trainer.dp]
    table: dict[int, torch.Tensor] = {}
    chunk = max(trainer.num_micro, 1)
    show = dist.get_rank() == 0
    for c in tqdm(range(0, len(mine), chunk), desc="reference log-probs", disable=not show):
        todo = mine[c:c + chunk]
        outs = ref.logps(trainer, [collate_pairs([ds.pair(k) for k in g]) for g in todo])
        for g, lp in zip(todo, outs):
            for j, k in enumerate(g):
                table.setdefault(k, lp[2 * j:2 * j + 2].clone())
    gathered = [None] * trainer.dp
    dist.all_gather_object(gathered, table, group=mpu.get_data_parallel_group())
    merged = {k: v for part in gathered for k, v in part.items()}
    full = [torch.stack([merged[k] for k in range(n)]) if len(merged) == n else None]
    src = dist.get_global_rank(mpu.get_pipeline_model_parallel_group(),
                               mpu.get_pipeline_model_parallel_world_size() - 1)
    dist.broadcast_object_list(full, src=src, group=mpu.get_pipeline_model_parallel_group())
    return full[0]


def load_reference_table(path: Path, fingerprint: str) -> dict | None:
    """The precomputed reference log-probs at `path` if they belong to this run (same fingerprint), else None.
    Tensors and plain containers only (`weights_only=True`): a file that needs unpickling code is never run;
    a torn, crafted or foreign file is recomputed."""
    if not path.exists():
        return None
    try:
        stored = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001
        print(f"[dpo] {path}: not a reference table this run can trust ({type(e).__name__}); recomputing it",
              flush=True)
        return None
    return stored if isinstance(stored, dict) and stored.get("fingerprint") == fingerprint else None


def prepare(a: DPOArgs, ref: Reference, trainer) -> None:
    """After the model is loaded: capture the reference weights; precompute (or reload) the reference table."""
    import torch.distributed as dist

    needs_weights = a.reference == "live"
    path = trainer.out / "reference_logps.pt"
    sets = {"train": trainer.train_ds, "valid": trainer.valid_ds}
    stored = None
    if a.reference == "precomputed":
        fp = _fingerprint(trainer.cfg, a, trainer.train_ds.epoch_size)
        stored = load_reference_table(path, fp)
        needs_weights = stored is None
    if needs_weights:
        ref.load(trainer)
    if a.reference == "live":
        return
    if stored is None:
        stored = {"fingerprint": fp}
        for name, ds in sets.items():
            if ds is not None:
                stored[name] = precompute(trainer, ref, ds)
        if dist.get_rank() == 0:  # atomic: a torn file is never read back
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(stored, path.with_suffix(".tmp"))
            os.replace(path.with_suffix(".tmp"), path)
        dist.barrier()
        ref.weights = None  # training holds one model
    for name, ds in sets.items():
        if ds is not None:
            ds.ref = stored[name]


def live_reference(ref: Reference, trainer, batches: list[dict]) -> None:
    """before_step hook: attach the frozen reference's log-probs to this step's micro-batches."""
    for b, lp in zip(batches, ref.logps(trainer, batches)):
        b["ref_logps"] = lp


def make_stage(cfg: RunConfig) -> Stage:
    a = check_args(stage_args(cfg, DPOArgs))
    ref = Reference(a)
    return Stage(name="dpo", build_datasets=build_dpo_datasets, loss_func=partial(dpo_loss, a),
                 collate=collate_pairs, prepare=partial(prepare, a, ref), rows_per_sample=2,
                 before_step=partial(live_reference, ref) if a.reference == "live" else None)


def _stage(cfg) -> Stage:
    load_pairs(cfg)
    return make_stage(cfg)


def main(argv: list[str] | None = None) -> int:
    return stage_main(argv, "carebot dpo", __doc__, _stage)


if __name__ == "__main__":
    from carebot.cli import script

    script(main, "carebot dpo")
