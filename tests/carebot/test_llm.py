"""LLM client against the local fake OpenAI server: faults, re-asks, cache, key hygiene."""
from __future__ import annotations

import json

import pydantic
import pytest

from tests.fixtures.fake_openai import Faults, FakeOpenAI
from carebot.llm import LLMClient, LLMConfig, LLMError, Request, extract_json


class Label(pydantic.BaseModel):
    domain: str
    quality: int = pydantic.Field(ge=0, le=5)


def _cfg(srv: FakeOpenAI, tmp_path, **kw) -> LLMConfig:
    base = dict(base_url=srv.base_url, model="fake", timeout_s=0.5, backoff_base_s=0.001, backoff_max_s=0.01,
                max_retries=30, concurrency=8, cache_path=str(tmp_path / "cache.sqlite"))
    base.update(kw)
    return LLMConfig(**base)


def _msgs(text: str) -> list[dict]:
    return [{"role": "user", "content": f"Label this.\n<document>\n{text}\n</document>"}]


def test_extract_json_variants():
    assert extract_json('{"a": 1}') == {"a": 1}
    assert extract_json('Here:\n```json\n{"a": 2}\n```') == {"a": 2}
    assert extract_json('ok so {"a": 3} done') == {"a": 3}
    with pytest.raises(ValueError):
        extract_json("no json here")


def test_faults_batch_no_loss_no_dup_and_cache(tmp_path, data_root):
    texts = [json.loads(l)["text"] for l in open(data_root / "general" / "thucnews_titles_zh.jsonl", encoding="utf-8")][:120]
    faults = Faults(p429=0.15, p500=0.1, ptimeout=0.03, pmalformed=0.05, pbadjson=0.05, hang_s=1.0, seed=3)
    with FakeOpenAI(faults=faults) as srv:
        cli = LLMClient(_cfg(srv, tmp_path))
        reqs = [Request(f"t{i}", _msgs(t)) for i, t in enumerate(texts)]
        res = cli.map_json(reqs, Label, progress=False)
        assert [r.id for r in res] == [r.id for r in reqs]
        assert all(r.ok for r in res), [r.error for r in res if not r.ok][:3]
        s = cli.stats
        assert s.retries_429 > 0 and s.retries_5xx > 0 and s.retries_timeout > 0 and s.reasks > 0
        assert s.answers == len(set(texts)) or s.answers == len(texts)
        assert s.prompt_tokens > 0
        hits = srv.hits
        # rerun: everything comes from the cache, zero new requests
        cli2 = LLMClient(_cfg(srv, tmp_path))
        res2 = cli2.map_json(reqs, Label, progress=False)
        assert srv.hits == hits and cli2.stats.cache_hits == len(reqs)
        assert [r.value for r in res2] == [r.value for r in res]


def test_validation_reask_then_give_up(tmp_path):
    answers = iter(['{"domain": "medical", "quality": 9}', '{"domain": "medical", "quality": 4}'])
    with FakeOpenAI(answer=lambda m, b: next(answers)) as srv:
        cli = LLMClient(_cfg(srv, tmp_path))
        out = cli.chat_json(_msgs("x"), Label)
        assert out == {"domain": "medical", "quality": 4} and cli.stats.reasks == 1 and srv.hits == 2
    with FakeOpenAI(answer=lambda m, b: "never json") as srv:
        cli = LLMClient(_cfg(srv, tmp_path, parse_retries=1))
        with pytest.raises(LLMError):
            cli.chat_json(_msgs("y"), {"type": "object", "required": ["domain"]})
        assert srv.hits == 2


def test_cache_tag_separates_rounds_and_key_never_written(tmp_path, monkeypatch):
    monkeypatch.setenv("CAREBOT_TEST_KEY", "sk-secret-123456")
    with FakeOpenAI() as srv:
        cli = LLMClient(_cfg(srv, tmp_path, api_key_env="CAREBOT_TEST_KEY"))
        cli.chat_json(_msgs("患者咳嗽发热三天，医生诊断为肺炎。"), Label, cache_tag="round1", seed=1)
        cli.chat_json(_msgs("患者咳嗽发热三天，医生诊断为肺炎。"), Label, cache_tag="round2", seed=2)
        cli.chat_json(_msgs("患者咳嗽发热三天，医生诊断为肺炎。"), Label, cache_tag="round1", seed=1)
        assert srv.hits == 2 and cli.stats.cache_hits == 1
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"sk-secret" not in blob and "sk-secret" not in repr(cli.config)


def test_non_retryable_4xx_fails_fast(tmp_path):
    with FakeOpenAI() as srv:
        cfg = _cfg(srv, tmp_path, base_url=srv.base_url.replace("/v1", "/nope"))
        cli = LLMClient(cfg)
        with pytest.raises(LLMError, match="HTTP 404"):
            cli.chat_json(_msgs("z"))
        assert cli.stats.requests == 1


class _Raw:
    """A one-behaviour HTTP server: `handle(handler)` writes the whole response."""

    def __init__(self, handle):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                handle(self)

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.srv.server_address[1]}/v1"

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.srv.shutdown()


def test_timeout_bounds_a_whole_attempt_not_each_read():
    """A server trickling one byte every 0.25 s never lets a read time out; timeout_s=1 still ends each attempt
    after 1 s, and deadline_s ends the request."""
    import time

    def trickle(h):
        body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        try:
            for b in body:
                h.wfile.write(bytes([b]))
                h.wfile.flush()
                time.sleep(0.25)
        except OSError:
            pass

    with _Raw(trickle) as srv:
        t0 = time.monotonic()
        with pytest.raises(LLMError, match="attempts"):
            LLMClient(LLMConfig(base_url=srv.base_url, model="m", timeout_s=1, max_retries=1, backoff_base_s=0.01)).chat(_msgs("x"))
        assert time.monotonic() - t0 < 4  # 2 attempts x 1 s (the body alone takes 30 s)
        t0 = time.monotonic()
        with pytest.raises(LLMError, match="deadline"):
            LLMClient(LLMConfig(base_url=srv.base_url, model="m", timeout_s=1, max_retries=50, deadline_s=2.5,
                                backoff_base_s=0.01)).chat(_msgs("x"))
        assert time.monotonic() - t0 < 5


