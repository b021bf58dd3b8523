"""`carebot data dedup`: MinHash-LSH near-duplicate removal (datasketch).

Shingles: 5-grams of normalised units (zh characters, en words; data_tools.curate.decontam.norm_units), 128
permutations, Jaccard threshold 0.8 (datatrove / FineWeb use 5-gram shingles and ~0.75-0.8). The first
document of a near-duplicate cluster is kept, in input order, so reruns are deterministic.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasketch import MinHash, MinHashLSH

from data_tools.curate.decontam import norm_units
from carebot.config import parse_command
from carebot.commit import output_names
from carebot.io import Outputs, iter_jsonl, require_records, write_json
from carebot.text import doc_text, record_text


@dataclass(kw_only=True)
class DedupConfig:
    shingle: int = 5
    num_perm: int = 128
    threshold: float = 0.8
    seed: int = 1


def minhash(text: str, cfg: DedupConfig) -> MinHash:
    us = norm_units(text)
    sh = {" ".join(us[i : i + cfg.shingle]).encode() for i in range(max(1, len(us) - cfg.shingle + 1))}
    m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)
    m.update_batch(list(sh))
    return m


def dedup(recs: list[dict[str, Any]], cfg: DedupConfig, progress: bool = True) -> tuple[list[dict], list[dict]]:
    """(kept, removed); removed records carry `dup_of` (the key of the kept document they duplicate)."""
    from tqdm.auto import tqdm

    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    kept, removed = [], []
    for i, r in enumerate(tqdm(recs, desc="dedup", disable=not progress)):
        m = minhash(doc_text(r), cfg)
        dup = lsh.query(m)
        if dup:
            removed.append({**r, "dup_of": sorted(dup)[0]})
            continue
        lsh.insert(str(r.get("id", i)) + f"#{i}", m)
        kept.append(r)
    return kept, removed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carebot data dedup", description="MinHash near-duplicate removal")
    ap.add_argument("--input", nargs="+", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threshold", type=float, default=DedupConfig.threshold)
    ap.add_argument("--allow-empty", action="store_true", help="an input with no documents is not an error")
    a = parse_command(ap, argv)
    require_records(a.input, a.allow_empty)
    names = output_names(a.input)
    recs: list[dict] = []
    for p, name in zip(a.input, names):
        for n, r in iter_jsonl(p):
            record_text(r, f"{p}:{n}")
            recs.append({**r, "_src": name})
    kept, removed = dedup(recs, DedupConfig(threshold=a.threshold))
    out = Path(a.out)
    with Outputs() as outs:  # committed together
        for name in names:
            outs.touch(out / name)
        for r in kept:
            outs.write(out / r["_src"], {k: v for k, v in r.items() if k != "_src"})
        outs.touch(out / "excluded" / "duplicates.jsonl")
        for r in removed:
            outs.write(out / "excluded" / "duplicates.jsonl", {k: v for k, v in r.items() if k != "_src"})
    s = {"docs": len(recs), "kept": len(kept), "removed": len(removed), "threshold": a.threshold}
    write_json(out / "summary.json", s)
    print(json.dumps(s))
    return 0


if __name__ == "__main__":
    from carebot.cli import script

    script(main, "carebot data dedup")
