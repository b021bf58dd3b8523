"""The encoder's embedding cache: parallel runs sharing it lose nothing, and a crafted part (a pickled object
array) is skipped, never unpickled."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from data_tools.curate import encoder as E
from tests.helpers import REPO, read_jsonl

ENC = E.EncoderConfig(max_length=16, batch_size=16)


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CAREBOT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "emb"


@pytest.mark.slow  # multi-process / cluster run: the slow set (.ci/run runs it)
def test_parallel_runs_lose_no_cache_entry(tmp_path, monkeypatch, data_root):
    emb = _cache(tmp_path, monkeypatch)
    texts = [r["text"] for r in read_jsonl(data_root / "general" / "wikitext2_paragraphs_en.jsonl", 120)]
    code = ("import json, sys; from data_tools.curate import encoder as E; "
            "E.embed_cached(json.load(open(sys.argv[1])), E.EncoderConfig(max_length=16, batch_size=16))")
    procs = []
    for k in range(3):  # three runs at once, each on its own third of the texts
        f = tmp_path / f"t{k}.json"
        f.write_text(__import__("json").dumps(texts[k::3]))
        procs.append(subprocess.Popen([sys.executable, "-c", code, str(f)], cwd=REPO, env={**__import__("os").environ}))
    assert [p.wait(timeout=600) for p in procs] == [0, 0, 0]
    (d,) = emb.iterdir()
    store, parts = E._cache_parts(d)
    assert len(parts) == 3 and len(store) == len(set(texts))  # every entry of every run is there
    monkeypatch.setattr(E, "embed", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-encoded")))
    X = E.embed_cached(texts, ENC)  # all from the cache
    assert X.shape[0] == len(texts)


def test_a_crafted_cache_part_never_runs(tmp_path, monkeypatch, data_root):
    emb = _cache(tmp_path, monkeypatch)
    texts = [r["text"] for r in read_jsonl(data_root / "general" / "wikitext2_paragraphs_en.jsonl", 8)]
    clean = E.embed_cached(texts, ENC)
    (d,) = emb.iterdir()
    marker = tmp_path / "pwned"
    np.savez(d / "part-99999999999999999999-1.npz", keys=np.array(["k"]), emb=np.array([Payload(marker)], dtype=object))
    again = E.embed_cached(texts, ENC)
    assert not marker.exists() and np.array_equal(clean, again)
    assert not (d / "part-99999999999999999999-1.npz").exists()  # skipped and removed
