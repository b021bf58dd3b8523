"""Honest `carebot eval mcq` runs: --limit draws a seeded subject-stratified subset and says so, per-benchmark
limits and --subjects, every item the loader drops counted, short CSV rows named by file:line, a skipped
contamination check recorded, and subset scores marked in both reports. Real data via data_dir()."""
import collections
import json
from pathlib import Path

import pytest

from carebot import cli
from carebot.errors import ConfigError
from eval import benchmarks as B
from eval.contamination import SKIPPED, check_contamination
from eval.mcq import describe_items, parse_limits, parse_subjects
from eval.report import SUBSET_NOTE, build_report, mcq_markdown
from tests.eval.test_benchmarks import _csv


def _raw(data_root, name):
    return [json.loads(x) for x in (data_root / B.get_spec(name).path).read_text(encoding="utf-8").splitlines() if x.strip()]


def test_limit_is_a_seeded_stratified_subset_of_real_mmlu_med(data_root):
    raw = _raw(data_root, "mmlu_med")
    per = collections.Counter(r["subject"] for r in raw)
    N, limit = len(raw), 150
    info = {}
    items = B.load_benchmark("mmlu_med", limit=limit, info=info)
    got = collections.Counter(it.subject for it in items)
    assert len(items) == limit and set(got) == set(per)  # every subject present is drawn
    for s, n_s in per.items():
        assert abs(got[s] - limit * n_s / N) < 1, (s, got[s], limit * n_s / N)
    order = [r["id"] for r in raw]  # kept in file order
    assert [it.id for it in items] == [i for i in order if i in {it.id for it in items}]
    assert [it.id for it in B.load_benchmark("mmlu_med", limit=limit)] == [it.id for it in items]  # seed 0 again
    other = B.load_benchmark("mmlu_med", limit=limit, limit_seed=1)
    assert collections.Counter(it.subject for it in other) == got and {it.id for it in other} != {it.id for it in items}
    assert info["n"] == limit and info["n_total"] == N and info["subset"] and info["limit_seed"] == 0
    assert info["subjects"] == dict(got) and info["subjects_total"] == dict(per)
    assert info["dropped"]["split"] == 0 and info["dropped"]["subjects"] == {}
    line = describe_items("mmlu_med", info)
    counts = ", ".join(f"{s} {got[s]}" for s in dict.fromkeys(r["subject"] for r in raw))
    assert line == [f"mmlu_med: seeded (seed 0) subject-stratified subset of {limit} of {N} items ({counts})"]
    full = {}
    assert len(B.load_benchmark("mmlu_med", limit=N + 5, info=full)) == N and not full["subset"]
    assert describe_items("mmlu_med", full) == []


def test_largest_remainder_ties_go_by_subject_name():
    items = [B.MCQItem(f"{s}{i}", "q", {"A": "x", "B": "y"}, "A", subject=s) for s in "cba" for i in range(10)]
    sub = B.stratified_subset(items, 10, seed=3)
    assert collections.Counter(it.subject for it in sub) == {"a": 4, "b": 3, "c": 3}
    none = [B.MCQItem(str(i), "q", {"A": "x", "B": "y"}, "A") for i in range(20)]  # no subject: one stratum
    assert len(B.stratified_subset(none, 7, 0)) == 7
    assert B.stratified_subset(none, 7, 0) == B.stratified_subset(none, 7, 0) != B.stratified_subset(none, 7, 1)
    with pytest.raises(B.BenchmarkError, match="positive"):
        B.stratified_subset(none, 0, 0)


