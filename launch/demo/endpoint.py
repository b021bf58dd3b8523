"""A local OpenAI-protocol chat-completions server for tests and the demo (stdlib only).

    with FakeOpenAI(faults=Faults(p429=0.1, p500=0.1, ptimeout=0.02, pmalformed=0.05, pbadjson=0.05)) as srv:
        cfg = LLMConfig(base_url=srv.base_url, model="fake", timeout_s=0.5)
        ...
        srv.hits            # HTTP requests received
        srv.answered_keys   # Counter: prompt key -> 200 answers served

Faults are drawn from a seeded RNG per request: HTTP 429 (with Retry-After: 0), HTTP 500, a hang longer
than the client's timeout, a malformed HTTP body (truncated JSON), or a well-formed completion whose content
is not the requested JSON. `answer` is pluggable: callable(messages, request_body) -> reply text; the default
is `rule_labeler`, a deterministic keyword labeler that answers the label prompts of `data_tools.curate.label`.

CLI (for the demo): `python -m launch.demo.endpoint --port 8000 [--p429 0.1 ...]`.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import random
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

Answer = Callable[[list[dict], dict], str]


@dataclass(kw_only=True)
class Faults:
    p429: float = 0.0
    p500: float = 0.0
    ptimeout: float = 0.0
    pmalformed: float = 0.0  # broken HTTP body
    pbadjson: float = 0.0  # 200 OK, but content is not JSON
    hang_s: float = 2.0  # how long a "timeout" request hangs (set above the client's timeout)
    seed: int = 0


# --- the default answer: a deterministic keyword labeler (stands in for GPT-4 in tests) ----------------
_MED = re.compile(
    r"医|病|症|药|患者|治疗|诊断|手术|疼|痛|炎|癌|血|感染|孕|健康|检查|"
    r"\b(?:patient|disease|symptom|treatment|diagnos\w*|clinical|medic\w*|drug|therapy|cancer|"
    r"infection|syndrome|surgery|physician|doctor|blood|pain|dose|chronic|acute|tumou?r)\b",
    re.I,
)
_AD = re.compile(r"优惠|促销|点击|加微信|限时|广告|\b(?:buy now|discount|click here|subscribe)\b", re.I)
_DOC = re.compile(r"<document>\s*(.*?)\s*</document>", re.S)


def _doc_text(messages: list[dict]) -> str:
    last = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    m = _DOC.search(last)
    return m.group(1) if m else last


def rule_quality(text: str) -> int:
    """0-5 from length, medical density and obvious noise: learnable, so DataRater tests can pass."""
    n = len(text)
    score = 1 + (n > 60) + (n > 200) + (n > 500)
    score += len(_MED.findall(text)) * 200 > n  # medically dense
    score -= 2 * bool(_AD.search(text)) + (text.count("<unk>") > 2)
    return max(0, min(5, score))


def rule_labeler(messages: list[dict], body: dict) -> str:
    """Answer a label prompt with {"domain", "quality"}; seeds != 1 jitter ~15% of scores by 1-2 points and
    flip ~5% of domains, so two labeling rounds disagree on some items (as two GPT-4 rounds do)."""
    text = _doc_text(messages)
    medical = len(_MED.findall(text)) >= 2
    quality = rule_quality(text)
    seed = int(body.get("seed") or 1)
    if seed != 1:
        h = int(hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()[:8], 16)
        if h % 100 < 15:
            quality = max(0, min(5, quality + (2 if h % 2 else -1)))
        if h % 100 >= 95:
            medical = not medical
    return json.dumps({"domain": "medical" if medical else "general", "quality": quality, "reason": "rule-based fake"})


class FakeOpenAI:
    """Threaded HTTP server on 127.0.0.1 (ephemeral port by default); use as a context manager."""

    def __init__(self, answer: Answer = rule_labeler, faults: Faults | None = None, port: int = 0):
        self.answer = answer
        self.faults = faults or Faults()
        self._rng = random.Random(self.faults.seed)
        self._lock = threading.Lock()
        self.hits = 0
        self.hits_by_kind: collections.Counter[str] = collections.Counter()
        self.answered_keys: collections.Counter[str] = collections.Counter()
        self.requested_keys: collections.Counter[str] = collections.Counter()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @staticmethod
    def key(messages: list[dict], seed: Any = None) -> str:
        """Identity of a request for hit counting: first user message + seed (re-asks keep the same key)."""
        first = next((m["content"] for m in messages if m.get("role") == "user"), "")
        return hashlib.sha256(f"{seed}|{first}".encode()).hexdigest()[:16]

    def _draw(self) -> str:
        f = self.faults
        with self._lock:
            r = self._rng.random()
        for kind, p in (("429", f.p429), ("500", f.p500), ("timeout", f.ptimeout), ("malformed", f.pmalformed), ("badjson", f.pbadjson)):
            if r < p:
                return kind
            r -= p
        return "ok"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        srv = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the client reuses connections, as with a real server
            disable_nagle_algorithm = True  # headers and body go in separate writes: avoid the 40 ms Nagle stall

            def log_message(self, *a: Any) -> None:  # keep test output clean
                pass

            def _send(self, code: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                self._send(200, json.dumps({"object": "list", "data": [{"id": "fake", "object": "model"}]}).encode())

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, b'{"error": {"message": "not found"}}')
                    return
                messages = body.get("messages", [])
                key = srv.key(messages, body.get("seed"))
                kind = srv._draw()
                with srv._lock:
                    srv.hits += 1
                    srv.hits_by_kind[kind] += 1
                    srv.requested_keys[key] += 1
                if kind == "429":
                    self._send(429, b'{"error": {"message": "rate limited", "type": "rate_limit"}}', {"Retry-After": "0"})
                elif kind == "500":
                    self._send(500, b'{"error": {"message": "internal error"}}')
                elif kind == "timeout":
                    time.sleep(srv.faults.hang_s)
                    try:
                        self._send(500, b'{"error": {"message": "late"}}')
                    except OSError:
                        pass
                elif kind == "malformed":
                    self._send(200, b'{"id": "x", "choices": [{"message": {"role": "assist')
                else:
                    content = "Sure! here is my answer: maybe" if kind == "badjson" else srv.answer(messages, body)
                    if kind == "ok":
                        with srv._lock:
                            srv.answered_keys[key] += 1
                    n_in = sum(len(m.get("content", "")) for m in messages) // 4
                    resp = {
                        "id": f"chatcmpl-{srv.hits}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", "fake"),
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": n_in, "completion_tokens": len(content) // 4, "total_tokens": n_in + len(content) // 4},
                    }
                    self._send(200, json.dumps(resp, ensure_ascii=False).encode())

        return H

    def start(self) -> "FakeOpenAI":
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="local fake OpenAI chat-completions server (rule-based labeler)")
    ap.add_argument("--port", type=int, default=8000)
    for k in ("p429", "p500", "ptimeout", "pmalformed", "pbadjson"):
        ap.add_argument(f"--{k}", type=float, default=0.0)
    a = ap.parse_args(argv)
    srv = FakeOpenAI(faults=Faults(p429=a.p429, p500=a.p500, ptimeout=a.ptimeout, pmalformed=a.pmalformed, pbadjson=a.pbadjson), port=a.port)
    print(f"fake OpenAI server on {srv.base_url}", flush=True)
    try:
        srv._httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
