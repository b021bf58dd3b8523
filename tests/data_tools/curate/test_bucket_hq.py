"""`carebot data bucket --hq-top-frac`: HQ is the top fraction of medical docs per language."""
import json

from data_tools.curate.bucket import bucketize


def test_hq_top_frac_per_language(tmp_path):
    recs = [{"id": f"zh{i}", "text": "患者头痛发热三天" * 5, "domain": "medical", "quality": 3.0 + i / 100} for i in range(10)]
    recs += [{"id": f"en{i}", "text": "The patient has fever. " * 5, "domain": "medical", "quality": 4.0 + i / 10} for i in range(10)]
    recs += [{"id": "g", "text": "The match ended in a draw. " * 5, "domain": "general", "quality": 5.0}]
    m = bucketize(recs, tmp_path, hq_top_frac=0.3)
    docs = {k: v["docs"] for k, v in m["buckets"].items()}
    assert docs == {"medical_hq_zh": 3, "medical_zh": 7, "medical_hq_en": 3, "medical_en": 7, "general_en": 1}
    hq = [json.loads(x)["id"] for x in (tmp_path / "medical_hq_zh" / "part-00000.jsonl").read_text().splitlines()]
    assert sorted(hq) == ["zh7", "zh8", "zh9"]
