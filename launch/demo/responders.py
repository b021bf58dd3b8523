"""The demo's models: deterministic rule-based stand-ins for GPT-4, one per role, served by name through
`launch.demo.endpoint.LocalEndpoint` (`MODELS`). Point `carebot demo --base-url` at a real endpoint to use real
models instead. Each answers the JSON its caller's prompt asks for."""
from __future__ import annotations

import hashlib
import json
import re

from carebot.text import lang_of

_MED_TERMS = re.compile(
    r"医|病|症|药|患者|治疗|诊断|手术|疼|痛|炎|癌|血|感染|孕|健康|检查|"
    r"\b(?:patient|disease|symptom|treatment|diagnos\w*|clinical|medic\w*|drug|therapy|cancer|"
    r"infection|syndrome|surgery|physician|doctor|blood|pain|dose|chronic|acute|tumou?r)\b",
    re.I,
)
_AD = re.compile(r"优惠|促销|点击|加微信|限时|广告|\b(?:buy now|discount|click here|subscribe)\b", re.I)
_DOC = re.compile(r"<document>\s*(.*?)\s*</document>", re.S)


def _doc_text(messages: list[dict]) -> str:
    """The document of a label prompt: from the last user message that holds one (a re-ask after an invalid
    reply holds none, and must be answered about the same document), else the last user message."""
    users = [m["content"] for m in messages if m.get("role") == "user"]
    for u in reversed(users):
        if m := _DOC.search(u):
            return m.group(1)
    return users[-1] if users else ""


def rule_quality(text: str) -> int:
    """0-5 from length, medical density and obvious noise: learnable, so DataRater tests can pass."""
    n = len(text)
    score = 1 + (n > 60) + (n > 200) + (n > 500)
    score += len(_MED_TERMS.findall(text)) * 200 > n  # medically dense
    score -= 2 * bool(_AD.search(text)) + (text.count("<unk>") > 2)
    return max(0, min(5, score))


def rule_labeler(messages: list[dict], body: dict) -> str:
    """Answer a label prompt with {"domain", "quality"}; seeds != 1 jitter ~15% of scores by 1-2 points and
    flip ~5% of domains, so two labeling rounds disagree on some items (as two GPT-4 rounds do)."""
    text = _doc_text(messages)
    medical = len(_MED_TERMS.findall(text)) >= 2
    quality = rule_quality(text)
    seed = int(body.get("seed") or 1)
    if seed != 1:
        h = int(hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()[:8], 16)
        if h % 100 < 15:
            quality = max(0, min(5, quality + (2 if h % 2 else -1)))
        if h % 100 >= 95:
            medical = not medical
    return json.dumps({"domain": "medical" if medical else "general", "quality": quality, "reason": "rule-based fake"})


_DOCTOR_TERMS = re.compile(r"医|病|症|药|治疗|诊断|检查|建议|\b(?:patient|treatment|diagnos\w*|symptom\w*|doctor|therapy|dose)\b", re.I)


def doctor_judge(messages: list[dict], body: dict) -> str:
    """The DPO pairs' generator + judge (one model, as `carebot data dpo-pairs --model` is): answers a question
    with a templated doctor reply, and compares two replies by medical-term count then length (equal within 10% -> "tie"; a slight
    position bias toward A on near-ties, which the two-order check must cancel)."""
    last = messages[-1]["content"]
    if "<reply_A>" not in last:
        q = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        zh = lang_of(q) == "zh"
        ans = (f"您好，根据您的描述（{q[:30]}），建议尽快到医院检查，明确诊断后在医生指导下治疗，注意休息和饮食。" if zh else
               f"Thank you for your question about {q[:40]!r}. As your doctor I suggest a check-up to confirm the diagnosis; treatment depends on the cause.")
        return json.dumps({"answer": ans}, ensure_ascii=False)
    a = re.search(r"<reply_A>\n(.*?)\n</reply_A>", last, re.S).group(1)
    b = re.search(r"<reply_B>\n(.*?)\n</reply_B>", last, re.S).group(1)

    def score(t: str) -> float:
        return len(_DOCTOR_TERMS.findall(t)) * 50 + len(t)

    sa, sb = score(a), score(b)
    hi = max(sa, sb, 1)
    winner = "tie" if abs(sa - sb) / hi < 0.10 else ("A" if sa * 1.05 >= sb else "B")

    def aspects(s: float) -> dict[str, int]:
        v = max(1, min(10, int(s / hi * 9) + 1))
        return {"fluency": v, "relevance": v, "completeness": v, "proficiency": v}

    return json.dumps({"A": aspects(sa), "B": aspects(sb), "winner": winner})


def consult_judge(messages: list[dict], body: dict) -> str:
    """Consultation scores (1-5 per dimension) of the model answer in the last user message, from its length
    and medical density."""
    user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    answer = user.split("【模型回答】")[-1] if "【模型回答】" in user else user[-400:]
    q = max(1, min(5, rule_quality(answer)))
    return json.dumps({"fluency": q, "relevance": q, "completeness": max(1, q - 1), "proficiency": q,
                       "reason": "rule-based local judge"})


# model name -> answer: what `carebot demo` passes as each command's --model
MODELS = {"demo-labeler": rule_labeler, "demo-doctor": doctor_judge, "demo-consult-judge": consult_judge}
