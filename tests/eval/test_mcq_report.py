"""3-seed runs with mean/std; Table-1 report with PNG plots; contamination guard,
end to end through `carebot eval` on real MedQA items and CMMLU/CMB fixtures in their upstream formats."""
import csv
import json
import shutil

import pytest

from eval import benchmarks as B
from carebot.cli import COMMANDS


def eval_main(argv: list[str]) -> int:
    """`carebot eval <cmd> ...` as a library call (errors raise, as from a notebook)."""
    import importlib

    mod, fn = COMMANDS[f"eval {argv[0]}"][0].split(":")
    return getattr(importlib.import_module(mod), fn)(argv[1:])
from eval.contamination import ContaminationError
from eval.judge import aggregate, load_turns


@pytest.fixture(scope="module")
def second_model(tiny_llama3_lm_dir, tmp_path_factory):
    """Another tiny model (different seed) for the paired comparison."""
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("tiny-b")
    shutil.copytree(tiny_llama3_lm_dir, out, dirs_exist_ok=True)
    m = AutoModelForCausalLM.from_pretrained(tiny_llama3_lm_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    m.save_pretrained(out)
    return out


def _fixtures(tmp_path):
    d = tmp_path / "cmmlu" / "test"
    d.mkdir(parents=True)
    for subj in B.CMMLU_MED:  # every medical subject file must be there (a missing one is an error)
      with open(d / f"{subj}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["", "Question", "A", "B", "C", "D", "Answer"])
        for i, (q, o, a) in enumerate([("人体最大的器官是", ["肝", "皮肤", "肺", "心"], "B"),
                                       ("股骨属于", ["长骨", "短骨", "扁骨", "不规则骨"], "A"),
                                       ("心脏有几个腔", ["2", "3", "4", "5"], "C"),
                                       ("胰岛素由哪种细胞分泌", ["α细胞", "β细胞", "δ细胞", "PP细胞"], "B")]):
            w.writerow([i, q, *o, a])  # noqa: E111
    cmb = [{"id": i, "exam_type": "医师考试", "question": q, "question_type": t, "option": dict(zip("ABCD", o)), "answer": a}
           for i, (q, o, a, t) in enumerate([("属于β受体阻滞剂的是", ["美托洛尔", "硝苯地平", "普萘洛尔", "卡托普利"], "AC", "多项选择题"),
                                             ("高血压首选检查", ["血压测量", "CT", "MRI", "PET"], "A", "单项选择题"),
                                             ("糖尿病诊断指标", ["空腹血糖", "血常规", "尿常规", "肝功能"], "A", "单项选择题")])]
    (tmp_path / "cmb.json").write_text(json.dumps(cmb, ensure_ascii=False), encoding="utf-8")
    return ["--path", f"cmmlu_med={tmp_path / 'cmmlu'}", "--path", f"cmb={tmp_path / 'cmb.json'}"]


def test_three_seeds_report_and_plots(tiny_llama3_lm_dir, second_model, tmp_path, data_root):
    paths = _fixtures(tmp_path)
    runs = []
    for name, model in (("tiny-a", tiny_llama3_lm_dir), ("tiny-b", second_model)):
        out = tmp_path / name
        common = ["--model", str(model), "--out", str(out), "--name", name, "--limit", "12", "--seeds", "0,1,2"] + paths
        assert eval_main(["mcq", *common, "--benchmarks", "medqa,cmmlu_med", "--permutations", "1"]) == 0
        # CMB by sampled generation: the three seeds really differ
        assert eval_main(["mcq", *common, "--benchmarks", "cmb", "--temperature", "1.0", "--max-new-tokens", "4"]) == 0
        runs.append(out)
    s = json.loads((runs[0] / "mcq_summary.json").read_text())
    med = s["benchmarks"]["medqa"]
    assert med["n"] == 12 and len(med["runs"]) == 3 and med["deterministic"] and med["acc_std"] == 0.0
    assert "deterministic" in med["randomness"] and 0 <= med["acc_mean"] <= 1
    assert "robustness" in med and len(med["robustness"]["acc"]) == 2  # apart from the headline
    cmb = s["benchmarks"]["cmb"]
    assert cmb["mode"] == "generate" and not cmb["deterministic"] and "sampling" in cmb["randomness"]
    outs = [[json.loads(l)["output"] for l in open(runs[0] / "mcq" / "cmb" / f"seed{k}.items.jsonl")] for k in range(3)]
    assert outs[0] != outs[1] != outs[2]
    assert {"acc_mean", "acc_std"} <= set(cmb) and len(cmb["runs"]) == 3
    md = (runs[0] / "mcq_report.md").read_text()
    assert "± 0.00" in md and "Option-order robustness" in md
    preds = [json.loads(l)["pred"] for l in open(runs[0] / "mcq" / "medqa" / "seed0.items.jsonl")]
    top = max(set(preds), key=preds.count)
    assert (med["top_answer"], med["top_answer_share"]) == (top, preds.count(top) / 12)
    assert f"| {top} {100 * preds.count(top) / 12:.0f}% |" in md  # the report's top-answer column

    # a per-turn judge summary beside run A, in the format eval.judge writes
    turns = load_turns("cmb_clin", data_root / "benchmarks" / "cmb_clin.jsonl", limit=5)
    scores = {f"{t.dialogue}/{t.turn}": {"fluency": 5, "relevance": 5 - t.turn % 3, "completeness": 3, "proficiency": 4}
              for t in turns}
    (runs[0] / "judge_summary.json").write_text(json.dumps({"model": "tiny-a", "kind": "judge",
                                                            "consult": {"cmb_clin": aggregate(turns, scores)}}))
    rep_dir = tmp_path / "report"
    assert eval_main(["report", "--runs", str(runs[0]), str(runs[1]), "--baselines", "paper", "--out", str(rep_dir)]) == 0
    rep = json.loads((rep_dir / "report.json").read_text())
    rows = {r["name"]: r for r in rep["table1"]}
    assert rows["CareBot-Chat (paper)"]["avg5"] == pytest.approx(61.58, abs=0.01)  # the paper's Table 1 average
    assert rows["tiny-a"]["avg5"] is None  # MMLU-Med and C-Eval-Med not run: no fake average
    sig = [x for x in rep["significance"] if x["benchmark"] == "medqa"]
    assert len(sig) == 1 and sig[0]["n"] == 12 and (sig[0]["p"] is None or 0 <= sig[0]["p"] <= 1)
    text = (rep_dir / "report.md").read_text()
    assert "| Models | MedQA | MMLU-Med | CMB | CMMLU-Med | C-Eval-Med | Avg. (5) | MedMCQA | PubMedQA | Avg. (7) |" in text
    assert "Paired t-test" in text and "cmb_clin" in text
    import matplotlib.image as mpimg
    for png in ("mcq_bars.png", "consult_turns.png"):
        img = mpimg.imread(rep_dir / png)  # the PNG opens
        assert img.shape[0] > 200 and img.shape[1] > 300 and img.std() > 0.01


def test_contamination_refuses_then_warns(tiny_llama3_lm_dir, tmp_path, capsys):
    m = tmp_path / "manifest.json"
    m.write_text(json.dumps({"benchmarks": {"MedQA": {"n": 5}}}))
    args = ["mcq", "--model", str(tiny_llama3_lm_dir), "--out", str(tmp_path / "run"), "--benchmarks", "medqa",
            "--limit", "4", "--seeds", "0", "--decontam-manifest", str(m)]
    with pytest.raises(ContaminationError, match="MedQA|medqa"):
        eval_main(args)
    assert not (tmp_path / "run" / "mcq_summary.json").exists()
    assert eval_main(args + ["--contamination", "warn"]) == 0
    assert "CONTAMINATION" in capsys.readouterr().out
    s = json.loads((tmp_path / "run" / "mcq_summary.json").read_text())
    assert s["contamination"]["overlap"] == {"medqa": 5}
    assert "CONTAMINATED" in (tmp_path / "run" / "mcq_report.md").read_text()


def test_pvalue_of_paired_test():
    from eval.report import paired_test
    a = {str(i): 1.0 for i in range(40)}
    b = {str(i): float(i % 4 == 0) for i in range(40)}
    t = paired_test(a, b)
    assert t["n"] == 40 and t["diff"] == pytest.approx(75.0) and t["p"] < 1e-6
    assert paired_test(a, dict(a))["p"] == 1.0
