"""Commit points that cannot lie: two inputs with one file name stay apart, and a rerun after its input or its
config changed redoes the work instead of reusing the old result (rules, decontam, dedup, domain apply)."""
from __future__ import annotations

import json
import shutil

import pytest

from carebot import cli
from tests.helpers import read_jsonl

ZH, EN = "general/cmrc2018_wiki_paragraphs_zh.jsonl", "general/wikitext2_paragraphs_en.jsonl"


@pytest.fixture
def two_parts(tmp_path, data_root):
    """a/part.jsonl (zh wiki) and b/part.jsonl (en wiki): the layout `bucket` writes (medical_zh/part-00000...)."""
    for d, src in (("a", ZH), ("b", EN)):
        (tmp_path / d).mkdir()
        shutil.copy(data_root / src, tmp_path / d / "part.jsonl")
    return [tmp_path / "a" / "part.jsonl", tmp_path / "b" / "part.jsonl"]


def _n(p) -> int:
    return len(read_jsonl(p))


def _run(*argv) -> None:
    assert cli.main([str(a) for a in argv]) == 0


def test_rules_same_basename_two_dirs_keeps_both(tmp_path, two_parts):
    out = tmp_path / "rules"
    _run("data", "rules", "--input", *two_parts, "--out", out, "--no-progress")
    s = json.loads((out / "summary.json").read_text())
    assert s["totals"]["docs"] == _n(two_parts[0]) + _n(two_parts[1])
    assert set(s["per_file"]) == {"a/part.jsonl", "b/part.jsonl"}
    for name in ("a/part.jsonl", "b/part.jsonl"):
        assert _n(out / name) + _n(out / "excluded" / name) == _n(two_parts[0 if name[0] == "a" else 1])


def test_rules_rerun_redoes_after_a_config_or_input_change(tmp_path, data_root, capsys):
    src = tmp_path / "docs.jsonl"
    shutil.copy(data_root / EN, src)
    out = tmp_path / "rules"
    _run("data", "rules", "--input", src, "--out", out, "--no-progress")
    kept = _n(out / "docs.jsonl")
    _run("data", "rules", "--input", src, "--out", out, "--no-progress")  # unchanged: reused
    assert "redoing" not in capsys.readouterr().err
    _run("data", "rules", "--input", src, "--out", out, "--no-progress", "--min-units", "100")
    assert "redoing" in capsys.readouterr().err
    stricter = _n(out / "docs.jsonl")
    assert stricter < kept  # a stricter threshold really ran
    assert json.loads((out / "config.json").read_text())["min_units"] == 100
    extra = read_jsonl(data_root / EN)[:7]
    with open(src, "a", encoding="utf-8") as f:  # documents appended to the input
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in extra)
    _run("data", "rules", "--input", src, "--out", out, "--no-progress", "--min-units", "100")
    s = json.loads((out / "summary.json").read_text())
    assert s["totals"]["docs"] == _n(src) and _n(out / "docs.jsonl") + _n(out / "excluded" / "docs.jsonl") == _n(src)


def test_decontam_and_dedup_keep_same_named_inputs_apart(tmp_path, two_parts):
    dc, dd = tmp_path / "decontam", tmp_path / "dedup"
    _run("data", "decontam", "--input", *two_parts, "--out", dc, "--no-progress")
    m = json.loads((dc / "manifest.json").read_text())
    assert [v["output"] for v in m["inputs"].values()] == ["a/part.jsonl", "b/part.jsonl"]
    for p, name in zip(two_parts, ("a/part.jsonl", "b/part.jsonl")):
        assert _n(dc / name) == m["inputs"][str(p)]["kept"] and m["inputs"][str(p)]["docs"] == _n(p)
    _run("data", "dedup", "--input", dc / "a/part.jsonl", dc / "b/part.jsonl", "--out", dd)
    s = json.loads((dd / "summary.json").read_text())
    assert _n(dd / "a/part.jsonl") + _n(dd / "b/part.jsonl") == s["kept"] and s["docs"] == sum(_n(p) for p in two_parts)


def test_the_same_file_twice_is_refused(tmp_path, two_parts, capsys):
    assert cli.main(["data", "rules", "--input", str(two_parts[0]), str(two_parts[0]), "--out", str(tmp_path / "o")]) == 2
    assert "given twice" in capsys.readouterr().err


def test_domain_apply_redoes_a_changed_input(tmp_path, data_root):
    from data_tools.curate import domain, encoder as E

    med = [r["question"] for r in read_jsonl(data_root / "benchmarks" / "medmcqa_dev.jsonl", 16)]
    gen = [r["text"] for r in read_jsonl(data_root / EN, 16)]
    domain.train(med + gen, ["medical"] * 16 + ["general"] * 16, tmp_path / "dom", E.EncoderConfig(max_length=32), E.HeadConfig(seed=0))
    src = tmp_path / "in" / "docs.jsonl"
    src.parent.mkdir()
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(gen[:5])))
    args = ["data", "domain", "apply", "--model", tmp_path / "dom", "--input", src, "--out-dir", tmp_path / "scored"]
    _run(*args)
    assert _n(tmp_path / "scored" / "docs.jsonl") == 5
    with open(src, "a") as f:
        f.write(json.dumps({"id": 99, "text": med[0]}) + "\n")
    _run(*args)
    out = read_jsonl(tmp_path / "scored" / "docs.jsonl")
    assert len(out) == 6 and out[-1]["id"] == 99 and "domain" in out[-1]
