"""carebot data tokenize: round trip through megatron-core IndexedDataset on real zh/en text, gigatoken == HF
byte for byte, the .idx equals IndexedDatasetBuilder's, kill -9 + rerun is byte-identical, bad input is counted."""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from carebot.errors import ConfigError, InputError
from carebot.text import lang_code, lang_codes
from data_tools.tokens.tokenize import TokenizeConfig, main, run

REPO = Path(__file__).resolve().parents[3]
EOD = 128001  # <|end_of_text|>


def real_texts(root: Path, per_file: int | None = None) -> dict[str, list[str]]:
    """Plain text of every record of every data file (all string fields joined), by file name."""
    skip = {"id", "lang", "source", "split", "domain", "subset", "label", "answer"}

    def leaves(x, key=None):
        if isinstance(x, str):
            if key not in skip and x.strip():
                yield x
        elif isinstance(x, dict):
            for k, v in x.items():
                yield from leaves(v, k)
        elif isinstance(x, list):
            for v in x:
                yield from leaves(v, key)

    out = {}
    for f in sorted(root.glob("*/*.jsonl")):
        with open(f, encoding="utf-8") as fh:
            lines = [ln for _, ln in zip(range(per_file or 10**9), fh)]
        out[f.stem] = ["\n".join(leaves(json.loads(ln))) for ln in lines]
    return out


def write_jsonl(path: Path, texts: list[str], key: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({key: t, "meta": {"n": len(t)}}, ensure_ascii=False) + "\n")
    return path


def read_back(prefix: str) -> list[list[int]]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    return [ds[i].tolist() for i in range(len(ds))]


def test_round_trip_real_zh_en(tmp_path, data_root, llama3_tokenizer, llama3_tokenizer_dir):
    zh = [json.loads(x)["text"] for x in open(data_root / "general/cmrc2018_wiki_paragraphs_zh.jsonl")][:150]
    zh += [json.loads(x)["answer"] for x in open(data_root / "dialogue/huatuo26m_test_sample.jsonl")][:150]
    en = [json.loads(x)["text"] for x in open(data_root / "general/wikitext2_paragraphs_en.jsonl")][:150]
    en += [json.loads(x)["answer"] for x in open(data_root / "dialogue/medquad_en_sample.jsonl")][:150]
    write_jsonl(tmp_path / "in/a.jsonl", zh[:200])
    write_jsonl(tmp_path / "in/b.jsonl", zh[200:] + en)
    (m,) = run(TokenizeConfig(inputs=[str(tmp_path / "in")], output_prefix=str(tmp_path / "out/med"),
                              tokenizer=str(llama3_tokenizer_dir), chunk_mb=1)).values()
    texts = zh + en
    got = read_back(m["prefix"])
    assert len(got) == len(texts) == m["documents"]
    for t, ids in zip(texts, got):
        assert ids == llama3_tokenizer(t)["input_ids"] + [EOD]  # BOS + text + EOD
    assert got[0][0] == 128000 and m["tokens"] == sum(map(len, got))
    assert m["engine"] == "gigatoken"
    assert m["lang"]["zh"]["docs"] == len(zh) and m["lang"]["en"]["docs"] == len(en)
    assert (Path(m["prefix"] + ".report.md")).is_file()


def test_idx_equals_megatron_builder(tmp_path, data_root, llama3_tokenizer_dir):
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    texts = real_texts(data_root, per_file=40)["medquad_en_sample"] + real_texts(data_root, 40)["cmtmedqa_test"]
    write_jsonl(tmp_path / "x.jsonl", texts)
    (m,) = run(TokenizeConfig(inputs=[str(tmp_path / "x.jsonl")], output_prefix=str(tmp_path / "ours"),
                              tokenizer=str(llama3_tokenizer_dir))).values()
    docs = read_back(m["prefix"])
    b = IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=np.int32)
    for d in docs:
        b.add_document(torch.tensor(d), [len(d)])
    b.finalize(str(tmp_path / "ref.idx"))
    assert Path(m["prefix"] + ".idx").read_bytes() == (tmp_path / "ref.idx").read_bytes()
    assert Path(m["prefix"] + ".bin").read_bytes() == (tmp_path / "ref.bin").read_bytes()


