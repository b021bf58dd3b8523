"""`carebot convert`: HuggingFace LLaMA <-> megatron-core checkpoints, any TP/PP, verified by logits.

  hf-to-megatron  HF dir (safetensors + config.json + tokenizer) -> dist checkpoint `OUT/iter_0000000` + `latest`,
                  the layout `pretrain.checkpoint` writes, so `checkpoint.init_from=OUT` starts a run from it.
  megatron-to-hf  any TP/PP checkpoint (converted or trained) -> LlamaForCausalLM dir: sharded safetensors +
                  index, config.json, generation_config.json, tokenizer files with the chat template.
  verify          loads both sides at one or more TP x PP layouts and compares logits, loss and greedy
                  generation on real zh + en text.

Both directions go through a TP=1/PP=1 megatron model in one process: megatron-core's `sharded_state_dict`
and `dist_checkpointing` store global tensors, so resharding to/from any TP/PP happens on load. The only
layout-dependent thing in the weights is the vocabulary padding, which follows the target TP.
The parameter mapping is one table row per parameter family (after Megatron-Bridge's llama bridge)."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from pretrain import checkpoint as ckpt
from pretrain.config import ConfigError, ModelConfig, ParallelConfig, load_config
from pretrain.model import check_model_config, padded_vocab_size

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
HF_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


class ConvertError(ConfigError):
    """Input the converter cannot handle; the message names the file and what is wrong."""


# --------------------------------------------------------------------------------------------- config
def read_hf_config(hf_dir: Path) -> dict:
    path = hf_dir / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no config.json (not a HuggingFace model directory)")
    cfg = json.loads(path.read_text())
    archs = cfg.get("architectures") or ["LlamaForCausalLM"]
    if cfg.get("model_type") != "llama" or archs != ["LlamaForCausalLM"]:
        raise ConvertError(f"{path}: model_type {cfg.get('model_type')!r} / architectures {archs} is not LLaMA; "
                           "carebot converts LlamaForCausalLM checkpoints only")
    return cfg


def rope_theta(hf: dict) -> float:
    rp = hf.get("rope_parameters") or {}
    return float(rp.get("rope_theta", hf.get("rope_theta", 10000.0)))


def model_config_from_hf(hf: dict, where: str = "config.json") -> ModelConfig:
    """HF LlamaConfig dict -> our ModelConfig; refuses what megatron's LLaMA build cannot express."""
    heads, hidden = hf["num_attention_heads"], hf["hidden_size"]
    rp = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    problems = []
    if rp.get("rope_type", rp.get("type", "default")) != "default":
        problems.append(f"rope scaling {rp.get('rope_type', rp.get('type'))!r} (only plain RoPE)")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {hf['hidden_act']!r} (SwiGLU needs silu)")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        problems.append("attention/mlp biases")
    if hf.get("head_dim") not in (None, hidden // heads):
        problems.append(f"head_dim {hf['head_dim']} != hidden_size / num_attention_heads")
    if problems:
        raise ConvertError(f"{where}: unsupported LLaMA variant: {'; '.join(problems)}")
    return ModelConfig(num_layers=hf["num_hidden_layers"], hidden_size=hidden,
                       ffn_hidden_size=hf["intermediate_size"], num_attention_heads=heads,
                       num_query_groups=hf.get("num_key_value_heads") or heads, rotary_base=rope_theta(hf),
                       norm_epsilon=hf.get("rms_norm_eps", 1e-5),
                       untie_embeddings=not hf.get("tie_word_embeddings", False))


def hf_config_from_model(m: ModelConfig, vocab_size: int, dtype: torch.dtype, tokenizer, base: dict | None):
    """Our ModelConfig -> transformers.LlamaConfig (keeping the source HF config's extra fields when known)."""
    from transformers import LlamaConfig

    d = dict(base or {})
    for k in ("transformers_version", "_name_or_path", "torch_dtype", "dtype", "architectures", "model_type"):
        d.pop(k, None)
    d.update(vocab_size=vocab_size, hidden_size=m.hidden_size, intermediate_size=m.ffn_hidden_size,
             num_hidden_layers=m.num_layers, num_attention_heads=m.num_attention_heads,
             num_key_value_heads=m.num_query_groups, head_dim=m.hidden_size // m.num_attention_heads,
             hidden_act="silu", rms_norm_eps=m.norm_epsilon, tie_word_embeddings=not m.untie_embeddings,
             attention_bias=False, mlp_bias=False,
             rope_parameters={"rope_type": "default", "rope_theta": float(m.rotary_base)})
    d.pop("rope_theta", None), d.pop("rope_scaling", None)
    d.setdefault("max_position_embeddings", 8192)
    if tokenizer is not None:
        d.setdefault("bos_token_id", tokenizer.bos_token_id)
        d.setdefault("eos_token_id", tokenizer.eos_token_id)
    cfg = LlamaConfig(**d)
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.dtype = HF_DTYPE_NAMES[dtype]
    return cfg


# --------------------------------------------------------------------------------------------- mapping
@dataclass(frozen=True)
class Dims:
    heads: int
    groups: int
    head_dim: int
    vocab: int  # real (tokenizer) vocabulary
    padded_vocab: int  # rows of the megatron embedding / output layer


def _copy_in(ts, d):
    return ts[0]


def _copy_out(t, d):
    return (t,)


def _qkv_in(ts, d: Dims):
    """HF q/k/v -> megatron fused QKV: per query group, its q heads then its k head then its v head."""
    q, k, v = ts
    h, per = q.shape[1], d.heads // d.groups
    return torch.cat([q.reshape(d.groups, per * d.head_dim, h), k.reshape(d.groups, d.head_dim, h),
                      v.reshape(d.groups, d.head_dim, h)], dim=1).reshape(-1, h)


def _qkv_out(t, d: Dims):
    per, h = d.heads // d.groups, t.shape[1]
    q, k, v = t.reshape(d.groups, (per + 2) * d.head_dim, h).split([per * d.head_dim, d.head_dim, d.head_dim], 1)
    return q.reshape(-1, h), k.reshape(-1, h), v.reshape(-1, h)


def _fc1_in(ts, d):
    """SwiGLU: megatron's linear_fc1 is [gate; up] stacked on the output dim."""
    return torch.cat(ts, dim=0)


def _fc1_out(t, d):
    return tuple(t.chunk(2, dim=0))


def _vocab_in(ts, d: Dims):
    """Pad the vocabulary rows (zeros) up to the size megatron splits evenly across TP ranks."""
    t = ts[0]
    if t.shape[0] != d.vocab:
        raise ConvertError(f"embedding has {t.shape[0]} rows but the vocabulary has {d.vocab} tokens")
    return torch.cat([t, t.new_zeros(d.padded_vocab - d.vocab, t.shape[1])]) if d.padded_vocab > d.vocab else t


def _vocab_out(t, d: Dims):
    return (t[: d.vocab],)


@dataclass(frozen=True)
class Row:
    """One parameter family: megatron name, HF name(s) (`{i}` = layer), and the typed transform both ways."""
    megatron: str
    hf: tuple[str, ...]
    to_megatron: Callable
    to_hf: Callable
    untied_only: bool = False

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.megatron


_L, _A, _M = "decoder.layers.{i}.", "model.layers.{i}.self_attn.", "model.layers.{i}.mlp."
ROWS: tuple[Row, ...] = (
    Row("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), _vocab_in, _vocab_out),
    Row(_L + "input_layernorm.weight", ("model.layers.{i}.input_layernorm.weight",), _copy_in, _copy_out),
    Row(_L + "self_attention.linear_qkv.weight", (_A + "q_proj.weight", _A + "k_proj.weight", _A + "v_proj.weight"),
        _qkv_in, _qkv_out),
    Row(_L + "self_attention.linear_proj.weight", (_A + "o_proj.weight",), _copy_in, _copy_out),
    Row(_L + "pre_mlp_layernorm.weight", ("model.layers.{i}.post_attention_layernorm.weight",), _copy_in, _copy_out),
    Row(_L + "mlp.linear_fc1.weight", (_M + "gate_proj.weight", _M + "up_proj.weight"), _fc1_in, _fc1_out),
    Row(_L + "mlp.linear_fc2.weight", (_M + "down_proj.weight",), _copy_in, _copy_out),
    Row("decoder.final_layernorm.weight", ("model.norm.weight",), _copy_in, _copy_out),
    Row("output_layer.weight", ("lm_head.weight",), _vocab_in, _vocab_out, untied_only=True),
)


def expand_rows(m: ModelConfig):
    """(megatron name, HF names, row) for every parameter of the model."""
    for row in ROWS:
        if row.untied_only and not m.untie_embeddings:
            continue
        for i in range(m.num_layers) if row.per_layer else [None]:
            fmt = (lambda s: s.format(i=i)) if i is not None else (lambda s: s)
            yield fmt(row.megatron), tuple(fmt(h) for h in row.hf), row


def dims(m: ModelConfig, vocab: int, padded: int) -> Dims:
    return Dims(m.num_attention_heads, m.num_query_groups, m.hidden_size // m.num_attention_heads, vocab, padded)


# --------------------------------------------------------------------------------------------- HF files
class HFWeights:
    """Lazy reader over an HF dir's safetensors (single file or sharded with an index)."""

    def __init__(self, hf_dir: Path):
        from safetensors import safe_open

        index = hf_dir / "model.safetensors.index.json"
        if index.exists():
            wmap = json.loads(index.read_text())["weight_map"]
        elif (hf_dir / "model.safetensors").exists():
            wmap = None
        else:
            raise FileNotFoundError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json")
        files = sorted(set(wmap.values())) if wmap else ["model.safetensors"]
        self.handles, self.where = {}, {}
        for f in files:
            try:
                h = safe_open(str(hf_dir / f), framework="pt")
            except Exception as e:  # truncated / corrupt shard
                raise ConvertError(f"{hf_dir / f}: cannot read safetensors: {e}") from e
            self.handles[f] = h
            for k in h.keys():
                self.where[k] = f

    def get(self, name: str) -> torch.Tensor:
        if name not in self.where:
            raise ConvertError(f"HF checkpoint has no tensor {name!r}")
        return self.handles[self.where[name]].get_tensor(name)

    def dtype(self) -> torch.dtype:
        return self.get("model.embed_tokens.weight").dtype


def _parse_size(s: str) -> int:
    s = s.strip().upper()
    for unit, mul in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("B", 1)):
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * mul)
    return int(s)


def write_safetensors(tensors: dict[str, torch.Tensor], out: Path, max_shard_bytes: int) -> list[str]:
    """HF layout: model-0000k-of-0000n.safetensors shards + model.safetensors.index.json."""
    from safetensors.torch import save_file

    shards, cur, size = [], {}, 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if cur and size + nbytes > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[name], size = t.contiguous(), size + nbytes
    shards.append(cur)
    n, weight_map, files = len(shards), {}, []
    for k, shard in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{n:05d}.safetensors"
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        weight_map.update({name: fname for name in shard})
        files.append(fname)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return files


def save_tokenizer(tok_dir: Path, out: Path):
    """Tokenizer files with a chat template (LLaMA-3's when the source has none)."""
    from pretrain.tokenizer import LLAMA3_CHAT_TEMPLATE, load_tokenizer

    tok = load_tokenizer(tok_dir)
    if not getattr(tok, "chat_template", None):
        tok.chat_template = LLAMA3_CHAT_TEMPLATE
    tok.save_pretrained(str(out))
    return tok


# --------------------------------------------------------------------------------------------- megatron side
def _init_single_process() -> None:
    from pretrain import distributed

    distributed.init(ParallelConfig(tensor=1, pipeline=1), seed=1234)


def build_megatron(m: ModelConfig, padded_vocab: int, dtype: torch.dtype, seq_length: int = 4096):
    """One stage of the megatron model at the current parallel state, with exactly `padded_vocab` rows."""
    from pretrain.model import build_model

    if dtype not in (torch.float32, torch.bfloat16):
        raise ConvertError(f"megatron checkpoints are fp32 or bf16, not {dtype}")
    mm = replace(m, vocab_size=None, make_vocab_size_divisible_by=1)
    from megatron.core import parallel_state as mpu

    tp = mpu.get_tensor_model_parallel_world_size()
    if padded_vocab % tp:
        raise ConvertError(f"checkpoint vocabulary of {padded_vocab} rows does not split across TP={tp}")
    return build_model(mm, ParallelConfig(tensor=tp, pipeline=mpu.get_pipeline_model_parallel_world_size()),
                       padded_vocab // tp * tp, seq_length, bf16=dtype == torch.bfloat16)


def checkpoint_tensor_meta(ckpt_dir: Path) -> dict:
    """Global shapes / dtypes of a dist checkpoint's model tensors (no process group needed)."""
    from megatron.core import dist_checkpointing

    try:
        return dist_checkpointing.load_tensors_metadata(str(ckpt_dir))
    except Exception as e:
        raise ckpt.CheckpointError(f"cannot read checkpoint metadata in {ckpt_dir}: {type(e).__name__}: {e}") from e


def checkpoint_vocab_rows(ckpt_dir: Path) -> tuple[int, torch.dtype]:
    meta = checkpoint_tensor_meta(ckpt_dir)
    emb = meta.get("embedding.word_embeddings.weight")
    if emb is None:
        raise ckpt.CheckpointError(f"{ckpt_dir}: no embedding.word_embeddings.weight (not a GPT checkpoint)")
    return emb.global_shape[0], emb.dtype


def resolve_checkpoint(path: str | Path) -> Path:
    it = ckpt.resolve(path)
    if it is None:
        raise ckpt.CheckpointError(f"no megatron checkpoint at {path} (neither a `latest` pointer nor metadata.json)")
    check_complete(it)
    return it


def check_complete(it: Path) -> None:
    """Every byte range the torch_dist `.metadata` points at must exist: catches truncated or missing shards
    before a load fails deep inside torch.distributed.checkpoint."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        storage = FileSystemReader(str(it)).read_metadata().storage_data
    except Exception as e:
        raise ckpt.CheckpointError(f"{it}: unreadable torch_dist metadata ({type(e).__name__}: {e})") from e
    need: dict[str, int] = {}
    for info in storage.values():
        need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
    for rel, n in sorted(need.items()):
        f = it / rel
        have = f.stat().st_size if f.exists() else -1
        if have < n:
            raise ckpt.CheckpointError(f"{f}: truncated checkpoint shard ({max(have, 0)} bytes, metadata says "
                                       f"{n}); re-copy or re-save the checkpoint" if have >= 0 else
                                       f"{f}: checkpoint shard missing")


def save_model_checkpoint(root: Path, model, meta: dict) -> Path:
    """Weights-only checkpoint in `pretrain.checkpoint`'s layout: iter dir (atomic rename) + `latest`."""
    from megatron.core import dist_checkpointing

    final, tmp = root / "iter_0000000", root / "iter_0000000.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # iteration 0, no optimizer: `checkpoint.init_from` loads the weights only; layout None so no RNG is expected
    dist_checkpointing.save({"model": model.sharded_state_dict(),
                             "carebot": {**meta, "iteration": 0, "consumed_samples": 0, "has_optimizer": False,
                                         "layout": None, "stage": "convert"}}, str(tmp))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    (root / "latest.tmp").write_text(final.name)
    os.replace(root / "latest.tmp", root / ckpt.LATEST)
    return final


# --------------------------------------------------------------------------------------------- commands
def hf_to_megatron(hf_dir: Path, out: Path, tensor: int, pipeline: int, dtype: str = "auto",
                   tokenizer_dir: Path | None = None) -> dict:
    from tqdm import tqdm

    from pretrain.tokenizer import load_tokenizer

    hf_dir = Path(hf_dir)
    hf = read_hf_config(hf_dir)
    m = model_config_from_hf(hf, str(hf_dir / "config.json"))
    tok_dir = Path(tokenizer_dir or hf_dir)
    vocab = len(load_tokenizer(tok_dir))
    if hf["vocab_size"] != vocab:
        raise ConvertError(f"{hf_dir / 'config.json'}: vocab_size {hf['vocab_size']} but the tokenizer in {tok_dir} "
                           f"has {vocab} tokens (carebot sizes the vocabulary from the tokenizer)")
    check_model_config(m, ParallelConfig(tensor=tensor, pipeline=pipeline), vocab)
    weights = HFWeights(hf_dir)
    tdtype = weights.dtype() if dtype == "auto" else DTYPES[dtype]
    if tdtype == torch.float16:
        tdtype = torch.float32  # megatron's LLaMA build here is fp32 or bf16; fp16 -> fp32 is exact
    padded = padded_vocab_size(vocab, m.make_vocab_size_divisible_by, tensor)
    d = dims(m, vocab, padded)
    _init_single_process()
    model = build_megatron(m, padded, tdtype)
    params = model.state_dict()
    done = set()
    for mname, hnames, row in tqdm(list(expand_rows(m)), desc="hf->megatron", disable=None):
        t = row.to_megatron(tuple(weights.get(h) for h in hnames), d)
        if params[mname].shape != t.shape:
            raise ConvertError(f"{mname}: HF tensors {hnames} give shape {tuple(t.shape)}, "
                               f"megatron expects {tuple(params[mname].shape)}")
        with torch.no_grad():
            params[mname].copy_(t.to(tdtype))
        done.add(mname)
    missing = [k for k, v in params.items() if isinstance(v, torch.Tensor) and not k.endswith("_extra_state")
               and k not in done]
    if missing:
        raise ConvertError(f"no mapping row fills megatron parameters {missing}")
    unused = sorted(set(weights.where) - {h for _, hs, _ in expand_rows(m) for h in hs} - {"lm_head.weight"})
    if unused:
        raise ConvertError(f"{hf_dir}: tensors with no mapping row: {unused[:5]}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tok_dir, out / "tokenizer")
    meta = {"model": asdict(m), "vocab_size": vocab, "padded_vocab_size": padded, "target_layout": [tensor, pipeline],
            "dtype": DTYPE_NAMES[tdtype], "hf_config": hf, "tokenizer": str((out / "tokenizer").resolve()),
            "source": str(hf_dir.resolve()), "param_checksum": sum(p.double().sum().item() for p in model.parameters())}
    it = save_model_checkpoint(out, model, meta)
    overrides = ([f"model.{k}={v}" for k, v in asdict(m).items() if k != "vocab_size"]
                 + [f"data.tokenizer={out / 'tokenizer'}", f"checkpoint.init_from={out}",
                    f"parallel.tensor={tensor}", f"parallel.pipeline={pipeline}"])
    summary = {"checkpoint": str(it), "vocab_size": vocab, "padded_vocab_size": padded, "dtype": DTYPE_NAMES[tdtype],
               "num_tensors": len(done), "pretrain_overrides": overrides}
    (out / "convert.json").write_text(json.dumps(summary, indent=1))
    return summary


def _megatron_source(it: Path, args_config: str | None, overrides: list[str], tokenizer: str | None):
    """Model config, tokenizer dir and source HF config of a checkpoint: converter metadata, else the training
    run's config.yaml beside `checkpoints/`, else an explicit recipe (`--config`)."""
    meta = ckpt.load_meta(it)
    hf_base, m, tok = meta.get("hf_config"), None, tokenizer
    if args_config:
        cfg = load_config(args_config, overrides)
        m, tok = cfg.model, tok or cfg.data.tokenizer
    elif "model" in meta:
        m, tok = ModelConfig(**meta["model"]), tok or meta.get("tokenizer")
    else:
        run_cfg = it.parent.parent / "config.yaml"
        if not run_cfg.exists():
            raise ConvertError(f"{it}: no model config in the checkpoint and no {run_cfg}; pass --config RECIPE")
        cfg = load_config(run_cfg, overrides)
        m, tok = cfg.model, tok or cfg.data.tokenizer
    if not tok:
        raise ConvertError(f"{it}: no tokenizer recorded; pass --tokenizer DIR")
    return m, Path(tok), hf_base


def megatron_to_hf(src: str | Path, out: Path, dtype: str = "auto", config: str | None = None,
                   overrides: list[str] | None = None, tokenizer: str | None = None,
                   max_shard_size: str = "5GB") -> dict:
    from tqdm import tqdm

    from pretrain.tokenizer import load_tokenizer

    it = resolve_checkpoint(src)
    m, tok_dir, hf_base = _megatron_source(it, config, overrides or [], tokenizer)
    vocab = len(load_tokenizer(tok_dir))
    rows, cdtype = checkpoint_vocab_rows(it)
    if rows < vocab:
        raise ConvertError(f"{it}: embedding has {rows} rows, fewer than the tokenizer's {vocab} tokens")
    tdtype = cdtype if dtype == "auto" else DTYPES[dtype]
    _init_single_process()
    model = build_megatron(m, rows, cdtype if cdtype in (torch.float32, torch.bfloat16) else torch.float32)
    ckpt.load(it, model)  # dist_checkpointing reshards any TP/PP layout into this TP=1/PP=1 model
    params, d = model.state_dict(), dims(m, vocab, rows)
    tensors = {}
    for mname, hnames, row in tqdm(list(expand_rows(m)), desc="megatron->hf", disable=None):
        for h, t in zip(hnames, row.to_hf(params[mname].detach(), d)):
            tensors[h] = t.to(tdtype).clone()
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = write_safetensors(tensors, tmp, _parse_size(max_shard_size))
    tok = save_tokenizer(tok_dir, tmp)
    hf_cfg = hf_config_from_model(m, vocab, tdtype, tok, hf_base)
    hf_cfg.save_pretrained(str(tmp))
    from transformers import GenerationConfig

    eos = [i for i in {tok.eos_token_id, tok.convert_tokens_to_ids("<|end_of_text|>")}
           if isinstance(i, int) and i != tok.unk_token_id]
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=sorted(eos),
                     pad_token_id=tok.pad_token_id).save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    summary = {"hf_dir": str(out), "checkpoint": str(it), "shards": files, "num_tensors": len(tensors),
               "vocab_size": vocab, "padded_vocab_removed": rows - vocab, "dtype": HF_DTYPE_NAMES[tdtype]}
    (out / "convert.json").write_text(json.dumps(summary, indent=1))
    return summary


def _pop_rest(args):
    return getattr(args, "overrides", None) or []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carebot convert", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("hf-to-megatron", help="HF LLaMA dir -> megatron-core dist checkpoint")
    a.add_argument("--hf", required=True, type=Path, help="HF model dir (safetensors, config.json, tokenizer)")
    a.add_argument("--out", required=True, type=Path, help="checkpoint root to write (iter_0000000 + latest)")
    a.add_argument("--tensor", type=int, default=1, help="target TP (sets the vocabulary padding; checked)")
    a.add_argument("--pipeline", type=int, default=1, help="target PP (checked against the layer count)")
    a.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto", help="auto: the HF tensors' dtype")
    a.add_argument("--tokenizer", type=Path, default=None, help="tokenizer dir (default: the HF dir)")
    b = sub.add_parser("megatron-to-hf", help="megatron-core checkpoint (any TP/PP) -> HF LlamaForCausalLM dir")
    b.add_argument("--megatron", required=True, help="checkpoint root (with `latest`) or an iter_* dir")
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    b.add_argument("--config", default=None, help="recipe giving the model shape (default: checkpoint metadata, "
                                                  "else the run's config.yaml)")
    b.add_argument("--tokenizer", default=None, help="tokenizer dir (default: from metadata / run config)")
    b.add_argument("--max-shard-size", default="5GB")
    b.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. model.num_layers=2")
    v = sub.add_parser("verify", help="compare logits / loss / greedy generation of both sides")
    v.add_argument("--hf", required=True, type=Path)
    v.add_argument("--megatron", required=True)
    v.add_argument("--layouts", default="1x1", help="TPxPP list, e.g. 1x1,2x1,1x2 (world size must be a multiple)")
    v.add_argument("--texts", type=Path, default=None, help="JSONL with a `text` field (default: real zh+en text)")
    v.add_argument("--num-texts", type=int, default=4)
    v.add_argument("--max-tokens", type=int, default=64)
    v.add_argument("--generate", type=int, default=20, help="greedy tokens to compare (0: skip)")
    v.add_argument("--atol", type=float, default=1e-4)
    v.add_argument("--summary", type=Path, default=None, help="write the JSON summary here")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "hf-to-megatron":
            res = hf_to_megatron(args.hf, args.out, args.tensor, args.pipeline, args.dtype, args.tokenizer)
        elif args.cmd == "megatron-to-hf":
            res = megatron_to_hf(args.megatron, args.out, args.dtype, args.config, _pop_rest(args), args.tokenizer,
                                 args.max_shard_size)
        else:
            from pretrain.convert_verify import verify

            res = verify(args)
            if res is not None and not res["ok"]:
                print(json.dumps(res, indent=1), flush=True)
                return 1
        if res is not None:
            print(json.dumps(res, indent=1, ensure_ascii=False), flush=True)
        return 0
    except (ConfigError, ckpt.CheckpointError, FileNotFoundError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__  # one line, always
        print(f"carebot convert: error: {msg}", file=sys.stderr, flush=True)
        return 2
    finally:
        if "pretrain.distributed" in sys.modules:  # only a command that started process groups
            sys.modules["pretrain.distributed"].teardown()


if __name__ == "__main__":
    raise SystemExit(main())
