"""`carebot data tokenize`: jsonl / jsonl.gz / parquet shards -> megatron-core `.bin/.idx` + a token manifest.

A drop-in for Megatron-LM's `tools/preprocess_data.py` (same flags, same `{prefix}_{key}_document.bin/.idx` names)
that is an order of magnitude faster: gigatoken (Rust BPE, checked against HF `tokenizers` on a sample of every
shard) encodes Arrow string columns parsed in C++, numpy lays out BOS + text + EOD, and no torch is imported.

Resumable: shards are appended in order to `.bin.tmp`; after each shard a progress file records the byte and
document ends and the shard's sha256 (hashed in the pass that reads it), so a rerun after kill -9 truncates to the
last finished shard and carries on (byte-identical).

Commit order: a run that is not up to date first removes the prefix's old manifest, then writes `.bin.tmp`, the
`.idx`, renames the `.bin`, and writes the manifest last, with the size and sha256 of both outputs and of every
input. "Up to date" is answered only when all of them still hold (a file whose stat key changed is hashed
again), so no kill leaves a complete manifest over a mixed or half-renamed pair."""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from carebot.commit import fingerprint, stat_key, unchanged
from carebot.config import parse_command
from carebot.errors import ConfigError, InputError
from carebot.io import require_records, write_json
from carebot.text import lang_codes
from data_tools.sft.formats import sft_from_record
from data_tools.tokens.encode import Encoder
from data_tools.tokens.manifest import optimal_dtype, write_index

LANGS = ("zh", "en", "other")


@dataclass(kw_only=True)
class TokenizeConfig:
    inputs: list[str]
    output_prefix: str
    tokenizer: str
    json_keys: list[str] = field(default_factory=lambda: ["text"])
    bos: bool = True  # the tokenizer's own special prefix/suffix, exactly as tokenizer(text) adds them
    append_eod: bool = True  # one EOD after every document (Megatron needs --append-eod for this)
    eod_token: str | None = None  # default: <|end_of_text|> if the vocab has it, else the eos token
    engine: str = "auto"  # auto (gigatoken, verified; HF on mismatch) | gigatoken | hf
    chat: bool = False  # render dialogues with the tokenizer's chat template (Boost-stage SFT bucket)
    strict: bool = False  # fail at the first bad record with file:line instead of counting it
    chunk_mb: int = 16  # bounded working set per chunk, whatever the shard size
    verify_docs: int = 256  # documents checked gigatoken == HF tokenizers at start-up
    bucket: str | None = None  # e.g. medical_zh; recorded in the manifest for `carebot data blend`
    allow_empty: bool = False  # empty inputs are not an error


# ---------------------------------------------------------------------------------------------- layout
def assemble(flat: np.ndarray, offs: np.ndarray, prefix: list[int], suffix: list[int],
             dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """prefix + tokens + suffix per document, as one array for the .bin, and the per-document lengths."""
    lens = np.diff(offs) + len(prefix) + len(suffix)
    if not prefix and not suffix:
        return flat.astype(dtype, copy=False), lens.astype(np.int32)
    out = np.empty(int(lens.sum()), dtype=dtype)
    starts = np.cumsum(lens) - lens
    content = np.ones(len(out), dtype=bool)
    for j, t in enumerate(prefix):
        out[starts + j] = t
        content[starts + j] = False
    ends = starts + lens
    for j, t in enumerate(suffix):
        out[ends - len(suffix) + j] = t
        content[ends - len(suffix) + j] = False
    out[content] = flat
    return out, lens.astype(np.int32)


# ---------------------------------------------------------------------------------------------- inputs
def expand_inputs(patterns: list[str]) -> list[Path]:
    out: list[Path] = []
    for pat in patterns:
        p = Path(pat)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and _is_shard(q))
        else:
            found = sorted(Path(q) for q in glob.glob(pat)) if any(c in pat for c in "*?[") else [p]
        if not found:
            raise InputError(f"--input {pat}: no jsonl / jsonl.gz / parquet files found")
        for q in found:
            if not q.is_file():
                raise InputError(f"--input {q}: file not found")
            if not _is_shard(q):
                raise InputError(f"--input {q}: not a .jsonl, .json, .jsonl.gz or .parquet file")
        out += found
    return out


def _is_shard(p: Path) -> bool:
    return p.name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet"))


