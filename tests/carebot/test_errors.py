"""One error family: library code raises CareBotError subclasses (a notebook gets an exception, never an exit);
only the command line (`carebot.cli.run`) turns one into `carebot <cmd>: error: <line>` and exit status 2."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from carebot.cli import main as carebot_main
from carebot.cli import run
from carebot.errors import CareBotError, ConfigError, InputError
from carebot.io import read_jsonl

REPO = Path(__file__).resolve().parents[2]


def test_reader_raises_an_exception_not_an_exit(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n{"text": \n')
    with pytest.raises(InputError, match=rf"{bad}:2: not valid JSON") as e:
        list(read_jsonl(bad))
    assert isinstance(e.value, CareBotError) and not isinstance(e.value, SystemExit)
    with pytest.raises(InputError, match="no such input file"):
        list(read_jsonl(tmp_path / "missing.jsonl"))


def test_data_and_eval_library_calls_raise_carebot_errors(tmp_path):
    from data_tools.tokens.blend import BlendError, plan
    from data_tools.tokens.tokenize import expand_inputs
    from eval.benchmarks import load_benchmark
    from eval.contamination import check_contamination

    (tmp_path / "notes.txt").write_text("x")
    calls = [
        (lambda: expand_inputs([str(tmp_path / "nothing-*.jsonl")]), InputError, "no jsonl"),
        (lambda: expand_inputs([str(tmp_path / "notes.txt")]), InputError, "not a .jsonl"),
        (lambda: plan([{"prefix": "/x/medical_zh", "bucket": "medical_zh", "tokens": 5}], "stable"), BlendError,
         "no tokens for bucket"),
        (lambda: load_benchmark("no_such_benchmark"), InputError, "unknown benchmark"),
        (lambda: check_contamination(tmp_path, ["medqa"], "sometimes"), ConfigError, "error|warn|off"),
    ]
    for call, cls, needle in calls:
        with pytest.raises(cls, match=needle) as e:
            call()
        assert isinstance(e.value, CareBotError) and not isinstance(e.value, SystemExit)


def test_every_named_error_class_is_in_the_family():
    from data_tools.tokens.blend import BlendError
    from data_tools.tokens.token_sources import BadInput
    from eval.benchmarks import BenchmarkError
    from eval.contamination import ContaminationError
    from pretrain.checkpoint import CheckpointError
    from pretrain.llama_mapping import ConvertError

    for cls in (BlendError, BadInput, BenchmarkError, ContaminationError, CheckpointError, ConvertError):
        assert issubclass(cls, CareBotError) and not issubclass(cls, SystemExit), cls
    assert issubclass(BlendError, ValueError) and issubclass(BadInput, ValueError)  # old callers' except clauses
    assert issubclass(CheckpointError, RuntimeError)


def _raises_system_exit_outside_main(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    main_blocks = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    inside = {id(x) for b in main_blocks for x in ast.walk(b)}
    return [n.lineno for n in ast.walk(tree) if id(n) not in inside and (
        (isinstance(n, ast.Raise) and n.exc is not None and "SystemExit" in ast.unparse(n.exc))
        or (isinstance(n, ast.ClassDef) and any("SystemExit" in ast.unparse(b) for b in n.bases)))]


def test_no_system_exit_in_library_code():
    bad = {str(p.relative_to(REPO)): lines for top in ("carebot", "data_tools", "pretrain", "alignment", "eval", "launch")
           for p in sorted((REPO / top).rglob("*.py")) if (lines := _raises_system_exit_outside_main(p))}
    assert not bad, f"raise SystemExit in library code (raise a carebot.errors class instead): {bad}"


def test_run_turns_an_error_into_one_line_and_keeps_real_exit_codes(capsys):
    def fails(argv):
        raise InputError("a.jsonl:3: not valid JSON\nsecond line")

    assert run(fails, [], "carebot data x") == 2
    assert capsys.readouterr().err == "carebot data x: error: a.jsonl:3: not valid JSON\n"
    assert run(lambda argv: 1, [], "carebot data x") == 1  # a main's own failure status stays
    assert run(lambda argv: None, [], "carebot data x") == 0
    with pytest.raises(ZeroDivisionError):  # a bug is not a user error: its traceback shows
        run(lambda argv: 1 / 0, [], "carebot data x")


def test_dispatch_prints_one_line(tmp_path, capsys):
    assert carebot_main(["data", "bucket", "--input", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"carebot data bucket: error: {tmp_path / 'none.jsonl'}: no such input file"
    assert not any("Traceback" in line for line in err)


def test_python_dash_m_prints_one_line(tmp_path):
    """`python -m <module>` goes through the same place (`carebot.cli.script`)."""
    p = subprocess.run([sys.executable, "-m", "data_tools.curate.rules", "--input", str(tmp_path / "none.jsonl"),
                        "--out", str(tmp_path / "o"), "--no-progress"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1] == f"carebot data rules: error: {tmp_path / 'none.jsonl'}: no such input file"
    assert "Traceback" not in p.stderr
