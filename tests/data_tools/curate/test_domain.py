"""Domain classifier on real medical vs general text with the offline e5-small encoder (frozen + head)."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from data_tools.curate import encoder as E
from carebot.text import doc_text
from data_tools.curate.domain import apply, train
from tests.helpers import read_jsonl

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


@pytest.mark.slow  # ~70 s: end-to-end encoder training (the head-only path runs in the default tests)
def test_full_finetuning_saves_reloads_and_retrains(tmp_path, data_root):
    """The paper's recipe (encoder + head trained end to end) on the offline e5-small: the saved encoder is the
    trained one, `apply` reproduces the in-process held-out predictions, and a model re-trained into the same
    dir is not served stale cached embeddings of the first."""
    import torch
    from transformers import AutoModel

    texts, labels = corpus(data_root, n_per_file=8)
    te = E.split(len(texts), 0)[2]  # seed 0's held-out split
    enc = E.EncoderConfig(max_length=32, batch_size=32)
    out = tmp_path / "dom"
    probs = []
    for lr in (1e-4, 2e-4):  # two different models, trained into the same dir
        rep = train(texts, labels, out, enc, E.HeadConfig(finetune=True, finetune_lr=lr, batch_size=16, epochs=2, seed=0))
        print("finetune", rep)
        assert rep["finetune"] and rep["n_test"] == len(te) and rep["accuracy"] >= 0.7
        head, enc_saved, meta = E.load_model(out)
        assert Path(enc_saved.path) == (out / "encoder").resolve()
        got = apply(out, [{"text": texts[i]} for i in te], progress=False)
        assert np.mean([g["domain"] == labels[i] for g, i in zip(got, te)]) == rep["accuracy"]
        # the same probabilities from the saved encoder, embedded here without the cache
        X = E.embed([texts[i] for i in te], enc_saved)
        p = torch.softmax(torch.from_numpy(E.predict(head, X)), -1).numpy().max(1)
        assert np.abs(p - np.array([g["domain_prob"] for g in got])).max() < 1e-3
        probs.append(p)
    assert np.abs(probs[0] - probs[1]).max() > 1e-3  # the second model is a different model
    base = AutoModel.from_pretrained(E.build_offline_encoder()).encoder.layer[0].attention.self.query.weight
    tuned = AutoModel.from_pretrained(out / "encoder").encoder.layer[0].attention.self.query.weight
    assert not torch.equal(base, tuned)


def test_imbalanced_labels_do_not_collapse_to_the_majority(tmp_path, data_root):
    """1 general document for every 6 medical (the demo's sample labels were 53 vs 222): the class-weighted
    head still finds the general ones, judged by balanced accuracy (a majority guesser scores 0.5)."""
    texts, labels = corpus(data_root)
    med = [i for i, lab in enumerate(labels) if lab == "medical"]
    gen = [i for i, lab in enumerate(labels) if lab == "general"][: len(med) // 6]
    keep = sorted(med + gen)
    rep = train([texts[i] for i in keep], [labels[i] for i in keep], tmp_path / "dom", ENC, E.HeadConfig(seed=0))
    print("imbalanced", rep)
    (tn, fp), (fn, tp) = rep["confusion"]  # classes sorted: general, medical
    assert tn + fp >= 3 and rep["balanced_accuracy"] >= 0.8 and tn >= 2, rep
    assert E.balanced_accuracy(np.ones(10, int), np.array([0] * 2 + [1] * 8), 2) == 0.5
