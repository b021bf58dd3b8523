"""Token ids for `carebot data tokenize`: gigatoken (Rust BPE) checked against HF `tokenizers`, the reference,
and the facts HF gives about a tokenizer (the special tokens tokenizer(text) adds, the EOD id, the vocab size)."""
from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

import numpy as np

from carebot.errors import ConfigError

# A few real-looking zh/en strings checked at start-up besides each shard's own first documents.
VERIFY_SAMPLE = ["Hello world! The patient's BP was 120/80 mmHg.", "患者，男，49岁，右下腹疼痛3小时。",
                 "  leading spaces\n\nand\ttabs  ", "混合 mixed 文本 text 123456789 😀", "<|begin_of_text|>x<|eot_id|>"]


def hf_facts(tok_json_path: str, eod_token: str | None, sample: list[str]) -> dict:
    """What HF `tokenizers` says about a tokenizer: the special tokens tokenizer(text) adds around a text, the EOD
    id, the vocab size, and reference ids for `sample`. Run in a spawned process beside gigatoken's own load."""
    import tokenizers

    hf = tokenizers.Tokenizer.from_file(tok_json_path)
    probe = hf.encode("Hello").ids
    bare = hf.encode("Hello", add_special_tokens=False).ids
    at = next(i for i in range(len(probe) - len(bare) + 1) if probe[i:i + len(bare)] == bare)
    out = {"prefix": probe[:at], "suffix": probe[at + len(bare):], "vocab_size": hf.get_vocab_size(True),
           "ids": [e.ids for e in hf.encode_batch(sample, add_special_tokens=False)]}
    try:
        out["eod"] = _eod(hf, Path(tok_json_path).parent, eod_token)
    except ValueError as e:
        out["error"] = str(e)
    return out


def _eod(hf, tok_dir: Path, name: str | None) -> int:
    if name is not None:
        tid = int(name) if name.isdigit() else hf.token_to_id(name)
        if tid is None:
            raise ValueError(f"--eod-token {name!r} is not in the tokenizer's vocabulary")
        return tid
    from carebot.tokenizer import document_separator

    try:
        return document_separator(hf.token_to_id, tok_dir)
    except ConfigError as e:
        raise ValueError(str(e)) from None


class Encoder:
    """Token ids for Arrow string columns, via gigatoken or HF `tokenizers` (the reference).

    With gigatoken, HF `tokenizers` is loaded in a spawned process at the same time (both loads are
    single-threaded, ~1 s each) to give the special tokens and reference ids for the start-up check;
    its ~200 MB never enter this process unless the check fails and HF must do the work."""

    def __init__(self, tok_path: str, engine: str, eod_token: str | None, sample: list[str] = ()):
        p = Path(tok_path)
        tj = p / "tokenizer.json" if p.is_dir() else p
        self.dir = p if p.is_dir() else p.parent
        if not tj.is_file():  # slow / sentencepiece-only directory: let transformers convert it once
            from carebot.tokenizer import load_tokenizer

            tj = Path(tempfile.mkdtemp(prefix="carebot-tok-")) / "tokenizer.json"
            tj.write_text(load_tokenizer(p).backend_tokenizer.to_str())
        self.tok_json = tj.read_bytes()
        self.fingerprint = hashlib.sha256(self.tok_json).hexdigest()
        sample = list(VERIFY_SAMPLE) + list(sample)
        self.engine, self.giga, self.hf = "hf", None, None
        if engine == "hf":
            facts = hf_facts(str(tj), eod_token, [])
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            import data_tools.tokens.encode as this  # picklable by module name even when run as __main__

            from carebot.procs import die_with_parent

            with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=die_with_parent) as pool:
                fut = pool.submit(this.hf_facts, str(tj), eod_token, sample if engine == "auto" else [])
                import gigatoken

                try:
                    self.giga, self.engine = gigatoken.Tokenizer.from_json(self.tok_json), "gigatoken"
                    got = self.giga.encode_batch_list(sample) if engine == "auto" else []
                except Exception as e:  # noqa: BLE001 (a Rust panic surfaces as one of several types)
                    if engine == "gigatoken":
                        raise ConfigError(f"--engine gigatoken cannot load {tj}: {str(e).splitlines()[0][:200]}") from None
                    print(f"[tokenize] gigatoken cannot load this tokenizer ({str(e).splitlines()[0][:120]}): "
                          "using HF tokenizers", file=sys.stderr)
                    self.giga, self.engine, got = None, "hf", []
                facts = fut.result()
            for t, r, g in zip(sample, facts["ids"], got):
                if r != list(g):
                    print(f"[tokenize] gigatoken differs from HF tokenizers on {t[:60]!r}...: "
                          "using HF tokenizers for this run", file=sys.stderr)
                    self.giga, self.engine = None, "hf"
                    break
        if "error" in facts:
            raise ConfigError(facts["error"])
        self.prefix, self.suffix, self.eod = facts["prefix"], facts["suffix"], facts["eod"]
        self.vocab_size = facts["vocab_size"]
        if self.giga is None:
            import tokenizers

            self.hf = tokenizers.Tokenizer.from_str(self.tok_json.decode())

    def encode_hf(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        enc = getattr(self.hf, "encode_batch_fast", self.hf.encode_batch)(texts, add_special_tokens=False)
        lens = np.fromiter((len(e.ids) for e in enc), dtype=np.int64, count=len(enc))
        offs = np.zeros(len(enc) + 1, dtype=np.int64)
        np.cumsum(lens, out=offs[1:])
        flat = np.fromiter((t for e in enc for t in e.ids), dtype=np.uint32, count=int(offs[-1]))
        return flat, offs

    def encode_giga(self, col) -> tuple[np.ndarray, np.ndarray]:
        import awkward as ak
        import pyarrow as pa

        # Zero-copy view of the Arrow column as an awkward string array: no Python str per document.
        big = pa.types.is_large_string(col.type)
        offs = np.frombuffer(col.buffers()[1], dtype=np.int64 if big else np.int32)[col.offset: col.offset + len(col) + 1]
        data = np.frombuffer(col.buffers()[2], dtype=np.uint8) if len(col) else np.zeros(0, np.uint8)
        index = ak.index.Index64(offs.astype(np.int64, copy=False))  # gigatoken takes 64-bit offsets only
        arr = ak.Array(ak.contents.ListOffsetArray(
            index, ak.contents.NumpyArray(data, parameters={"__array__": "char"}), parameters={"__array__": "string"}))
        lay = self.giga.encode_batch(arr).layout
        return np.asarray(lay.content.data), np.asarray(lay.offsets.data, dtype=np.int64)

    def encode(self, col) -> tuple[np.ndarray, np.ndarray]:
        return self.encode_giga(col) if self.giga is not None else self.encode_hf(col.to_pylist())
