"""CPT fixtures: .bin/.idx prefixes built from real real text with the real LLaMA-3 tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from carebot.paths import cache_dir

SOURCES = {  # bucket -> (file, text field(s))
    "medical_en": ("dialogue/medquad_en_sample.jsonl", ("question", "answer")),
    "medical_zh": ("dialogue/huatuo26m_test_sample.jsonl", ("question", "answer")),
    "general_en": ("general/wikitext2_paragraphs_en.jsonl", ("text",)),
}


def write_prefix(tokenizer, texts: list[str], prefix: Path) -> Path:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    eod = tokenizer.convert_tokens_to_ids("<|end_of_text|>")
    b = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.int32)
    for t in texts:
        ids = tokenizer(t)["input_ids"] + [eod]
        b.add_document(np.array(ids, dtype=np.int32), [len(ids)])
    b.finalize(str(prefix) + ".idx")
    return prefix


@pytest.fixture(scope="session")
def cpt_prefixes(data_root, small_tokenizer_dir) -> dict[str, str]:
    """Three real buckets, 600 docs each, tokenized with the small BPE (cached across sessions)."""
    from carebot.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(small_tokenizer_dir)
    out = cache_dir() / f"cpt-prefixes-{small_tokenizer_dir.name}"
    out.mkdir(parents=True, exist_ok=True)
    prefixes = {}
    for name, (rel, keys) in SOURCES.items():
        prefix = out / name
        if not Path(str(prefix) + ".idx").exists():
            texts = []
            with open(data_root / rel, encoding="utf-8") as f:
                for line in f:
                    d = json.loads(line)
                    texts.append("\n".join(str(d[k]) for k in keys))
                    if len(texts) >= 600:
                        break
            write_prefix(tokenizer, texts, Path(str(prefix) + ".part"))
            for s in (".bin", ".idx"):
                Path(str(prefix) + ".part" + s).replace(str(prefix) + s)
        prefixes[name] = str(prefix)
    return prefixes
