"""Every data command x every bad-input class: exit 2, one `error:` line on stderr naming the file (and the line
or key where there is one), no traceback, no output left under a final name. Table-driven, in-process (the
commands' `main` through `carebot.cli.main`, exactly what the console script runs), small files."""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from carebot import cli
from launch.demo.endpoint import LocalEndpoint
from launch.demo.responders import MODELS
from tests.helpers import read_jsonl

DOC = {"id": "d1", "text": "The patient presented with fever and a productive cough for three days; a chest X-ray "
                          "showed a right lower lobe infiltrate, and community-acquired pneumonia was treated."}
DIALOGUE = {"id": "s1", "messages": [{"role": "user", "content": "I have had a headache for two days, what should I do?"},
                                     {"role": "assistant", "content": "Rest, drink water, and see a doctor if it persists."}]}
MCQ = {"id": "q1", "question": "Which vitamin deficiency causes scurvy?",
       "options": {"A": "Vitamin A", "B": "Vitamin C", "C": "Vitamin D", "D": "Vitamin K"}, "answer": "B"}


def _line(rec: dict) -> bytes:
    return (json.dumps(rec, ensure_ascii=False) + "\n").encode()


def _missing_key(rec: dict) -> dict:
    return {"id": rec["id"], "body": "the text is under a key no schema uses"}


def _wrong_type(rec: dict) -> dict:
    key = "messages" if "messages" in rec else "question" if "question" in rec else "text"
    return {**rec, key: 42}


# class -> bytes of the input file given the command's good record (None: not a file, handled below)
INPUTS = {
    "empty": lambda good: b"",
    "invalid_utf8": lambda good: _line(good) + b'{"id": "x", "text": "caf\xe9 \xff"}\n',
    "lone_surrogate": lambda good: _line(good) + b'{"id": "x", "text": "half a pair \\ud800 here"}\n',
    "truncated_line": lambda good: _line(good) + _line(good)[:40],
    "missing_key": lambda good: _line(good) + _line(_missing_key(good)),
    "wrong_type": lambda good: _line(good) + _line(_wrong_type(good)),
    "non_object": lambda good: _line(good) + b'["a", "list"]\n',
    "binary": lambda good: random.Random(0).randbytes(4096),
    # every record bad (none usable): even a command that skips bad records must not exit 0 with empty outputs
    "all_bad": lambda good: _line(_missing_key(good)) + _line(_wrong_type(good)) + b"\xff\xfe not json\n",
    "directory": None,
    "missing_file": None,
    "output_parent_is_file": lambda good: _line(good) * 3,
    "output_is_file": lambda good: _line(good) * 3,
}
# big enough to show a whole-text pass (the 50 MB case of the closing note is the same code path, measured there)
HUGE_MB = 4


@pytest.fixture(scope="module")
def endpoint():
    with LocalEndpoint(MODELS) as ep:
        yield ep


@pytest.fixture(scope="module")
def encoder_models(tmp_path_factory, data_root):
    """A domain classifier and a DataRater trained on a few real docs (frozen offline encoder + head)."""
    from data_tools.curate import datarater, domain, encoder as E

    root = tmp_path_factory.mktemp("heads")
    med = [r["question"] for r in read_jsonl(data_root / "benchmarks" / "medmcqa_dev.jsonl", 20)]
    gen = [r["text"] for r in read_jsonl(data_root / "general" / "wikitext2_paragraphs_en.jsonl", 20)]
    enc = E.EncoderConfig(max_length=32, batch_size=32)
    domain.train(med + gen, ["medical"] * 20 + ["general"] * 20, root / "domain", enc, E.HeadConfig(seed=0))
    datarater.train(med + gen, [4.0] * 20 + [1.0] * 20, root / "rater", enc, E.HeadConfig(seed=0))
    return root


