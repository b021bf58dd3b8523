"""SFT and DPO data formats: one in-memory shape, several on-disk dialects, lossless round trips.

In memory (what alignment.sft / alignment.dpo consume):

    Dialogue(messages=[{"role": "user"|"assistant", "content": str}, ...], system="", id=None, meta={})
    Pair(prompt=[{"role": "system"|"user"|"assistant", "content": str}, ...], chosen=str, rejected=str, id=None, meta={})

    read_sft(path, fmt="auto") -> list[Dialogue]        write_sft(path, dialogues, fmt="openai")
    read_pairs(path, fmt="auto") -> list[Pair]           write_pairs(path, pairs, fmt="trl")
    render_chat(messages, tokenizer=None, add_generation_prompt=False) -> str   (the LLaMA-3 chat template)

On disk (JSONL, one record a line; keys we do not know are kept in `meta` and written back at top level):
- SFT `openai` (also TRL's conversational SFT): {"messages": [{"role", "content"}, ...]} (system = first message).
- SFT `nemo` (NeMo-Aligner chat): {"system": "", "mask": "User", "conversations": [{"from": "User"|"Assistant", "value"}]}.
  ShareGPT's human/gpt roles are read too.
- DPO `nemo` (NeMo-Aligner): {"prompt": <chat template applied, ends with the assistant header>,
  "chosen_response": <text><|eot_id|>, "rejected_response": ...}; optional chosen_reward / rejected_reward (RPO) in meta.
- DPO `trl`: conversational {"prompt": [msgs], "chosen": [{"role": "assistant", ...}], "rejected": [...]};
  `trl_text` writes the standard (string) variant: prompt rendered with the chat template, plain-text answers.
- DPO `openai` (OpenAI preference fine-tuning): {"input": {"messages": [...]}, "preferred_output": [...],
  "non_preferred_output": [...]}.

The templated dialects (nemo DPO, trl_text) go through the LLaMA-3 template, which trims each prompt message,
so their round trip is lossless for messages without leading/trailing whitespace (read_* never alters text).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from carebot.errors import InputError
from carebot.io import iter_jsonl, require_records, write_jsonl

SFT_FORMATS = ("openai", "nemo")
PAIR_FORMATS = ("trl", "trl_text", "nemo", "openai")
ROLES = ("system", "user", "assistant")
_NEMO_ROLE = {"user": "User", "assistant": "Assistant"}
_FROM_ROLE = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}
EOT = "<|eot_id|>"
BOS = "<|begin_of_text|>"


@dataclass
class Dialogue:
    messages: list[dict[str, str]]  # user/assistant turns, in order
    system: str = ""
    id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def chat_messages(self) -> list[dict[str, str]]:
        """Messages with the system prompt first (what a chat template takes)."""
        return ([{"role": "system", "content": self.system}] if self.system else []) + [dict(m) for m in self.messages]

    def turns(self) -> list[tuple[str, str]]:
        """(user, assistant) pairs; a trailing user message without an answer is left out."""
        out, m = [], self.messages
        for i in range(len(m) - 1):
            if m[i]["role"] == "user" and m[i + 1]["role"] == "assistant":
                out.append((m[i]["content"], m[i + 1]["content"]))
        return out


@dataclass
class Pair:
    prompt: list[dict[str, str]]  # system? + user/assistant history, ends with the user message
    chosen: str
    rejected: str
    id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- chat template
def render_chat(messages: list[dict[str, str]], tokenizer: Any = None, add_generation_prompt: bool = False) -> str:
    """The chat template as text. With a tokenizer its own template is used; without one, LLaMA-3's
    (the same string as carebot.tokenizer.LLAMA3_CHAT_TEMPLATE renders, BOS included)."""
    if tokenizer is not None:
        if not messages:  # HF refuses an empty conversation: BOS-level prefix + the generation header alone
            probe = [{"role": "user", "content": "x"}]
            head = render_chat(probe, tokenizer)
            gen = render_chat(probe, tokenizer, True)[len(head):] if add_generation_prompt else ""
            bos = tokenizer.bos_token or ""
            return (bos if head.startswith(bos) else "") + gen
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    s = BOS + "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}{EOT}" for m in messages)
    return s + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else "")


_TURN = re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n(.*?)(?:<\|eot_id\|>|$)", re.S)


def parse_chat(text: str) -> tuple[list[dict[str, str]], bool]:
    """Inverse of render_chat for the LLaMA-3 template: (messages, ends with an open assistant header)."""
    body = text[len(BOS):] if text.startswith(BOS) else text
    msgs, pos, open_gen = [], 0, False
    for m in _TURN.finditer(body):
        if m.start() != pos:
            raise ValueError(f"unexpected text at offset {pos}: {body[pos:pos + 40]!r}")
        if m.group(0).endswith(EOT):
            msgs.append({"role": m.group(1), "content": m.group(2)})
        elif m.group(2) == "" and m.group(1) == "assistant":
            open_gen = True
        else:
            raise ValueError("unterminated message (no <|eot_id|>)")
        pos = m.end()
    if pos != len(body) or not msgs:
        raise ValueError("not a LLaMA-3 chat-template string")
    return msgs, open_gen


# ----------------------------------------------------------------------------- helpers
def _check_messages(msgs: Any, where: str, allow_system: bool = True) -> list[dict[str, str]]:
    if not isinstance(msgs, list) or not msgs:
        raise InputError(f"{where}: expected a non-empty list of messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise InputError(f"{where}: message {i} must be {{role: system|user|assistant, content: str}}, got {str(m)[:80]}")
        if m["role"] == "system" and (i > 0 or not allow_system):
            raise InputError(f"{where}: a system message may only come first")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _meta(rec: dict[str, Any], known: set[str]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k not in known}


def _rec(d: Dialogue | Pair, body: dict[str, Any]) -> dict[str, Any]:
    head = {"id": d.id} if d.id is not None else {}
    return {**head, **body, **{k: v for k, v in d.meta.items() if k not in body and k != "id"}}


# ----------------------------------------------------------------------------- SFT
def detect_sft(rec: dict[str, Any]) -> str:
    if "messages" in rec:
        return "openai"
    if "conversations" in rec:
        return "nemo"
    raise ValueError("neither 'messages' (openai) nor 'conversations' (nemo)")


def sft_from_record(rec: dict[str, Any], fmt: str = "auto", where: str = "record") -> Dialogue:
    fmt = detect_sft(rec) if fmt == "auto" else fmt
    if fmt == "openai":
        msgs = _check_messages(rec.get("messages"), where)
        system = msgs.pop(0)["content"] if msgs[0]["role"] == "system" else ""
        meta = _meta(rec, {"id", "messages"})
    elif fmt == "nemo":
        conv = rec.get("conversations")
        if not isinstance(conv, list) or not conv:
            raise InputError(f"{where}: 'conversations' must be a non-empty list")
        msgs = []
        for i, c in enumerate(conv):
            role = _FROM_ROLE.get(str(c.get("from", "")).lower()) if isinstance(c, dict) else None
            if role not in ("user", "assistant") or not isinstance(c.get("value"), str):
                raise InputError(f"{where}: conversations[{i}] must be {{from: User|Assistant, value: str}}")
            msgs.append({"role": role, "content": c["value"]})
        system = rec.get("system") or ""
        meta = _meta(rec, {"id", "conversations", "system", "mask"})
        if rec.get("mask", "User") != "User":
            meta["mask"] = rec["mask"]
    else:
        raise InputError(f"{where}: unknown SFT format {fmt!r} (one of {SFT_FORMATS})")
    rid = rec.get("id")
    return Dialogue(messages=msgs, system=system, id=None if rid is None else str(rid), meta=meta)


def sft_to_record(d: Dialogue, fmt: str = "openai") -> dict[str, Any]:
    if fmt == "openai":
        return _rec(d, {"messages": d.chat_messages()})
    if fmt == "nemo":
        conv = [{"from": _NEMO_ROLE[m["role"]], "value": m["content"]} for m in d.messages]
        return _rec(d, {"system": d.system, "mask": d.meta.get("mask", "User"), "conversations": conv})
    raise ValueError(f"unknown SFT format {fmt!r} (one of {SFT_FORMATS})")


def _read(path: str | Path, fmt: str, detect, convert, allow_empty: bool) -> list:
    """Every record of a JSONL file through `convert`, its dialect detected per record when fmt is auto; an
    empty file is an InputError unless `allow_empty`."""
    require_records([path], allow_empty)
    out = []
    for n, rec in iter_jsonl(path):
        try:
            f = detect(rec) if fmt == "auto" else fmt
        except ValueError as e:
            raise InputError(f"{path}:{n}: {e}") from None
        out.append(convert(rec, f, where=f"{path}:{n}"))
    return out


def read_sft(path: str | Path, fmt: str = "auto", allow_empty: bool = False) -> list[Dialogue]:
    return _read(path, fmt, detect_sft, sft_from_record, allow_empty)


def write_sft(path: str | Path, dialogues: Iterable[Dialogue], fmt: str = "openai") -> int:
    return write_jsonl(path, (sft_to_record(d, fmt) for d in dialogues))


# ----------------------------------------------------------------------------- DPO pairs
def detect_pair(rec: dict[str, Any]) -> str:
    if "chosen_response" in rec:
        return "nemo"
    if "preferred_output" in rec:
        return "openai"
    if "chosen" in rec:
        return "trl" if isinstance(rec.get("prompt"), list) else "trl_text"
    raise ValueError("not a DPO pair (no chosen_response / chosen / preferred_output)")


def _answer(v: Any, where: str) -> str:
    """A TRL/OpenAI completion: a string or a one-message assistant list."""
    if isinstance(v, str):
        return v
    if isinstance(v, list) and len(v) == 1 and isinstance(v[0], dict) and v[0].get("role") == "assistant":
        return str(v[0].get("content", ""))
    raise InputError(f"{where}: a completion must be a string or [{{role: assistant, content}}]")


def _prompt_text(s: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(s, str):
        raise InputError(f"{where}: 'prompt' must be a string")
    try:
        msgs, _ = parse_chat(s)
    except ValueError:
        return [{"role": "user", "content": s}]  # a bare prompt, no chat template
    return _check_messages(msgs, where)


def pair_from_record(rec: dict[str, Any], fmt: str = "auto", where: str = "record") -> Pair:
    fmt = detect_pair(rec) if fmt == "auto" else fmt
    if fmt == "nemo":
        prompt = _prompt_text(rec.get("prompt"), where)
        ch, rj = rec.get("chosen_response"), rec.get("rejected_response")
        if not isinstance(ch, str) or not isinstance(rj, str):
            raise InputError(f"{where}: chosen_response / rejected_response must be strings")
        chosen, rejected = ch.removesuffix(EOT), rj.removesuffix(EOT)
        meta = _meta(rec, {"id", "prompt", "chosen_response", "rejected_response"})
    elif fmt in ("trl", "trl_text"):
        p = rec.get("prompt")
        prompt = _check_messages(p, where) if isinstance(p, list) else _prompt_text(p, where)
        chosen, rejected = _answer(rec.get("chosen"), where), _answer(rec.get("rejected"), where)
        meta = _meta(rec, {"id", "prompt", "chosen", "rejected"})
    elif fmt == "openai":
        inp = rec.get("input")
        prompt = _check_messages(inp.get("messages") if isinstance(inp, dict) else None, where)
        chosen, rejected = _answer(rec.get("preferred_output"), where), _answer(rec.get("non_preferred_output"), where)
        meta = _meta(rec, {"id", "input", "preferred_output", "non_preferred_output"})
    else:
        raise InputError(f"{where}: unknown pair format {fmt!r} (one of {PAIR_FORMATS})")
    if prompt[-1]["role"] != "user":
        raise InputError(f"{where}: the prompt must end with a user message")
    rid = rec.get("id")
    return Pair(prompt=prompt, chosen=chosen, rejected=rejected, id=None if rid is None else str(rid), meta=meta)


def pair_to_record(p: Pair, fmt: str = "trl", tokenizer: Any = None) -> dict[str, Any]:
    if fmt == "nemo":
        body = {"prompt": render_chat(p.prompt, tokenizer, add_generation_prompt=True),
                "chosen_response": p.chosen + EOT, "rejected_response": p.rejected + EOT}
    elif fmt == "trl":
        body = {"prompt": [dict(m) for m in p.prompt], "chosen": [{"role": "assistant", "content": p.chosen}],
                "rejected": [{"role": "assistant", "content": p.rejected}]}
    elif fmt == "trl_text":
        body = {"prompt": render_chat(p.prompt, tokenizer, add_generation_prompt=True), "chosen": p.chosen, "rejected": p.rejected}
    elif fmt == "openai":
        body = {"input": {"messages": [dict(m) for m in p.prompt]},
                "preferred_output": [{"role": "assistant", "content": p.chosen}],
                "non_preferred_output": [{"role": "assistant", "content": p.rejected}]}
    else:
        raise ValueError(f"unknown pair format {fmt!r} (one of {PAIR_FORMATS})")
    return _rec(p, body)


def read_pairs(path: str | Path, fmt: str = "auto", allow_empty: bool = False) -> list[Pair]:
    return _read(path, fmt, detect_pair, pair_from_record, allow_empty)


def write_pairs(path: str | Path, pairs: Iterable[Pair], fmt: str = "trl", tokenizer: Any = None) -> int:
    return write_jsonl(path, (pair_to_record(p, fmt, tokenizer) for p in pairs))