def test_dropped_items_are_counted_per_subject(tmp_path, data_root):
    raw = _raw(data_root, "mmlu_med")
    by = collections.defaultdict(list)
    for r in raw:
        by[r["subject"]].append(r)
    rows = by["anatomy"][:10] + by["clinical_knowledge"][:6]
    rows += [{**r, "id": f"astro-{i}", "subject": "astronomy"} for i, r in enumerate(by["college_biology"][:7])]
    rows += [{**r, "id": f"viro-{i}", "subject": "virology"} for i, r in enumerate(by["medical_genetics"][:3])]
    rows += [{**r, "id": f"dev-{i}", "split": "dev"} for i, r in enumerate(by["anatomy"][10:14])]
    f = tmp_path / "mixed.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    info = {}
    items = B.load_benchmark("mmlu_med", f, info=info)
    assert len(items) == 16 and not info["subset"]
    assert info["dropped"] == {"split": 4, "subjects": {"astronomy": 7, "virology": 3}, "kept_split": "test"}
    assert info["missing_subjects"] == [s for s in B.MMLU_MED if s not in ("anatomy", "clinical_knowledge")]
    lines = describe_items("mmlu_med", info)
    assert lines[0] == ("mmlu_med: dropped 14 items from the file: 4 not in split 'test'; 10 of subjects not evaluated "
                        "(astronomy 7, virology 3)")
    assert lines[1].startswith("mmlu_med: no items for subjects college_biology, college_medicine")
    info = {}  # a --subjects override drops the rest, counted the same way
    assert len(B.load_benchmark("mmlu_med", f, subjects=("anatomy",), info=info)) == 10
    assert info["dropped"]["subjects"] == {"astronomy": 7, "clinical_knowledge": 6, "virology": 3}


def test_subjects_override_applies_or_fails(tmp_path):
    with pytest.raises(B.BenchmarkError, match="pubmedqa's items carry no subject"):  # never silently ignored
        B.load_benchmark("pubmedqa", subjects=("oncology",))
    qs = [{"id": i, "exam_type": "医师考试", "exam_subject": s, "question": f"问题{i}", "question_type": "单项选择题",
           "option": {"A": "是", "B": "否"}, "answer": "A"} for i, s in enumerate(["内科", "外科", "内科"])]
    (tmp_path / "cmb.json").write_text(json.dumps(qs, ensure_ascii=False), encoding="utf-8")
    assert len(B.load_benchmark("cmb", tmp_path / "cmb.json")) == 3  # CMB: no subject list of its own
    info = {}
    assert [it.id for it in B.load_benchmark("cmb", tmp_path / "cmb.json", subjects=("内科",), info=info)] == ["0", "2"]
    assert info["dropped"]["subjects"] == {"外科": 1}


def test_limit_and_subjects_flags_parse():
    assert parse_limits("150") == (150, {})
    assert parse_limits("medqa=100,mmlu_med=150") == (None, {"medqa": 100, "mmlu_med": 150})
    assert parse_limits("150, medqa=100") == (150, {"medqa": 100})
    assert parse_limits(None) == (None, {})
    for bad, needle in (("0", "N > 0"), ("abc", "N > 0"), ("medqa=", "N > 0"), ("nope=3", "unknown benchmark 'nope'"),
                        ("150,200", "given twice"), ("medqa=1,medqa=2", "given twice"), ("-5", "N > 0")):
        with pytest.raises(ConfigError, match=needle):
            parse_limits(bad)
    assert parse_subjects(["cmmlu_med=virology, nutrition", "mmlu_med=anatomy"]) == {
        "cmmlu_med": ("virology", "nutrition"), "mmlu_med": ("anatomy",)}
    for bad, needle in ((["nope=a"], "unknown benchmark 'nope'"), (["mmlu_med"], "BENCH=subject1"),
                        (["mmlu_med="], "BENCH=subject1"), (["mmlu_med=a", "mmlu_med=b"], "given twice")):
        with pytest.raises(ConfigError, match=needle):
            parse_subjects(bad)


def test_bad_flags_are_one_line_exit_2(tmp_path, capsys):
    for flags, needle in ((["--limit", "medqa=abc"], "--limit expects"), (["--subjects", "nope=a"], "unknown benchmark")):
        rc = cli.main(["eval", "mcq", "--model", str(tmp_path), "--out", str(tmp_path / "o"), *flags])
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]  # (parse_command echoes the config above it)
        assert rc == 2 and last.startswith("carebot eval mcq: error: ") and needle in last and "Traceback" not in err


