"""The demo's data steps: a mixed raw corpus from real data, then curation, SFT data, tokenize and blend."""
from __future__ import annotations

import json
import random
from pathlib import Path

from launch.demo.context import LLM_ITEMS, Ctx, carebot, jl, llm_counts, tokenizer_dir, write_jl


# raw corpus: (file, text fields, docs per source (full, quick)) — medical and general, zh and en, mixed
# together as a general crawl would be; the pipeline has to find the medical part itself.
SOURCES = [
    ("dialogue/medquad_en_sample.jsonl", ("question", "answer"), (600, 150)),
    ("dialogue/huatuo26m_test_sample.jsonl", ("question", "answer"), (600, 150)),
    ("dialogue/toyhom_internal_medicine_qa.jsonl", ("question", "answer"), (600, 150)),
    ("general/wikitext2_paragraphs_en.jsonl", ("text",), (600, 150)),
    ("general/mmlu_nonmedical_en.jsonl", ("text",), (400, 150)),  # in samples/ (fresh clones)
    ("general/cmrc2018_wiki_paragraphs_zh.jsonl", ("text",), (600, 150)),
    ("general/thucnews_titles_zh.jsonl", ("text",), (600, 150)),  # titles -> news digests (see _digests)
]
SFT_SOURCES = {"dialogue/toyhom_internal_medicine_qa.jsonl": "zh", "dialogue/medquad_en_sample.jsonl": "en"}


