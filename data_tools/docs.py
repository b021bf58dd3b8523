"""Document I/O shared by the curation steps: the text of any record, JSONL read/write with atomic rename,
and input errors that name the offending file:line."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator


class InputError(SystemExit):
    """Bad input: a one-line message with file:line, no traceback."""

    def __init__(self, msg: str):
        super().__init__(f"error: {msg}")


def doc_text(rec: dict[str, Any]) -> str:
    """The text of a record in any of our schemas: {text}, {title, description, qa_pairs}, {question,
    answer/options/context}, {messages}, SFT {conversations}, DPO {prompt, chosen, rejected}."""
    if isinstance(rec.get("text"), str):
        return rec["text"]
    parts: list[str] = []
    for k in ("title", "description", "prompt", "instruction", "input", "question", "context"):
        if isinstance(rec.get(k), str) and rec[k]:
            parts.append(rec[k])
    if isinstance(rec.get("options"), dict):
        parts += [str(v) for v in rec["options"].values()]
    for k in ("answer", "output", "long_answer", "chosen", "rejected", "chosen_response", "rejected_response", "response"):
        v = rec.get(k)
        if isinstance(v, str) and len(v) > 1:  # skip bare option letters
            parts.append(v)
        elif isinstance(v, list):
            parts += [m.get("content", "") for m in v if isinstance(m, dict)]
    for k in ("messages", "conversations"):
        for m in rec.get(k) or []:
            if isinstance(m, dict):
                parts.append(str(m.get("content", m.get("value", ""))))
    for qa in rec.get("qa_pairs") or []:
        parts += [qa.get("question", ""), qa.get("answer", "")]
    return "\n".join(p for p in parts if p)


def iter_jsonl(path: str | Path, limit: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of a JSONL file; a missing file, bad UTF-8 or bad JSON is an InputError naming
    file:line. Blank lines are skipped; `limit` counts lines."""
    if not Path(path).is_file():
        raise InputError(f"{path}: no such input file")
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if limit is not None and n > limit:
                return
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{n}: not valid UTF-8 (byte {e.start})") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise InputError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
            yield n, rec


def read_jsonl(path: str | Path, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """The records of a JSONL file (see `iter_jsonl`)."""
    for _, rec in iter_jsonl(path, limit):
        yield rec


def write_jsonl(path: str | Path, recs: Iterable[dict[str, Any]]) -> int:
    """Write to path.tmp then rename: a crash never leaves a half-written file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def write_json(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def lang_of(text: str) -> str:
    """zh if CJK characters are at least 20% of the non-space characters, else en."""
    s = [c for c in text[:2000] if not c.isspace()]
    if not s:
        return "en"
    cjk = sum("\u4e00" <= c <= "\u9fff" for c in s)
    return "zh" if cjk / len(s) >= 0.2 else "en"