def test_gigatoken_output_byte_identical_to_hf(tmp_path, data_root, llama3_tokenizer_dir):
    """On a sample of every data file (the full corpus is checked by the benchmark)."""
    shards = [write_jsonl(tmp_path / f"in/{name}.jsonl", texts)
              for name, texts in real_texts(data_root, per_file=150).items()]
    outs = {}
    for engine in ("gigatoken", "hf"):
        (m,) = run(TokenizeConfig(inputs=[str(s) for s in shards], output_prefix=str(tmp_path / engine),
                                  tokenizer=str(llama3_tokenizer_dir), engine=engine)).values()
        assert m["engine"] == engine
        outs[engine] = m["prefix"]
    for ext in (".bin", ".idx"):
        assert Path(outs["gigatoken"] + ext).read_bytes() == Path(outs["hf"] + ext).read_bytes()


def test_kill9_then_rerun_is_byte_identical(tmp_path, data_root, llama3_tokenizer_dir):
    texts = [t for ts in real_texts(data_root, per_file=400).values() for t in ts]
    shards = [write_jsonl(tmp_path / f"in/s{i:02d}.jsonl", texts[i::8] * 3) for i in range(8)]
    args = ["--input", str(tmp_path / "in"), "--tokenizer-model", str(llama3_tokenizer_dir), "--chunk-mb", "1"]
    assert main(args + ["--output-prefix", str(tmp_path / "ref/c")]) == 0
    prefix = tmp_path / "run/c"
    env = dict(os.environ, RAYON_NUM_THREADS="1")  # slower, so the kill lands mid-run
    proc = subprocess.Popen([sys.executable, "-m", "data_tools.tokens.tokenize", *args, "--output-prefix", str(prefix)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prog = Path(str(prefix) + ".tokenize-progress.json")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if len(json.loads(prog.read_text())["done"]) >= 2:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.02)
    assert proc.poll() is None, "tokenize finished before it could be killed; make the input bigger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(json.loads(prog.read_text())["done"])
    assert 2 <= done < len(shards) and not Path(str(prefix) + "_text_document.idx").exists()
    assert main(args + ["--output-prefix", str(prefix)]) == 0
    for ext in (".bin", ".idx"):
        assert (Path(f"{prefix}_text_document{ext}").read_bytes()
                == Path(f"{tmp_path}/ref/c_text_document{ext}").read_bytes())
    m = json.loads(Path(f"{prefix}_text_document.manifest.json").read_text())
    assert m["documents"] == 3 * len(texts) and not prog.exists()


BAD_LINES = [
    b'{"text": "good one"}',
    b'{"text": "bad \xff\xfe utf8"}',
    b'{"text": "unterminated',
    b'{"text": ""}',
    b'{"body": "no text key"}',
    b'',
    b'{"text": 42}',
    b'{"text": "good two \\u4e2d\\u6587"}',
]


def test_bad_input_counted_and_strict(tmp_path, llama3_tokenizer_dir, llama3_tokenizer):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(BAD_LINES) + b"\n")
    (m,) = run(TokenizeConfig(inputs=[str(bad)], output_prefix=str(tmp_path / "o"),
                              tokenizer=str(llama3_tokenizer_dir))).values()
    assert m["documents"] == 2
    assert m["skipped"] == {"invalid_utf8": 1, "malformed_json": 1, "empty_text 'text'": 1,
                            "missing_key 'text'": 1, "blank_line": 1, "not_text 'text' (int)": 1}
    ex = m["shards"][0]["examples"]
    assert f"{bad}:2: invalid_utf8" in ex and f"{bad}:3: malformed_json" in ex
    assert read_back(m["prefix"])[1] == llama3_tokenizer("good two 中文")["input_ids"] + [EOD]
    with pytest.raises(InputError, match=rf"{bad}:2: invalid_utf8"):
        main(["--input", str(bad), "--output-prefix", str(tmp_path / "s"), "--tokenizer", str(llama3_tokenizer_dir),
              "--strict"])
    # Arrow fast path (clean chunk) reports empty / missing rows with the right line numbers too.
    clean = tmp_path / "clean.jsonl"
    clean.write_text('{"text": "a"}\n{"text": ""}\n{"other": 1}\n{"text": "b"}\n')
    (m,) = run(TokenizeConfig(inputs=[str(clean)], output_prefix=str(tmp_path / "c"),
                              tokenizer=str(llama3_tokenizer_dir))).values()
    assert m["documents"] == 2 and m["shards"][0]["examples"] == [f"{clean}:2: empty_text 'text'",
                                                                   f"{clean}:3: missing_key 'text'"]


