"""Benchmark loaders: the real normalised files, and every upstream format on small fixture files written here."""
import csv
import json

import pytest

from carebot.errors import InputError
from eval import benchmarks as B
from eval.contamination import ContaminationError, check_contamination, manifest_benchmark


def _raw(data_root, name):
    """The records of a benchmark's file under data_root, read apart from the loader."""
    return [json.loads(x) for x in (data_root / B.get_spec(name).path).read_text(encoding="utf-8").split("\n") if x.strip()]


def test_real_files_sizes_and_filters(data_root):
    # Every record of the file in use loads (../shared/data: MedQA 1273, MMLU-Med 1089 (anatomy 135), MedMCQA 4183,
    # PubMedQA 500 test of 1000; samples/: every subject and both PubMedQA splits, fewer items).
    raw = {n: _raw(data_root, n) for n in ("medqa", "mmlu_med", "medmcqa", "pubmedqa")}
    assert len(B.load_benchmark("medqa")) == len(raw["medqa"])
    mm = B.load_benchmark("mmlu_med")
    assert len(mm) == len(raw["mmlu_med"]) and {it.subject for it in mm} == set(B.MMLU_MED)
    assert len(B.load_benchmark("medmcqa")) == len(raw["medmcqa"])
    pq = B.load_benchmark("pubmedqa")  # the paper's 500 test questions, not the 500 trainval
    n_test = sum(r["split"] == "test" for r in raw["pubmedqa"])
    assert 0 < n_test < len(raw["pubmedqa"]) and len(pq) == n_test
    assert all(it.split == "test" and it.context for it in pq)
    assert {it.options[it.answer] for it in pq} == {"yes", "no", "maybe"}
    n_anatomy = sum(r["subject"] == "anatomy" for r in raw["mmlu_med"])
    assert 0 < n_anatomy < len(raw["mmlu_med"]) and len(B.load_benchmark("mmlu_med", subjects=("anatomy",))) == n_anatomy
    with pytest.raises(B.BenchmarkError, match="no local copy"):
        B.load_benchmark("cmb")


def _csv(path, rows, header=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        if header:
            w.writerow(header)
        w.writerows(rows)


def test_mmlu_cmmlu_ceval_csv_dirs(tmp_path):
    _csv(tmp_path / "mmlu" / "test" / "anatomy_test.csv", [["Which bone?", "Femur", "Tibia", "Ulna", "Radius", "B"]])
    _csv(tmp_path / "mmlu" / "dev" / "anatomy_dev.csv", [["Dev q?", "a", "b", "c", "d", "A"]])
    it = B.load_items(tmp_path / "mmlu", family="mmlu", split="test", subjects=("anatomy",))
    assert [(i.question, i.options["B"], i.answer) for i in it] == [("Which bone?", "Tibia", "B")]
    pool = B.fewshot_pool("mmlu_med", tmp_path / "mmlu", it)
    assert [p.question for p in pool] == ["Dev q?"] and B.sample_fewshot(pool, it[0], 1, 0) == pool
    _csv(tmp_path / "cmmlu" / "test" / "genetics.csv", [["0", "DNA双螺旋结构由谁提出？", "孟德尔", "沃森和克里克", "摩尔根", "达尔文", "B"]],
         header=["", "Question", "A", "B", "C", "D", "Answer"])
    it = B.load_items(tmp_path / "cmmlu", family="cmmlu", split="test", subjects=("genetics",))
    assert it[0].answer == "B" and it[0].options["B"] == "沃森和克里克" and it[0].subject == "genetics"
    spec = B.get_spec("cmmlu_med")
    assert B.description(spec, it[0]).startswith("以下是关于遗传学的单项选择题")
    assert B.doc_to_text(spec, it[0]).endswith("D. 达尔文\n答案：")
    _csv(tmp_path / "ceval" / "val" / "physician_val.csv", [["0", "成人正常血压上限是？", "120/80", "140/90", "160/95", "130/85", "B", ""]],
         header=["id", "question", "A", "B", "C", "D", "answer", "explanation"])
    items = B.load_benchmark("ceval_med", tmp_path / "ceval", subjects=("physician",))
    assert len(items) == 1 and items[0].split == "val" and items[0].answer == "B"
    with pytest.raises(B.BenchmarkError, match="basic_medicine"):  # a missing subject file is named
        B.load_benchmark("ceval_med", tmp_path / "ceval")
    _csv(tmp_path / "bad" / "test" / "anatomy_test.csv", [["q", "a", "b", "c", "d", "Z"]])
    with pytest.raises(B.BenchmarkError, match=r"anatomy_test.csv:1: answer 'Z'"):
        B.load_items(tmp_path / "bad", family="mmlu", split="test", subjects=("anatomy",))


def test_medqa_medmcqa_pubmedqa_upstream(tmp_path):
    p = tmp_path / "phrases_no_exclude_test.jsonl"
    p.write_text(json.dumps({"question": "Q?", "answer": "Tibia", "options": {"A": "Femur", "B": "Tibia", "C": "x", "D": "y"},
                             "meta_info": "step1", "answer_idx": "B"}) + "\n")
    assert B.load_items(p)[0].answer == "B"
    p = tmp_path / "dev.json"  # MedMCQA: JSON lines, cop 1-based
    p.write_text("\n".join(json.dumps({"id": f"m{i}", "question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d",
                                       "cop": i + 1, "subject_name": "Anatomy"}) for i in range(4)) + "\n")
    assert [i.answer for i in B.load_items(p)] == ["A", "B", "C", "D"]
    (tmp_path / "pq").mkdir()
    ori = {"111": {"QUESTION": "Does X help?", "CONTEXTS": ["c1", "c2"], "final_decision": "no"},
           "222": {"QUESTION": "Does Y help?", "CONTEXTS": ["c3"], "final_decision": "maybe"}}
    (tmp_path / "pq" / "ori_pqal.json").write_text(json.dumps(ori))
    (tmp_path / "pq" / "test_ground_truth.json").write_text(json.dumps({"222": "maybe"}))
    items = B.load_benchmark("pubmedqa", tmp_path / "pq" / "ori_pqal.json")
    assert [(i.id, i.answer, i.context) for i in items] == [("pubmedqa-222", "C", "c3")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "options": {"A": "x", "B": "y"}, "answer": "A"}) + "\n{oops\n")
    with pytest.raises(B.BenchmarkError, match=r"bad.jsonl:2"):
        B.load_items(bad)


