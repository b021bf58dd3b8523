"""MinHash dedup on real text with injected near-duplicates; bucketing into {medical,general,medical_hq} x {zh,en}."""
from __future__ import annotations

import json

from data_tools.curate.bucket import bucketize
from data_tools.curate.dedup import DedupConfig, dedup
from tests.helpers import read_jsonl


def test_dedup_finds_near_duplicates(data_root):
    recs = read_jsonl(data_root / "general" / "cmrc2018_wiki_paragraphs_zh.jsonl", 300)
    recs += read_jsonl(data_root / "general" / "wikitext2_paragraphs_en.jsonl", 300)
    recs = [r for r in recs if len(r["text"]) > 300]
    dups = [{"id": f"dup-{r['id']}", "text": r["text"][:-10] + ("（转载请注明）" if r["lang"] == "zh" else " (reposted)")} for r in recs[::5]]
    kept, removed = dedup(recs + dups, DedupConfig(), progress=False)
    assert {r["id"] for r in removed} == {d["id"] for d in dups}
    assert len(kept) == len(recs)


def test_bucketize(tmp_path):
    recs = [{"id": 1, "text": "高血压患者应规律服药", "domain": "medical", "domain_prob": 0.9, "quality": 4.2},
            {"id": 2, "text": "Aspirin reduces fever.", "domain": "medical", "domain_prob": 0.95, "quality": 2.0},
            {"id": 3, "text": "股市今日上涨", "domain": "general", "quality": 4.9},
            {"id": 4, "text": "Low-confidence medical?", "domain": "medical", "domain_prob": 0.3, "quality": 5}]
    m = bucketize(recs, tmp_path, shard_docs=1)
    assert {k: v["docs"] for k, v in m["buckets"].items()} == {"medical_hq_zh": 1, "medical_en": 1, "general_zh": 1, "general_en": 1}
    assert json.loads((tmp_path / "medical_hq_zh" / "part-00000.jsonl").read_text())["id"] == 1
