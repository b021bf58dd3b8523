"""The schema of a training run (CPT, SFT, DPO): nested keyword-only dataclasses, loaded from YAML recipes
(`pretrain/recipes/`), overridable with dotted keys (`train.train_steps=50`). Defaults are the paper's
LLaMA-3-8B Stable CPT settings (CareBot, Sec. 3.1 / App. C). It lives in the shared layer because the data
tools (blend's token budget), the trainer, the alignment stages and the launchers all read it; it imports
nothing heavy (no torch)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from carebot import config as _config
from carebot.errors import ConfigError


@dataclass(kw_only=True)
class ModelConfig:
    """LLaMA-3 architecture (8B defaults): RMSNorm, SwiGLU, RoPE theta 500000, GQA, untied embeddings."""
    num_layers: int = 32
    hidden_size: int = 4096
    ffn_hidden_size: int = 14336
    num_attention_heads: int = 32
    num_query_groups: int = 8
    vocab_size: int | None = None  # None: taken from the tokenizer
    make_vocab_size_divisible_by: int = 128  # padded further by TP so the embedding splits evenly
    rotary_base: float = 500000.0
    norm_epsilon: float = 1e-5
    init_method_std: float = 0.02
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    untie_embeddings: bool = True
    qkv_bias: bool = False  # biases on q / k / v only (Qwen2 / Qwen2.5)
    # Llama-3.1/3.2 RoPE scaling ("llama3" rope_type) as megatron-core applies it: low_freq_factor 1,
    # high_freq_factor 4, original context 8192; None: plain RoPE
    rope_scaling_factor: float | None = None
    # core attention: auto (Transformer Engine when TE and CUDA are present, else megatron-core's local one) |
    # sdpa (torch scaled_dot_product_attention: flash / efficient kernels, no TE; pretrain/attention.py) | local | te
    attention_backend: str = "auto"


@dataclass(kw_only=True)
class ParallelConfig:
    tensor: int = 1
    pipeline: int = 1
    sequence_parallel: bool = True  # used only with TP>1 on GPU
    distributed_optimizer: bool = False
    # scale knobs, passed to megatron-core as they are (pretrain/scale.py)
    recompute: str = "none"  # none | selective (attention core) | full (whole layers)
    recompute_method: str = "uniform"  # full only: uniform | block
    recompute_num_layers: int = 1  # full only: layers per recompute chunk (uniform) or recomputed layers (block)
    overlap_grad_reduce: bool = False
    overlap_param_gather: bool = False  # distributed optimizer only
    context: int = 1  # context parallelism: megatron-core runs it inside TE's attention only (pretrain/scale.py)


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 8e-6
    min_lr: float = 0.0
    warmup_ratio: float = 0.1  # paper: 10% warmup, then cosine
    decay_style: str = "cosine"
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0


@dataclass(kw_only=True)
class DataConfig:
    data_path: list = field(default_factory=list)  # megatron style: [w1, prefix1, w2, prefix2, ...]
    tokenizer: str = ""  # HF tokenizer directory
    seq_length: int = 4096
    split: str = "99,1,0"
    cache_dir: str | None = None  # megatron index cache (None: built in memory on every rank)


@dataclass(kw_only=True)
class TrainConfig:
    train_steps: int = 18000
    micro_batch_size: int = 1
    global_batch_size: int = 1024  # 1024 x 4096 = 4M tokens (paper)
    seed: int = 1234
    log_interval: int = 10
    eval_interval: int = 0  # 0: no periodic validation
    eval_iters: int = 10
    precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    tensorboard: bool = True
    exit_after_steps: int | None = None  # stop (with a checkpoint) after this many steps of this run
    epochs: float | None = None  # set: train_steps = ceil(epochs * samples per epoch / global batch) (SFT, DPO)
    fp8: str | None = None  # hybrid | e4m3: Transformer Engine + CUDA only
    peak_tflops: float | None = None  # per device, for MFU; None: looked up from the device name


@dataclass(kw_only=True)
class CheckpointConfig:
    save_interval: int = 1000
    load: str | None = None  # resume from here (defaults to the run's own checkpoint dir)
    init_from: str | None = None  # weights to start from with a NEW schedule (Boost CPT, SFT, DPO)
    init_optimizer: bool = False  # with init_from: carry the optimizer moments over too
    keep_last: int = 2
    keep_best: bool = False  # also keep the checkpoint with the lowest val_loss under OUT/best (SFT)
    # RESUME_KEYS changed on purpose at a resume (recorded in the checkpoint; schedule keys then follow the new
    # values from the step reached, as Megatron's --override-opt_param-scheduler)
    override_resume: list = field(default_factory=list)


@dataclass(kw_only=True)
class RunConfig:
    name: str = "run"
    stage: str = "cpt"  # cpt | sft | dpo
    output_dir: str = "runs/run"
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    stage_args: dict = field(default_factory=dict)  # stage-specific knobs (SFT / DPO)


# What the next sample is and how the schedule counts: a resume refuses a change to any of these (one line, each
# key with its old and new value) unless checkpoint.override_resume names it. Every other key is free to change
# at a resume (intervals, micro batch at equal global batch, parallel layout...; docs/pretrain.md).
RESUME_KEYS = ("data.data_path", "data.split", "data.seq_length", "train.global_batch_size", "train.seed",
               "train.train_steps", "train.epochs", "optim.lr", "optim.min_lr", "optim.warmup_ratio",
               "optim.decay_style", "optim.weight_decay", "stage_args.valid_fraction", "stage_args.packing",
               "stage_args.max_dialogues", "stage_args.system_prompt", "stage_args.chat_template")
SCHEDULE_KEYS = ("train.train_steps", "train.epochs", "optim.lr", "optim.min_lr", "optim.warmup_ratio",
                 "optim.decay_style", "optim.weight_decay")  # the ones megatron's LR scheduler holds


def resume_keys(cfg: "RunConfig") -> dict:
    """{dotted key: value} of RESUME_KEYS for `cfg` (data paths made absolute, so `a/b` == `./a/b`)."""
    def norm(v):
        if isinstance(v, (list, tuple)):
            return [norm(x) for x in v]
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                return str(Path(v).expanduser().resolve()) if v else v
        return v

    out = {}
    for key in RESUME_KEYS:
        head, name = key.split(".", 1)
        obj = getattr(cfg, head)
        v = obj.get(name) if isinstance(obj, dict) else getattr(obj, name)
        out[key] = norm(v) if key == "data.data_path" else v
    return out


STAGES = ("cpt", "sft", "dpo")
PRECISIONS = ("auto", "bf16", "fp32")
DECAY_STYLES = ("constant", "linear", "cosine", "inverse-square-root", "WSD")


def validate(cfg: RunConfig) -> RunConfig:
    """Ranges and enums, checked when the config is loaded (before any model is built): one ConfigError line
    naming the key, its value and what is allowed."""
    def bad(key: str, value, allowed: str) -> None:
        raise ConfigError(f"{key}={value!r}: {allowed}")

    t, d, o, c = cfg.train, cfg.data, cfg.optim, cfg.checkpoint
    if cfg.stage not in STAGES:
        bad("stage", cfg.stage, f"one of {', '.join(STAGES)}")
    if t.precision not in PRECISIONS:
        bad("train.precision", t.precision, f"one of {', '.join(PRECISIONS)}")
    if o.decay_style not in DECAY_STYLES:
        bad("optim.decay_style", o.decay_style, f"one of {', '.join(DECAY_STYLES)}")
    if t.epochs is None and t.train_steps < 1:
        bad("train.train_steps", t.train_steps, "must be >= 1 (or set train.epochs)")
    if t.epochs is not None and t.epochs <= 0:
        bad("train.epochs", t.epochs, "must be > 0")
    for key, v in (("train.micro_batch_size", t.micro_batch_size), ("train.global_batch_size", t.global_batch_size),
                   ("train.log_interval", t.log_interval), ("train.eval_iters", t.eval_iters),
                   ("checkpoint.save_interval", c.save_interval), ("data.seq_length", d.seq_length),
                   ("parallel.tensor", cfg.parallel.tensor), ("parallel.pipeline", cfg.parallel.pipeline)):
        if v < 1:
            bad(key, v, "must be >= 1")
    m = cfg.model
    for key in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                "make_vocab_size_divisible_by"):
        if getattr(m, key) < 1:
            bad(f"model.{key}", getattr(m, key), "must be >= 1")
    if m.vocab_size is not None and m.vocab_size < 1:
        bad("model.vocab_size", m.vocab_size, "must be >= 1 (or null: from the tokenizer)")
    if m.rotary_base <= 0 or m.norm_epsilon <= 0:
        bad("model.rotary_base / model.norm_epsilon", (m.rotary_base, m.norm_epsilon), "must be > 0")
    if m.rope_scaling_factor is not None and m.rope_scaling_factor < 1:
        bad("model.rope_scaling_factor", m.rope_scaling_factor, "must be >= 1 (or null: plain RoPE)")
    for key in ("hidden_dropout", "attention_dropout"):
        if not 0.0 <= getattr(m, key) < 1.0:
            bad(f"model.{key}", getattr(m, key), "must be in [0, 1)")
    if t.eval_interval < 0:
        bad("train.eval_interval", t.eval_interval, "must be >= 0 (0: no periodic validation)")
    if t.exit_after_steps is not None and t.exit_after_steps < 0:  # 0: write the initial checkpoint and stop
        bad("train.exit_after_steps", t.exit_after_steps, "must be >= 0 (or null)")
    if not 0.0 <= o.warmup_ratio <= 1.0:
        bad("optim.warmup_ratio", o.warmup_ratio, "must be in [0, 1]")
    if o.lr <= 0 or o.min_lr < 0 or o.min_lr > o.lr:
        bad("optim.lr / optim.min_lr", (o.lr, o.min_lr), "need 0 <= min_lr <= lr and lr > 0")
    try:
        parts = [float(x) for x in str(d.split).split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or min(parts) < 0 or sum(parts) <= 0:
        bad("data.split", d.split, "three non-negative train,valid,test weights, e.g. 99,1,0")
    unknown = [k for k in c.override_resume if k not in RESUME_KEYS]
    if unknown:
        bad("checkpoint.override_resume", unknown, f"keys among {', '.join(RESUME_KEYS)} (the others are free to change)")
    return cfg


def load_config(recipe: str | Path | list | None, overrides: list[str] | None = None) -> RunConfig:
    """Recipe YAML(s) + dotted overrides -> a validated RunConfig (see `carebot.config.load`, `validate`). Its
    `stated` attribute holds the dotted keys the recipe chain and the overrides set (the rest are defaults):
    an architecture key stated there must agree with the checkpoint the run starts from."""
    d = _config.merged(recipe, overrides)
    cfg = validate(_config.from_dict(RunConfig, d))
    cfg.stated = frozenset(_config.stated_keys(d))  # not a field: never dumped, never set from YAML
    return cfg