# ---------------------------------------------------------------------------------------------- chat
def make_renderer(tok_dir: Path, key: str):
    """record -> chat-templated text, for dialogues in `key`/`messages`, NeMo `conversations`, or question/answer."""
    from carebot.tokenizer import load_tokenizer

    hf = load_tokenizer(tok_dir)
    if not hf.chat_template:
        raise ConfigError(f"--chat: tokenizer {tok_dir} has no chat template")

    def render(rec: dict) -> str:
        """A dialogue in any dialect `data_tools.sft.formats` reads (OpenAI `messages`, also under `key`; NeMo
        `conversations`), or a single-turn {question, answer}."""
        if isinstance(rec.get(key), list) and key != "messages":
            rec = {**rec, "messages": rec[key]}
        if "messages" in rec or "conversations" in rec:
            try:
                msgs = sft_from_record(rec).chat_messages()
            except InputError as e:
                raise ValueError(str(e)) from None  # counted per file:line as not_a_dialogue
        elif "question" in rec and "answer" in rec:
            msgs = [{"role": "user", "content": rec["question"]}, {"role": "assistant", "content": rec["answer"]}]
        else:
            raise KeyError("no messages / conversations / question+answer")
        return hf.apply_chat_template(msgs, tokenize=False)

    return render, hf.bos_token


