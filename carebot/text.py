"""Text of records: the text of a record in any of our schemas, and the ONE language detector (zh / en) that
every stage uses (curation buckets, tokenize manifests, SFT building, DPO pairs)."""
from __future__ import annotations

import re
from typing import Any

import numpy as np

ZH_SHARE = 0.3  # zh when CJK ideographs are at least this share of the estimated words
WORD_LETTERS = 4  # Latin letters per English word (one CJK ideograph ~ one word)
_CJK = re.compile("[\u4000-\u9fff]")
_LATIN = re.compile("[A-Za-z]")


# No token of a real vocabulary spans more characters than this: text past `max_tokens * MAX_CHARS_PER_TOKEN`
# characters cannot reach the first `max_tokens` tokens, so it is cut BEFORE tokenizing (a 50 MB document
# costs what its head costs, not a whole-text tokenization).
MAX_CHARS_PER_TOKEN = 64


def clip_for_tokens(text: str, max_tokens: int) -> str:
    """`text` cut to what can reach its first `max_tokens` tokens."""
    return text[: max_tokens * MAX_CHARS_PER_TOKEN]


# every key `doc_text` reads: a record with none of them has no text in any schema we know
TEXT_KEYS = ("text", "title", "description", "prompt", "instruction", "input", "question", "context", "options",
             "answer", "output", "long_answer", "chosen", "rejected", "chosen_response", "rejected_response",
             "response", "messages", "conversations", "qa_pairs")


def record_text(rec: dict[str, Any], where: str, key: str = "text") -> str:
    """`doc_text(rec)`, or an InputError naming `where` when the record has no text: no key of any schema, or
    `key` present with a value that is not a string."""
    from carebot.errors import InputError

    if key in rec and not isinstance(rec[key], str):
        raise InputError(f"{where}: '{key}' is {type(rec[key]).__name__}, expected a string")
    if key not in rec and not any(k in rec for k in TEXT_KEYS):
        raise InputError(f"{where}: no '{key}' field (nor any other text field: {', '.join(TEXT_KEYS[1:])})")
    return doc_text(rec)


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


def lang_code(text: str) -> int:
    """0 = zh, 1 = en, 2 = other. A Chinese character is about a word, an English word about WORD_LETTERS
    letters: zh when CJK ideographs (U+4000-U+9FFF) make up >= ZH_SHARE of the estimated words (a Chinese case
    note with English drug names stays zh, an English paper quoting a Chinese term stays en); else en when there
    is any ASCII letter; else other."""
    cjk = len(_CJK.findall(text))
    latin = len(_LATIN.findall(text))
    if cjk and cjk * WORD_LETTERS >= ZH_SHARE * (cjk * WORD_LETTERS + latin):
        return 0
    return 1 if latin else 2


def lang_of(text: str) -> str:
    """"zh" or "en" (the two languages the pipeline buckets; text with no letters at all counts as en)."""
    return "zh" if lang_code(text) == 0 else "en"


def lang_codes(col, block: int = 1 << 20) -> np.ndarray:
    """`lang_code` of every document of a pyarrow string column, from its UTF-8 bytes (CJK ideographs have lead
    bytes E4-E9), with blockwise cumulative sums: a few MB of scratch, no Python loop per document."""
    import pyarrow as pa

    n = len(col)
    if n == 0:
        return np.zeros(0, dtype=np.int8)
    big = pa.types.is_large_string(col.type)
    offs = np.frombuffer(col.buffers()[1], dtype=np.int64 if big else np.int32)[col.offset: col.offset + n + 1]
    b = np.frombuffer(col.buffers()[2], dtype=np.uint8)[offs[0]: offs[-1]]
    bounds = (offs - offs[0]).astype(np.int64)
    at = np.zeros((2, n + 1), dtype=np.int64)  # matches in b[:x] for every document boundary x
    carry = np.zeros(2, dtype=np.int64)
    j0 = int(np.searchsorted(bounds, 0, "right"))
    for s in range(0, len(b), block):
        e = min(s + block, len(b))
        j1 = int(np.searchsorted(bounds, e, "right"))
        low = b[s:e] | 0x20  # ASCII letters fold to a-z
        for row, hit in enumerate(((b[s:e] >= 0xE4) & (b[s:e] <= 0xE9), (low >= 0x61) & (low <= 0x7A))):
            cs = np.cumsum(hit, dtype=np.int32)
            at[row, j0:j1] = carry[row] + cs[bounds[j0:j1] - s - 1]
            carry[row] += cs[-1]
        j0 = j1
    cjk, latin = np.diff(at[0]), np.diff(at[1])
    out = np.full(n, 2, dtype=np.int8)
    out[latin > 0] = 1
    out[(cjk > 0) & (cjk * WORD_LETTERS >= ZH_SHARE * (cjk * WORD_LETTERS + latin))] = 0
    return out
