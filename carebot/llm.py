"""The one LLM client of the project (labeling, judging, DPO pair building).

Any OpenAI-compatible chat-completions server works (GPT-4-class API, vLLM, SGLang): `base_url` and `model`
come from `LLMConfig`, the key from the environment variable named by `api_key_env` (never logged, never
written, masked in error texts). Built on the official `openai` async client, with our own retry loop so every
retry is counted. `LLMClient(cfg)` (sync; `AsyncLLMClient` is the async one): `.chat_json(messages, validate=)`
parsed + validated + cached, `.map_json([Request(id, messages), ...], validate=)` bounded concurrency, ordered,
`.stats.as_dict()` requests, cache hits, retries, tokens, cost.

`validate` is a pydantic model class, a JSON-schema dict, or any callable(obj) -> value that raises
ValueError on a bad answer. A reply that does not parse or validate is re-asked (the model sees its own
reply and the error) up to `parse_retries` times. Only validated answers are cached, keyed by
sha256(model, messages, sampling params, cache_tag), in SQLite (committed per answer: kill -9 loses
only the requests in flight).
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import random
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import openai

from carebot.llm_reply import Validator, extract_json, make_validator, schema_of  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
UNREACHABLE_AFTER = 2  # connection failures in a row, before any reply, that mark the server as down
_TOKEN = re.compile(r"((?:Bearer|api[_-]?key[\"']?\s*[:=]\s*[\"']?)\s*)[A-Za-z0-9._\-]{8,}", re.I)


@dataclass(kw_only=True)
class LLMConfig:
    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o"
    api_key_env: str = "OPENAI_API_KEY"  # the NAME of the variable; the key itself is never stored
    concurrency: int = 16
    timeout_s: float = 60.0  # one attempt, whole (connect + every byte of the reply), not per read
    deadline_s: float = 600.0  # one request, all its attempts and back-offs together
    max_retries: int = 8  # transport retries (429, 5xx, timeouts, broken bodies)
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    parse_retries: int = 2  # re-asks after an unparseable / invalid answer
    temperature: float = 0.0
    max_tokens: int = 512
    json_mode: bool = False  # send response_format={"type": "json_object"} (OpenAI, vLLM, SGLang support it)
    # "auto": send the validator's JSON schema as response_format (json_schema: OpenAI, vLLM, SGLang, llama.cpp's
    # server); the first 4xx that refuses it turns it off for this endpoint. "off": never send it.
    structured: str = "auto"
    cache_path: str | None = None  # SQLite file; None disables the cache
    price_in_per_1m: float = 0.0  # USD per 1M prompt tokens, for the cost estimate
    price_out_per_1m: float = 0.0


@dataclass
class Request:
    id: str
    messages: Messages
    params: dict[str, Any] = field(default_factory=dict)  # per-request overrides: temperature, seed, ...
    cache_tag: str = ""  # e.g. "round1": distinct cache entries for otherwise identical prompts


@dataclass
class Result:
    id: str
    value: Any = None
    ok: bool = False
    error: str | None = None
    cached: bool = False
    raw: str | None = None  # the last reply of an item given up on (for the listing of failures)


@dataclass
class LLMStats:
    requests: int = 0  # HTTP calls made (including failed ones)
    cache_hits: int = 0
    answers: int = 0  # validated answers returned
    failures: int = 0  # items given up on
    retries_429: int = 0
    retries_5xx: int = 0
    retries_timeout: int = 0
    retries_other: int = 0
    reasks: int = 0  # re-asks after parse/validation failure
    first_valid: int = 0  # answers valid at the first reply
    after_reask: int = 0  # answers valid only after one or more re-asks
    response_format: str = "none"  # "json_schema" (the server took it), "refused" (it said no), "none" (never sent)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class LLMError(RuntimeError):
    """An item failed after all retries (transport or parsing); `raw` is its last reply, if any."""

    def __init__(self, message: str, raw: str | None = None):
        super().__init__(message)
        self.raw = raw


# ----------------------------------------------------------------------------- cache
class DiskCache:
    """SQLite key -> JSON value; one commit per put so a crash loses nothing that was answered."""

    def __init__(self, path: str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), timeout=60, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process kill; no fsync per answer
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT NOT NULL, t REAL)")
        self._lock = threading.Lock()

    def get(self, key: str) -> Any | None:
        with self._lock:
            row = self._db.execute("SELECT v FROM kv WHERE k=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO kv VALUES (?,?,?)", (key, json.dumps(value, ensure_ascii=False), time.time()))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM kv").fetchone()[0]

    def close(self) -> None:
        self._db.close()


def cache_key(model: str, messages: Messages, params: dict[str, Any], tag: str = "") -> str:
    blob = json.dumps({"model": model, "messages": messages, "params": params, "tag": tag}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


# ----------------------------------------------------------------------------- client
class AsyncLLMClient:
    """Async client: `await chat(...)`, `await chat_json(...)`, `await map_json(...)`."""

    def __init__(self, config: LLMConfig):
        self.config = config
        self.stats = LLMStats()
        # Local servers (vLLM) accept any key; never fail for a missing one, never print it.
        key = os.environ.get(config.api_key_env) or "EMPTY"
        self._secret = key if key != "EMPTY" else None
        self._answered = False  # any reply at all from the server yet
        self._unreachable: str | None = None  # set once the server refused connections before ever answering
        self._client = openai.AsyncOpenAI(base_url=config.base_url, api_key=key, timeout=config.timeout_s, max_retries=0)
        self.cache = DiskCache(config.cache_path) if config.cache_path else None
        self._sem: asyncio.Semaphore | None = None
        self._schema_ok: bool | None = None  # does this endpoint take response_format json_schema? None: not asked yet

    def _with_format(self, params: dict[str, Any], schema: dict[str, Any] | None) -> dict[str, Any]:
        """`params` plus the structured-output request, unless it is off or this endpoint refused it."""
        if schema is None or self.config.structured != "auto" or self._schema_ok is False:
            return params
        return {**params, "response_format": {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}}

    def _params(self, overrides: dict[str, Any]) -> dict[str, Any]:
        p: dict[str, Any] = {"temperature": self.config.temperature, "max_tokens": self.config.max_tokens}
        if self.config.json_mode:
            p["response_format"] = {"type": "json_object"}
        p.update(overrides)
        return p

    def key_for(self, request: Request) -> str:
        """The cache key of a request (to check what a crashed run already finished)."""
        return cache_key(self.config.model, request.messages, self._params(request.params), request.cache_tag)

    async def _backoff(self, attempt: int, retry_after: float | None = None) -> None:
        c = self.config
        delay = min(c.backoff_max_s, c.backoff_base_s * 2**attempt) * (0.5 + random.random() / 2)
        await asyncio.sleep(max(delay, min(retry_after or 0.0, c.backoff_max_s)))

    def redact(self, text: str) -> str:
        """`text` with the API key (and anything shaped like a bearer token) masked: error bodies of some
        servers echo the request headers, and error texts end up in files."""
        if self._secret:
            text = text.replace(self._secret, "***")
        return _TOKEN.sub(r"\1***", text)

    async def _complete(self, messages: Messages, params: dict[str, Any]) -> str:
        """One chat completion with transport retries, each attempt within `timeout_s` and all of them within
        `deadline_s`; returns the reply text."""
        c = self.config
        last: Exception | None = None
        loop = asyncio.get_running_loop()
        end = loop.time() + c.deadline_s
        for attempt in range(c.max_retries + 1):
            if self._unreachable:
                raise LLMError(self._unreachable)
            self.stats.requests += 1
            retry_after = None
            try:
                left = end - loop.time()
                if left <= 0:
                    break
                resp = await asyncio.wait_for(self._client.chat.completions.create(model=c.model, messages=messages, **params),
                                              min(c.timeout_s, left))
                self._answered = True
                if "response_format" in params and params["response_format"].get("type") == "json_schema":
                    self._schema_ok, self.stats.response_format = True, "json_schema"
                text = resp.choices[0].message.content
                if text is None:
                    raise ValueError("empty message content")
                if resp.usage is not None:
                    self.stats.prompt_tokens += resp.usage.prompt_tokens or 0
                    self.stats.completion_tokens += resp.usage.completion_tokens or 0
                    self.stats.cost_usd = (
                        self.stats.prompt_tokens * c.price_in_per_1m + self.stats.completion_tokens * c.price_out_per_1m
                    ) / 1e6
                return text
            except openai.RateLimitError as e:
                self.stats.retries_429 += 1
                last = e
                try:
                    retry_after = float(e.response.headers.get("retry-after", "0"))
                except (TypeError, ValueError):
                    retry_after = None
            except (openai.APITimeoutError, asyncio.TimeoutError) as e:  # subclass of APIConnectionError: test first
                self.stats.retries_timeout += 1
                last = e
            except openai.APIStatusError as e:
                self._answered = True
                if e.status_code in (400, 422) and self._refuses_schema(params):
                    # asked again at once without it: a refusal is an answer, not a fault
                    return await self._complete(messages, {k: v for k, v in params.items() if k != "response_format"})
                if e.status_code < 500 and e.status_code not in (408, 409):
                    raise LLMError(self.redact(f"HTTP {e.status_code} (not retried): {str(e)[:200]}")) from None
                self.stats.retries_5xx += 1
                last = e
            except openai.APIConnectionError as e:  # refused / no route / DNS: a server that never answered is down
                self.stats.retries_other += 1
                last = e
                if not self._answered and attempt >= UNREACHABLE_AFTER:
                    self._unreachable = self.redact(f"{c.base_url}: unreachable ({attempt + 1} connection attempts "
                                                    f"failed, no reply ever): {str(e)[:120]}")
                    raise LLMError(self._unreachable)
            except (openai.APIResponseValidationError, ValueError, AttributeError, IndexError, TypeError) as e:
                # broken body / truncated JSON / missing choices: the server misbehaved, ask again
                self.stats.retries_other += 1
                last = e
            if attempt < c.max_retries and end - loop.time() > 0:
                await self._backoff(attempt, retry_after)
        why = f"{type(last).__name__}: {str(last)[:200]}" if last else "no attempt left"
        raise LLMError(self.redact(f"gave up after {attempt + 1} attempts ({c.deadline_s:g} s deadline): {why}"))

    def _refuses_schema(self, params: dict[str, Any]) -> bool:
        """A 4xx to a request that carried our json_schema, from an endpoint not yet known to take it: mark it."""
        rf = params.get("response_format")
        if not (isinstance(rf, dict) and rf.get("type") == "json_schema") or self._schema_ok:
            return False
        if self._schema_ok is None:
            log.warning("%s refused response_format json_schema: extracting JSON from replies and re-asking instead",
                        self.config.base_url)
        self._schema_ok, self.stats.response_format = False, "refused"
        return True

    async def chat(self, messages: Messages, *, cache_tag: str = "", **params: Any) -> str:
        """Plain text reply (cached)."""
        return (await self._chat_validated(messages, None, cache_tag, params))[0]

    async def chat_json(self, messages: Messages, validate: Any = None, *, cache_tag: str = "", **params: Any) -> Any:
        """Reply parsed as JSON and validated; re-asks on failure; raises LLMError when it gives up."""
        return (await self._chat_validated(messages, make_validator(validate), cache_tag, params, as_json=True,
                                           schema=schema_of(validate)))[0]

    async def _chat_validated(
        self, messages: Messages, validator: Validator | None, tag: str, overrides: dict[str, Any], as_json: bool = False,
        schema: dict[str, Any] | None = None,
    ) -> tuple[Any, bool]:
        params = self._params(overrides)
        key = cache_key(self.config.model, messages, params, tag)  # how we ask for JSON is not part of what we ask
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.stats.cache_hits += 1
                return hit["value"], True
        convo = list(messages)
        err = ""
        for attempt in range(self.config.parse_retries + 1):
            if self._sem is not None:
                async with self._sem:
                    text = await self._complete(convo, self._with_format(params, schema) if as_json else params)
            else:
                text = await self._complete(convo, self._with_format(params, schema) if as_json else params)
            try:
                value = validator(extract_json(text)) if as_json else text
            except (ValueError, TypeError, KeyError) as e:
                err = str(e)
                self.stats.reasks += 1
                # show the model its answer and the problem; this re-ask is part of the same cache entry
                convo = list(messages) + [
                    {"role": "assistant", "content": text[:2000]},
                    {"role": "user", "content": f"Your reply was invalid ({err[:300]}). Reply again with ONLY the JSON object."},
                ]
                continue
            if self.cache is not None:
                self.cache.put(key, {"value": value, "text": text})
            self.stats.answers += 1
            if attempt == 0:
                self.stats.first_valid += 1
            else:
                self.stats.after_reask += 1
            return value, False
        raise LLMError(self.redact(f"invalid answer after {self.config.parse_retries + 1} tries: {err[:300]}"),
                       raw=self.redact(text[:2000]))

    async def map_json(
        self,
        requests: Iterable[Request],
        validate: Any = None,
        *,
        progress: bool = True,
        desc: str = "llm",
        on_result: Callable[[Result], None] | None = None,
    ) -> list[Result]:
        """Run many requests with at most `concurrency` in flight. Results come back in input order;
        a failed item is a Result(ok=False, error=...) rather than an exception, so one bad item never
        loses the batch. `on_result` is called as each finishes (e.g. to append to a progress file)."""
        from tqdm.auto import tqdm

        reqs = list(requests)
        validator, schema = make_validator(validate), schema_of(validate)
        self._sem = asyncio.Semaphore(self.config.concurrency)
        out: list[Result | None] = [None] * len(reqs)
        bar = tqdm(total=len(reqs), desc=desc, disable=not progress)

        async def one(i: int, r: Request) -> None:
            try:
                value, cached = await self._chat_validated(r.messages, validator, r.cache_tag, r.params, as_json=True,
                                                           schema=schema)
                res = Result(r.id, value, True, None, cached)
            except LLMError as e:
                self.stats.failures += 1
                res = Result(r.id, None, False, str(e), raw=e.raw)
            out[i] = res
            if on_result is not None:
                on_result(res)
            bar.update(1)

        try:
            # cache hits resolve without touching the semaphore; the rest queue on it
            await asyncio.gather(*(one(i, r) for i, r in enumerate(reqs)))
        finally:
            bar.close()
            self._sem = None
        return [r for r in out if r is not None]

    async def aclose(self) -> None:
        await self._client.close()
        if self.cache is not None:
            self.cache.close()


class LLMClient:
    """Synchronous convenience wrapper around AsyncLLMClient (one event loop per call)."""

    def __init__(self, config: LLMConfig):
        self.config = config
        self._cfg_cache = config.cache_path
        self.stats = LLMStats()

    def _run(self, fn: Callable[[AsyncLLMClient], Any]) -> Any:
        async def go() -> Any:
            c = AsyncLLMClient(self.config)
            c.stats = self.stats  # accumulate across calls
            try:
                return await fn(c)
            finally:
                await c.aclose()

        return asyncio.run(go())

    def chat(self, messages: Messages, *, cache_tag: str = "", **params: Any) -> str:
        return self._run(lambda c: c.chat(messages, cache_tag=cache_tag, **params))

    def chat_json(self, messages: Messages, validate: Any = None, *, cache_tag: str = "", **params: Any) -> Any:
        return self._run(lambda c: c.chat_json(messages, validate, cache_tag=cache_tag, **params))

    def map_json(self, requests: Iterable[Request], validate: Any = None, **kw: Any) -> list[Result]:
        return self._run(lambda c: c.map_json(requests, validate, **kw))
