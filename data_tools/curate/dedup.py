"""`carebot data dedup`: MinHash-LSH near-duplicate removal (datasketch).

Shingles: 5-grams of normalised units (zh characters, en words; data_tools.curate.decontam.norm_units), 128
permutations, Jaccard threshold 0.8 (datatrove / FineWeb use 5-gram shingles and ~0.75-0.8). The first
document of a near-duplicate cluster is kept, in input order, so reruns are deterministic.
"""
from __future__ import annotations

import argparse
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasketch import MinHash, MinHashLSH
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupCluster, MinhashDedupSignature
from datatrove.utils.binaryio import read_tuples_from_file
from datatrove.utils.hashing import HashConfig
from datatrove.utils.word_tokenizers import WordTokenizer

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


# ----------------------------------------------------------------------------- across shards: datatrove's stages
# The same shingles and threshold as `dedup` above, on datatrove's 4-stage MinHash (signatures per task ->
# buckets -> clusters -> filter), so a near-duplicate is found whichever shard or task holds each copy. Two
# changes to datatrove's stock stages, both to make the result exact and independent of how the corpus is cut:
# - a candidate pair (any of BANDS bands of ROWS hashes equal) counts only if the share of equal hashes over the
#   whole 128-hash signature (its Jaccard estimate) is >= the threshold: 16 x 8 bands find a pair at Jaccard 0.9
#   with p = 0.9999, and the check removes the band collisions of pairs well below the threshold;
# - the document a cluster keeps is the one first in corpus order (input files in sorted path order, then line
#   order, `_order` in its metadata), as `dedup` keeps the first in input order; datatrove keeps the root of a
#   union by size, which depends on which task read which file.
BANDS, ROWS = 16, 8


def minhash_config() -> MinhashConfig:
    return MinhashConfig(n_grams=DedupConfig.shingle, num_buckets=BANDS, hashes_per_bucket=ROWS, seed=DedupConfig.seed,
                         hash_config=HashConfig(precision=64, hash_fc="sha1"))


class _Unused(WordTokenizer):  # shingles come from norm_units, not a word tokenizer (datatrove's needs spaCy)
    def word_tokenize(self, text, **kw):
        return text.split()

    def sent_tokenize(self, text, **kw):
        return [text]

    def span_tokenize(self, text, **kw):
        return [(0, len(text))]


class Signature(MinhashDedupSignature):
    """datatrove's signature stage on `norm_units` 5-gram shingles; also streams each document's full
    signature (`full/RANK.sig`, one row per document, zeros for one without shingles) and corpus-order
    key (`keys/RANK.jsonl`) for the cluster stage."""

    name = "near-dup signatures"

    def __init__(self, output_folder, config):
        super().__init__(output_folder, config=config, language=_Unused())

    def get_shingles(self, text: str) -> np.ndarray:
        us = norm_units(text)
        if not us:
            return np.zeros((0, 1), dtype=np.uint64)
        n = self.config.n_grams
        grams = sorted({" ".join(us[i : i + n]) for i in range(max(1, len(us) - n + 1))})
        return np.fromiter((self._hash_func(g) for g in grams), dtype=np.uint64, count=len(grams)).reshape(-1, 1)

    def get_signature(self, shingles):
        sig = super().get_signature(shingles)
        self._full.write(np.asarray(sig, dtype=np.uint64).tobytes())
        self._row = True
        return sig

    def _close_row(self):
        if self._row is False:
            self._full.write(np.zeros(BANDS * ROWS, dtype=np.uint64).tobytes())
        self._row = None

    def run(self, data, rank: int = 0, world_size: int = 1):
        def tap(docs):
            for doc in docs:
                self._close_row()
                self._row = False
                self._keys.write(json.dumps(doc.metadata.get("_order"), ensure_ascii=False) + "\n")
                yield doc
            self._close_row()

        with self.output_folder.open(f"full/{rank:05d}.sig", "wb") as self._full, \
                self.output_folder.open(f"keys/{rank:05d}.jsonl", "w") as self._keys:
            self._row = None
            super().run(tap(data), rank, world_size)  # it consumes the documents and yields none
        from data_tools.curate.steps import note_peak_rss

        note_peak_rss(self)

