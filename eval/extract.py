"""Answer extraction from free generations (zh + en), for generation-scored MCQ (CMB, or any benchmark with
`--mode generate`). Order of trust: an explicit answer marker ("答案：B", "the answer is (C)"), a leading
letter ("B.", "(B)", "B"), option text quoted verbatim, then a lone option letter anywhere. Multi-answer
(CMB 多项选择题) keeps every letter of the matched span; single-answer keeps the first.
"""
from __future__ import annotations

import re
import unicodedata

# Full-width letters / punctuation -> ASCII (NFKC), so "Ａ" and "（Ｂ）" match like "A" and "(B)".
_SEP = r"[\s,，、;；/和与及&]|and|or"

# "答案是：B", "正确答案为 A、C", "故选C", "应选 BD", "选项C", "答：D"
_ZH_MARK = re.compile(r"(?:正确)?(?:答案|选项|答)\s*(?:应该|应当|应)?(?:是|为|选)?\s*[:：]?\s*(?:选项)?\s*"
                      r"[\(\[【]?((?:[A-H](?:" + _SEP + r")*)+)")
_ZH_SELECT = re.compile(r"(?:故|应|所以|因此|我)?选(?:择)?\s*[:：]?\s*(?:选项)?\s*[\(\[【]?((?:[A-H](?:" + _SEP + r")*)+)")
# "The answer is (C)", "correct answer: B", "Answer: A and C", "the correct option is D", "I choose B"
_EN_MARK = re.compile(r"(?:answer|option|choice)s?\s*(?:is|are|would be|should be|:|=)?\s*(?:option|choice)?\s*"
                      r"[:\-]?\s*[\(\[]?((?:\b[A-H]\b[\)\]]?(?:\s*(?:,|and|&|or)\s*|\s+)?)+)", re.I)
_EN_CHOOSE = re.compile(r"\b(?:choose|select|pick)\s+(?:option\s+)?[\(\[]?\b([A-H])\b", re.I)
# A leading letter: "B", "B.", "(B)", "B) ...", "B：...", "BD", "A、C"
_LEAD = re.compile(r"^\s*[\(\[【]?((?:[A-H](?:[\s,，、]*))+?)(?:[\)\]】\.．:：、\s]|$)")
_LONE = re.compile(r"(?<![A-Za-z])([A-H])(?![A-Za-z]|\s+[a-z])")  # not the article "A patient"


def _norm(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def _letters(span: str, valid: str) -> str:
    got = [c for c in span.upper() if c in valid]
    return "".join(dict.fromkeys(got))


def _pick(letters: str, multi: bool) -> str:
    if not letters:
        return ""
    return "".join(sorted(set(letters))) if multi else letters[0]


def _strip_text(s: str) -> str:
    return re.sub(r"[\s。．.,，;；:：!！?？\"'“”‘’()（）]", "", s).lower()


def extract_answer(text: str, options: dict[str, str], multi: bool = False) -> str:
    """The chosen letter(s) (sorted when `multi`), or "" when nothing can be read."""
    t = _norm(text or "").strip()
    valid = "".join(options)
    if not t:
        return ""
    for pat in (_ZH_MARK, _ZH_SELECT):
        m = pat.search(t)
        if m:
            got = _letters(m.group(1), valid)
            if got:
                return _pick(got, multi)
    for pat in (_EN_MARK, _EN_CHOOSE):
        for m in pat.finditer(t):
            # English marker spans must be letters (not a word like "A patient"): keep upper-case letters only
            got = "".join(c for c in re.findall(r"\b([A-H])\b", m.group(1)) if c in valid)
            if got:
                return _pick(got, multi)
    m = _LEAD.match(t)
    if m:
        got = _letters(m.group(1), valid)
        rest = t[m.end(1):].lstrip()
        # "A 45-year-old..." is prose, not an answer: a single leading letter must be followed by punctuation or end
        if got and (len(m.group(1).strip()) > 1 or not rest or rest[0] in ").．:：、]】，,\n" or
                    t.lstrip()[0] in "([【"):
            return _pick(got, multi)
    # Option text quoted: every option whose text occurs (longest first; a text inside another doesn't count).
    flat = _strip_text(t)
    hits = [k for k, v in sorted(options.items(), key=lambda kv: -len(kv[1])) if _strip_text(v) and _strip_text(v) in flat]
    hits = [k for k in hits if not any(k != o and _strip_text(options[k]) in _strip_text(options[o]) for o in hits)]
    if hits and (multi or len(hits) == 1):
        return _pick("".join(hits), multi)
    # Last resort: exactly one distinct option letter standing alone in the text.
    lone = {c for c in _LONE.findall(t) if c in valid}
    if len(lone) == 1 or (multi and lone):
        return _pick("".join(sorted(lone)), multi)
    return ""
