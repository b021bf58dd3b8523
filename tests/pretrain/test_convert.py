"""HF LLaMA <-> megatron-core conversion, for real: a tiny GQA LLaMA-3-shaped HF model built here, converted,
loaded by megatron-core at TP/PP layouts on gloo, trained by `carebot pretrain` at TP=2 x PP=2, exported back,
compared by logits / loss / greedy generation on real zh + en text."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
# several `carebot convert` commands in ONE process: the import + process-group start is paid once
# (a pseudo-command `truncate DIR` cuts the largest .distcp shard of DIR/iter_0000000 in half)
DRIVER = """import json, os, pathlib, shutil, sys
from pretrain.convert_cli import main
def truncate(src, dst):
    shutil.copytree(src, dst)
    f = max(pathlib.Path(dst, "iter_0000000").glob("*.distcp"), key=lambda f: f.stat().st_size)
    os.truncate(f, f.stat().st_size // 2)
    print("TRUNCATED=" + f.name)
    return 0
print("RCS=" + json.dumps([truncate(*a[1:]) if a[0] == "truncate" else main(a) for a in json.loads(sys.argv[1])]))
"""


def convert_calls(*calls: list[str]) -> tuple[list[int], str, str]:
    p = subprocess.run([sys.executable, "-c", DRIVER, json.dumps([[str(x) for x in c] for c in calls])], cwd=REPO,
                       env=ENV, capture_output=True, text=True, timeout=900)
    rcs = [json.loads(line[4:]) for line in p.stdout.splitlines() if line.startswith("RCS=")]
    assert p.returncode == 0 and rcs, f"driver failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    return rcs[0], p.stderr, p.stdout


def torchrun(nproc: int, module: str, args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
           str(free_port()), "-m", module, *[str(a) for a in args]]
    p = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"{module} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    return p


def tensors_of(hf_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory, small_tokenizer_dir) -> Path:
    """LLaMA-3-shaped: GQA 4 heads / 2 KV heads, hidden 64, 2 layers, RoPE theta 500000, untied embeddings.
    Norm weights perturbed away from 1 so a swapped norm cannot go unnoticed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from carebot.tokenizer import load_tokenizer

    tok = load_tokenizer(small_tokenizer_dir)
    out = tmp_path_factory.mktemp("tiny-hf")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rope_theta=500000.0, tie_word_embeddings=False,
                      initializer_range=0.1, max_position_embeddings=4096, rms_norm_eps=1e-5,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def converted(tiny_hf, tmp_path_factory) -> dict[str, Path]:
    """HF -> Megatron (for TP=2) and straight back; then a truncated copy, all in one process."""
    d = tmp_path_factory.mktemp("converted")
    rcs, err, out = convert_calls(["hf-to-megatron", "--hf", tiny_hf, "--out", d / "mcore", "--tensor", "2"],
                                  ["megatron-to-hf", "--megatron", d / "mcore", "--out", d / "roundtrip"],
                                  ["truncate", d / "mcore", d / "truncated"],
                                  ["megatron-to-hf", "--megatron", d / "truncated", "--out", d / "never"])
    assert rcs[:3] == [0, 0, 0], err[-3000:]
    shard = next(line[10:] for line in out.splitlines() if line.startswith("TRUNCATED="))
    return {"mcore": d / "mcore", "roundtrip": d / "roundtrip", "dir": d, "truncated_rc": rcs[3],
            "stderr": err, "shard": shard}


def test_mapping_table_qkv_interleave_and_inverse():
    """Megatron's fused QKV is per query group [q heads of the group, k, v]; fc1 is [gate; up]; padding rows
    are added then removed. Every row's two directions are inverses."""
    from carebot.run_config import ModelConfig
    from pretrain.llama_mapping import dims, expand_rows

    m = ModelConfig(num_layers=1, hidden_size=8, ffn_hidden_size=6, num_attention_heads=4, num_query_groups=2)
    d = dims(m, vocab=10, padded=16)
    hd = d.head_dim  # 2
    q = torch.arange(4).repeat_interleave(hd).float()[:, None].expand(8, 8).clone()  # row value = q head id
    k = (10 + torch.arange(2).repeat_interleave(hd)).float()[:, None].expand(4, 8).clone()
    v = (20 + torch.arange(2).repeat_interleave(hd)).float()[:, None].expand(4, 8).clone()
    rows = {name: row for name, _, row in expand_rows(m)}
    qkv = rows["decoder.layers.0.self_attention.linear_qkv.weight"]
    fused = qkv.to_megatron((q, k, v), d)
    heads_in_order = fused[::hd, 0].tolist()
    assert heads_in_order == [0, 1, 10, 20, 2, 3, 11, 21]
    for name, row in rows.items():
        shapes = {"qkv": [(8, 8), (4, 8), (4, 8)], "fc1": [(6, 8), (6, 8)]}
        key = "qkv" if "qkv" in name else "fc1" if "fc1" in name else None
        if key:
            hf = tuple(torch.randn(s) for s in shapes[key])
        elif "embedding" in name or "output_layer" in name:
            hf = (torch.randn(10, 8),)
        else:
            hf = (torch.randn(8, 8),)
        mt = row.to_megatron(hf, d)
        if "embedding" in name:
            assert mt.shape == (16, 8) and torch.equal(mt[10:], torch.zeros(6, 8))
        back = row.to_hf(mt, d)
        assert all(torch.equal(a, b) for a, b in zip(hf, back)), name
    # tied embeddings: no output_layer row, and lm_head is never written
    from dataclasses import replace

    tied = [hf for _, hfs, _ in expand_rows(replace(m, untie_embeddings=False)) for hf in hfs]
    assert "lm_head.weight" not in tied and len(tied) == len(rows) - 1 + 2 + 1  # qkv: 3 names, fc1: 2


def test_hf_to_megatron_logits_parity_tp1_tp2_pp2(tiny_hf, converted, tmp_path):
    """one 2-process run loads the converted checkpoint at TP1xPP1 (x DP2), TP2 and PP2."""
    summary = tmp_path / "verify.json"
    torchrun(2, "pretrain.convert_cli", ["verify", "--hf", tiny_hf, "--megatron", converted["mcore"],
                                     "--layouts", "1x1,2x1,1x2", "--summary", summary])
    s = json.loads(summary.read_text())
    assert s["ok"] and s["texts"] == 4 and min(s["tokens"]) >= 32
    assert [(r["tp"], r["pp"]) for r in s["layouts"]] == [(1, 1), (2, 1), (1, 2)]
    for r in s["layouts"]:
        assert r["max_abs_logit"] > 1.0  # logits large enough that a wrong mapping shows
        assert r["max_abs_logit_diff"] < 1e-4 and r["max_abs_loss_diff"] < 1e-4, r
        assert r["greedy_equal"] and r["greedy_tokens"] == 20


def test_round_trip_is_bitwise(tiny_hf, converted):
    """HF -> Megatron -> HF reproduces every tensor bitwise; config carried over."""
    a, b = tensors_of(tiny_hf), tensors_of(converted["roundtrip"])
    assert sorted(a) == sorted(b) and len(a) == 2 * 9 + 3
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    ca, cb = (json.loads((p / "config.json").read_text()) for p in (tiny_hf, converted["roundtrip"]))
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "rms_norm_eps", "rope_parameters", "tie_word_embeddings", "dtype",
                "max_position_embeddings", "bos_token_id"):
        assert ca[key] == cb[key], key
    assert cb["rope_parameters"]["rope_theta"] == 500000.0
    meta = torch.load(converted["mcore"] / "iter_0000000" / "common.pt", weights_only=True)["carebot"]
    assert meta["has_optimizer"] is False and meta["iteration"] == 0 and meta["padded_vocab_size"] == 4096
    assert (converted["mcore"] / "latest").read_text() == "iter_0000000"


