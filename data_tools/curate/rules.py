"""`carebot data rules`: bilingual rule filters + PII scrub (first curation step).

Units: Chinese is counted in characters, English in words (a mixed document counts both). Each filter
returns (keep, reason); a dropped document goes to `excluded/<input>.jsonl` with `drop_reason`, as
datatrove's exclusion writer does. Thresholds and their sources:
- min_units 50: Gopher (Rae et al. 2021) keeps documents of >= 50 words; we count zh characters alike.
- special-character ratio <= 0.25: Gopher's symbol/word <= 0.1 is for '#' and '...'; we count every char
  that is not a letter, digit, CJK, whitespace or common punctuation.
- duplicate lines <= 0.3 of lines and top 2-gram <= 0.2 / top 3-gram <= 0.18 of units: Gopher repetition.
- bad words: >= 2 hits from data_tools/curate/wordlists (zh + en; porn, gambling, toxic).
- PII: redact (default) or drop; see data_tools.curate.pii.
"""
from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import re
import time
from dataclasses import asdict, dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Iterator

from data_tools.curate import pii
from carebot.config import parse_command
from carebot.commit import Done, output_names
from carebot.io import parse_line, require_records, write_json, write_text
from carebot.text import record_text

WORDLISTS = Path(__file__).parent / "wordlists"
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"[A-Za-z0-9]+(?:['\-][A-Za-z0-9]+)*")
_UNIT = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[A-Za-z0-9]+(?:['\-][A-Za-z0-9]+)*")
_SPECIAL = re.compile(r"[^\w\s\u3000-\u303f\uff00-\uffef.,;:!?'\"()\[\]{}\-–—/%&@+=*<>·、，。；：！？“”‘’（）《》【】…~]")


@dataclass(kw_only=True)
class RulesConfig:
    min_units: int = 50  # zh chars + en words
    max_units: int = 100_000  # Gopher upper bound
    max_special_ratio: float = 0.25
    max_dup_line_frac: float = 0.3
    max_top2_frac: float = 0.2
    max_top3_frac: float = 0.18
    min_bad_hits: int = 2
    pii: str = "redact"  # redact | drop | keep
    text_field: str = "text"  # written back when redacting; read with doc_text() when absent


@lru_cache(maxsize=1)
def _badwords() -> tuple[re.Pattern, re.Pattern]:
    def terms(name: str) -> list[str]:
        return [t.strip() for t in (WORDLISTS / name).read_text(encoding="utf-8").splitlines() if t.strip() and not t.startswith("#")]

    en = re.compile(r"\b(?:" + "|".join(re.escape(t) for t in sorted(terms("en.txt"), key=len, reverse=True)) + r")\b", re.I)
    zh = re.compile("|".join(re.escape(t) for t in sorted(terms("zh.txt"), key=len, reverse=True)), re.I)
    return en, zh


def units(text: str) -> list[str]:
    """zh characters and en words, in order (lower-cased)."""
    return [u.lower() for u in _UNIT.findall(text)]


def top_ngram_frac(us: list[str], n: int) -> float:
    """Share of units covered by the most frequent n-gram (Gopher's top-n-gram character fraction)."""
    if len(us) < 100:  # too short to judge: a disease name repeated 3 times in a 60-word answer is fine
        return 0.0
    c = collections.Counter(zip(*(us[i:] for i in range(n))))
    gram, cnt = c.most_common(1)[0]
    if cnt < 5:
        return 0.0
    w = sum(len(u) for u in gram)
    return cnt * w / max(1, sum(len(u) for u in us))


def check(text: str, cfg: RulesConfig) -> tuple[bool, str]:
    """(keep, reason): the first failing rule names the reason."""
    us = units(text)
    if len(us) < cfg.min_units:
        return False, "too_few_units"
    if len(us) > cfg.max_units:
        return False, "too_many_units"
    n_chars = len(text) - sum(map(text.count, (" ", "\n", "\t")))
    if n_chars:
        special = len(_SPECIAL.findall(text))  # few matches: far cheaper than listing the normal chars
        if special / n_chars > cfg.max_special_ratio:
            return False, "special_char_ratio"
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    if len(lines) > 1:
        dup = len(lines) - len(set(lines))
        if dup / len(lines) > cfg.max_dup_line_frac:
            return False, "dup_lines"
    if top_ngram_frac(us, 2) > cfg.max_top2_frac:
        return False, "top_2gram"
    if top_ngram_frac(us, 3) > cfg.max_top3_frac:
        return False, "top_3gram"
    en, zh = _badwords()
    hits = len(en.findall(text)) + len(zh.findall(text))
    if hits >= cfg.min_bad_hits:
        return False, "bad_words"
    return True, ""


def process(rec: dict[str, Any], cfg: RulesConfig, where: str = "record") -> tuple[dict[str, Any] | None, str, list[str]]:
    """Apply the rules and the PII policy: (kept record or None, drop reason, PII kinds found)."""
    text = record_text(rec, where, cfg.text_field)
    keep, reason = check(text, cfg)
    if not keep:
        return None, reason, []
    if cfg.pii == "keep":
        return rec, "", []
    spans = pii.find_pii(text)
    kinds = sorted({s.kind for s in spans})
    if not spans:
        return rec, "", []
    if cfg.pii == "drop":
        return None, "pii_" + kinds[0], kinds
    if cfg.text_field in rec:
        rec = {**rec, cfg.text_field: pii.redact(text, spans)}
    else:  # structured record: redact every string field
        rec = json.loads(json.dumps(rec), object_hook=lambda o: {k: pii.redact(v) if isinstance(v, str) else v for k, v in o.items()})
    return rec, "", kinds


def _batch(lines: list[tuple[int, bytes]], cfg: RulesConfig, src: str) -> tuple[list[str], list[str], collections.Counter]:
    kept, dropped, stats = [], [], collections.Counter()
    for n, line in lines:
        rec = parse_line(line, f"{src}:{n}")
        if rec is None:
            continue
        out, reason, kinds = process(rec, cfg, f"{src}:{n}")
        stats["docs"] += 1
        for k in kinds:
            stats[f"pii_found_{k}"] += 1
        if out is None:
            stats[f"dropped_{reason}"] += 1
            dropped.append(json.dumps({**rec, "drop_reason": reason}, ensure_ascii=False))
        else:
            stats["kept"] += 1
            kept.append(json.dumps(out, ensure_ascii=False))
    return kept, dropped, stats


def _batches(path: Path, size: int) -> Iterator[list[tuple[int, bytes]]]:
    buf: list[tuple[int, bytes]] = []
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                buf.append((n, line))
            if len(buf) >= size:
                yield buf
                buf = []
    if buf:
        yield buf


def run_file(path: Path, name: str, out_dir: Path, cfg: RulesConfig, pool=None, batch: int = 500,
             progress: bool = True) -> dict[str, int]:
    """Filter one jsonl file -> out_dir/<name>, out_dir/excluded/<name>; reused when its completion record
    names this very input and config."""
    from tqdm.auto import tqdm

    done = Done(out_dir / ".done" / f"{name}.json", [path], asdict(cfg))
    if (stats := done.result()) is not None:
        return stats
    kept_p, excl_p = out_dir / name, out_dir / "excluded" / name
    tmp_k, tmp_x = Path(f"{kept_p}.tmp"), Path(f"{excl_p}.tmp")
    tmp_x.parent.mkdir(parents=True, exist_ok=True)
    tmp_k.parent.mkdir(parents=True, exist_ok=True)
    counts: collections.Counter = collections.Counter()
    fn = partial(_batch, cfg=cfg, src=str(path))
    it = pool.imap(fn, _batches(path, batch)) if pool is not None else map(fn, _batches(path, batch))
    try:
        with open(tmp_k, "w", encoding="utf-8") as fk, open(tmp_x, "w", encoding="utf-8") as fx:
            for kept, dropped, st in tqdm(it, desc=f"rules {name}", unit="batch", disable=not progress):
                fk.writelines(l + "\n" for l in kept)
                fx.writelines(l + "\n" for l in dropped)
                counts.update(st)
    except BaseException:
        tmp_k.unlink(missing_ok=True)
        tmp_x.unlink(missing_ok=True)
        raise
    tmp_k.replace(kept_p)
    tmp_x.replace(excl_p)
    done.write(dict(counts))
    return dict(counts)


def run(inputs: list[Path], out_dir: Path, cfg: RulesConfig, workers: int = 1, progress: bool = True,
        allow_empty: bool = False) -> dict[str, Any]:
    require_records(inputs, allow_empty)
    names = output_names(inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "config.json", asdict(cfg))
    t0 = time.time()
    per_file: dict[str, dict[str, int]] = {}
    pool = mp.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        for p, name in zip(inputs, names):
            per_file[name] = run_file(p, name, out_dir, cfg, pool, progress=progress)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    total: collections.Counter = collections.Counter()
    for s in per_file.values():
        total.update(s)
    secs = time.time() - t0
    summary = {"totals": dict(total), "per_file": per_file, "seconds": round(secs, 3), "docs_per_s": round(total["docs"] / max(secs, 1e-9), 1)}
    write_json(out_dir / "summary.json", summary)
    rows = "".join(f"| {k} | {v} |\n" for k, v in sorted(total.items()))
    write_text(out_dir / "report.md", f"# Rules report\n\n{total['docs']} docs, {total['kept']} kept.\n\n| counter | n |\n|---|---|\n{rows}")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carebot data rules", description="bilingual rule filters + PII scrub")
    ap.add_argument("--input", nargs="+", required=True, help="jsonl files")
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--pii", choices=["redact", "drop", "keep"], default="redact")
    ap.add_argument("--min-units", type=int, default=RulesConfig.min_units)
    ap.add_argument("--min-bad-hits", type=int, default=RulesConfig.min_bad_hits)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--allow-empty", action="store_true", help="an input with no documents is not an error")
    a = parse_command(ap, argv)
    cfg = RulesConfig(pii=a.pii, min_units=a.min_units, min_bad_hits=a.min_bad_hits)
    print(json.dumps(asdict(cfg)))
    s = run([Path(p) for p in a.input], Path(a.out), cfg, a.workers, progress=not a.no_progress, allow_empty=a.allow_empty)
    print(json.dumps(s["totals"]), f"{s['docs_per_s']} docs/s")
    return 0


if __name__ == "__main__":
    from carebot.cli import script

    script(main, "carebot data rules")