def test_megatron_flags_gz_parquet_and_no_bos(tmp_path, data_root, llama3_tokenizer_dir, llama3_tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = real_texts(data_root, per_file=30)["toyhom_internal_medicine_qa"]
    src = write_jsonl(tmp_path / "a.jsonl", texts, key="content")
    with gzip.open(tmp_path / "b.jsonl.gz", "wb") as f:
        f.write(src.read_bytes())
    pq.write_table(pa.table({"content": texts}), tmp_path / "c.parquet", row_group_size=7)
    for name in ("a.jsonl", "b.jsonl.gz", "c.parquet"):
        rc = main(["--input", str(tmp_path / name), "--output-prefix", str(tmp_path / name.split(".")[0]),
                   "--json-keys", "content", "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model",
                   str(llama3_tokenizer_dir), "--append-eod", "--workers", "2", "--no-bos"])
        assert rc == 0
    ref = [llama3_tokenizer(t, add_special_tokens=False)["input_ids"] + [EOD] for t in texts]
    for p in ("a", "b", "c"):
        assert read_back(str(tmp_path / f"{p}_content_document")) == ref
    with pytest.raises(ConfigError, match="split-sentences"):
        main(["--input", str(src), "--output-prefix", str(tmp_path / "x"), "--tokenizer", "x", "--split-sentences"])


def test_chat_template_for_sft_bucket(tmp_path, data_root, llama3_tokenizer_dir, llama3_tokenizer):
    recs = [json.loads(x) for x in open(data_root / "dialogue/cmtmedqa_test.jsonl")][:40]
    recs += [json.loads(x) for x in open(data_root / "dialogue/medquad_en_sample.jsonl")][:20]  # question/answer
    src = tmp_path / "sft.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    (m,) = run(TokenizeConfig(inputs=[str(src)], output_prefix=str(tmp_path / "sft"), chat=True,
                              tokenizer=str(llama3_tokenizer_dir), bucket="sft_zh")).values()
    got = read_back(m["prefix"])
    for r, ids in zip(recs, got):
        msgs = r.get("messages") or [{"role": "user", "content": r["question"]},
                                     {"role": "assistant", "content": r["answer"]}]
        text = llama3_tokenizer.apply_chat_template(msgs, tokenize=False)
        assert ids == llama3_tokenizer(text, add_special_tokens=False)["input_ids"] + [EOD]
        assert ids[0] == 128000 and ids[1] != 128000  # one BOS, from the template
    assert m["bucket"] == "sft_zh" and m["documents"] == len(recs)