@pytest.fixture(scope="module")
def trained(converted, cpt_prefixes, tmp_path_factory) -> Path:
    """`carebot pretrain` at TP=2 x PP=2 (4 processes) for 3 steps, starting from the converted checkpoint."""
    out = tmp_path_factory.mktemp("trained")
    p = cpt_prefixes
    torchrun(4, "pretrain.train", [
        "--config", "tiny_stable_cpt.yaml", "--", f"output_dir={out}",
        f"data.tokenizer={converted['mcore'] / 'tokenizer'}",
        f"data.data_path=[0.5, {p['medical_en']}, 0.3, {p['medical_zh']}, 0.2, {p['general_en']}]",
        "data.seq_length=64", "train.micro_batch_size=2", "train.global_batch_size=8", "train.eval_interval=0",
        "train.tensorboard=false", "train.train_steps=3", "optim.lr=1e-2", "model.ffn_hidden_size=176",
        "parallel.tensor=2", "parallel.pipeline=2", f"checkpoint.init_from={converted['mcore']}"])
    return out


@pytest.fixture(scope="module")
def exported(trained, converted, tmp_path_factory) -> dict:
    """Megatron (TP2 x PP2, trained) -> HF, then verify on held-out text, in one process."""
    d = tmp_path_factory.mktemp("exported")
    rcs, err, _ = convert_calls(
        ["megatron-to-hf", "--megatron", trained / "checkpoints", "--out", d / "hf", "--max-shard-size", "400KB"],
        ["verify", "--hf", d / "hf", "--megatron", trained / "checkpoints", "--summary", d / "verify.json"])
    return {"rcs": rcs, "stderr": err, "hf": d / "hf", "verify": d / "verify.json"}