# ---------------------------------------------------------------------------------------------- run
def _sample(files: list[Path], keys: list[str], render, n: int) -> list[str]:
    """The first documents of (up to) 8 shards, for the start-up check of gigatoken against HF."""
    from data_tools.tokens.token_sources import FileStats

    out: list[str] = []
    for f in files[:8]:
        it = _iter_shard(f, keys, FileStats(str(f)), 1 << 20, False, render)
        cols = next(it, None)
        it.close()
        out += cols[keys[0]].slice(0, n // min(8, len(files))).to_pylist() if cols else []
    return out


def _iter_shard(f: Path, keys, stats, chunk: int, strict: bool, render):
    from data_tools.tokens.token_sources import jsonl_columns, parquet_columns

    if f.name.endswith(".parquet"):
        return parquet_columns(f, keys, stats, chunk, strict)
    return jsonl_columns(f, keys, stats, chunk, strict, render)


def out_prefix(cfg: TokenizeConfig, key: str) -> str:
    return f"{cfg.output_prefix}_{key}_document"


def run(cfg: TokenizeConfig) -> dict:
    """Tokenize every input shard into one `.bin/.idx` per json key; returns the manifests by key."""
    from tqdm import tqdm

    from data_tools.tokens.token_sources import FileStats

    t0 = time.time()
    files = expand_inputs(cfg.inputs)
    require_records([f for f in files if f.suffix in (".jsonl", ".json")], cfg.allow_empty)
    render = None
    if cfg.chat:
        render, bos_text = make_renderer(Path(cfg.tokenizer), cfg.json_keys[0])
    keys = cfg.json_keys[:1] if cfg.chat else cfg.json_keys
    enc = Encoder(cfg.tokenizer, cfg.engine, cfg.eod_token,
                  _sample(files, keys, render, cfg.verify_docs) if cfg.engine == "auto" else [])
    dtype = optimal_dtype(enc.vocab_size)
    prefix = list(enc.prefix) if cfg.bos else []
    if cfg.chat:
        if bos_text and render({"messages": [{"role": "user", "content": "x"}]}).startswith(bos_text):
            prefix = []  # the template already opens with BOS
    suffix = list(enc.suffix) if cfg.bos else []
    suffix += [enc.eod] if cfg.append_eod else []
    Path(cfg.output_prefix).parent.mkdir(parents=True, exist_ok=True)
    setup = {"config": asdict(cfg), "tokenizer_sha256": enc.fingerprint, "prefix_ids": prefix, "suffix_ids": suffix,
             "dtype": dtype.name, "inputs": [{"path": str(f.resolve()), "size": f.stat().st_size} for f in files]}
    print("[tokenize] " + json.dumps(setup["config"], ensure_ascii=False), file=sys.stderr)

    # Up to date? (same config, same input files) -> nothing to do.
    mpaths = {k: Path(out_prefix(cfg, k) + ".manifest.json") for k in keys}
    if all(p.is_file() for p in mpaths.values()):
        olds = {k: json.loads(p.read_text()) for k, p in mpaths.items()}
        if all(o.get("complete") and o.get("setup") == setup and _outputs_intact(o, dtype) for o in olds.values()):
            print(f"[tokenize] up to date: {', '.join(map(str, mpaths.values()))}", file=sys.stderr)
            return olds
    for p in mpaths.values():  # from here on the old outputs are being replaced: nothing vouches for them
        p.unlink(missing_ok=True)

    prog_path = Path(cfg.output_prefix + ".tokenize-progress.json")
    prog = json.loads(prog_path.read_text()) if prog_path.is_file() else None
    if prog is not None and prog.get("setup") != setup:
        print(f"[tokenize] {prog_path} is from a different config or inputs: starting over", file=sys.stderr)
        prog = None
    if prog is not None and not all(unchanged(d["file"]) for d in prog["done"]):
        print(f"[tokenize] an input changed since {prog_path} recorded it: starting over", file=sys.stderr)
        prog = None
    prog = _resumable(cfg, keys, prog) or {"setup": setup, "done": []}
    ends = prog["done"][-1]["ends"] if prog["done"] else {k: {"bytes": 0, "docs": 0} for k in keys}
    outs = {}
    for k in keys:  # truncate to the last finished shard: a killed shard is redone from its start
        bin_tmp, len_tmp = Path(out_prefix(cfg, k) + ".bin.tmp"), Path(out_prefix(cfg, k) + ".lengths.tmp")
        for p, n in ((bin_tmp, ends[k]["bytes"]), (len_tmp, ends[k]["docs"] * 4)):
            with open(p, "ab") as f:
                f.truncate(n)
        outs[k] = (open(bin_tmp, "r+b"), open(len_tmp, "r+b"))
        outs[k][0].seek(ends[k]["bytes"])
        outs[k][1].seek(ends[k]["docs"] * 4)

    done_paths = {d["file"]["path"] for d in prog["done"]}
    todo = [f for f in files if str(f.resolve()) not in done_paths]
    pbar = tqdm(total=sum(f.stat().st_size for f in todo), unit="B", unit_scale=True, desc="tokenize",
                disable=None, file=sys.stderr)
    chunk = cfg.chunk_mb << 20
    for f in todo:
        stats = FileStats(str(f))
        st0 = stat_key(f.stat())  # before the read: a change during it shows as a changed stat key
        lang_docs = {k: np.zeros(3, np.int64) for k in keys}
        lang_toks = {k: np.zeros(3, np.int64) for k in keys}
        for cols in _iter_shard(f, keys, stats, chunk, cfg.strict, render):
            for k in keys:
                flat, offs = enc.encode(cols[k])
                toks, lens = assemble(flat, offs, prefix, suffix, dtype)
                outs[k][0].write(memoryview(toks).cast("B"))
                outs[k][1].write(lens.tobytes())
                lang = lang_codes(cols[k])
                lang_docs[k] += np.bincount(lang, minlength=3)
                lang_toks[k] += np.bincount(lang, weights=lens, minlength=3).astype(np.int64)
            pbar.update(min(chunk, max(0, pbar.total - pbar.n)))
        for k in keys:
            outs[k][0].flush()
            outs[k][1].flush()
        ends = {k: {"bytes": outs[k][0].tell(), "docs": outs[k][1].tell() // 4} for k in keys}
        fp = {"path": str(f.resolve()), "size": st0[0], "sha256": stats.sha256, "stat": st0}
        prog["done"].append({"file": fp, "sha256": stats.sha256, "lines": stats.lines,
                             "docs": stats.records, "skipped": dict(stats.skipped), "examples": stats.examples,
                             "engine": enc.engine, "ends": ends,
                             "lang_docs": {k: v.tolist() for k, v in lang_docs.items()},
                             "lang_tokens": {k: v.tolist() for k, v in lang_toks.items()}})
        write_json(prog_path, prog)  # the commit point of this shard
        if stats.skipped:
            print(f"[tokenize] {f}: skipped {sum(stats.skipped.values())} bad records {dict(stats.skipped)} "
                  f"e.g. {stats.examples[0]}", file=sys.stderr)
    pbar.close()
    for fb, fl in outs.values():
        fb.close()
        fl.close()
    if not cfg.allow_empty and not any(d["docs"] for d in prog["done"]):
        for k in keys:
            for ext in (".bin.tmp", ".lengths.tmp"):
                Path(out_prefix(cfg, k) + ext).unlink(missing_ok=True)
        prog_path.unlink(missing_ok=True)
        bad = sum(sum(d["skipped"].values()) for d in prog["done"])
        eg = next((e for d in prog["done"] for e in d["examples"]), "")
        raise InputError(f"{', '.join(map(str, files))}: no usable records ({bad} bad, e.g. {eg}; "
                         "pass --allow-empty to accept that)")
    manifests = {k: _finalize(cfg, k, prog, setup, enc, dtype, time.time() - t0) for k in keys}
    prog_path.unlink(missing_ok=True)
    return manifests


def _outputs_intact(m: dict, dtype: np.dtype) -> bool:
    """What a complete manifest vouches for still holds: the `.bin` / `.idx` it names at its sizes with its
    sha256s (not truncated, deleted, or replaced by another run's), and every input shard with its sha256 (a
    file is hashed again only when its stat key changed since)."""
    b, i = Path(m["prefix"] + ".bin"), Path(m["prefix"] + ".idx")
    sizes = (b.is_file() and b.stat().st_size == m["tokens"] * dtype.itemsize and i.is_file()
             and i.stat().st_size == 34 + 12 * m["documents"] + 8 * (m["documents"] + 1))
    outs = m.get("outputs", {})
    return (sizes and outs.get("bin", {}).get("path") == str(b.resolve()) and unchanged(outs["bin"])
            and outs.get("idx", {}).get("path") == str(i.resolve()) and unchanged(outs["idx"])
            and all(unchanged(s["file"]) for s in m["shards"]))


def _resumable(cfg: TokenizeConfig, keys: list[str], prog: dict | None) -> dict | None:
    """The progress record if the data it commits is all on disk, else None (start over). A run killed inside
    `_finalize`, after the `.bin.tmp` -> `.bin` rename and before the manifest, left the finished `.bin` under
    its final name: it is taken back as the tmp file (never re-created empty and zero-filled by a truncate)."""
    if not prog or not prog["done"]:
        return prog
    ends = prog["done"][-1]["ends"]
    for k in keys:
        base = out_prefix(cfg, k)
        bin_tmp, final = Path(base + ".bin.tmp"), Path(base + ".bin")
        if not bin_tmp.exists() and final.exists() and final.stat().st_size == ends[k]["bytes"]:
            os.replace(final, bin_tmp)
        for p, n in ((bin_tmp, ends[k]["bytes"]), (Path(base + ".lengths.tmp"), ends[k]["docs"] * 4)):
            if not p.exists() or p.stat().st_size < n:
                print(f"[tokenize] {p} holds less than its progress record commits ({n:,} bytes): starting over",
                      file=sys.stderr)
                return None
    return prog


def _finalize(cfg: TokenizeConfig, key: str, prog: dict, setup: dict, enc: Encoder, dtype: np.dtype,
              wall: float) -> dict:
    base = out_prefix(cfg, key)
    len_tmp, bin_tmp = Path(base + ".lengths.tmp"), Path(base + ".bin.tmp")
    lengths = np.fromfile(len_tmp, dtype=np.int32)
    write_index(base + ".idx", lengths, dtype)
    os.replace(bin_tmp, base + ".bin")
    shards = [{"path": d["file"]["path"], "file": d["file"], "sha256": d["sha256"], "lines": d["lines"], "docs": d["docs"],
               "tokens": (d["ends"][key]["bytes"] - (prev["ends"][key]["bytes"] if prev else 0)) // dtype.itemsize,
               "skipped": d["skipped"], "examples": d["examples"], "engine": d["engine"]}
              for prev, d in zip([None] + prog["done"][:-1], prog["done"])]
    lang = {name: {"docs": sum(d["lang_docs"][key][i] for d in prog["done"]),
                   "tokens": sum(d["lang_tokens"][key][i] for d in prog["done"])} for i, name in enumerate(LANGS)}
    m = {"prefix": base, "bucket": cfg.bucket, "documents": int(len(lengths)), "tokens": int(lengths.sum()),
         "lang": lang, "engine": "+".join(sorted({s["engine"] for s in shards})) or enc.engine,
         "skipped": {r: sum(s["skipped"].get(r, 0) for s in shards) for r in
                     sorted({r for s in shards for r in s["skipped"]})},
         "shards": shards, "setup": setup, "wall_s": round(wall, 3), "complete": True,
         "outputs": {"bin": fingerprint(base + ".bin"), "idx": fingerprint(base + ".idx")}}
    write_json(base + ".manifest.json", m)
    Path(base + ".report.md").write_text(_report(m))
    len_tmp.unlink(missing_ok=True)
    return m


def _report(m: dict) -> str:
    rows = "\n".join(f"| {Path(s['path']).name} | {s['docs']:,} | {s['tokens']:,} | "
                     f"{sum(s['skipped'].values()):,} | {s['engine']} |" for s in m["shards"])
    lang = ", ".join(f"{k} {v['tokens']:,} tok / {v['docs']:,} docs" for k, v in m["lang"].items())
    bad = "\n".join(f"- `{e}`" for s in m["shards"] for e in s["examples"]) or "- none"
    return (f"# tokenize: `{m['prefix']}`\n\n{m['documents']:,} documents, {m['tokens']:,} tokens "
            f"({lang}); engine {m['engine']}; {m['wall_s']} s.\n\n| shard | docs | tokens | skipped | engine |\n"
            f"|---|---|---|---|---|\n{rows}\n\nSkipped by reason: {m['skipped'] or 'none'}\n\nFirst bad records:\n{bad}\n")


# ---------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="carebot data tokenize", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help="files, directories or globs (jsonl, jsonl.gz, parquet)")
    p.add_argument("--output-prefix", required=True, help="writes {prefix}_{key}_document.bin/.idx/.manifest.json")
    p.add_argument("--json-keys", nargs="+", default=["text"], help="text field(s); one output per key")
    p.add_argument("--tokenizer-model", "--tokenizer", dest="tokenizer", required=True,
                   help="HF tokenizer directory (or tokenizer.json)")
    p.add_argument("--tokenizer-type", default="HuggingFaceTokenizer", help="only HuggingFaceTokenizer is supported")
    p.add_argument("--append-eod", action=argparse.BooleanOptionalAction, default=True,
                   help="append EOD to every document (on by default; Megatron's flag is accepted)")
    p.add_argument("--bos", action=argparse.BooleanOptionalAction, default=True,
                   help="add the tokenizer's own special tokens (BOS for LLaMA-3), as tokenizer(text) does")
    p.add_argument("--eod-token", default=None, help="EOD token text or id (default <|end_of_text|> / eos)")
    p.add_argument("--engine", choices=["auto", "gigatoken", "hf"], default="auto",
                   help="auto: gigatoken verified per shard against HF tokenizers, HF on any mismatch")
    p.add_argument("--chat", action="store_true", help="render dialogues with the chat template (SFT bucket)")
    p.add_argument("--strict", action="store_true", help="fail at the first bad record with file:line")
    p.add_argument("--chunk-mb", type=int, default=16, help="bytes of input per chunk (memory stays flat)")
    p.add_argument("--workers", type=int, default=None, help="tokenizer threads (default: all cores)")
    p.add_argument("--allow-empty", action="store_true", help="empty inputs are not an error")
    p.add_argument("--bucket", default=None, help="bucket name for blend, e.g. medical_zh (default: from prefix)")
    # Megatron preprocess_data.py flags that are accepted for drop-in use and have no effect here.
    for flag in ("--partitions", "--log-interval", "--lang", "--vocab-file", "--merge-file"):
        p.add_argument(flag, help=argparse.SUPPRESS)
    for flag in ("--keep-newlines", "--keep-sequential-samples", "--split-sentences"):
        p.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    a = parse_command(build_parser(), argv, save=lambda a: f"{a.output_prefix}.tokenize.config.yaml")
    if a.split_sentences:
        raise ConfigError("--split-sentences is not supported (CPT documents are kept whole); drop the flag")
    if a.tokenizer_type.lower() not in ("huggingfacetokenizer", "hf"):
        raise ConfigError(f"--tokenizer-type {a.tokenizer_type}: only HuggingFaceTokenizer is supported")
    if a.workers:  # gigatoken and tokenizers size their rayon pools from this at first use
        os.environ.setdefault("RAYON_NUM_THREADS", str(a.workers))
    cfg = TokenizeConfig(inputs=a.input, output_prefix=a.output_prefix, tokenizer=a.tokenizer, json_keys=a.json_keys,
                         bos=a.bos, append_eod=a.append_eod, eod_token=a.eod_token, engine=a.engine, chat=a.chat,
                         strict=a.strict, chunk_mb=a.chunk_mb, bucket=a.bucket, allow_empty=a.allow_empty)
    from data_tools.tokens.token_sources import BadInput

    try:
        ms = run(cfg)
    except BadInput as e:
        raise BadInput(f"bad input: {e}") from None
    for m in ms.values():
        print(json.dumps({k: m[k] for k in ("prefix", "documents", "tokens", "lang", "engine", "skipped", "wall_s")},
                         ensure_ascii=False))
    return 0


if __name__ == "__main__":
    from carebot.cli import script

    script(main, "carebot data tokenize")
