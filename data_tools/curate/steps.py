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
        doc.metadata["contaminated"] = [f"{b}:{i}" for b, i in sorted(self._index.items[i] for i in hit)[:20]]
        for b in benches:
            self.stat_update(f"contaminated_{b}")
        return False, "contaminated"


class Bucketer(PipelineStep):
    """{medical, general, medical_hq} x {zh, en} (data_tools/curate/bucket.py), as metadata `bucket` for the
    writer's `${bucket}` folder; `lang` from the one language detector."""

    name = "bucket"
    type = "annotator"

    def __init__(self, hq_threshold: float = 4.0, min_domain_prob: float = 0.5):
        super().__init__()
        self.hq_threshold, self.min_domain_prob = hq_threshold, min_domain_prob

    def run(self, data, rank: int = 0, world_size: int = 1):
        from data_tools.curate.bucket import bucket_of

        for doc in data:
            lang = doc.metadata.get("lang") if doc.metadata.get("lang") in ("zh", "en") else lang_of(doc.text)
            doc.metadata["lang"] = lang
            doc.metadata["bucket"] = f"{bucket_of(record(doc), self.hq_threshold, self.min_domain_prob)}_{lang}"
            self.stat_update(doc.metadata["bucket"])
            self.update_doc_stats(doc)
            yield doc
        note_peak_rss(self)