@pytest.mark.slow  # a 4-process training run plus an export: ~2.5 min on 2 loaded cores
def test_trained_tp2pp2_checkpoint_to_hf(exported, trained, tiny_hf):
    """a TP2 x PP2 checkpoint from `carebot pretrain` exports to an HF dir that
    transformers loads cleanly, with logits, held-out loss and 20 greedy tokens equal to megatron's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pretrain.checkpoint import load_meta, resolve

    assert exported["rcs"] == [0, 0], exported["stderr"][-3000:]
    assert load_meta(resolve(trained / "checkpoints"))["layout"][:2] == [2, 2]  # really written at PP2 x TP2
    hf = exported["hf"]
    index = json.loads((hf / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in hf.iterdir()}
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    tlog = logging.getLogger("transformers")
    tlog.addHandler(handler)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(str(hf), output_loading_info=True, local_files_only=True)
    finally:
        tlog.removeHandler(handler)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert not [r for r in records if r.levelno >= logging.WARNING and "key" in r.getMessage().lower()]
    assert model.config.rope_parameters["rope_theta"] == 500000.0 and model.config.num_key_value_heads == 2
    # the source config's own fields survive training (before: max_position_embeddings fell back to 8192)
    src = json.loads((tiny_hf / "config.json").read_text())
    assert model.config.max_position_embeddings == src["max_position_embeddings"] == 4096
    assert model.config.initializer_range == src["initializer_range"] == 0.1
    tok = AutoTokenizer.from_pretrained(str(hf))
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).count("<|eot_id|>") == 1
    s = json.loads(exported["verify"].read_text())
    r = s["layouts"][0]
    assert s["ok"] and r["max_abs_logit_diff"] < 1e-4, s
    assert abs(r["hf_loss"] - r["megatron_loss"]) < 1e-4 and r["max_abs_loss_diff"] < 1e-4, r
    assert r["greedy_equal"] and r["greedy_tokens"] == 20
    # it trained: the exported weights are not the converted ones
    before, after = tensors_of(tiny_hf), tensors_of(hf)
    assert sorted(before) == sorted(after) and not torch.equal(before["lm_head.weight"], after["lm_head.weight"])


def test_truncated_checkpoint_is_one_clear_line(converted):
    assert converted["truncated_rc"] == 2
    err = [line for line in converted["stderr"].splitlines() if line.startswith("carebot convert: error:")]
    assert len(err) == 1 and "truncated checkpoint shard" in err[0] and converted["shard"] in err[0], err
    assert "Traceback" not in converted["stderr"]
    assert not (converted["dir"] / "never").exists()


def test_non_llama_config_is_one_clear_line(tmp_path, tiny_hf, capsys):
    from pretrain.convert_cli import main

    bad = tmp_path / "gpt2"
    shutil.copytree(tiny_hf, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (bad / "config.json").write_text(json.dumps(cfg))
    assert main(["hf-to-megatron", "--hf", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model_type 'gpt2'" in err[0] and "is not one of LlamaForCausalLM, Qwen2ForCausalLM" in err[0] and "config.json" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("cmd", ["hf-to-megatron", "verify"])
def test_tp_not_dividing_kv_heads_is_one_clear_line(tmp_path, tiny_hf, cmd, capsys):
    from pretrain.convert_cli import main

    args = (["hf-to-megatron", "--hf", str(tiny_hf), "--out", str(tmp_path / "out"), "--tensor", "4"]
            if cmd == "hf-to-megatron" else
            ["verify", "--hf", str(tiny_hf), "--megatron", str(tmp_path), "--layouts", "4x1"])
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["carebot convert: error: tensor parallel size 4 does not divide num_query_groups (KV heads) 2"]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # multi-process / cluster run: the slow set (.ci/run runs it)
def test_init_from_an_hf_dir_takes_its_architecture(tmp_path, tiny_hf, small_tokenizer_dir, cpt_prefixes):
    """`checkpoint.init_from` may be an HF model dir: converted once into the run dir, its architecture read
    from it (stable_cpt.yaml states none: the LLaMA-3-8B defaults never apply); a stated value that disagrees
    is one line naming both (before, the recipe's shape was used and a mismatch was a long traceback)."""
    from tests.helpers import metrics, run_stage

    over = [f"checkpoint.init_from={tiny_hf}", f"data.tokenizer={small_tokenizer_dir}", "data.cache_dir=null",
            f"data.data_path=[{cpt_prefixes['medical_en']}]", "data.seq_length=32", "parallel.tensor=1",
            "parallel.pipeline=1", "parallel.distributed_optimizer=false", "train.train_steps=2",
            "train.micro_batch_size=2", "train.global_batch_size=2", "train.eval_interval=0", "train.tensorboard=false"]
    p = run_stage("pretrain.train", "stable_cpt.yaml", tmp_path / "a", over)
    assert "is an HF model directory: converting it" in p.stdout
    assert "num_layers=2, hidden_size=64, ffn_hidden_size=176, num_attention_heads=4, num_query_groups=2" in p.stdout
    assert [r["step"] for r in metrics(tmp_path / "a")] == [1, 2]
    p = run_stage("pretrain.train", "stable_cpt.yaml", tmp_path / "a",
                  over + ["train.train_steps=3", "checkpoint.override_resume=[train.train_steps]"])  # a longer run
    assert "converting it" not in p.stdout  # converted once, and resumed from its own checkpoint
    bad = run_stage("pretrain.train", "stable_cpt.yaml", tmp_path / "b", over + ["model.num_layers=4"], check=False)
    errors = [l for l in bad.stderr.splitlines() if "error:" in l]
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    assert len(errors) == 1 and "model.num_layers=4" in errors[0] and "num_layers=2" in errors[0], errors


FAMILY = {  # a tiny random checkpoint of each family beyond plain LLaMA-3
    # q/k/v biases, tied embeddings, rope theta 1e6 (before: any non-LLaMA model_type was refused)
    "qwen2": dict(model_type="qwen2", rope_theta=1e6, tie_word_embeddings=True),
    # Llama-3.1 RoPE scaling (before: refused); theta 5e5 at head_dim 16 puts 4 of 8 frequencies in the
    # scaled / smoothed bands, so dropping the scaling moves the logits far beyond the verify tolerance
    "llama3.1": dict(model_type="llama", rope_theta=500000.0, tie_word_embeddings=False, max_position_embeddings=131072,
                     rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
}


def family_hf(out: Path, family: str, tokenizer_dir: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    from carebot.tokenizer import load_tokenizer

    kw = dict(FAMILY[family])
    load_tokenizer(tokenizer_dir).save_pretrained(out)
    (out / "config.json").write_text(json.dumps({"model_type": kw["model_type"]}))  # the tokenizer loads as this family
    tok = load_tokenizer(out)
    torch.manual_seed(1)
    cfg = AutoConfig.for_model(kw.pop("model_type"), vocab_size=len(tok), hidden_size=64, intermediate_size=176,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1,
                               max_position_embeddings=kw.pop("max_position_embeddings", 4096),
                               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **kw)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.5)  # a mis-interleaved bias or swapped norm would show
    model.save_pretrained(out)
    return out


@pytest.mark.parametrize("family", [pytest.param(f, marks=[pytest.mark.slow]) for f in sorted(FAMILY)])
def test_family_round_trip_bitwise_and_logits_parity(tmp_path, small_tokenizer_dir, family):
    """HF -> Megatron -> HF bitwise (config fields kept), and megatron logits equal HF's at TP1, TP2 and PP2."""
    hf = family_hf(tmp_path / family, family, small_tokenizer_dir)
    rcs, err, _ = convert_calls(["hf-to-megatron", "--hf", hf, "--out", tmp_path / "mcore", "--tensor", "2"],
                                ["megatron-to-hf", "--megatron", tmp_path / "mcore", "--out", tmp_path / "back"])
    assert rcs == [0, 0], err[-3000:]
    a, b = tensors_of(hf), tensors_of(tmp_path / "back")
    assert sorted(a) == sorted(b)
    assert any(k.endswith("q_proj.bias") for k in a) == (family == "qwen2")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ca, cb = (json.loads((d / "config.json").read_text()) for d in (hf, tmp_path / "back"))
    for key in ("architectures", "tie_word_embeddings", "rope_parameters", "max_position_embeddings"):
        assert ca[key] == cb[key], key
    p = subprocess.run([sys.executable, "-m", "carebot.cli", "convert", "verify", "--hf", str(hf), "--megatron",
                        str(tmp_path / "mcore"), "--layouts", "1x1,2x1,1x2", "--summary", str(tmp_path / "v.json")],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1].startswith("convert verify: PASS")
    s = json.loads((tmp_path / "v.json").read_text())
    assert [(r["tp"], r["pp"]) for r in s["layouts"]] == [(1, 1), (2, 1), (1, 2)]
    assert all(r["max_abs_logit"] > 1.0 and r["greedy_equal"] for r in s["layouts"])
    if family == "llama3.1":  # the check can see the scaling: the same weights without it are far off
        from transformers import AutoModelForCausalLM

        from pretrain.convert_verify import default_texts

        plain = json.loads((hf / "config.json").read_text())
        plain["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0}
        ids = torch.tensor([load_ids(hf, default_texts(1)[0])[:128]])
        scaled = AutoModelForCausalLM.from_pretrained(hf, attn_implementation="eager")(ids).logits
        (hf / "config.json").write_text(json.dumps(plain))
        unscaled = AutoModelForCausalLM.from_pretrained(hf, attn_implementation="eager")(ids).logits
        assert (scaled - unscaled).abs().max() > 100 * s["tolerance"]


def load_ids(hf: Path, text: str) -> list[int]:
    from carebot.tokenizer import load_tokenizer

    return load_tokenizer(hf)(text)["input_ids"]


@pytest.mark.parametrize("field,value", [("original_max_position_embeddings", 4096), ("high_freq_factor", 2.0)])
def test_llama3_rope_scaling_megatron_cannot_express_is_refused(field, value):
    """megatron-core fixes low/high frequency factors 1/4 and the 8192 original context: anything else is refused
    by name instead of converting to a model that computes different frequencies."""
    from pretrain.llama_mapping import ConvertError, model_config_from_hf

    hf = {"num_attention_heads": 4, "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 176,
          "rope_parameters": {**FAMILY["llama3.1"]["rope_scaling"], "rope_theta": 5e5, field: value}}
    with pytest.raises(ConvertError, match=f"{field}={value!r} \\(megatron-core fixes"):
        model_config_from_hf(hf)
    hf["rope_parameters"][field] = FAMILY["llama3.1"]["rope_scaling"][field]
    assert model_config_from_hf(hf).rope_scaling_factor == 8.0


def test_a_model_that_is_not_the_checkpoints_is_one_line(tmp_path, converted):
    """A recipe that disagrees with the checkpoint: a stated architecture key is refused by name; and where the
    checkpoint records no architecture (an old or foreign one), a wrong shape or tied-vs-untied embeddings
    are one line naming the tensor (and both shapes). Before: a 70-line CheckpointException traceback (torch's
    exception is a BaseException), a KeyError, or, untied into tied, the lm_head silently dropped."""
    bare = tmp_path / "bare"
    shutil.copytree(converted["mcore"], bare)
    common = bare / "iter_0000000" / "common.pt"
    state = torch.load(common, weights_only=True)
    state["carebot"].pop("model")
    torch.save(state, common)
    tok = f"data.tokenizer={converted['mcore'] / 'tokenizer'}"
    export = ["megatron-to-hf", "--out", tmp_path / "never", "--config", "tiny_stable_cpt.yaml", tok,
              "model.ffn_hidden_size=176"]
    rcs, err, _ = convert_calls([*export, "model.rotary_base=10000", "--megatron", converted["mcore"]],
                                [*export, "model.num_query_groups=4", "--megatron", bare],
                                [*export, "model.untie_embeddings=false", "--megatron", bare])
    assert rcs == [2, 2, 2], err[-3000:]
    errors = [line for line in err.splitlines() if "error:" in line]
    assert "Traceback" not in err and len(errors) == 3, err[-3000:]
    assert "model.rotary_base=10000.0 disagrees" in errors[0] and "rotary_base=500000.0" in errors[0]
    assert "decoder.layers.self_attention.linear_qkv.weight" in errors[1] and "[2, 128, 64]" in errors[1] \
        and "(2, 192, 64)" in errors[1]
    assert "has output_layer.weight that this model lacks" in errors[2]
    assert not (tmp_path / "never").exists()
