"""Domain classifier on real medical vs general text with the offline e5-small encoder (frozen + head)."""
from __future__ import annotations

import random

from data_tools import encoder as E
from data_tools.docs import doc_text
from data_tools.domain import apply, train
from tests.conftest import read_jsonl

MED = ["dialogue/huatuo26m_test_sample.jsonl", "dialogue/toyhom_internal_medicine_qa.jsonl", "dialogue/medquad_en_sample.jsonl",
       "dialogue/cmtmedqa_test.jsonl", "benchmarks/medqa_usmle_4opt_test.jsonl", "benchmarks/medmcqa_dev.jsonl",
       "benchmarks/mmlu_medical_test.jsonl", "benchmarks/pubmedqa_pqal.jsonl"]
GEN = ["general/thucnews_titles_zh.jsonl", "general/cmrc2018_wiki_paragraphs_zh.jsonl", "general/wikitext2_paragraphs_en.jsonl"]
ENC = E.EncoderConfig(max_length=32, batch_size=32)


def corpus(data_root, n_per_file: int = 24) -> tuple[list[str], list[str]]:
    """Real texts: medical = dialogues + benchmark questions, general = news / wiki (seeded sample)."""
    rng = random.Random(0)
    texts, labels = [], []
    for files, lab, k in ((MED, "medical", n_per_file * 3 // 4), (GEN, "general", n_per_file * 2)):
        for f in files:
            recs = list(read_jsonl(data_root / f, 600))
            for r in rng.sample(recs, k):
                texts.append(doc_text({k2: v for k2, v in r.items() if k2 not in ("answer", "long_answer", "context", "contexts")})[:400])
                labels.append(lab)
    return texts, labels


def test_domain_classifier_heldout_accuracy(tmp_path, data_root):
    texts, labels = corpus(data_root)
    assert len(texts) == 8 * 18 + 3 * 48
    rep = train(texts, labels, tmp_path / "dom", ENC, E.HeadConfig(seed=0))
    print("domain", rep)
    assert rep["accuracy"] >= 0.9 and rep["n_test"] >= 55
    assert sum(map(sum, rep["confusion"])) == rep["n_test"]
    out = apply(tmp_path / "dom", [{"text": "患者男，45岁，反复上腹痛三个月，胃镜提示十二指肠溃疡，应如何治疗？"},
                                   {"text": "上证指数周五收涨，沪深两市成交额突破万亿元。"}], progress=False)
    assert [o["domain"] for o in out] == ["medical", "general"] and all(0.5 <= o["domain_prob"] <= 1 for o in out)