def test_rerun_is_up_to_date_and_lang_rule(tmp_path, llama3_tokenizer_dir, capsys):
    import pyarrow as pa

    src = write_jsonl(tmp_path / "t.jsonl", ["hello world", "你好世界", "12345"])
    args = ["--input", str(src), "--output-prefix", str(tmp_path / "o"), "--tokenizer", str(llama3_tokenizer_dir)]
    main(args)
    mtime = os.stat(tmp_path / "o_text_document.bin").st_mtime_ns
    main(args)
    assert "up to date" in capsys.readouterr().err
    assert os.stat(tmp_path / "o_text_document.bin").st_mtime_ns == mtime
    col = pa.array(["阿司匹林 aspirin 用于退热", "The drug aspirin (阿司匹林) lowers fever and relieves mild pain in most adult patients", "---", "x"])
    assert lang_codes(col).tolist() == [0, 1, 2, 1]


def test_one_language_rule_scalar_and_columnar(data_root):
    """The per-text detector (curation, SFT, DPO) and the columnar one (tokenize manifests) agree on real text."""
    import pyarrow as pa

    from carebot.io import read_jsonl
    from carebot.text import doc_text

    texts = [doc_text(r) for rel in ("dialogue/huatuo26m_test_sample.jsonl", "dialogue/medquad_en_sample.jsonl",
                                     "general/thucnews_titles_zh.jsonl", "benchmarks/mmlu_medical_test.jsonl")
             for r in read_jsonl(data_root / rel, limit=200)]
    texts += ["", "1234 ---", "阿司匹林 aspirin", "aspirin 阿司匹林 is an NSAID used for fever and pain"]
    codes = lang_codes(pa.array(texts)).tolist()
    assert codes == [lang_code(t) for t in texts]
    assert {0, 1, 2} <= set(codes)


def test_mismatch_falls_back_to_hf(tmp_path, monkeypatch, llama3_tokenizer_dir, llama3_tokenizer, capsys):
    import gigatoken

    real = gigatoken.Tokenizer.encode_batch_list
    monkeypatch.setattr(gigatoken.Tokenizer, "encode_batch_list",
                        lambda self, xs, **k: [list(ids) + [1] for ids in real(self, xs, **k)])
    src = write_jsonl(tmp_path / "t.jsonl", ["病人，男，49岁。", "fever and cough"])
    (m,) = run(TokenizeConfig(inputs=[str(src)], output_prefix=str(tmp_path / "o"),
                              tokenizer=str(llama3_tokenizer_dir))).values()
    assert m["engine"] == "hf" and "using HF tokenizers" in capsys.readouterr().err
    assert read_back(m["prefix"]) == [llama3_tokenizer(t)["input_ids"] + [EOD] for t in ["病人，男，49岁。", "fever and cough"]]


def test_a_kill_inside_finalize_never_zero_fills_the_bin(tmp_path, data_root, llama3_tokenizer_dir, monkeypatch):
    """A run that dies after `.bin.tmp` -> `.bin` and before the manifest (kill, SIGTERM, disk full) used to be
    'resumed' by re-creating the tmp file zero-filled and renaming it over the good `.bin`: rc 0, all tokens 0,
    `complete: true`. Now the rerun takes the finished `.bin` back and ends byte-identical to a clean run."""
    from data_tools.tokens import tokenize as T

    texts = real_texts(data_root, per_file=40)
    src = [write_jsonl(tmp_path / f"in/{n}.jsonl", t) for n, t in list(texts.items())[:3]]
    args = ["--input", *map(str, src), "--tokenizer", str(llama3_tokenizer_dir)]
    main(args + ["--output-prefix", str(tmp_path / "clean")])
    clean = (tmp_path / "clean_text_document.bin").read_bytes()
    assert any(clean)

    real_write_json = T.write_json

    def die_at_manifest(path, obj, *a, **kw):
        if str(path).endswith(".manifest.json"):
            raise OSError(28, "No space left on device")
        return real_write_json(path, obj, *a, **kw)

    monkeypatch.setattr(T, "write_json", die_at_manifest)
    with pytest.raises(OSError):
        main(args + ["--output-prefix", str(tmp_path / "o")])
    assert (tmp_path / "o_text_document.bin").exists() and not (tmp_path / "o_text_document.manifest.json").exists()
    monkeypatch.setattr(T, "write_json", real_write_json)
    main(args + ["--output-prefix", str(tmp_path / "o")])
    assert (tmp_path / "o_text_document.bin").read_bytes() == clean
    m = json.loads((tmp_path / "o_text_document.manifest.json").read_text())
    assert m["complete"] and m["tokens"] * 4 == len(clean)