def test_a_server_echoing_the_key_never_gets_it_into_an_error(tmp_path, monkeypatch):
    key = "sk-test-0123456789abcdefSECRET"
    monkeypatch.setenv("CAREBOT_TEST_KEY", key)

    def echo(h):
        body = json.dumps({"error": {"message": f"bad request; headers: Authorization: {h.headers['Authorization']}"}}).encode()
        h.send_response(400)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    with _Raw(echo) as srv:
        c = LLMClient(LLMConfig(base_url=srv.base_url, model="m", api_key_env="CAREBOT_TEST_KEY", max_retries=0))
        res = c.map_json([Request("a", _msgs("x"))], progress=False)
    assert not res[0].ok and "400" in res[0].error and "Authorization" in res[0].error
    assert key not in res[0].error and "0123456789" not in res[0].error, res[0].error


def test_an_unreachable_endpoint_fails_fast(tmp_path, data_root, capsys):
    """Nothing listens: after a few refused connections (and no reply ever) every request fails at once, and
    dpo-pairs, which then made 0 pairs, exits 2 with one line instead of exiting 0 after minutes of retries."""
    import time

    from carebot import cli
    from tests.helpers import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    t0 = time.monotonic()
    res = LLMClient(LLMConfig(base_url=url, model="m", backoff_base_s=0.2)).map_json(
        [Request(str(i), _msgs("x")) for i in range(40)], progress=False)
    assert time.monotonic() - t0 < 10 and not any(r.ok for r in res) and all("unreachable" in r.error for r in res)
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"id": r["id"], "messages": r["messages"]}, ensure_ascii=False) + "\n"
                           for r in json.loads("[" + ",".join(open(data_root / "dialogue" / "cmtmedqa_test.jsonl",
                                                                   encoding="utf-8").readlines()[:5]) + "]")))
    t0 = time.monotonic()
    assert cli.main(["data", "dpo-pairs", "--sft", str(sft), "--base-url", url, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if "error:" in l]
    assert time.monotonic() - t0 < 20 and len(err) == 1 and "0 pairs" in err[0]
    assert not (tmp_path / "o" / "pairs.jsonl").exists()


class _RefusesSchema(FakeOpenAI):
    """A server without structured output (as llama.cpp builds without grammar support, or older vLLM): 400 to
    any request that carries response_format json_schema."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.with_format = 0

    def respond(self, body: dict):
        if "response_format" in body:
            with self._lock:
                self.with_format += 1
            return 400, b'{"error": {"message": "response_format json_schema is not supported"}}', {}
        return super().respond(body)


def test_structured_output_sent_when_taken_and_dropped_once_when_refused(tmp_path):
    seen = []

    def answer(messages, body):
        seen.append(body.get("response_format"))
        return '{"domain": "medical", "quality": 3}'

    with FakeOpenAI(answer=answer) as srv:
        cli = LLMClient(_cfg(srv, tmp_path, cache_path=None))
        out = cli.map_json([Request(str(i), _msgs(f"doc {i}")) for i in range(4)], Label, progress=False)
        assert all(r.ok for r in out) and cli.stats.response_format == "json_schema"
        assert all(f and f["type"] == "json_schema" and f["json_schema"]["schema"] == Label.model_json_schema() for f in seen)
        assert cli.stats.first_valid == 4 and cli.stats.after_reask == 0
    with _RefusesSchema(answer=lambda m, b: '{"domain": "medical", "quality": 3}') as srv:
        cli = LLMClient(_cfg(srv, tmp_path, cache_path=None, concurrency=1))
        out = cli.map_json([Request(str(i), _msgs(f"doc {i}")) for i in range(4)], Label, progress=False)
        assert all(r.ok for r in out), [r.error for r in out]
        assert cli.stats.response_format == "refused" and srv.with_format == 1  # asked once, then never again
        assert cli.stats.first_valid == 4 and cli.stats.failures == 0
    with FakeOpenAI(answer=lambda m, b: '{"domain": "medical", "quality": 3}') as srv:
        cli = LLMClient(_cfg(srv, tmp_path, cache_path=None, structured="off"))
        cli.chat_json(_msgs("x"), Label)
        assert cli.stats.response_format == "none"


def test_counts_first_valid_after_reask_and_given_up_with_its_raw_reply(tmp_path):
    replies = {"a": iter(['{"domain": "medical", "quality": 4}']),
               "b": iter(["Sure! The domain is medical.", '{"domain": "medical", "quality": 2}']),
               "c": iter(["no idea", "still no idea", "I cannot answer that"])}

    def answer(messages, body):
        return next(replies[messages[0]["content"].split("<document>\n")[1][0]])

    with FakeOpenAI(answer=answer) as srv:
        cli = LLMClient(_cfg(srv, tmp_path, cache_path=None, parse_retries=2, concurrency=1))
        out = {r.id: r for r in cli.map_json([Request(k, _msgs(k)) for k in "abc"], Label, progress=False)}
    assert out["a"].ok and out["b"].ok and not out["c"].ok
    assert (cli.stats.first_valid, cli.stats.after_reask, cli.stats.failures) == (1, 1, 1)
    assert out["c"].raw == "I cannot answer that" and out["a"].raw is None