def _corpus_take(ctx: "Ctx", rel: str, total: int) -> int:
    """How many of a file's items the raw corpus takes: its SOURCES count, and at most half of a file that
    also feeds SFT (the rest is SFT's; samples/ has 300 items where the full set has 3,000)."""
    n_full, n_quick = next(c for r, _, c in SOURCES if r == rel)
    return min(n_quick if ctx.quick else n_full, total // 2 if rel in SFT_SOURCES else total)


TITLES_PER_DIGEST = 6  # one title is ~20 characters, under the rules' 50; six of one class make a news digest


def _digests(rows: list[dict], n: int) -> list[dict]:
    """n titles spread over the (class-sorted) file, joined into digests of one class each: single THUCNews
    titles (~20 characters) all fail the rules' length minimum."""
    picked = rows[:: max(1, len(rows) // n)][:n]
    by_label: dict[str, list[str]] = {}
    for r in picked:
        by_label.setdefault(r.get("label", ""), []).append(str(r["text"]).rstrip("。"))
    return [{"text": "。".join(ts[i : i + TITLES_PER_DIGEST]) + "。"}
            for ts in by_label.values() for i in range(0, len(ts), TITLES_PER_DIGEST)]



SHARDS = 4  # the raw corpus as files: the curation pipeline's unit of work (one task per shard)


def s_corpus(ctx: Ctx) -> dict:
    rows = []
    for rel, keys, (n_full, n_quick) in SOURCES:
        f = ctx.data / rel
        if not f.exists():
            continue
        recs = jl(f)
        n = _corpus_take(ctx, rel, len(recs))
        for i, d in enumerate(_digests(recs, n) if "titles" in rel else recs[:n]):
            text = "\n".join(str(d[k]) for k in keys if d.get(k))
            rows.append({"id": f"{f.stem}-{i}", "text": text, "source": f.stem})
    random.Random(0).shuffle(rows)  # a crawl is not sorted by source: labeling takes a fair sample
    for k in range(SHARDS):
        write_jl(ctx.d("corpus") / f"raw-{k:05d}.jsonl", rows[k::SHARDS])
    return {"docs": len(rows), "sources": len({r["source"] for r in rows}), "shards": SHARDS}


def _raw(ctx: Ctx) -> list[str]:
    return sorted(map(str, (ctx.out / "corpus").glob("raw-*.jsonl")))


def s_rules(ctx: Ctx) -> dict:
    """Rules on the raw shards: the labeling sample is drawn from text that passes them (curate runs them again)."""
    carebot(ctx, "rules", "data", "rules", "--input", *_raw(ctx), "--out", str(ctx.d("rules")), "--workers", "2",
            "--no-progress")
    s = json.loads((ctx.out / "rules" / "summary.json").read_text())["totals"]
    return {"docs": s["docs"], "kept": s["kept"]}


# a real labeler that keeps fewer consistent labels than this per domain cannot train the classifiers
MIN_LABELS_PER_DOMAIN = 5


def s_label(ctx: Ctx) -> dict:
    """The LLM labels the rules' sample (two rounds, keep consistent). When a real model (`--llm serve` / URL)
    keeps too few labels per domain to train the domain classifier and the DataRater on, they are trained on
    the rule-based labeler's labels of the same documents instead, and the counts say so."""
    kept = sorted(str(p) for p in (ctx.out / "rules").rglob("raw-*.jsonl") if "excluded" not in p.parts)
    # a real model may give up on most items: the counts say so, and the demo goes on (below)
    extra = ctx.llm_args() + (["--min-labelled", "0"] if ctx.llm_kind == "model" else [])
    s = _label(ctx, "label", kept, ctx.base_url, ctx.models["label"], ctx.llm_items("label"), extra)
    res = {"labelled": s["items"], "kept_consistent": s["kept"], **{f"kept_{k}": v for k, v in s["kept_by_domain"].items()},
           **llm_counts(s["llm"]), "train_file": str(ctx.out / "label" / "train.jsonl"), "classifiers_trained_on": "label"}
    if ctx.llm_kind == "model" and min(s["kept_by_domain"].get(d, 0) for d in ("medical", "general")) < MIN_LABELS_PER_DOMAIN:
        from launch.demo.endpoint import LocalEndpoint
        from launch.demo.responders import MODELS

        with LocalEndpoint(MODELS) as rules:
            r = _label(ctx, "label_rules", kept, rules.base_url, "demo-labeler", LLM_ITEMS["rules"]["label"][0], [])
        print(f"[demo] {ctx.llm_name} kept {s['kept_by_domain']} consistent labels (< {MIN_LABELS_PER_DOMAIN} per "
              f"domain): the classifiers train on the rule-based labels ({r['kept']} kept)", flush=True)
        res.update(train_file=str(ctx.out / "label_rules" / "train.jsonl"), classifiers_trained_on="label_rules (rule-based)",
                   rules_kept_consistent=r["kept"])
    return res


def _label(ctx: Ctx, step: str, inputs: list[str], base_url: str, model: str, limit: int, extra: list[str]) -> dict:
    carebot(ctx, step, "data", "label", "--input", *inputs, "--out", str(ctx.d(step)), "--base-url", base_url,
            "--model", model, "--limit", str(limit), *extra, "--no-progress")
    return json.loads((ctx.out / step / "summary.json").read_text())


def s_domain(ctx: Ctx) -> dict:
    carebot(ctx, "domain", "data", "domain", "train", "--train", ctx.counts["label"]["train_file"],
            "--out", str(ctx.d("domain") / "model"), "--max-length", "128")
    rep = json.loads((ctx.out / "domain" / "model" / "eval.json").read_text())
    return {"held_out_acc": round(rep["accuracy"], 3), "balanced_acc": round(rep["balanced_accuracy"], 3)}


def s_datarater(ctx: Ctx) -> dict:
    carebot(ctx, "datarater", "data", "datarater", "train", "--train", ctx.counts["label"]["train_file"],
            "--out", str(ctx.d("datarater") / "model"), "--max-length", "128")
    rep = json.loads((ctx.out / "datarater" / "model" / "eval.json").read_text())
    return {"held_out_spearman": round(rep["spearman"], 3), "held_out_mse": round(rep["mse"], 3)}


def s_curate(ctx: Ctx) -> dict:
    """The whole curation as one datatrove pipeline over the raw shards (`carebot data curate`): rules + PII,
    domain + DataRater, decontam (manifest for eval), near-dup across shards, buckets. medical_hq feeds Boost
    CPT. Production: DataRater >= 4 ("absolutely high quality", BAAI's card). The demo's DataRater learnt from a
    few hundred rule-labelled items and its zh and en scales differ, so the top 40% of medical docs in each
    language are HQ."""
    carebot(ctx, "curate", "data", "curate", "--input", *_raw(ctx), "--out", str(ctx.d("curate")),
            "--tasks", str(SHARDS), "--workers", "2", "--domain-model", str(ctx.out / "domain" / "model"),
            "--datarater-model", str(ctx.out / "datarater" / "model"), "--hq-top-frac", "0.4")
    rep = json.loads((ctx.out / "curate" / "report.json").read_text())
    return {**{k.replace("after ", "").replace(" + PII", ""): int(v) for k, v in rep["funnel"].items()},
            **rep["buckets"]}


def buckets(ctx: Ctx) -> list[Path]:
    """The curated bucket folders (medical_zh, general_en, ...) that hold documents."""
    return sorted(p for p in (ctx.out / "curate" / "buckets").iterdir() if p.is_dir() and any(p.glob("*.jsonl")))


HELD_OUT = 20  # the last items of each SFT source: held-out medical text no stage trains on (`eval loss`)


def _sft_take(ctx: Ctx) -> int:
    """SFT dialogues per source. A real base model's quick run trains on 48 and Deita scores each at ~1 s: 60."""
    return (60 if ctx.base_model else 120) if ctx.quick else 400


def s_sft_data(ctx: Ctx) -> dict:
    """Medical dialogues for the Boost CPT 'sft' bucket and for SFT: items after those in the raw corpus; the
    last HELD_OUT of each source are held out (`sft_data/heldout_medical.jsonl`)."""
    rows, held = [], []
    for rel, lang in SFT_SOURCES.items():
        f = ctx.data / rel
        recs = jl(f)
        start = _corpus_take(ctx, rel, len(recs))
        end = min(start + _sft_take(ctx), len(recs) - HELD_OUT)
        for i, d in enumerate(recs[start:end] + recs[len(recs) - HELD_OUT:]):
            rec = {"id": f"{f.stem}-sft-{i}", "lang": lang, "messages": [
                {"role": "user", "content": d["question"]}, {"role": "assistant", "content": d["answer"]}]}
            (rows if i < end - start else held).append(rec)
    for lang in ("zh", "en"):
        write_jl(ctx.d("sft_data") / f"sft_{lang}.jsonl", [r for r in rows if r["lang"] == lang])
    write_jl(ctx.d("sft_data") / "heldout_medical.jsonl", held)
    return {"dialogues": len(rows), "held_out": len(held)}


def s_tokenize(ctx: Ctx) -> dict:
    tok = tokenizer_dir(ctx)
    out = {}
    for b in buckets(ctx):
        carebot(ctx, "tokenize", "data", "tokenize", "--input", str(b), "--tokenizer-model", str(tok),
                "--output-prefix", str(ctx.d("tokens") / b.name), "--bucket", b.name)
        out[b.name] = json.loads(Path(str(ctx.out / "tokens" / b.name) + "_text_document.manifest.json").read_text()).get("tokens")
    for lang in ("zh", "en"):
        carebot(ctx, "tokenize", "data", "tokenize", "--input", str(ctx.out / "sft_data" / f"sft_{lang}.jsonl"),
                "--tokenizer-model", str(tok), "--json-keys", "messages", "--chat",
                "--output-prefix", str(ctx.d("tokens") / f"sft_{lang}"), "--bucket", f"sft_{lang}")
        out[f"sft_{lang}"] = json.loads(Path(str(ctx.out / "tokens" / f"sft_{lang}") + "_messages_document.manifest.json").read_text()).get("tokens")
    return out


def s_blend(ctx: Ctx) -> dict:
    res = {}
    for kind in ("stable", "boost"):
        carebot(ctx, "blend", "data", "blend", "--kind", kind, "--manifests", str(ctx.out / "tokens"),
                "--out", str(ctx.d("blend") / f"{kind}.yaml"), "--max-epochs", "1000")
        import yaml
        dp = yaml.safe_load((ctx.out / "blend" / f"{kind}.yaml").read_text())["data"]["data_path"]
        res[kind] = {Path(p).name.replace("_text_document", "").replace("_messages_document", ""): round(w, 4)
                     for w, p in zip(dp[0::2], dp[1::2])}
    return res
