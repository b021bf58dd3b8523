"""The demo's local OpenAI-protocol chat-completions endpoint (stdlib only): a threaded HTTP server on
127.0.0.1 that serves several "models" by name, each a function `answer(messages, request_body) -> text`.

    with LocalEndpoint({"demo-labeler": rule_labeler}) as ep:
        cfg = LLMConfig(base_url=ep.base_url, model="demo-labeler")

The demo's models (rule-based stand-ins for GPT-4, `launch.demo.responders`) are picked by the `model` field
of each request, as a real server picks among the models it serves: no request is routed by its prompt text.
A request for a model the endpoint does not serve gets HTTP 404, as from a real server."""
from __future__ import annotations

import collections
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

Answer = Callable[[list[dict], dict], str]
Response = tuple[int, bytes, dict[str, str]]
ANY_MODEL = "*"  # key of `models` that answers every model name


class LocalEndpoint:
    """Serves `models` (name -> answer; `ANY_MODEL` answers any name) on 127.0.0.1 (ephemeral port by default).
    Counts `hits` (HTTP requests) and `answered_keys` (prompt key -> completions served). A context manager."""

    def __init__(self, models: dict[str, Answer], port: int = 0):
        self.models = dict(models)
        self._lock = threading.Lock()
        self.hits = 0
        self.answered_keys: collections.Counter[str] = collections.Counter()
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

    def answer_for(self, model: str) -> Answer | None:
        return self.models.get(model) or self.models.get(ANY_MODEL)

    def completion(self, body: dict, content: str) -> Response:
        """An HTTP 200 chat.completion carrying `content`."""
        messages = body.get("messages", [])
        n_in = sum(len(m.get("content", "")) for m in messages) // 4
        resp = {"id": f"chatcmpl-{self.hits}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", ""),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": n_in, "completion_tokens": len(content) // 4,
                          "total_tokens": n_in + len(content) // 4}}
        return 200, json.dumps(resp, ensure_ascii=False).encode(), {}

    def respond(self, body: dict) -> Response:
        """The response to one chat-completions request body."""
        answer = self.answer_for(str(body.get("model", "")))
        if answer is None:
            msg = {"error": {"message": f"model {body.get('model')!r} not served here; serving {sorted(self.models)}",
                             "type": "not_found"}}
            return 404, json.dumps(msg).encode(), {}
        messages = body.get("messages", [])
        content = answer(messages, body)
        with self._lock:
            self.answered_keys[self.key(messages, body.get("seed"))] += 1
        return self.completion(body, content)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        srv = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the client reuses connections, as with a real server
            disable_nagle_algorithm = True  # headers and body go in separate writes: avoid the 40 ms Nagle stall

            def log_message(self, *a: Any) -> None:  # keep the run log clean
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
                data = [{"id": m, "object": "model"} for m in srv.models]
                self._send(200, json.dumps({"object": "list", "data": data}).encode())

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, b'{"error": {"message": "not found"}}')
                    return
                with srv._lock:
                    srv.hits += 1
                code, payload, headers = srv.respond(body)
                try:
                    self._send(code, payload, headers)
                except OSError:  # the client gave up (timed out) first
                    pass

        return H

    def start(self) -> "LocalEndpoint":
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "LocalEndpoint":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
