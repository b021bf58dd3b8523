"""Every data / eval command takes `--config FILE.yaml` + `key=value` overrides (carebot.config.parse_command):
defaults < YAML (with its `base:` chain) < explicit flags < overrides; unknown keys are one ConfigError line;
the resolved options are saved beside the outputs and rerun to the same result."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from carebot.config import parse_command
from carebot.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def toy() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="carebot data toy")
    ap.add_argument("task", choices=["consult", "pairwise"])
    ap.add_argument("--input", nargs="+", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--rate", type=float, default=0.5)
    ap.add_argument("--bench", action="append", default=[], help="NAME=PATH")
    ap.add_argument("--mode", choices=["a", "b"], default="a")
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--bos", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--judge-model", default="gpt-4o")
    ap.add_argument("--seeds", default="0,1,2")
    return ap


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_precedence_defaults_yaml_flags_overrides(tmp_path):
    write(tmp_path / "base.yaml", "n: 4\nrate: 0.25\nmode: b\n")
    cfg = write(tmp_path / "c.yaml", f"base: base.yaml\ntask: consult\ninput: [a.jsonl]\nout: {tmp_path / 'o'}\n"
                                      "n: 5\njudge: {model: local}\nseeds: [0, 1]\nbench: {medqa: /m}\n")
    a = parse_command(toy(), ["--config", cfg, "--n", "6", "--input", "x.jsonl", "y.jsonl", "rate=0.75", "fast=true"])
    assert (a.task, a.input, a.n, a.rate, a.mode, a.fast, a.bos) == ("consult", ["x.jsonl", "y.jsonl"], 6, 0.75, "b", True, True)
    assert (a.judge_model, a.seeds, a.bench) == ("local", "0,1", ["medqa=/m"])  # nested key, list -> comma list
    # the override beats the flag; a repeated flag replaces the YAML's list; a positional beats the YAML's
    a = parse_command(toy(), ["pairwise", "--config", cfg, "--n", "6", "n=7", "--bench", "x=/x", "bos=false"])
    assert (a.task, a.n, a.bench, a.bos, a.input) == ("pairwise", 7, ["x=/x"], False, ["a.jsonl"])
    # no YAML at all: plain argparse
    a = parse_command(toy(), ["consult", "--input", "i", "--out", str(tmp_path / "p")])
    assert (a.n, a.mode, a.bench, a.config) == (3, "a", [], None)


def test_saved_config_reruns_the_same_options(tmp_path, capsys):
    cfg = write(tmp_path / "c.yaml", "task: consult\ninput: [a.jsonl]\nn: 9\n")
    a = parse_command(toy(), ["--config", cfg, "--out", str(tmp_path / "o"), "--fast", "mode=b", "--no-bos"])
    saved = tmp_path / "o" / "toy.config.yaml"
    err = capsys.readouterr().err
    assert f"[carebot data toy] config -> {saved}:" in err and "  n: 9" in err
    doc = yaml.safe_load(saved.read_text())
    assert doc["n"] == 9 and doc["mode"] == "b" and doc["bos"] is False and "config" not in doc
    b = parse_command(toy(), ["--config", str(saved)])
    assert {k: v for k, v in vars(b).items() if k != "config"} == {k: v for k, v in vars(a).items() if k != "config"}


def test_unknown_key_and_bad_values_name_the_key(tmp_path):
    cfg = write(tmp_path / "c.yaml", "task: consult\ninput: [a]\nout: o\nnn: 1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'nn' in .*c\.yaml; valid keys: task, input, out, n, "):
        parse_command(toy(), ["--config", cfg], save=None)
    good = ["consult", "--input", "a", "--out", "o"]
    for over, needle in (("judge.modle=x", "unknown config key 'judge.modle'"), ("n=1.5", "n: 1.5 is not a valid"),
                         ("mode=c", "mode: 'c' is not one of a, b"), ("fast=maybe", "fast: expected true or false"),
                         ("no_bos=true", "unknown config key 'no_bos'")):
        with pytest.raises(ConfigError, match=needle):
            parse_command(toy(), good + [over], save=None)
    with pytest.raises(ConfigError, match="config not found"):
        parse_command(toy(), good + ["--config", str(tmp_path / "nope.yaml")], save=None)
    with pytest.raises(ConfigError, match=r"--out is required \(on the command line, or as 'out' in --config\)"):
        parse_command(toy(), ["consult", "--input", "a", "out=null"], save=None)
    with pytest.raises(SystemExit):  # a required option given nowhere: argparse's own usage error, as before
        parse_command(toy(), ["consult", "--input", "a"], save=None)


def test_subcommand_from_the_config(tmp_path):
    ap = argparse.ArgumentParser(prog="carebot data domain")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--train", nargs="+", required=True)
    t.add_argument("--seed", type=int, default=0)
    sub.add_parser("apply").add_argument("--model", required=True)
    cfg = write(tmp_path / "d.yaml", "cmd: train\ntrain: [a.jsonl]\nseed: 3\n")
    a = parse_command(ap, ["--config", cfg, "seed=4"], save=None)
    assert (a.cmd, a.train, a.seed) == ("train", ["a.jsonl"], 4)
    a = parse_command(ap, ["train", "--train", "b.jsonl", "--config", cfg], save=None)
    assert (a.cmd, a.train, a.seed) == ("train", ["b.jsonl"], 3)


def _doc_file(data_root: Path, tmp_path: Path) -> Path:
    lines = (data_root / "general" / "wikitext2_paragraphs_en.jsonl").read_text(encoding="utf-8").splitlines()[:60]
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return src


def test_rules_yaml_override_round_trip(data_root, tmp_path):
    from data_tools.curate.rules import main

    src = _doc_file(data_root, tmp_path)
    cfg = write(tmp_path / "rules.yaml", f"input: [{src}]\nout: {tmp_path / 'a'}\nmin-units: 1000\nno_progress: true\n")
    assert main(["--config", cfg, "min_units=80", "pii=drop"]) == 0
    used = json.loads((tmp_path / "a" / "config.json").read_text())  # the command's own config.json stays
    assert used["min_units"] == 80 and used["pii"] == "drop"
    saved = tmp_path / "a" / "rules.config.yaml"
    assert yaml.safe_load(saved.read_text())["min_units"] == 80
    # the saved file reruns the same command (to another directory): the same kept documents
    assert main(["--config", str(saved), f"out={tmp_path / 'b'}"]) == 0
    assert (tmp_path / "b" / "docs.jsonl").read_bytes() == (tmp_path / "a" / "docs.jsonl").read_bytes()
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["totals"] == \
        json.loads((tmp_path / "a" / "summary.json").read_text())["totals"]


def test_eval_report_yaml_override_round_trip(tmp_path):
    from eval.report import main

    run = tmp_path / "run"
    run.mkdir()
    bench = {b: {"acc_mean": acc, "acc_std": 0.01} for b, acc in (("medqa", 0.5), ("mmlu_med", 0.6))}
    (run / "mcq_summary.json").write_text(json.dumps({"model": "m", "model_dir": "/m", "benchmarks": bench}))
    write(tmp_path / "base.yaml", "alpha: 0.01\nbaselines: paper\n")
    cfg = write(tmp_path / "report.yaml", f"base: base.yaml\nruns: [{run}]\nout: {tmp_path / 'r1'}\n")
    assert main(["--config", cfg, "alpha=0.1"]) == 0
    saved = yaml.safe_load((tmp_path / "r1" / "report.config.yaml").read_text())
    assert saved == {"runs": [str(run)], "baselines": "paper", "alpha": 0.1, "out": str(tmp_path / "r1")}
    assert main(["--config", str(tmp_path / "r1" / "report.config.yaml"), "--out", str(tmp_path / "r2")]) == 0
    assert (tmp_path / "r2" / "report.md").read_text() == (tmp_path / "r1" / "report.md").read_text()
    assert "ChatGPT" in (tmp_path / "r1" / "report.md").read_text()  # baselines=paper came from the base file


def test_unknown_key_on_the_command_line_is_one_line(tmp_path):
    cfg = write(tmp_path / "r.yaml", "runs: [x]\nout: o\nalhpa: 0.1\n")
    p = subprocess.run([sys.executable, "-m", "eval.report", "--config", cfg], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.strip().splitlines() == [f"carebot eval report: error: unknown config key 'alhpa' in {cfg}; "
                                             "valid keys: runs, baselines, alpha, out"]
