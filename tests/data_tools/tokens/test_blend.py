"""carebot data blend: solved weights realise 19:1 / 1:9 (stable) and 1:1 / 4:6 (boost) in megatron-core's
BlendedDataset within 1%, several shards per bucket, per-domain language ratios, too-small buckets reported."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml


from data_tools.tokens.blend import BlendError, BlendSpec, check_blend, main, solve_blend, target_shares
from carebot.io import write_json
from data_tools.tokens.manifest import write_index

# Deliberately lopsided token counts: the weights must correct for them.
SYNTH = {"medical_zh": [40_000], "medical_en": [150_000, 90_000], "general_zh": [12_000], "general_en": [300_000],
         "medical_hq_zh": [25_000], "medical_hq_en": [60_000], "sft_zh": [80_000, 20_000], "sft_en": [15_000]}


def make_bucket_shards(root: Path) -> list[dict]:
    """Real .bin/.idx files of random tokens (known counts) plus the manifests tokenize would write."""
    rng = np.random.default_rng(0)
    out = []
    for bucket, sizes in SYNTH.items():
        for i, n in enumerate(sizes):
            prefix = root / f"{bucket}_{i}_text_document"
            lens = rng.integers(50, 400, size=n // 100)
            lens[-1] += n - lens.sum()  # exact total
            rng.integers(0, 128000, size=n, dtype=np.int32).tofile(str(prefix) + ".bin")
            write_index(str(prefix) + ".idx", lens.astype(np.int32), np.dtype(np.int32))
            m = {"prefix": str(prefix), "bucket": bucket, "documents": len(lens), "tokens": int(n), "complete": True,
                 "lang": {}, "setup": {"suffix_ids": [128001]}}
            write_json(str(prefix) + ".manifest.json", m)
            out.append(m)
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_bucket_shards(tmp_path_factory.mktemp("blend"))


def test_product_rule_matches_appendix_c():
    s = target_shares(BlendSpec(domain_ratio={"medical": 19, "general": 1}, lang_ratio={"zh": 1, "en": 9}))
    assert s == pytest.approx({("medical", "zh"): 0.095, ("medical", "en"): 0.855,
                               ("general", "zh"): 0.005, ("general", "en"): 0.045})


@pytest.mark.parametrize("kind,dom,lang", [("stable", ("medical", "general", 19 / 1), 1 / 9),
                                           ("boost", ("medical_hq", "sft", 1 / 1), 4 / 6)])
def test_blended_dataset_realizes_ratios(shards, kind, dom, lang):
    data_path = solve_blend(shards, kind=kind)
    assert sum(data_path[0::2]) == pytest.approx(1.0)
    used = {Path(p).name.rsplit("_", 3)[0] for p in data_path[1::2]}
    assert used == {f"{dom[0]}_zh", f"{dom[0]}_en", f"{dom[1]}_zh", f"{dom[1]}_en"}
    # within a bucket, shards are weighted by their token counts
    w = dict(zip(map(lambda p: Path(p).name, data_path[1::2]), data_path[0::2]))
    if kind == "stable":
        assert w["medical_en_0_text_document"] / w["medical_en_1_text_document"] == pytest.approx(150 / 90)
    real = check_blend(shards, data_path, seq_length=64, num_samples=20000)
    d, lg = real["domains"], real["langs"]
    assert d[dom[0]] / d[dom[1]] == pytest.approx(dom[2], rel=0.01)
    assert lg["zh"] / lg["en"] == pytest.approx(lang, rel=0.01)
    for (dd, ll), share in target_shares(BlendSpec(**{"stable": dict(domain_ratio={"medical": 19, "general": 1},
                                                                     lang_ratio={"zh": 1, "en": 9}),
                                                      "boost": dict(domain_ratio={"medical_hq": 1, "sft": 1},
                                                                    lang_ratio={"zh": 4, "en": 6})}[kind])).items():
        assert real["buckets"][f"{dd}_{ll}"] == pytest.approx(share, rel=0.01)


def test_per_domain_language_ratios(shards):
    spec = BlendSpec(domain_ratio={"medical": 19, "general": 1},
                     lang_ratio={"medical": {"zh": 1, "en": 9}, "general": {"zh": 1, "en": 1}})
    dp = solve_blend(shards, spec=spec)
    per = {}
    for wt, p in zip(dp[0::2], dp[1::2]):
        key = Path(p).name.rsplit("_", 3)[0]
        per[key] = per.get(key, 0) + wt
    assert per == pytest.approx({"medical_zh": 0.095, "medical_en": 0.855, "general_zh": 0.025, "general_en": 0.025})


def test_cli_writes_fragment_and_reports_short_buckets(shards, tmp_path, capsys):
    root = str(Path(shards[0]["prefix"]).parent)
    out = tmp_path / "stable.yaml"
    assert main(["--kind", "stable", "--manifests", root, "--out", str(out), "--train-tokens", "100000"]) == 0
    frag = yaml.safe_load(out.read_text())
    dp = frag["data"]["data_path"]
    assert dp == solve_blend([s["prefix"] for s in shards], kind="stable")
    # 1M tokens at 9.5% needs 95k medical_zh tokens; there are 40k -> 2.375 epochs, reported, exit 1
    assert main(["--kind", "stable", "--manifests", root, "--out", str(out), "--steps", "100",
                 "--global-batch-size", "10", "--seq-length", "1000"]) == 1
    err = capsys.readouterr().err
    assert "medical_zh needs 2.38 epochs" in err and "medical_en needs 3.56 epochs" in err and "general" not in err
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["buckets"]["medical_zh"]["epochs_needed"] == pytest.approx(2.375)
    # the same numbers straight from a trainer recipe
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train: {train_steps: 100, global_batch_size: 10}\ndata: {seq_length: 1000}\n")
    assert main(["--kind", "stable", "--manifests", root, "--out", str(out), "--recipe", str(recipe)]) == 1
    assert json.loads(out.with_suffix(".json").read_text())["train_tokens"] == 1_000_000
    # a recipe that states only what differs from its `base:` recipe
    child = tmp_path / "child.yaml"
    child.write_text("base: r.yaml\ntrain: {train_steps: 50}\n")
    main(["--kind", "stable", "--manifests", root, "--out", str(out), "--recipe", str(child)])
    assert json.loads(out.with_suffix(".json").read_text())["train_tokens"] == 500_000
    # the paper recipe states only what differs from the run defaults: those are resolved as the trainer does
    main(["--kind", "stable", "--manifests", root, "--out", str(out), "--recipe", "stable_cpt.yaml"])
    assert json.loads(out.with_suffix(".json").read_text())["train_tokens"] == 18000 * 1008 * 4096


def test_missing_bucket_is_an_error(shards):
    with pytest.raises(BlendError, match="sft_en"):
        solve_blend([s for s in shards if s["bucket"] != "sft_en"], kind="boost")
