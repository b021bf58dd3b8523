"""The CareBot curation stages as datatrove pipeline steps: the same functions as the single-process commands
(`rules.process`, the encoder heads of `domain` / `datarater`, `decontam.Index`, `bucket.bucket_of`), so a
document is judged the same way whichever runs it. Filters return `(keep, reason)` and hand what they drop to
their exclusion writer; annotators add metadata; every step counts what it saw in datatrove's per-task stats.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter

from carebot.text import lang_of


# What a task loads (encoders and heads, the decontamination index), kept per process: datatrove gives each task a
# fresh copy of its steps, and a worker that runs task after task should not load them again for each.
_PROCESS_CACHE: dict[tuple, Any] = {}


def loaded(key: tuple, make):
    if key not in _PROCESS_CACHE:
        _PROCESS_CACHE[key] = make()
    return _PROCESS_CACHE[key]


def note_peak_rss(step: PipelineStep) -> None:
    """The task process's peak RSS so far, as a stat (`peak_rss_mb`; the report keeps its max over tasks)."""
    import resource

    step.stat_update("peak_rss_mb", value=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, unit="task")


def record(doc: Document) -> dict[str, Any]:
    """A document as the single-process tools read and write it: id, text, then its annotations at top level
    (datatrove's `file_path` and our private `_` keys left out)."""
    return {"id": doc.id, "text": doc.text,
            **{k: v for k, v in doc.metadata.items() if not k.startswith("_") and k != "file_path"}}


class RulesFilter(BaseFilter):
    """Bilingual rule filters + the PII policy (data_tools/curate/rules.py): drop reason = the rule's name."""

    name = "rules + PII"

    def __init__(self, cfg=None, exclusion_writer=None):
        from data_tools.curate.rules import RulesConfig

        super().__init__(exclusion_writer)
        self.cfg = cfg or RulesConfig()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        from data_tools.curate.rules import process

        rec, reason, kinds = process({"text": doc.text}, self.cfg, doc.id)
        if rec is None:
            return False, reason
        for k in kinds:
            self.stat_update(f"pii_{k}")
        doc.text = rec["text"]
        return True


class _Loaded:
    """The encoders and heads a task loaded (kept out of datatrove's executor.json, which stores step attributes)."""

    def __init__(self, heads: dict, encoders: dict):
        self.heads, self.encoders = heads, encoders


class EncoderHeads(PipelineStep):
    """The domain classifier and the DataRater on one encoding per document: documents are gathered `chunk` at
    a time, sorted by length into batches, cut to the encoder's max_length BEFORE tokenizing, and scored by
    each head. The encoder loads once per task (bf16 on GPU). Adds `domain`, `domain_prob`, `quality`."""

    name = "domain + DataRater"
    type = "annotator"

    def __init__(self, domain_model: str | None, datarater_model: str | None, batch_size: int = 64, chunk: int = 1024):
        super().__init__()
        self.models = {"domain": domain_model, "quality": datarater_model}
        self.batch_size, self.chunk = batch_size, chunk
        self._loaded: _Loaded | None = None

    def _load(self) -> _Loaded:
        from data_tools.curate import encoder as E

        heads, encoders = {}, {}
        for field, path in self.models.items():
            if path:
                head, enc, meta = E.load_model(Path(path))
                enc = E.resolve(E.EncoderConfig(**{**enc.__dict__, "batch_size": self.batch_size}))
                key = (enc.path, enc.pooling, enc.prefix, enc.max_length)
                if key not in encoders:  # one encoding serves both heads when they share an encoder
                    encoders[key] = (enc, E.load(enc))
                heads[field] = (head, meta, key)
        return _Loaded(heads, encoders)

    def _score(self, docs: list[Document]) -> None:
        from data_tools.curate import encoder as E
        from data_tools.curate.datarater import scores
        from data_tools.curate.domain import labels

        texts = [d.text for d in docs]
        X = {k: E.embed(texts, enc, tok_model=tm) for k, (enc, tm) in self._loaded.encoders.items()}
        for field, (head, meta, key) in self._loaded.heads.items():
            for d, fields in zip(docs, labels(head, X[key], meta) if field == "domain" else scores(head, X[key])):
                d.metadata.update(fields)
                if field == "domain":
                    self.stat_update(f"domain_{fields['domain']}")

    def run(self, data, rank: int = 0, world_size: int = 1):
        if not any(self.models.values()):
            yield from data
            return
        if self._loaded is None:
            self._loaded = loaded(("encoder heads", self.models["domain"], self.models["quality"], self.batch_size), self._load)
        buf: list[Document] = []
        for doc in data:
            buf.append(doc)
            if len(buf) >= self.chunk:
                with self.track_time(unit="chunk"):
                    self._score(buf)
                self.stat_update("scored", value=len(buf))
                yield from buf
                buf = []
        if buf:
            self._score(buf)
            self.stat_update("scored", value=len(buf))
            yield from buf


