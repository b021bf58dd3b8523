"""The one training loop. CPT, SFT and DPO are `Stage`s: a dataset builder and a loss over the model's
per-token losses. Parallelism, optimizer, schedule, checkpoints and logging live here once.

Order of set-up (fixed): process groups + RNG -> tokenizer -> model (one pipeline stage) -> megatron DDP ->
megatron optimizer + LR scheduler -> resume or init_from -> datasets -> loop."""
from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from megatron.core import parallel_state as mpu
from megatron.core.distributed import DistributedDataParallel, finalize_model_grads
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func

from carebot.io import trim_log
from carebot.hardware import cuda_peak
from pretrain import arch
from pretrain import checkpoint as ckpt
from pretrain import distributed
from carebot.config import dump, to_dict
from carebot.errors import ConfigError
from carebot.run_config import RunConfig, resume_keys
from pretrain.data import check_data, collate, step_microbatches
from pretrain.model import build_model, check_model_config, flops_per_token, use_transformer_engine
from pretrain.scale import check_scale, ddp_config, describe, optimizer_config, transformer_kwargs
from carebot.tokenizer import MegatronTokenizerAdapter, load_tokenizer


def lm_loss(batch: dict, per_token_loss: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Mean next-token loss over the tokens the loss mask keeps (CPT: all; SFT: assistant tokens)."""
    mask = batch["loss_mask"].to(per_token_loss.device).float()
    loss = (per_token_loss.float() * mask).sum() / mask.sum().clamp(min=1.0)
    # The schedule divides the returned loss in place: log a copy.
    return loss, {"loss": loss.detach().clone()}


@dataclass
class Stage:
    """What a training stage supplies to the trainer."""
    name: str
    # (cfg, tokenizer adapter, [n_train, n_valid]) -> (train_dataset, valid_dataset or None)
    build_datasets: Callable[[RunConfig, Any, list[int]], tuple[Any, Any]]
    loss_func: Callable[[dict, torch.Tensor], tuple[torch.Tensor, dict]] = lm_loss
    collate: Callable[[list[dict]], dict] | None = None
    # optional hook run once after the model is loaded (e.g. DPO reference log-probs)
    prepare: Callable[["Trainer"], None] | None = None
    # micro-batch rows per dataset sample (DPO packs chosen + rejected: 2)
    rows_per_sample: int = 1
    # optional hook on each step's (and each evaluation's) micro-batches before they run, e.g. to attach
    # live reference log-probs; may add keys to the batch dicts
    before_step: Callable[["Trainer", list[dict]], None] | None = None


class _Stop(Exception):
    pass


class Trainer:
    def __init__(self, cfg: RunConfig, stage: Stage):
        self.cfg, self.stage = cfg, stage
        self.out = Path(cfg.output_dir)
        self.ckpt_root = self.out / "checkpoints"
        self.iteration = 0
        self.consumed = 0
        self.resume_overrides: list[dict] = []  # RESUME_KEYS changed on purpose at resumes (checkpoint.override_resume)
        self._signal = None
        self.writer = None
        self.metrics: list[dict] = []
        self.best_val = math.inf
        self._loss_override = None
        self.hf_config: dict | None = None  # the source HF config (from a converted checkpoint), kept for export

    # ---------------------------------------------------------------- set-up
    def setup(self) -> "Trainer":
        self.cfg = cfg = arch.from_checkpoint(self.cfg, self.ckpt_root)  # the architecture of what it starts from
        if not cfg.data.tokenizer:
            raise ConfigError("data.tokenizer is not set: give an HF tokenizer directory")
        self.hf_tokenizer = load_tokenizer(cfg.data.tokenizer)
        self.tokenizer = MegatronTokenizerAdapter(self.hf_tokenizer, cfg.data.tokenizer)
        self.vocab_size = self.tokenizer.vocab_size
        check_model_config(cfg.model, cfg.parallel, self.vocab_size)  # before any process group exists
        check_scale(cfg, use_transformer_engine())
        if self.stage.name == "cpt":  # the data against this tokenizer, before any process group exists
            check_data(cfg.data.data_path, cfg.data.tokenizer, self.vocab_size)
        distributed.init(cfg.parallel, cfg.train.seed)
        self.dp = mpu.get_data_parallel_world_size()
        self.dp_rank = mpu.get_data_parallel_rank()
        t = cfg.train
        if t.global_batch_size % (t.micro_batch_size * self.dp):
            raise ConfigError(f"global_batch_size {t.global_batch_size} is not divisible by micro_batch_size "
                              f"{t.micro_batch_size} x data-parallel size {self.dp}")
        self.num_micro = t.global_batch_size // (t.micro_batch_size * self.dp)
        if cfg.train.precision == "bf16" and not torch.cuda.is_available():
            raise ConfigError("train.precision=bf16 needs a CUDA device (megatron-core's bf16 optimizer); on CPU use "
                              "fp32, or auto")
        self.bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and torch.cuda.is_available())
        inner = build_model(cfg.model, cfg.parallel, self.vocab_size, cfg.data.seq_length, bf16=self.bf16,
                            **transformer_kwargs(cfg))
        tf = inner.config
        self.model = [DistributedDataParallel(config=tf, ddp_config=ddp_config(cfg), module=inner)]
        o = cfg.optim
        self.optimizer = get_megatron_optimizer(optimizer_config(cfg, self.bf16), self.model)
        if distributed.is_logging_rank():
            print(f"[carebot] scale: {describe(self.model[0], self.optimizer)}", flush=True)
        n_valid = t.eval_iters * t.global_batch_size if t.eval_interval else 0
        if t.epochs:  # steps from the data: build the datasets first (they do not depend on the model)
            self.train_ds, self.valid_ds = self.stage.build_datasets(cfg, self.tokenizer, [0, n_valid])[:2]
            per_epoch = getattr(self.train_ds, "epoch_size", len(self.train_ds))
            t.train_steps = max(1, math.ceil(t.epochs * per_epoch / t.global_batch_size))
        steps = t.train_steps
        self.scheduler = OptimizerParamScheduler(
            self.optimizer, init_lr=0.0, max_lr=o.lr, min_lr=o.min_lr,
            lr_warmup_steps=int(round(o.warmup_ratio * steps)), lr_decay_steps=steps + 1,  # min_lr one past the end
            lr_decay_style=o.decay_style, start_wd=o.weight_decay, end_wd=o.weight_decay,
            wd_incr_steps=max(steps, 1), wd_incr_style="constant")
        tf.finalize_model_grads_func = finalize_model_grads
        tf.no_sync_func = self.model[0].no_sync
        if cfg.parallel.overlap_grad_reduce:  # as Megatron-LM wires them
            tf.grad_sync_func = self.model[0].start_grad_sync
        if cfg.parallel.overlap_param_gather:
            tf.param_sync_func = self.model[0].start_param_sync
        tf.grad_scale_func = self.optimizer.scale_loss
        self._restore()
        if not t.epochs:
            self.train_ds, self.valid_ds = self.stage.build_datasets(cfg, self.tokenizer,
                                                                     [steps * t.global_batch_size, n_valid])[:2]
        if self.stage.prepare:
            self.stage.prepare(self)
        self.flops_per_token = flops_per_token(cfg.model, self.vocab_size, cfg.data.seq_length)
        if dist.get_rank() == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            dump(cfg, self.out / "config.yaml")
            print(f"[carebot] {self.stage.name} run '{cfg.name}' config:\n{json.dumps(to_dict(cfg), indent=1)}",
                  flush=True)
        if distributed.is_logging_rank():  # the rank that writes metrics (last pipeline stage)
            self._trim_metrics()
            if t.tensorboard:
                from torch.utils.tensorboard import SummaryWriter
                # a crash after the last checkpoint left events past it: purge them, as the rows above
                self.writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.iteration + 1)
        return self

    def _trim_metrics(self) -> None:
        """Keep only metrics.jsonl rows up to the step this run starts from: a run killed after its last
        checkpoint logged steps it will now redo, and they must not appear twice."""
        if dropped := trim_log(self.out / "metrics.jsonl", self.iteration):
            print(f"[carebot] metrics.jsonl: dropped {dropped} row(s) past step {self.iteration} "
                  "or torn, logged before a crash; those steps run again", flush=True)  # not _log0: may not be rank 0

    def _restore(self) -> None:
        """Resume from this run's (or `checkpoint.load`'s) latest checkpoint; else start from `init_from` weights."""
        c = self.cfg.checkpoint
        src = ckpt.resolve(c.load or self.ckpt_root)
        if c.load and src is None:  # asked to resume from there: starting from scratch instead would be silent
            raise ConfigError(f"checkpoint.load: no checkpoint at {c.load} (unset it to start fresh)")
        if src is not None:
            self.resume_overrides = self._check_resume(src)
            meta = ckpt.load(src, self.unwrapped, self.optimizer, self.scheduler)
            self.iteration, self.consumed = meta["iteration"], meta["consumed_samples"]
            self.hf_config = meta.get("hf_config")
            self._log0(f"resumed from {src} at step {self.iteration} ({self.consumed} samples consumed)")
        elif c.init_from:
            src = ckpt.resolve(c.init_from)
            if src is None:
                raise ConfigError(f"checkpoint.init_from: no checkpoint at {c.init_from}")
            self.hf_config = ckpt.load(src, self.unwrapped, self.optimizer if c.init_optimizer else None).get("hf_config")
            self._log0(f"initialised weights from {src} (new LR schedule; optimizer moments "
                       f"{'carried over' if c.init_optimizer else 'reset'})")
        self.init_checksum = self.param_checksum()
        best = ckpt.resolve(self.out / "best") if c.keep_best else None
        if best is not None and self.iteration > 0:  # resumed: keep comparing against the best so far
            self.best_val = ckpt.load_meta(best).get("val_loss", math.inf)

    def _check_resume(self, src: Path) -> list[dict]:
        """ckpt.check_resume, and for an overridden schedule key megatron's scheduler takes the new values."""
        history, changed, notes = ckpt.check_resume(src, self.cfg)
        for line in notes:
            self._log0(line)
        if changed:  # the new schedule from here, not the checkpoint's (--override-opt_param-scheduler)
            self.scheduler.override_opt_param_scheduler = True
            self.scheduler.use_checkpoint_opt_param_scheduler = False
        return history

    @property
    def unwrapped(self):
        return self.model[0].module

    # ---------------------------------------------------------------- steps
    def _forward_step(self, data_iterator, model):
        batch = next(data_iterator)
        dev = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
        tokens = batch["tokens"].to(dev)
        mask = batch.get("attention_mask")  # packed SFT: block-diagonal causal mask (True = masked)
        out = model(tokens, batch["position_ids"].to(dev), None if mask is None else mask.to(dev),
                    labels=batch["labels"].to(dev))
        return out, partial(self._loss_override or self.stage.loss_func, batch)

    def _batches(self, dataset, consumed: int):
        t = self.cfg.train
        batches = step_microbatches(dataset, consumed, t.micro_batch_size, self.num_micro, self.dp_rank, self.dp,
                                    self.stage.collate or collate)
        if self.stage.before_step is None:
            return batches
        batches = list(batches)
        self.stage.before_step(self, batches)
        return iter(batches)

    def _run_schedule(self, data_iter, forward_only: bool, num_micro: int | None = None) -> list[dict]:
        t = self.cfg.train
        return get_forward_backward_func()(
            forward_step_func=self._forward_step, data_iterator=data_iter, model=self.model,
            num_microbatches=num_micro or self.num_micro, seq_length=self.cfg.data.seq_length,
            micro_batch_size=t.micro_batch_size * self.stage.rows_per_sample, forward_only=forward_only)

    @torch.no_grad()
    def forward_only(self, batches: list[dict], loss_func: Callable[[dict, torch.Tensor], tuple]) -> list[dict]:
        """Run `batches` through the model in eval mode with `loss_func` in place of the stage's; returns what
        `loss_func` logged per micro-batch (on the last pipeline stage; [] elsewhere). For reference passes."""
        was_training = self.model[0].training
        for m in self.model:
            m.eval()
        self._loss_override = loss_func
        try:
            return self._run_schedule(iter(batches), True, num_micro=len(batches))
        finally:
            self._loss_override = None
            for m in self.model:
                m.train(was_training)

    def _reduce(self, outs: list[dict]) -> dict:
        """Mean of each logged value over micro-batches and DP ranks, broadcast to every rank."""
        # the key names live on the last pipeline stage: every rank learns them first, so buffers match in size
        src = dist.get_global_rank(mpu.get_pipeline_model_parallel_group(),
                                   mpu.get_pipeline_model_parallel_world_size() - 1)
        names = [sorted(outs[0]) if outs else []]
        dist.broadcast_object_list(names, src=src, group=mpu.get_pipeline_model_parallel_group())
        keys = names[0]
        buf = torch.zeros(max(len(keys), 1), dtype=torch.float64)
        if outs:
            for i, k in enumerate(keys):
                buf[i] = sum(float(o[k]) for o in outs) / len(outs)
        if torch.cuda.is_available():
            buf = buf.cuda()
        dist.all_reduce(buf, group=mpu.get_data_parallel_group())
        buf /= self.dp
        # broadcast from the last pipeline stage (where the losses live) to every rank
        dist.broadcast(buf, src=src, group=mpu.get_pipeline_model_parallel_group())
        return {k: buf[i].item() for i, k in enumerate(keys)}

    def train_step(self) -> dict:
        for m in self.model:
            m.zero_grad_buffer()
        self.optimizer.zero_grad()
        self.scheduler.step(increment=1)  # step k trains with the schedule's lr(k): no wasted lr=0 step
        outs = self._run_schedule(self._batches(self.train_ds, self.consumed), forward_only=False)
        ok, grad_norm, _ = self.optimizer.step()
        self.iteration += 1
        self.consumed += self.cfg.train.global_batch_size
        logs = self._reduce(outs)
        logs.update(lr=self.optimizer.param_groups[0]["lr"], grad_norm=float(grad_norm or 0.0), skipped=not ok)
        return logs

    @torch.no_grad()
    def evaluate(self) -> dict:
        if self.valid_ds is None:
            return {}
        for m in self.model:
            m.eval()
        outs = []
        for i in range(self.cfg.train.eval_iters):  # the same held-out batches every time: comparable numbers
            outs += self._run_schedule(self._batches(self.valid_ds, i * self.cfg.train.global_batch_size), True)
        for m in self.model:
            m.train()
        return {f"val_{k}": v for k, v in self._reduce(outs).items()}

    # ---------------------------------------------------------------- the loop
    def train(self) -> list[dict]:
        cfg, t = self.cfg, self.cfg.train
        self._install_signals()
        start_iter = self.iteration
        tokens_per_step = t.global_batch_size * cfg.data.seq_length * self.stage.rows_per_sample
        peak = t.peak_tflops or cuda_peak()
        self._log0(f"training steps {self.iteration + 1}..{t.train_steps}: {self.num_micro} micro-batches x "
                   f"{t.micro_batch_size} x DP {self.dp}; TP {cfg.parallel.tensor}, PP {cfg.parallel.pipeline}; "
                   f"{'bf16' if self.bf16 else 'fp32'}; init param checksum {self.init_checksum!r}")
        if t.exit_after_steps == 0:  # initialise and save only (a common starting point for several runs)
            self.save()
            return self.metrics
        for m in self.model:
            m.train()
        while self.iteration < t.train_steps:
            t0 = time.perf_counter()
            logs = self.train_step()
            dt = time.perf_counter() - t0
            tps = tokens_per_step / dt
            tflops = self.flops_per_token * tps / dist.get_world_size() / 1e12
            logs.update(step=self.iteration, init_param_checksum=self.init_checksum, step_time=dt, tokens_per_s=tps,
                        tokens_per_s_per_device=tps / dist.get_world_size(), tflops_per_device=tflops,
                        mfu=(tflops / peak) if peak else None, consumed_samples=self.consumed)
            if t.eval_interval and (self.iteration % t.eval_interval == 0 or self.iteration == t.train_steps):
                logs.update(self.evaluate())
                if cfg.checkpoint.keep_best and logs.get("val_loss", math.inf) < self.best_val:
                    self.best_val = logs["val_loss"]
                    self.save(best=True)
                    logs["best"] = True
            self._record(logs)
            stop = (t.exit_after_steps is not None and self.iteration - start_iter >= t.exit_after_steps)
            stop = stop or self._signal_seen()
            if (self.iteration % cfg.checkpoint.save_interval == 0 or self.iteration == t.train_steps or stop):
                self.save()
            if stop:
                why = f"signal {self._signal}" if self._signal else f"exit_after_steps={t.exit_after_steps}"
                self._log0(f"stopping at step {self.iteration} ({why}); checkpoint saved, rerun to resume")
                break
        return self.metrics

    def save(self, best: bool = False) -> Path:
        """Save to OUT/checkpoints (keep_last), or with best=True to OUT/best (only the best one kept)."""
        extra = {"consumed_samples": self.consumed, "param_checksum": self.param_checksum(), "stage": self.stage.name,
                 # what export needs: the architecture, the tokenizer, the source HF config's other fields
                 "model": asdict(self.cfg.model), "tokenizer": str(Path(self.cfg.data.tokenizer).expanduser().resolve()),
                 "hf_config": self.hf_config, "chat_template": getattr(self.hf_tokenizer, "chat_template", None),
                 "resume_keys": resume_keys(self.cfg), "resume_overrides": self.resume_overrides}
        if best:
            extra["val_loss"] = self.best_val
        return ckpt.save(self.out / "best" if best else self.ckpt_root, self.iteration, self.unwrapped,
                         self.optimizer, self.scheduler, extra, keep_last=1 if best else self.cfg.checkpoint.keep_last)

    def _record(self, logs: dict) -> None:
        self.metrics.append(logs)
        if not distributed.is_logging_rank():
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(logs) + "\n")
        if self.writer:
            for k, v in logs.items():
                if isinstance(v, (int, float)) and v is not None and k != "step":
                    self.writer.add_scalar(k, v, self.iteration)
            self.writer.flush()
        if self.iteration % self.cfg.train.log_interval == 0 or self.iteration == 1:
            mfu = f" mfu {logs['mfu'] * 100:.1f}%" if logs.get("mfu") else ""
            val = f" val_loss {logs['val_loss']:.4f}" if "val_loss" in logs else ""
            print(f"step {self.iteration:>6}/{self.cfg.train.train_steps} loss {logs['loss']:.4f}{val} "
                  f"lr {logs['lr']:.3e} grad_norm {logs['grad_norm']:.3f} "
                  f"{logs['tokens_per_s']:,.0f} tok/s {logs['tflops_per_device']:.3f} TFLOP/s/dev{mfu}", flush=True)

    def param_checksum(self) -> float:
        """Sum of all parameters (float64) over the whole model: equal weights give equal checksums, at any layout
        (the last pipeline stage's copy of tied embeddings, megatron's `shared` parameter, counts once)."""
        s = torch.zeros(1, dtype=torch.float64)
        for p in self.unwrapped.parameters():
            if not getattr(p, "shared", False):
                s += p.detach().double().sum().cpu()
        if torch.cuda.is_available():
            s = s.cuda()
        dist.all_reduce(s, group=mpu.get_model_parallel_group())
        return s.item()

    def _signal_seen(self) -> bool:
        """Did any rank get SIGUSR1/SIGTERM? All ranks agree (max all-reduce), so all stop at the same step."""
        flag = torch.tensor([1.0 if self._signal else 0.0], device="cuda" if torch.cuda.is_available() else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and not self._signal:
            self._signal = "on another rank"
        return bool(flag.item())

    def _install_signals(self) -> None:
        def handler(signum, frame):
            self._signal = signal.Signals(signum).name
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, handler)

    def _log0(self, msg: str) -> None:
        if dist.get_rank() == 0:
            print(f"[carebot] {msg}", flush=True)

    def close(self) -> None:
        if self.writer:
            self.writer.close()
        distributed.teardown()


def run(cfg: RunConfig, stage: Stage) -> list[dict]:
    """Set up, train, tear down. Returns the per-step metrics this process saw."""
    trainer = Trainer(cfg, stage)
    try:
        trainer.setup()
        return trainer.train()
    finally:
        trainer.close()