class Cluster(MinhashDedupCluster):
    """Union-find over the candidate pairs (every two documents sharing a band) that pass the full-signature
    check; each cluster keeps its member first in corpus order and lists the others in `RANK.remove` (ascending,
    as the filter reads)."""

    name = "near-dup clusters"

    def __init__(self, input_folder, sig_folder, output_folder, config, threshold: float):
        super().__init__(input_folder, output_folder, config=config)
        self.sig_folder, self.threshold = sig_folder, threshold

    def _sigs(self, f: int) -> np.ndarray:
        path = Path(self.sig_folder) / "full" / f"{f:05d}.sig"
        return np.memmap(path, dtype=np.uint64, mode="r").reshape(-1, BANDS * ROWS)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        parent: dict[tuple[int, int], tuple[int, int]] = {}

        def root(x):
            while parent.setdefault(x, x) != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        sigs: dict[int, np.ndarray] = {}

        def verify(group: list[tuple[int, int]]) -> None:
            # every pair of a band's group, not only the chain datatrove writes (consecutive in (task, doc)
            # order): which pairs pass must not depend on how the corpus was split into tasks
            S = np.stack([sigs.setdefault(f, self._sigs(f))[d] for f, d in group])
            for i in range(len(group) - 1):
                est = (S[i + 1 :] == S[i]).mean(1)
                self.stat_update("candidate_pairs", value=len(est))
                for j in np.nonzero(est >= self.threshold)[0]:
                    ra, rb = root(group[i]), root(group[i + 1 + int(j)])
                    if ra != rb:
                        parent[max(ra, rb)] = min(ra, rb)

        with self.track_time():
            for dup_file in self.input_folder.list_files(glob_pattern="*.dups"):
                group: list[tuple[int, int]] = []
                with self.input_folder.open(dup_file, "rb") as fh:  # one band: chains of equal band hashes
                    for f1, d1, f2, d2 in read_tuples_from_file(fh, "4I", lines_to_buffer=self.lines_to_buffer):
                        if group and group[-1] == (f1, d1):
                            group.append((f2, d2))
                            continue
                        if group:
                            verify(group)
                        group = [(f1, d1), (f2, d2)]
                if group:
                    verify(group)
            # the corpus-order key of every document in a cluster, read from its task's key file
            need: dict[int, set[int]] = {}
            for f, d in parent:
                need.setdefault(f, set()).add(d)
            key: dict[tuple[int, int], list] = {}
            for f, docs in need.items():
                with open(Path(self.sig_folder) / "keys" / f"{f:05d}.jsonl", encoding="utf-8") as kf:
                    for d, line in enumerate(kf):
                        if d in docs:
                            key[(f, d)] = json.loads(line)
            clusters: dict[tuple[int, int], list[tuple[int, int]]] = {}
            for node in parent:
                clusters.setdefault(root(node), []).append(node)
            remove: dict[int, list[int]] = {}
            for members in clusters.values():
                keep = min(members, key=lambda n: (key[n], n))
                self.stat_update("clusters")
                self.stat_update("cluster_size", value=len(members), unit="cluster")
                for f, d in members:
                    if (f, d) != keep:
                        remove.setdefault(f, []).append(d)
            with self.output_folder.get_output_file_manager(mode="wb") as out:
                for sig in sorted((Path(self.sig_folder) / "full").glob("*.sig")):  # one file per task, even empty
                    out.get_file(f"{int(sig.stem):06d}.remove")
                for f in sorted(remove):
                    for d in sorted(remove[f]):
                        out.write(f"{f:06d}.remove", struct.pack("<I", d))
                        self.stat_update("to_remove")
        from data_tools.curate.steps import note_peak_rss

        note_peak_rss(self)

