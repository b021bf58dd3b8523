"""Rule filters and PII on real text: recall on embedded PII, no false positive on failed checksums."""
from __future__ import annotations

import json
import random

from data_tools.curate import pii
from data_tools.curate.rules import RulesConfig, check, main, process
from tests.helpers import read_jsonl


def _cn_id(rng: random.Random, valid: bool = True) -> str:
    body = f"{rng.choice(['110101', '310104', '440305', '510107'])}{rng.randint(1950, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 999):03d}"
    check_ch = "10X98765432"[sum(int(c) * w for c, w in zip(body, (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2))) % 11]
    if not valid:
        check_ch = next(c for c in "0123456789X" if c != check_ch)
    return body + check_ch


def _card(rng: random.Random, valid: bool = True, n: int = 16) -> str:
    d = [rng.choice("3456")] + [str(rng.randint(0, 9)) for _ in range(n - 2)]
    for last in "0123456789":
        if pii.luhn_ok("".join(d) + last) == valid:
            return "".join(d) + last
    raise AssertionError


def _spaced(card: str) -> str:
    return " ".join(card[i:i + 4] for i in range(0, len(card), 4))


def test_pii_recall_and_checksum_precision(data_root):
    rng = random.Random(0)
    texts = [r["text"] for r in read_jsonl(data_root / "general" / "cmrc2018_wiki_paragraphs_zh.jsonl", 100)]
    texts += [r["text"] for r in read_jsonl(data_root / "general" / "wikitext2_paragraphs_en.jsonl", 100)]
    kinds = {
        "email": lambda: rng.choice(["zhang.wei", "li_na88", "j.smith+med", "doctor"]) + "@" + rng.choice(["163.com", "qq.com", "example.org", "hospital.edu.cn"]),
        "phone": lambda: rng.choice([f"1{rng.choice('3456789')}{rng.randint(0, 9)}{rng.randint(10**7, 10**8 - 1)}", f"+86 138 {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}",
                                     f"010-{rng.randint(10**7, 10**8 - 1)}", f"+1 415-555-{rng.randint(1000, 9999)}", f"+44 20 7946 {rng.randint(1000, 9999)}"]),
        "cn_id": lambda: _cn_id(rng),
        "card": lambda: rng.choice([_card(rng), _spaced(_card(rng)), _card(rng, n=19)]),
        "ip": lambda: ".".join(str(rng.randint(1, 254)) for _ in range(4)),
    }
    found = total = 0
    for i, t in enumerate(texts):
        kind = list(kinds)[i % len(kinds)]
        value = kinds[kind]()
        cut = rng.randint(0, len(t))
        doc = t[:cut] + (" 联系方式：" if i % 2 else " contact: ") + value + " 。" + t[cut:]
        spans = [s for s in pii.find_pii(doc) if doc[s.start:s.end] == value]
        total += 1
        found += bool(spans) and spans[0].kind == kind
        assert value not in pii.redact(doc)
    assert found == total == 200
    # numbers failing the checksum, and ordinary long numbers, are never flagged as ID / card
    for i, t in enumerate(texts[:100]):
        bad = [_cn_id(rng, valid=False), _card(rng, valid=False), _card(rng, valid=False, n=19)][i % 3]
        doc = t + f" 编号 {bad} 。"
        assert not [s for s in pii.find_pii(doc) if s.kind in ("cn_id", "card")], bad
    assert not pii.valid_cn_id("11010119991331123X")  # month 13


def test_rules_bilingual_units_and_reasons():
    cfg = RulesConfig(min_units=50)
    zh = "高血压是一种常见的慢性疾病，长期血压升高会损害心脏、大脑和肾脏等器官，患者应在医生指导下规律服药并监测血压。"
    assert check(zh, cfg)[0]  # ~55 characters >= 50
    assert check("Hypertension is common.", cfg) == (False, "too_few_units")
    assert check(zh + " ♥♦♣♠★☆◆◇■□▲△▼▽" * 10, cfg) == (False, "special_char_ratio")
    assert check("\n".join([zh] * 5), cfg) == (False, "dup_lines")
    assert check(zh + "欢迎来到网上赌场，百家乐真人荷官在线。", cfg) == (False, "bad_words")
    assert check(zh + "乳房自检和性病筛查是女性健康的一部分。", cfg)[0]  # clinical words are not bad words
    assert check(" ".join(["buy cheap pills now"] * 30), cfg)[1] in ("top_2gram", "dup_lines")
    rec, reason, kinds = process({"text": zh + "电话13812345678，邮箱li@qq.com"}, RulesConfig(pii="redact"))
    assert "<PHONE>" in rec["text"] and "<EMAIL>" in rec["text"] and kinds == ["email", "phone"]
    assert process({"text": zh + "电话13812345678"}, RulesConfig(pii="drop"))[:2] == (None, "pii_phone")


def test_rules_cli_exclusions_and_resume(tmp_path, data_root):
    src = data_root / "general" / "wikitext2_paragraphs_en.jsonl"
    assert main(["--input", str(src), "--out", str(tmp_path), "--workers", "2", "--no-progress"]) == 0
    s = json.loads((tmp_path / "summary.json").read_text())["totals"]
    kept = list(read_jsonl(tmp_path / src.name))
    excl = list(read_jsonl(tmp_path / "excluded" / src.name))
    n_docs = len(read_jsonl(src))  # every input doc is kept or excluded (3000 in ../shared/data, 300 in samples/)
    assert len(kept) == s["kept"] and len(kept) + len(excl) == s["docs"] == n_docs
    assert all(e["drop_reason"] for e in excl) and s["dropped_too_few_units"] > 0
    assert sum(v for k, v in s.items() if k.startswith("dropped_")) == len(excl)
    before = (tmp_path / src.name).stat().st_mtime_ns
    assert main(["--input", str(src), "--out", str(tmp_path), "--no-progress"]) == 0  # done marker: skipped
    assert (tmp_path / src.name).stat().st_mtime_ns == before