def test_up_to_date_only_while_the_outputs_are_intact(tmp_path, llama3_tokenizer_dir, capsys):
    src = write_jsonl(tmp_path / "t.jsonl", ["hello world, the patient is well", "你好世界，患者恢复良好"])
    args = ["--input", str(src), "--output-prefix", str(tmp_path / "o"), "--tokenizer", str(llama3_tokenizer_dir)]
    main(args)
    good = (tmp_path / "o_text_document.bin").read_bytes()
    with open(tmp_path / "o_text_document.bin", "r+b") as f:  # truncated behind the manifest's back
        f.truncate(len(good) // 2)
    capsys.readouterr()
    main(args)
    assert "up to date" not in capsys.readouterr().err
    assert (tmp_path / "o_text_document.bin").read_bytes() == good


def test_document_separator_and_engine_fallback_come_from_the_tokenizer(tmp_path, data_root, chatml_base_tokenizer_dir, capsys):
    """Documents end with `<|endoftext|>` (not the eos `<|im_end|>`), in tokenize and in the trainer's adapter;
    the default engine, which cannot load this tokenizer, falls back to HF tokenizers with one notice."""
    from data_tools.tokens.manifest import read_index
    from carebot.tokenizer import MegatronTokenizerAdapter, load_tokenizer

    src = data_root / "general" / "wikitext2_paragraphs_en.jsonl"
    assert main(["--input", str(src), "--output-prefix", str(tmp_path / "s"), "--tokenizer", str(chatml_base_tokenizer_dir)]) == 0
    err = capsys.readouterr().err
    assert "gigatoken cannot load this tokenizer" in err and "using HF tokenizers" in err
    dtype, lengths, pointers = read_index(tmp_path / "s_text_document.idx")
    ids = np.memmap(tmp_path / "s_text_document.bin", dtype=dtype, mode="r")
    ends = {int(ids[p // dtype.itemsize + n - 1]) for p, n in zip(pointers, lengths)}
    tok = load_tokenizer(chatml_base_tokenizer_dir)
    assert ends == {tok.convert_tokens_to_ids("<|endoftext|>")} == {0}
    assert MegatronTokenizerAdapter(tok, str(chatml_base_tokenizer_dir)).eod == 0  # not eos_token_id 2


def test_every_record_bad_is_an_empty_input(tmp_path, llama3_tokenizer_dir):
    """Random bytes (every record bad) used to exit 0 with a warning under a `complete: true, documents: 0`
    manifest over a 0-byte .bin: nothing usable is treated as empty input."""
    import random

    src = tmp_path / "junk.jsonl"
    src.write_bytes(random.Random(1).randbytes(8192))
    args = ["--input", str(src), "--output-prefix", str(tmp_path / "o"), "--tokenizer", str(llama3_tokenizer_dir)]
    with pytest.raises(InputError, match="no usable records"):
        main(args)
    assert not list(tmp_path.glob("o_*.bin")) and not list(tmp_path.glob("o_*.manifest.json"))
    main(args + ["--allow-empty"])
    m = json.loads((tmp_path / "o_text_document.manifest.json").read_text())
    assert m["complete"] and m["documents"] == 0 and sum(m["skipped"].values()) > 0


def test_a_prefix_left_half_switched_to_another_input_is_redone(tmp_path, llama3_tokenizer_dir, monkeypatch, capsys):
    """The prefix holds input A's complete output; a run for input B (same number of documents) dies between
    writing the .idx and renaming the .bin. A rerun for A used to answer 'up to date' over B's .idx and A's .bin
    (pretrain refused the pair, tokenize kept answering 'up to date'): now it redoes A, and a rerun for B too."""
    from data_tools.tokens import tokenize as T

    a = write_jsonl(tmp_path / "a.jsonl", ["fever and cough for three days", "发热咳嗽三天", "chest pain"])
    b = write_jsonl(tmp_path / "b.jsonl", ["a rash on both arms since last week after a new soap", "头痛", "ok"])
    args = lambda src, pre: ["--input", str(src), "--output-prefix", str(tmp_path / pre), "--tokenizer",
                             str(llama3_tokenizer_dir)]
    for src, pre in ((a, "clean_a"), (b, "clean_b"), (a, "o")):
        main(args(src, pre))
    real_replace = os.replace

    def die_at_bin_rename(src, dst, *k, **kw):
        if str(dst).endswith("_document.bin"):
            raise KeyboardInterrupt  # killed right after the new .idx landed
        return real_replace(src, dst, *k, **kw)

    monkeypatch.setattr(T.os, "replace", die_at_bin_rename)
    with pytest.raises(KeyboardInterrupt):
        main(args(b, "o"))
    monkeypatch.setattr(T.os, "replace", real_replace)
    capsys.readouterr()
    for src, clean in ((a, "clean_a"), (b, "clean_b")):
        main(args(src, "o"))
        assert "up to date" not in capsys.readouterr().err
        for ext in (".bin", ".idx"):
            assert (tmp_path / f"o_text_document{ext}").read_bytes() == (tmp_path / f"{clean}_text_document{ext}").read_bytes()
    main(args(b, "o"))
    assert "up to date" in capsys.readouterr().err


def test_up_to_date_checks_the_outputs_content(tmp_path, llama3_tokenizer_dir, capsys):
    """An output rewritten with other bytes of the same size (its mtime put back) is not vouched for."""
    src = write_jsonl(tmp_path / "t.jsonl", ["hello world, the patient is well", "你好世界，患者恢复良好"])
    args = ["--input", str(src), "--output-prefix", str(tmp_path / "o"), "--tokenizer", str(llama3_tokenizer_dir)]
    main(args)
    binf = tmp_path / "o_text_document.bin"
    good, st = binf.read_bytes(), binf.stat()
    binf.write_bytes(bytes(len(good)))
    os.utime(binf, ns=(st.st_atime_ns, st.st_mtime_ns))
    capsys.readouterr()
    main(args)
    assert "up to date" not in capsys.readouterr().err and binf.read_bytes() == good


def test_same_size_edit_with_mtime_restored_is_redone(tmp_path, llama3_tokenizer_dir, capsys):
    """Input fingerprints were path + size + mtime: an edit that kept the size, with the mtime put back, reused
    the stale output. The content hash (taken in the tokenizing pass) catches it; a touch alone redoes nothing."""
    src = write_jsonl(tmp_path / "t.jsonl", ["the patient has a fever", "患者发热"])
    args = ["--input", str(src), "--output-prefix", str(tmp_path / "o"), "--tokenizer", str(llama3_tokenizer_dir)]
    main(args)
    before = (tmp_path / "o_text_document.bin").read_bytes()
    os.utime(src)  # touched: same bytes
    capsys.readouterr()
    main(args)
    assert "up to date" in capsys.readouterr().err
    st = src.stat()
    src.write_bytes(src.read_bytes().replace(b"fever", b"cough"))
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert src.stat().st_size == st.st_size and src.stat().st_mtime_ns == st.st_mtime_ns
    main(args)
    assert "up to date" not in capsys.readouterr().err
    assert (tmp_path / "o_text_document.bin").read_bytes() != before