@pytest.fixture(scope="module")
def scorer_dir(tmp_path_factory, small_tokenizer_dir):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from carebot.tokenizer import load_tokenizer

    out = tmp_path_factory.mktemp("scorer")
    torch.manual_seed(0)
    tok = load_tokenizer(small_tokenizer_dir)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _commands(ctx) -> dict[str, tuple[dict, callable]]:
    """name -> (the good record of its schema, argv(input, out))."""
    ep, heads, tok, lm = ctx
    return {
        "rules": (DOC, lambda i, o: ["data", "rules", "--input", i, "--out", o, "--no-progress"]),
        "label": (DOC, lambda i, o: ["data", "label", "--input", i, "--out", o, "--base-url", ep, "--model", "demo-labeler",
                                      "--max-retries", "0", "--no-progress"]),
        "domain-train": (DOC | {"domain": "medical"}, lambda i, o: ["data", "domain", "train", "--train", i, "--out", o]),
        "domain-apply": (DOC, lambda i, o: ["data", "domain", "apply", "--model", heads / "domain", "--input", i, "--out-dir", o]),
        "datarater-train": (DOC | {"quality": 3}, lambda i, o: ["data", "datarater", "train", "--train", i, "--out", o]),
        "datarater-apply": (DOC, lambda i, o: ["data", "datarater", "apply", "--model", heads / "rater", "--input", i, "--out-dir", o]),
        "decontam": (DOC, lambda i, o: ["data", "decontam", "--input", i, "--out", o, "--no-progress"]),
        "dedup": (DOC, lambda i, o: ["data", "dedup", "--input", i, "--out", o]),
        "bucket": (DOC | {"domain": "medical", "quality": 4.5}, lambda i, o: ["data", "bucket", "--input", i, "--out", o]),
        "tokenize": (DOC, lambda i, o: ["data", "tokenize", "--input", i, "--output-prefix", f"{o}/tok", "--tokenizer", tok,
                                         "--engine", "hf", "--workers", "1", "--strict"]),
        "sft-build": (DIALOGUE, lambda i, o: ["data", "sft-build", "--input", i, "--out", o, "--no-decontam", "--no-progress"]),
        "deita": (DIALOGUE, lambda i, o: ["data", "deita", "--input", i, "--complexity-model", lm, "--out", o, "--no-progress"]),
        "confilter": (DIALOGUE, lambda i, o: ["data", "confilter", "--input", i, "--model", lm, "--out", o, "--no-progress"]),
        "dpo-pairs": (MCQ, lambda i, o: ["data", "dpo-pairs", "--mcq", i, "--out", o, "--no-progress"]),
        "curate": (DOC, lambda i, o: ["data", "curate", "--input", i, "--out", o, "--no-decontam"]),
    }


COMMANDS = ["rules", "label", "domain-train", "domain-apply", "datarater-train", "datarater-apply", "decontam", "dedup",
            "bucket", "tokenize", "sft-build", "deita", "confilter", "dpo-pairs", "curate"]
FINAL = ("*.jsonl", "*.bin", "*.idx", "manifest.json", "*.manifest.json", "summary.json", "*.safetensors", "meta.json")


def _finals(out: Path) -> list[Path]:
    return [p for pat in FINAL for p in out.rglob(pat)] if out.is_dir() else []


@pytest.mark.parametrize("bad", list(INPUTS))
@pytest.mark.parametrize("command", COMMANDS)
def test_bad_input_is_one_line_exit_2(command, bad, tmp_path, capsys, endpoint, encoder_models, small_tokenizer_dir,
                                      scorer_dir):
    good, argv = _commands((endpoint.base_url, encoder_models, small_tokenizer_dir, scorer_dir))[command]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out"
    if bad == "directory":
        inp.mkdir()
    elif bad != "missing_file":
        inp.write_bytes(INPUTS[bad](good))
    if bad == "output_parent_is_file":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "out"
    elif bad == "output_is_file":
        out.write_text("x")
    args = [str(a) for a in argv(str(inp), str(out))]
    if bad == "all_bad":  # the lenient mode too: skipping every record leaves nothing usable
        args = [a for a in args if a != "--strict"]
    capsys.readouterr()
    rc = cli.main(args)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if "error:" in l]
    assert rc == 2, f"exit {rc}, stderr: {err[-500:]}"
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    named = str(out if bad.startswith("output") else inp)
    assert named in lines[0] or Path(named).name in lines[0], lines[0]
    if bad in ("invalid_utf8", "lone_surrogate", "truncated_line", "missing_key", "wrong_type", "non_object"):
        assert ":2" in lines[0], f"no line number: {lines[0]}"  # the bad record is line 2
    if not bad.startswith("output"):
        assert not _finals(out), f"outputs left that look complete: {_finals(out)}"


@pytest.mark.parametrize("command", COMMANDS)
def test_huge_document_is_bounded(command, tmp_path, capsys, endpoint, encoder_models, small_tokenizer_dir, scorer_dir):
    """A single multi-MB document: processed (or refused with one line) in bounded time, never a traceback."""
    good, argv = _commands((endpoint.base_url, encoder_models, small_tokenizer_dir, scorer_dir))[command]
    key = "messages" if "messages" in good else "question" if "question" in good else "text"
    big = ("Fever, cough and chest pain in an adult patient. " * (HUGE_MB * 2 ** 20 // 50))
    rec = dict(good)
    if key == "messages":
        rec["messages"] = [good["messages"][0], {"role": "assistant", "content": big}]
    else:
        rec[key] = big
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(_line(good) + _line({**rec, "id": "big"}))
    t0 = time.monotonic()
    rc = cli.main([str(a) for a in argv(str(inp), str(tmp_path / "out"))])
    secs = time.monotonic() - t0
    err = capsys.readouterr().err
    assert "Traceback" not in err and rc in (0, 2), err[-2000:]
    assert secs < 60, f"{command}: {secs:.0f} s on a {HUGE_MB} MB document"
