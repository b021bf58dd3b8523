"""`carebot data decontam`: n-gram decontamination of training data against every eval set.

Gram length: 13 units for English items (words), 25 for Chinese items (characters).
Normalisation: NFKC, lower case, zh split into characters, en into words, punctuation dropped, and
single Latin letters dropped (option labels "A." / "B)" and the article "a" differ between renderings).
An item's text (question + options + context + answers + every dialogue turn, in order) gives its
13-grams (GPT-3's decontamination length); each line of the item shorter than 13 units (a 12-word
question, a long option) and each short item is matched whole when >= 8 units long. Grams shared by >= `boilerplate_items` benchmark items ("which of the following is the most
appropriate next step in management ...") are ignored: they are templates, not leaks.

A training document (CPT text, SFT dialogue, DPO pair: any schema carebot.io.doc_text reads) that
shares one indexed gram with an eval item is removed and listed in the manifest (schema in
docs/curation.md) that eval reads to report which benchmark items were seen in training.
"""
from __future__ import annotations

import argparse
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from carebot.config import parse_command
from carebot.errors import InputError
from carebot.commit import output_names
from carebot.io import Outputs, iter_jsonl, read_jsonl, require_records, write_json, write_text
from carebot.text import doc_text, lang_of, record_text
from carebot.paths import data_dir

_UNIT = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[a-z0-9]+")

# eval sets we evaluate on, relative to data_dir(); CMB / CMMLU / C-Eval join through --bench NAME=PATH
DEFAULT_BENCHMARKS = {
    "medqa": "benchmarks/medqa_usmle_4opt_test.jsonl",
    "medmcqa": "benchmarks/medmcqa_dev.jsonl",
    "mmlu_med": "benchmarks/mmlu_medical_test.jsonl",
    "pubmedqa": "benchmarks/pubmedqa_pqal.jsonl",
    "cmb_clin": "benchmarks/cmb_clin.jsonl",
    "cmtmedqa": "dialogue/cmtmedqa_test.jsonl",
    "huatuo26m": "dialogue/huatuo26m_test_sample.jsonl",
}


@dataclass(kw_only=True)
class DecontamConfig:
    n: int = 13  # English: words (GPT-3's 13-grams)
    n_zh: int = 25  # Chinese: characters; 13 characters (~7 words) are common stock phrases of health QA sites
    min_short: int = 8  # lines / items shorter than n units are matched whole when at least this long
    min_short_zh: int = 15
    boilerplate_items: int = 10
    benchmarks: dict[str, str] = field(default_factory=dict)  # name -> jsonl path; empty -> DEFAULT_BENCHMARKS


def norm_units(text: str) -> list[str]:
    t = unicodedata.normalize("NFKC", text).lower()
    return [u for u in _UNIT.findall(t) if len(u) > 1 or not ("a" <= u <= "z")]


WINDOW = 1 << 18  # units per matching window of a long text
_P = np.uint64(1099511628211)  # FNV prime: polynomial rolling hash over per-unit hashes, vectorised


def _uh(us: list[str]) -> np.ndarray:
    return np.array([hash(x) for x in us], dtype=np.int64).view(np.uint64)


_K = np.uint64(0x9E3779B97F4A7C15)  # length tag: grams of different lengths never collide by design


def _grams(us: list[str] | np.ndarray, n: int) -> np.ndarray:
    """Hashes of all n-grams (int64; uint64 arithmetic wraps by design). us: units or their _uh()."""
    return _all_grams(us, [n])[0] if len(us) >= n else np.zeros(0, dtype=np.int64)