def test_short_csv_rows_name_file_and_line(tmp_path):
    _csv(tmp_path / "cmmlu" / "test" / "genetics.csv", [["0", "DNA双螺旋结构由谁提出？", "孟德尔", "沃森和克里克", "摩尔根", "达尔文", "B"],
                                                        ["1"]], header=["", "Question", "A", "B", "C", "D", "Answer"])
    with pytest.raises(B.BenchmarkError, match=r"genetics\.csv:3: cmmlu row has 1 field\(s\), expected 7"):
        B.load_items(tmp_path / "cmmlu", family="cmmlu", split="test", subjects=("genetics",))
    # line numbers count physical lines: row 1 has a quoted newline, so the bad row starts on line 3
    _csv(tmp_path / "mmlu" / "test" / "anatomy_test.csv", [["Which\nbone?", "a", "b", "c", "d", "A"], ["q", "a", "b", "c", "d"]])
    with pytest.raises(B.BenchmarkError, match=r"anatomy_test\.csv:3: mmlu row has 5 field\(s\), expected 6"):
        B.load_items(tmp_path / "mmlu", family="mmlu", split="test", subjects=("anatomy",))
    _csv(tmp_path / "ceval" / "val" / "physician_val.csv", [["0", "q", "a", "b", "c", "d"]],
         header=["id", "question", "A", "B", "C", "D", "answer", "explanation"])
    with pytest.raises(B.BenchmarkError, match=r"physician_val\.csv:2: ceval row has 6 field\(s\), expected 7"):
        B.load_benchmark("ceval_med", tmp_path / "ceval", subjects=("physician",))


def test_contamination_skipped_is_said_and_recorded(tmp_path, capsys):
    res = check_contamination(tmp_path, ["medqa"], "error")
    assert res["checked"] is False and res["skipped"] == "no manifest"
    assert capsys.readouterr().out.strip() == SKIPPED
    assert check_contamination(tmp_path, ["medqa"], "off")["skipped"] == "policy off"
    assert capsys.readouterr().out == ""  # asked for: no line
    summary = {"model": "m", "model_dir": "d", "contamination": res, "benchmarks": {}}
    assert "**Contamination check skipped**: no decontamination manifest" in mcq_markdown(summary)


def _bench(title, n, n_total, share=0.5, **kw):
    return {"title": title, "lang": "en", "mode": "loglik", "shots": 0, "n": n, "n_total": n_total, "subset": n < n_total,
            "limit_seed": 0 if n < n_total else None, "runs": [{"seed": 0, "n": n, "acc": 0.4, "acc_norm": 0.4}],
            "acc_mean": 0.4, "acc_std": 0.0, "acc_norm_mean": 0.4, "acc_norm_std": 0.0, "deterministic": True,
            "randomness": "deterministic", "top_answer": "A", "top_answer_share": share, **kw}


