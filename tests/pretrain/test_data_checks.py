"""The trainer checks its data against its tokenizer before step 1 (before any process group exists): data
tokenized with another tokenizer (both directions), a prefix with no tokens, a `.bin` cut short, a garbage
`.idx`. Each is exit 2 and one line, in-process, with no checkpoint written."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from carebot import cli


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, data_root, small_tokenizer_dir, llama3_tokenizer_dir) -> dict[str, str]:
    """The same real documents tokenized by `carebot data tokenize` with the 4k BPE and with LLaMA-3's 128k."""
    root = tmp_path_factory.mktemp("tok")
    src = data_root / "general" / "wikitext2_paragraphs_en.jsonl"
    out = {}
    for name, tok in (("bpe4k", small_tokenizer_dir), ("llama3", llama3_tokenizer_dir)):
        assert cli.main(["data", "tokenize", "--input", str(src), "--output-prefix", str(root / name), "--tokenizer",
                         str(tok), "--engine", "hf", "--workers", "1"]) == 0
        out[name] = str(root / f"{name}_text_document")
    return out


def _train(tmp_path, tokenizer, prefix, capsys) -> str:
    from pretrain.train import main

    rc = main(["--config", "tiny_stable_cpt.yaml", f"output_dir={tmp_path / 'run'}", f"data.tokenizer={tokenizer}",
               f"data.data_path=[{prefix}]", "data.seq_length=32", "train.micro_batch_size=2", "train.global_batch_size=2",
               "train.train_steps=1", "train.eval_interval=0", "train.tensorboard=false", "data.split=100,0,0"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err[-3000:]
    lines = [l for l in err.splitlines() if "error:" in l]
    assert len(lines) == 1, err[-3000:]
    assert not (tmp_path / "run" / "checkpoints").exists()
    return lines[0]


def test_small_vocab_data_with_the_big_tokenizer(tmp_path, corpora, llama3_tokenizer_dir, capsys):
    line = _train(tmp_path, llama3_tokenizer_dir, corpora["bpe4k"], capsys)
    assert "was tokenized with another tokenizer" in line and corpora["bpe4k"] in line


def test_big_vocab_data_with_the_small_tokenizer(tmp_path, corpora, small_tokenizer_dir, capsys):
    line = _train(tmp_path, small_tokenizer_dir, corpora["llama3"], capsys)
    assert "was tokenized with another tokenizer" in line
    # without its manifest (data tokenized elsewhere): the ids past the vocab give it away
    bare = tmp_path / "bare"
    for s in (".bin", ".idx"):
        shutil.copy(corpora["llama3"] + s, str(bare) + s)
    line = _train(tmp_path, small_tokenizer_dir, bare, capsys)
    assert "holds token id" in line and "has 4096 ids" in line


def test_truncated_bin_garbage_idx_and_empty_prefix(tmp_path, corpora, small_tokenizer_dir, capsys):
    p = tmp_path / "cut"
    for s in (".bin", ".idx", ".manifest.json"):
        shutil.copy(corpora["bpe4k"] + s, str(p) + s)
    with open(str(p) + ".bin", "r+b") as f:
        f.truncate(Path(str(p) + ".bin").stat().st_size - 100)
    assert "bytes, but its .idx describes" in _train(tmp_path, small_tokenizer_dir, p, capsys)
    Path(str(p) + ".idx").write_bytes(b"\x00garbage" * 10)
    assert "not a megatron-core index" in _train(tmp_path, small_tokenizer_dir, p, capsys)
    from data_tools.tokens.manifest import write_index

    import numpy as np

    write_index(str(p) + ".idx", np.zeros(0, np.int32), np.dtype(np.uint16))
    Path(str(p) + ".bin").write_bytes(b"")
    assert "holds no tokens (0 documents)" in _train(tmp_path, small_tokenizer_dir, p, capsys)