def _all_grams(us: list[str] | np.ndarray, lengths: list[int]) -> list[np.ndarray]:
    """Hashes of the n-grams for every n in lengths, in one incremental pass (h_n = h_{n-1} * P + u)."""
    u = us if isinstance(us, np.ndarray) else _uh(us)
    want, out = set(lengths), []
    acc = np.zeros(len(u), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for n in range(1, max(lengths) + 1):
            m = len(u) - n + 1
            if m <= 0:
                break
            acc = acc[:m] * _P + u[n - 1 : n - 1 + m]
            if n in want:
                out.append((acc + np.uint64(n) * _K).view(np.int64))
    return out


def item_text(rec: dict[str, Any]) -> str:
    """Everything of an eval item a training set could contain (answers too: SFT data restates them)."""
    return doc_text({k: v for k, v in rec.items() if k not in ("id", "lang", "source", "split", "subject", "topic")})


class Index:
    """Sorted int64 gram hashes -> (benchmark, item id); vectorised lookup with searchsorted."""

    def __init__(self, cfg: DecontamConfig):
        self.cfg = cfg
        benches = cfg.benchmarks or {k: str(data_dir() / v) for k, v in DEFAULT_BENCHMARKS.items()}
        self.items: list[tuple[str, str]] = []
        self.n_items: dict[str, int] = {}
        used_n: set[int] = set()
        hs: list[np.ndarray] = []
        owners: list[np.ndarray] = []
        short_h: list[int] = []  # whole short lines (a 12-word question, a long option) and short items
        short_o: list[int] = []
        short_len: set[int] = set()
        self.mcq: dict[int, list[str]] = {}
        mcq_h: list[int] = []
        mcq_o: list[int] = []
        mcq_len: set[int] = set()
        for name, path in benches.items():
            if not Path(path).exists():
                raise InputError(f"benchmark {name}: {path} not found")
            self.n_items[name] = 0
            for rec in read_jsonl(path):
                idx = len(self.items)
                self.items.append((name, str(rec.get("id", idx))))
                self.n_items[name] += 1
                text = item_text(rec)
                us = norm_units(text)
                zh = lang_of(text) == "zh"
                n, min_short = (cfg.n_zh, cfg.min_short_zh) if zh else (cfg.n, cfg.min_short)
                used_n.add(n)
                g = np.unique(_grams(us, n))
                hs.append(g)
                owners.append(np.full(len(g), idx, dtype=np.int64))
                lines = [norm_units(l) for l in text.split("\n")] + ([us] if len(us) < n else [])
                q = norm_units(str(rec.get("question", "")))
                if isinstance(rec.get("options"), dict) and 2 <= len(q) < cfg.n:
                    # short MCQ: the question is a candidate, confirmed when every option is in the doc too
                    opts = [norm_units(str(v)) for v in rec["options"].values()]
                    self.mcq[idx] = [" " + " ".join(o) + " " for o in opts if o]  # "A".."D"-only options: question alone
                    mcq_h.append(int(_grams(q, len(q))[0]))
                    mcq_o.append(idx)
                    mcq_len.add(len(q))
                for lu in lines:
                    if min_short <= len(lu) < n:
                        short_h.append(int(_grams(lu, len(lu))[0]))
                        short_o.append(idx)
                        short_len.add(len(lu))
        self.n_boilerplate = 0
        self.hashes, self.owners = self._table(np.concatenate(hs), np.concatenate(owners))
        self.short_hashes, self.short_owners = self._table(np.array(short_h, dtype=np.int64), np.array(short_o, dtype=np.int64))
        self.short_lengths = sorted(short_len)
        self.mcq_hashes, self.mcq_owners = np.array(mcq_h, dtype=np.int64), np.array(mcq_o, dtype=np.int64)
        o = np.argsort(self.mcq_hashes, kind="stable")
        self.mcq_hashes, self.mcq_owners = self.mcq_hashes[o], self.mcq_owners[o]
        self.mcq_lengths = sorted(mcq_len)
        # one merged table for a single searchsorted per document; confirm=True rows need their options
        h = np.concatenate([self.hashes, self.short_hashes, self.mcq_hashes])
        o = np.concatenate([self.owners, self.short_owners, self.mcq_owners])
        c = np.concatenate([np.zeros(len(self.hashes) + len(self.short_hashes), bool), np.ones(len(self.mcq_hashes), bool)])
        order = np.argsort(h, kind="stable")
        self.all_h, self.all_o, self.all_c = h[order], o[order], c[order]
        self.lengths = sorted({*used_n, *self.short_lengths, *self.mcq_lengths})

    def _table(self, h: np.ndarray, o: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Drop grams shared by >= boilerplate_items distinct items; sort for searchsorted."""
        order = np.lexsort((o, h))
        h, o = h[order], o[order]
        first = np.ones(len(h), dtype=bool)
        first[1:] = (h[1:] != h[:-1]) | (o[1:] != o[:-1])
        pairs = np.stack([h[first], o[first]], 1)
        uh, counts = np.unique(pairs[:, 0], return_counts=True)
        common = uh[counts >= self.cfg.boilerplate_items]
        keep = ~np.isin(pairs[:, 0], common)
        self.n_boilerplate += int(len(common))
        return pairs[keep, 0], pairs[keep, 1]  # sorted by hash

    def match(self, text: str) -> set[int]:
        """Indices of eval items sharing a gram with text (a long text in windows of WINDOW units, so memory
        stays bounded: a 50 MB document costs its units, not a dozen gram arrays over all of them)."""
        us = norm_units(text)
        hit: set[int] = set()
        if not self.lengths or len(us) < min(self.lengths) or not len(self.all_h):
            return hit
        joined: list[str] = []
        over = max(self.lengths) - 1
        for w in range(0, max(1, len(us) - over), WINDOW):
            hit |= self._match_units(us, us[w : w + WINDOW + over], joined)
        return hit

    def _match_units(self, us: list[str], window: list[str], joined: list[str]) -> set[int]:
        hit: set[int] = set()
        q = np.concatenate(_all_grams(window, self.lengths))
        pos = np.minimum(np.searchsorted(self.all_h, q), len(self.all_h) - 1)
        for p in np.nonzero(self.all_h[pos] == q)[0]:
            k = pos[p]
            while k < len(self.all_h) and self.all_h[k] == q[p]:  # a hash may have several owners
                j = int(self.all_o[k])
                if self.all_c[k]:
                    if not joined:  # built once per text: the options may appear anywhere in it
                        joined.append(" " + " ".join(us) + " ")
                    if not all(opt in joined[0] for opt in self.mcq[j]):
                        k += 1
                        continue
                hit.add(j)
                k += 1
        return hit


def make_manifest(index: Index, per_bench: dict[str, set[str]], removed: list[dict], inputs: dict) -> dict[str, Any]:
    """The manifest eval's contamination guard reads (eval/contamination.py): per benchmark, the items that
    removed training documents overlapped."""
    return {"n": index.cfg.n,
            "benchmarks": {b: {"overlapping_items": sorted(s), "n": len(s), "n_items": index.n_items[b]}
                           for b, s in per_bench.items()},
            "removed": removed, "inputs": inputs, "boilerplate_grams_ignored": index.n_boilerplate}


def decontaminate(files: Iterable[Path], out_dir: Path, index: Index, progress: bool = True,
                  allow_empty: bool = False) -> dict[str, Any]:
    """Clean each jsonl into out_dir/<its output name> (see carebot.commit.output_names); return the manifest
    (also written to out_dir/manifest.json, last)."""
    from tqdm.auto import tqdm

    files = list(files)
    require_records(files, allow_empty)
    removed: list[dict[str, Any]] = []
    per_bench: dict[str, set[str]] = {b: set() for b in index.n_items}
    inputs: dict[str, dict[str, int]] = {}
    with Outputs() as outs:  # committed together once every input is read: a bad record leaves no output
        for path, name in zip(files, output_names(files)):
            outs.touch(out_dir / name)
            n = 0
            for line, rec in tqdm(iter_jsonl(path), desc=f"decontam {name}", disable=not progress):
                n += 1
                hit = index.match(record_text(rec, f"{path}:{line}"))
                if not hit:
                    outs.write(out_dir / name, rec)
                    continue
                its = sorted(index.items[i] for i in hit)
                for b, iid in its:
                    per_bench[b].add(iid)
                removed.append({"file": str(path), "line": line, "id": rec.get("id"), "benchmarks": sorted({b for b, _ in its}),
                                "items": [f"{b}:{i}" for b, i in its[:20]]})
            kept = outs.counts[out_dir / name]
            inputs[str(path)] = {"output": name, "docs": n, "kept": kept, "removed": n - kept}
    manifest = make_manifest(index, per_bench, removed, inputs)
    write_json(out_dir / "manifest.json", manifest)
    rows = "".join(f"| {b} | {v['n']} / {v['n_items']} |\n" for b, v in manifest["benchmarks"].items())
    write_text(out_dir / "report.md", f"# Decontamination ({index.cfg.n}-grams)\n\n{len(removed)} training docs removed.\n\n"
              f"| benchmark | items seen in training |\n|---|---|\n{rows}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carebot data decontam", description="n-gram decontamination against every eval set")
    ap.add_argument("--input", nargs="+", required=True, help="training jsonl files (CPT shards, SFT, DPO)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=13)
    ap.add_argument("--bench", action="append", default=[], help="NAME=PATH, adds an eval set (e.g. cmmlu_med=...)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--allow-empty", action="store_true", help="an input with no documents is not an error")
    a = parse_command(ap, argv)
    benches = {k: str(data_dir() / v) for k, v in DEFAULT_BENCHMARKS.items()}
    for b in a.bench:
        if "=" not in b:
            raise InputError(f"--bench {b!r}: expected NAME=PATH")
        k, v = b.split("=", 1)
        benches[k] = v
    require_records(a.input, a.allow_empty)  # before the index is built: bad input fails in a blink
    idx = Index(DecontamConfig(n=a.n, benchmarks=benches))
    m = decontaminate([Path(p) for p in a.input], Path(a.out), idx, progress=not a.no_progress, allow_empty=a.allow_empty)
    print(f"removed {len(m['removed'])} docs;", {b: v["n"] for b, v in m["benchmarks"].items()})
    return 0


if __name__ == "__main__":
    from carebot.cli import script

    script(main, "carebot data decontam")
