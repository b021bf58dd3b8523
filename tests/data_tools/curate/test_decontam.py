"""Every eval item injected into a CPT shard, an SFT file or a DPO file is found; clean real text is kept."""
from __future__ import annotations

import json
import random

import pytest

from data_tools.curate.decontam import DEFAULT_BENCHMARKS, DecontamConfig, Index, decontaminate
from carebot.io import write_jsonl
from tests.helpers import read_jsonl


@pytest.fixture(scope="module")
def index():
    return Index(DecontamConfig())


def _render(name: str, r: dict) -> str:
    """The item as a training set would restate it (different layout from the eval file)."""
    if isinstance(r.get("options"), dict):
        opts = "\n".join(f"({k}) {v}" for k, v in r["options"].items())
        return f"Question: {r['question']}\nOptions:\n{opts}\nAnswer: {r['answer']}"
    if name == "pubmedqa":
        return f"{r['context']}\nQ: {r['question']} A: {r['answer']}. {r.get('long_answer', '')}"
    if "qa_pairs" in r:
        return r["description"] + "\n" + "\n".join(q["question"] + "\n" + q["answer"] for q in r["qa_pairs"])
    if "messages" in r:
        return "\n".join(m["content"] for m in r["messages"])
    return f"问：{r['question']}\n答：{r['answer']}"


# toyhom (Chinese QA) is left out of the clean set on purpose: a few of its answers share 25+-character
# template sentences with Huatuo-26M test answers (same QA sites), which decontam rightly flags.
def _run(tmp_path, data_root, index, stride: int):
    rng = random.Random(0)
    clean = [r["text"] for f in ("general/wikitext2_paragraphs_en.jsonl", "general/cmrc2018_wiki_paragraphs_zh.jsonl")
             for r in read_jsonl(data_root / f)][::stride]
    clean_med = [r["question"] + "\n" + r["answer"] for f in ("dialogue/medquad_en_sample.jsonl",)
                 for r in read_jsonl(data_root / f)][::stride]
    cpt, sft, dpo, injected = [], [], [], {}
    for name in ("medqa", "medmcqa", "mmlu_med", "pubmedqa", "cmb_clin", "cmtmedqa"):
        for r in list(read_jsonl(data_root / DEFAULT_BENCHMARKS[name]))[::stride]:
            doc_id = f"inj-{name}-{r['id']}"
            injected[doc_id] = name
            body = _render(name, r)
            k = len(injected) % 3
            if k == 0:  # CPT: the item pasted into real text
                c = rng.choice(clean)
                cut = rng.randint(0, len(c))
                cpt.append({"id": doc_id, "text": c[:cut] + "\n" + body + "\n" + c[cut:]})
            elif k == 1:  # SFT dialogue
                sft.append({"id": doc_id, "messages": [{"role": "user", "content": body}, {"role": "assistant", "content": "好的。"}]})
            else:  # DPO pair
                dpo.append({"id": doc_id, "prompt": body, "chosen": "Answer with reasoning.", "rejected": "No idea."})
    cpt += [{"id": f"clean-{i}", "text": t} for i, t in enumerate(clean)]
    sft += [{"id": f"cleanmed-{i}", "messages": [{"role": "user", "content": t}]} for i, t in enumerate(clean_med)]
    for n, recs in (("cpt.jsonl", cpt), ("sft.jsonl", sft), ("dpo.jsonl", dpo)):
        write_jsonl(tmp_path / "in" / n, recs)
    m = decontaminate([tmp_path / "in" / n for n in ("cpt.jsonl", "sft.jsonl", "dpo.jsonl")], tmp_path / "out", index, progress=False)
    removed = {r["id"] for r in m["removed"]}
    missed = set(injected) - removed
    assert not missed, sorted(missed)[:5]
    false_pos = removed - set(injected)
    assert not false_pos, [r for r in m["removed"] if r["id"] in false_pos][:3]
    kept = [json.loads(l)["id"] for n in ("cpt.jsonl", "sft.jsonl", "dpo.jsonl") for l in open(tmp_path / "out" / n, encoding="utf-8")]
    assert len(kept) == len(clean) + len(clean_med)
    for name in ("medqa", "medmcqa", "mmlu_med", "pubmedqa", "cmb_clin", "cmtmedqa"):
        b = m["benchmarks"][name]
        # every injected item is reported (a few more too: eval items that share 13-grams with each other)
        want = {iid.removeprefix(f"inj-{name}-") for iid, bn in injected.items() if bn == name}
        assert want <= set(b["overlapping_items"]), name
    saved = json.loads((tmp_path / "out" / "manifest.json").read_text())
    n_huatuo = len(read_jsonl(data_root / DEFAULT_BENCHMARKS["huatuo26m"]))  # 3000 in ../shared/data, 300 in samples/
    assert saved["benchmarks"]["huatuo26m"]["n_items"] == n_huatuo and len(saved["removed"]) == len(injected)


def test_inject_sample_cpt_sft_dpo(tmp_path, data_root, index):
    """Every 8th item of each eval set (default run; the slow test injects all of them: 8,763 in ../shared/data)."""
    _run(tmp_path, data_root, index, stride=8)


@pytest.mark.slow
def test_inject_every_item_cpt_sft_dpo(tmp_path, data_root, index):
    _run(tmp_path, data_root, index, stride=1)


def test_a_long_document_is_matched_in_windows_across_their_seams(index, data_root, monkeypatch):
    """A long text is matched window by window (bounded memory); an eval item planted across every seam of
    small windows is still found, exactly as with one window over the whole text."""
    from data_tools.curate import decontam as D

    filler = " ".join(r["text"] for r in read_jsonl(data_root / "general/wikitext2_paragraphs_en.jsonl", 40))
    items = read_jsonl(data_root / "benchmarks/medqa_usmle_4opt_test.jsonl", 30)
    text = "\n".join(filler[i * 3000:(i + 1) * 3000] + "\n" + _render("medqa", it) for i, it in enumerate(items[:10]))
    whole = index.match(text)
    assert len(whole) >= 10
    for w in (37, 101, 500):
        monkeypatch.setattr(D, "WINDOW", w)
        assert index.match(text) == whole
