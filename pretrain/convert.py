"""HuggingFace LLaMA <-> megatron-core checkpoints, any TP/PP, verified by logits.

  hf-to-megatron  HF dir (safetensors + config.json + tokenizer) -> dist checkpoint `OUT/iter_0000000` + `latest`,
                  the layout `pretrain.checkpoint` writes, so `checkpoint.init_from=OUT` starts a run from it.
  megatron-to-hf  any TP/PP checkpoint (converted or trained) -> LlamaForCausalLM dir: sharded safetensors +
                  index, config.json, generation_config.json, tokenizer files with the chat template.
  verify          loads both sides at one or more TP x PP layouts and compares logits, loss and greedy
                  generation on real zh + en text.

Both directions go through a TP=1/PP=1 megatron model in one process: megatron-core's `sharded_state_dict`
and `dist_checkpointing` store global tensors, so resharding to/from any TP/PP happens on load. The only
layout-dependent thing in the weights is the vocabulary padding, which follows the target TP.
The parameter mapping is `pretrain.llama_mapping`; the command line is `pretrain.convert_cli`."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import torch

from carebot.io import write_json
from pretrain import checkpoint as ckpt
from carebot.run_config import ModelConfig, ParallelConfig, load_config
from pretrain.llama_mapping import (DTYPES, DTYPE_NAMES, HF_DTYPE_NAMES, ConvertError, HFWeights, dims,  # noqa: F401
                                    expand_rows, hf_config_from_model, model_config_from_hf, read_hf_config)
from pretrain.model import check_model_config, padded_vocab_size

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


def save_tokenizer(tok_dir: Path, out: Path, chat_template: str | None = None):
    """The tokenizer files as they are, plus `chat_template` when given (the one a run trained with, from its
    checkpoint metadata). No template is ever made up: a base model's tokenizer stays without one."""
    from carebot.tokenizer import load_tokenizer

    tok = load_tokenizer(tok_dir)
    if chat_template:
        tok.chat_template = chat_template
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
    storage = getattr(ckpt.read_dist_metadata(it), "storage_data", None)
    if not isinstance(storage, dict):
        raise ckpt.CheckpointError(f"{it}: torch_dist metadata without storage data (not a complete checkpoint)")
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

    from carebot.tokenizer import load_tokenizer

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
    write_json(out / "convert.json", summary)
    return summary


def _megatron_source(it: Path, args_config: str | None, overrides: list[str], tokenizer: str | None):
    """Model config, tokenizer dir and source HF config of a checkpoint: converter metadata, else the training
    run's config.yaml beside `checkpoints/`, else an explicit recipe (`--config`)."""
    meta = ckpt.load_meta(it)
    hf_base, m, tok = meta.get("hf_config"), None, tokenizer
    if args_config:
        from pretrain.arch import with_arch

        cfg = load_config(args_config, overrides)
        m, tok = (with_arch(cfg, meta["model"], it) if meta.get("model") else cfg.model), tok or cfg.data.tokenizer
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

    from carebot.tokenizer import load_tokenizer

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
    tok = save_tokenizer(tok_dir, tmp, ckpt.load_meta(it).get("chat_template"))
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
    write_json(out / "convert.json", summary)
    return summary