def test_cmb_exam_json_multi_answer(tmp_path):
    qs = [{"exam_type": "医师考试", "exam_class": "执业医师", "exam_subject": "内科", "question": "下列属于β受体阻滞剂的是",
           "answer": "", "question_type": "多项选择题", "option": {"A": "美托洛尔", "B": "硝苯地平", "C": "普萘洛尔", "D": "卡托普利", "E": ""},
           "id": 0},
          {"exam_type": "医师考试", "exam_class": "执业医师", "exam_subject": "内科", "question": "高血压首选检查",
           "answer": "", "question_type": "单项选择题", "option": {"A": "血压测量", "B": "CT", "C": "MRI", "D": "PET"}, "id": 1}]
    (tmp_path / "q.json").write_text(json.dumps(qs, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "a.json").write_text(json.dumps([{"id": 0, "answer": "CA"}, {"id": 1, "answer": "A"}]))
    items = B.load_benchmark("cmb", tmp_path / "q.json", answers=tmp_path / "a.json")
    assert [(i.answer, i.multi, len(i.options)) for i in items] == [("AC", True, 4), ("A", False, 4)]
    spec = B.get_spec("cmb")
    assert spec.mode == "generate" and "多项选择题" in B.description(spec, items[0])


def test_permute_keeps_gold_text():
    it = B.MCQItem("x", "q", {"A": "a", "B": "b", "C": "c", "D": "d"}, "B")
    for k in range(4):
        p = B.permute(it, k)
        assert p.options[p.answer] == "b" and sorted(p.options.values()) == ["a", "b", "c", "d"]
    assert B.permute(it, 1).options == {"A": "d", "B": "a", "C": "b", "D": "c"}


def test_contamination_guard(tmp_path):
    m = tmp_path / "decontam_manifest.json"
    m.write_text(json.dumps({"benchmarks": {"medqa_usmle_4opt_test": {"n": 3}, "cmb_clin": {"n": 2}, "MMLU-Med": {"n": 0}}}))
    assert manifest_benchmark("cmb_clin") == "cmb_clin" and manifest_benchmark("CMB") == "cmb"
    with pytest.raises(ContaminationError, match=r"medqa \(3 items\)"):
        check_contamination(tmp_path, ["medqa", "mmlu_med"], "error")  # found beside the model
    res = check_contamination(tmp_path, ["medqa"], "warn")
    assert res["overlap"] == {"medqa": 3}
    assert check_contamination(tmp_path, ["mmlu_med", "cmb"], "error")["overlap"] == {}  # n == 0, CMB-Clin != CMB
    assert check_contamination(tmp_path, ["medqa"], "off")["checked"] is False
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(InputError, match="expected"):
        check_contamination("nowhere", ["medqa"], "error", tmp_path / "bad.json")
