"""Private-information detection for zh + en text: e-mail, phone numbers (CN mobile / landline, international
+CC), Chinese resident ID (GB 11643-1999 checksum + a real birth date), bank cards (13-19 digits, Luhn), IPv4.

Checksummed kinds (ID, card) are only reported when the checksum holds, so ordinary long numbers
(order numbers, measurements) are not redacted. datatrove's PIIFormatter covers e-mail and IP only.
"""
from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}(?![A-Za-z0-9-])")
# CN mobile: 1[3-9] + 9 digits, optional +86 / 86 prefix, optional 3-4-4 separators
CN_MOBILE = re.compile(r"(?<![\d+])(?:\+?86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}(?!\d)")
CN_LANDLINE = re.compile(r"(?<!\d)(?:\(0\d{2,3}\)|0\d{2,3}-)\s?\d{7,8}(?!\d)")
INTL_PHONE = re.compile(r"(?<![A-Za-z0-9+])\+(?!86)\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?!\d)")
CN_ID = re.compile(r"(?<![\dA-Za-z])\d{17}[\dXx](?![\dA-Za-z])")
CARD = re.compile(r"(?<![\d-])(?:\d{4}[ -]?){3}\d{1,7}(?![\d-])")
IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])")

_DIGITS = re.compile(r"\d{3}")
_ID_W = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def valid_cn_id(s: str) -> bool:
    """18-char resident ID: weighted mod-11 check digit and a plausible birth date (YYYYMMDD at 7-14)."""
    s = s.upper()
    if len(s) != 18 or not s[:17].isdigit():
        return False
    if _ID_CHECK[sum(int(c) * w for c, w in zip(s[:17], _ID_W)) % 11] != s[17]:
        return False
    try:
        born = datetime.date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return False
    return datetime.date(1900, 1, 1) <= born <= datetime.date.today()


def _id_shaped(d: str) -> bool:
    """18 digits with a birth date where an ID has one: a mistyped ID, not a card (1 in 10 pass Luhn)."""
    if len(d) != 18:
        return False
    try:
        datetime.date(int(d[6:10]), int(d[10:12]), int(d[12:14]))
    except ValueError:
        return False
    return 1900 <= int(d[6:10]) <= datetime.date.today().year


def luhn_ok(digits: str) -> bool:
    total, alt = 0, False
    for c in reversed(digits):
        d = int(c)
        if alt:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        alt = not alt
    return total % 10 == 0


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s)


@dataclass
class Span:
    start: int
    end: int
    kind: str  # email | phone | cn_id | card | ip


def find_pii(text: str) -> list[Span]:
    """All PII spans, non-overlapping, checksummed kinds first (an ID is not also a card or a phone)."""
    spans: list[Span] = []

    def add(m: re.Match, kind: str) -> None:
        if not any(m.start() < s.end and s.start < m.end() for s in spans):
            spans.append(Span(m.start(), m.end(), kind))

    if "@" in text:  # cheap guards: the regexes scan every position otherwise
        for m in EMAIL.finditer(text):
            add(m, "email")
    if not _DIGITS.search(text):
        return sorted(spans, key=lambda s: s.start)
    for m in CN_ID.finditer(text):
        if valid_cn_id(m.group()):
            add(m, "cn_id")
    for m in CARD.finditer(text):
        d = _digits(m.group())
        if 13 <= len(d) <= 19 and luhn_ok(d) and len(set(d)) > 2 and not _id_shaped(d):
            add(m, "card")
    for rx in (CN_MOBILE, CN_LANDLINE, INTL_PHONE):
        for m in rx.finditer(text):
            if rx is not INTL_PHONE or 8 <= len(_digits(m.group())) <= 15:
                add(m, "phone")
    for m in IPV4.finditer(text):
        add(m, "ip")
    return sorted(spans, key=lambda s: s.start)


def redact(text: str, spans: list[Span] | None = None) -> str:
    """Replace each span with a typed placeholder, e.g. <EMAIL>, <PHONE>, <CN_ID>, <CARD>, <IP>."""
    spans = find_pii(text) if spans is None else spans
    out, pos = [], 0
    for s in spans:
        out += [text[pos : s.start], f"<{s.kind.upper()}>"]
        pos = s.end
    return "".join(out) + text[pos:]