def test_report_marks_subsets_and_carries_top_answer_warning(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    bs = {"medqa": _bench("MedQA", 1273, 1273), "mmlu_med": _bench("MMLU-Med", 150, 1089, share=0.95,
                                                                   dropped={"split": 0, "subjects": {"astronomy": 7}})}
    (run / "mcq_summary.json").write_text(json.dumps({"model": "m", "model_dir": "d", "kind": "mcq", "benchmarks": bs,
                                                      "contamination": {"skipped": "no manifest"}}))
    md = mcq_markdown(json.loads((run / "mcq_summary.json").read_text()))
    assert "| MMLU-Med | 150 of 1089 (subset) |" in md and "| MedQA | 1273 |" in md
    assert "MMLU-Med: 7 (astronomy 7)" in md and "'A' on 95% of items" in md
    rep = build_report([str(run)], tmp_path / "rep", baselines="paper")
    row = next(r for r in rep["table1"] if r["name"] == "m")
    assert row["subset"] == ["mmlu_med"] and row["n"]["mmlu_med"] == {"n": 150, "n_total": 1089, "subset": True}
    assert row["n"]["medqa"]["subset"] is False and row["top_answer_warnings"] == ["MMLU-Med ('A' on 95% of items)"]
    text = (tmp_path / "rep" / "report.md").read_text()
    line = next(x for x in text.splitlines() if x.startswith("| m |"))
    assert "40.00 † (n 150 of 1089)" in line and line.split(" | ")[1] == "40.00"  # MedQA: full, unmarked
    assert SUBSET_NOTE in text and "m answers one option on >=90% of items" in text
    assert "contamination not checked for m" in text
    paper = next(x for x in text.splitlines() if x.startswith("| CareBot-Chat (paper) |"))
    assert "†" not in paper


def test_mcq_end_to_end_subset_line_and_report(tiny_llama3_lm_dir, tmp_path, capsys, data_root):
    n_mm = len(_raw(data_root, "mmlu_med"))
    out = tmp_path / "run"
    argv = ["eval", "mcq", "--model", str(tiny_llama3_lm_dir), "--out", str(out), "--benchmarks", "medqa,mmlu_med",
            "--limit", "30,medqa=8", "--seeds", "0,1"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"mmlu_med: seeded (seed 0) subject-stratified subset of 30 of {n_mm} items (anatomy " in printed
    assert "medqa: seeded (seed 0) random subset of 8 of " in printed and SKIPPED in printed
    s = json.loads((out / "mcq_summary.json").read_text())
    mm = s["benchmarks"]["mmlu_med"]
    assert (mm["n"], mm["n_total"], mm["subset"], mm["limit_seed"]) == (30, n_mm, True, 0)
    assert sum(mm["subjects"].values()) == 30 and set(mm["subjects"]) == set(B.MMLU_MED)
    assert s["benchmarks"]["medqa"]["n"] == 8 and s["contamination"]["skipped"] == "no manifest"
    fp = json.loads((out / "mcq" / "mmlu_med" / "seed0.json").read_text())["fingerprint"]
    assert (fp["limit"], fp["limit_seed"], fp["sampling"]) == (30, 0, "subject-stratified")
    md = (out / "mcq_report.md").read_text()
    assert f"| MMLU-Med | 30 of {n_mm} (subset) |" in md and "Contamination check skipped" in md
    assert cli.main(argv) == 0  # same settings: resumes
    capsys.readouterr()
    assert cli.main(argv + ["--limit-seed", "1"]) == 2  # another subset must not reuse the stored runs
    assert "holds a run with other settings" in capsys.readouterr().err
    assert cli.main(["eval", "report", "--runs", str(out), "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert f"† (n 30 of {n_mm})" in text and "† (n 8 of " in text and SUBSET_NOTE in text


def test_report_labels_marks_and_one_sampling_wording(tmp_path):
    """Three details a user tripped over in `eval report` over runs from several directories: two runs of one
    model had the same row label; the paper's rows (ChatGPT, ...) were not marked as the paper's inside the
    table; MedQA's subset was "random" in the run's lines but "stratified" in the reports."""
    runs = []
    for where in ("a/run", "b/run"):  # the same model evaluated twice, in two run dirs
        run = tmp_path / where
        run.mkdir(parents=True)
        bs = {"medqa": _bench("MedQA", 8, 1273), "mmlu_med": _bench("MMLU-Med", 30, 1089)}
        bs["mmlu_med"]["subjects"] = {"anatomy": 10, "virology": 20}
        bs["medqa"]["subjects"] = {"": 8}
        (run / "mcq_summary.json").write_text(json.dumps({"model": "m", "model_dir": "d", "kind": "mcq",
                                                          "benchmarks": bs, "contamination": {"skipped": "off"}}))
        runs.append(str(run))
    rep = build_report(runs, tmp_path / "rep", baselines="paper")
    names = [r["name"] for r in rep["table1"]]
    assert "m · a/run" in names and "m · b/run" in names and len(set(names)) == len(names)
    text = (tmp_path / "rep" / "report.md").read_text()
    lines = text.splitlines()
    head = lines.index(next(x for x in lines if x.startswith("| Models | MedQA")))
    table = lines[head + 2: lines.index("", head)]  # Table 1's rows
    paper_rows = [x.split(" | ")[0][2:] for x in table if not x.startswith("| m · ")]
    assert len(table) - len(paper_rows) == 2
    assert "ChatGPT (paper)" in paper_rows and all(x.endswith("(paper)") for x in paper_rows), paper_rows
    assert "(MedQA: random; MMLU-Med: subject-stratified)" in text
    md = mcq_markdown(json.loads((Path(runs[0]) / "mcq_summary.json").read_text()))
    assert "MedQA seed 0: random sample, 8 items" in md and "MMLU-Med seed 0: subject-stratified sample, anatomy 10" in md
