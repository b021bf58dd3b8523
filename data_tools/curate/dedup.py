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
from carebot.errors import InputError
from carebot.io import read_jsonl, write_json, write_jsonl
from carebot.text import doc_text


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
    a = parse_command(ap, argv)
    recs: list[dict] = []
    for p in a.input:
        if not Path(p).exists():
            raise InputError(f"{p}: no such input file")
        recs += [{**r, "_src": Path(p).name} for r in read_jsonl(p)]
    kept, removed = dedup(recs, DedupConfig(threshold=a.threshold))
    out = Path(a.out)
    for name in {r["_src"] for r in recs}:
        write_jsonl(out / name, ({k: v for k, v in r.items() if k != "_src"} for r in kept if r["_src"] == name))
    write_jsonl(out / "excluded" / "duplicates.jsonl", removed)
    s = {"docs": len(recs), "kept": len(kept), "removed": len(removed), "threshold": a.threshold}
    write_json(out / "summary.json", s)
    print(json.dumps(s))
    return 0


if __name__ == "__main__":
    from carebot.cli import script

    script(main, "carebot data dedup")