class DecontamFilter(BaseFilter):
    """n-gram decontamination against every eval set (data_tools/curate/decontam.py): drop reason
    `contaminated`, the benchmarks hit in the document's metadata."""

    name = "decontam"

    def __init__(self, cfg=None, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.cfg = cfg
        self._index = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        from data_tools.curate.decontam import DecontamConfig, Index

        if self._index is None:
            cfg = self.cfg or DecontamConfig()
            self._index = loaded(("decontam", repr(cfg)), lambda: Index(cfg))
        hit = self._index.match(doc.text)
        if not hit:
            return True
        benches = sorted({self._index.items[i][0] for i in hit})
        doc.metadata["contaminated"] = [f"{b}:{i}" for b, i in sorted(self._index.items[i] for i in hit)]
        for b in benches:
            self.stat_update(f"contaminated_{b}")
        return False, "contaminated"


def doc_lang(doc: Document) -> str:
    """zh | en: the record's `lang` when it says one of them, else the one language detector's."""
    return doc.metadata["lang"] if doc.metadata.get("lang") in ("zh", "en") else lang_of(doc.text)


def scored_docs(folder: str, rank: int):
    """What stage 1's task `rank` wrote (work/scored/RANK.jsonl), in its order, as Documents."""
    from carebot.io import iter_jsonl

    path = Path(folder) / f"{rank:05d}.jsonl"
    if path.exists():
        for _, rec in iter_jsonl(path):
            yield Document(text=rec["text"], id=rec["id"], metadata=rec.get("metadata", {}))


class HqCut(PipelineStep):
    """One task: the DataRater score from which a medical document is medical_hq, per language, into `cut_file`
    for the bucketer. A fixed `hq_threshold` (BAAI's DataRater card: >= 4), or, with `top_frac`, the score of
    the top `top_frac` of the medical documents that survive near-dup removal (bucket.hq_cuts' rule; it reads
    every scored document once, 8 bytes a medical one)."""

    name = "medical_hq cut"

    def __init__(self, scored: str, remove: str, cut_file: str, tasks: int, hq_threshold: float = 4.0,
                 top_frac: float | None = None, min_domain_prob: float = 0.5):
        super().__init__()
        self.scored, self.remove, self.cut_file, self.tasks = scored, remove, cut_file, tasks
        self.hq_threshold, self.top_frac, self.min_domain_prob = hq_threshold, top_frac, min_domain_prob

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from array import array

        import numpy as np

        from carebot.io import write_json
        from data_tools.curate.bucket import bucket_of, top_cut

        by_lang: dict[str, array] = {}
        for r in range(self.tasks if self.top_frac else 0):
            rm = Path(self.remove) / f"{r:06d}.remove"
            gone = set(np.fromfile(rm, dtype="<u4").tolist()) if rm.exists() else set()
            for i, doc in enumerate(scored_docs(self.scored, r)):
                if i not in gone and bucket_of(record(doc), float("inf"), self.min_domain_prob) != "general":
                    by_lang.setdefault(doc_lang(doc), array("d")).append(float(doc.metadata.get("quality", 0.0)))
        cuts = {lg: float(top_cut(q, self.top_frac)) for lg, q in sorted(by_lang.items())}
        write_json(Path(self.cut_file), {"hq_threshold": self.hq_threshold, "top_frac": self.top_frac, "cuts": cuts})
        note_peak_rss(self)


class Bucketer(PipelineStep):
    """{medical, general, medical_hq} x {zh, en} (data_tools/curate/bucket.py), as metadata `bucket` for the
    writer's `${bucket}` folder; `lang` from the one language detector; the medical_hq score per language from
    HqCut's `cut_file`."""

    name = "bucket"
    type = "annotator"

    def __init__(self, cut_file: str, min_domain_prob: float = 0.5):
        super().__init__()
        self.cut_file, self.min_domain_prob = cut_file, min_domain_prob

    def run(self, data, rank: int = 0, world_size: int = 1):
        import json

        from data_tools.curate.bucket import bucket_of

        cut = json.loads(Path(self.cut_file).read_text())
        for doc in data:
            lang = doc.metadata["lang"] = doc_lang(doc)
            hq = cut["cuts"].get(lang, cut["hq_threshold"])
            doc.metadata["bucket"] = f"{bucket_of(record(doc), hq, self.min_domain_prob)}_{lang}"
            self.stat_update(doc.metadata["bucket"])
            self.update_doc_stats(doc)
            yield doc
        note_peak_rss(self)
