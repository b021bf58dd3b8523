"""`carebot data bucket`: split curated docs into {medical, general, medical_hq} x {zh, en} jsonl shards.

medical_hq = domain "medical" with DataRater quality >= hq_threshold (BAAI's DataRater card: >= 4 is
"absolutely high quality"; the Boost stage of CPT up-weights it); medical = the other medical docs;
general = the rest. Language from the `lang` field, else detected (CJK share). Shards of at most
`shard_docs` docs: <out>/<bucket>_<lang>/part-00000.jsonl, plus manifest.json with counts per bucket.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from carebot.config import parse_command
from carebot.errors import InputError
from carebot.io import Outputs, iter_jsonl, require_records, write_json
from carebot.text import doc_text, lang_of, record_text

BUCKETS = ("medical", "general", "medical_hq")


def bucket_of(rec: dict[str, Any], hq_threshold: float = 4.0, min_domain_prob: float = 0.5) -> str:
    med = rec.get("domain") == "medical" and float(rec.get("domain_prob", 1.0)) >= min_domain_prob
    if not med:
        return "general"
    return "medical_hq" if float(rec.get("quality", 0.0)) >= hq_threshold else "medical"


def hq_cuts(recs: list[dict[str, Any]], top_frac: float) -> dict[str, float]:
    """Per-language DataRater cut that makes the top `top_frac` of medical docs HQ (scores are not
    comparable across languages when a rater is small or language-skewed)."""
    by_lang: dict[str, list[float]] = defaultdict(list)
    for r in recs:
        if bucket_of(r, float("inf")) != "general":
            by_lang[r["_lang"]].append(float(r.get("quality", 0.0)))
    return {lg: top_cut(q, top_frac) for lg, q in by_lang.items()}


def top_cut(scores, top_frac: float) -> float:
    """The score at or above which the top `top_frac` of `scores` lie."""
    q = sorted(scores)
    return q[min(len(q) - 1, int((1 - top_frac) * len(q)))]


def bucketize(recs: Iterable[dict[str, Any]], out: Path, hq_threshold: float = 4.0, shard_docs: int = 100_000,
              hq_top_frac: float | None = None) -> dict[str, Any]:
    rows = [{**r, "_lang": r.get("lang") if r.get("lang") in ("zh", "en") else lang_of(doc_text(r))} for r in recs]
    cuts = hq_cuts(rows, hq_top_frac) if hq_top_frac else {}
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        lang = r.pop("_lang")
        groups[f"{bucket_of(r, cuts.get(lang, hq_threshold))}_{lang}"].append(r)
    manifest: dict[str, Any] = {"hq_threshold": cuts or hq_threshold, "buckets": {}}
    with Outputs() as outs:  # every shard committed together, the manifest last
        for name, rs in sorted(groups.items()):
            shards = []
            for k in range(0, len(rs), shard_docs):
                p = out / name / f"part-{k // shard_docs:05d}.jsonl"
                for r in rs[k : k + shard_docs]:
                    outs.write(p, r)
                shards.append(str(p.relative_to(out)))
            manifest["buckets"][name] = {"docs": len(rs), "chars": sum(len(doc_text(r)) for r in rs), "shards": shards}
    write_json(out / "manifest.json", manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carebot data bucket", description=__doc__.splitlines()[0])
    ap.add_argument("--input", nargs="+", required=True, help="jsonl with domain (+domain_prob) and quality fields")
    ap.add_argument("--out", required=True)
    ap.add_argument("--hq-threshold", type=float, default=4.0)
    ap.add_argument("--hq-top-frac", type=float, default=None,
                    help="instead of a threshold: the top fraction of medical docs per language is HQ")
    ap.add_argument("--shard-docs", type=int, default=100_000)
    ap.add_argument("--allow-empty", action="store_true", help="an input with no documents is not an error")
    a = parse_command(ap, argv)
    require_records(a.input, a.allow_empty)

    def recs() -> Iterable[dict]:
        for p in a.input:
            for n, r in iter_jsonl(p):
                record_text(r, f"{p}:{n}")
                for k in ("domain_prob", "quality"):
                    if k in r and not isinstance(r[k], (int, float)):
                        raise InputError(f"{p}:{n}: '{k}' is {type(r[k]).__name__}, expected a number")
                yield r

    m = bucketize(recs(), Path(a.out), a.hq_threshold, a.shard_docs, a.hq_top_frac)
    print(json.dumps({k: v["docs"] for k, v in m["buckets"].items()}))
    return 0


if __name__ == "__main__":
    from carebot.cli import script

    script(main, "carebot data bucket")
