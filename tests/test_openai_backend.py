"""The openai backend's context length: the server's own ``max_model_len`` from ``/v1/models`` (as vLLM
reports it), bounded by a ``max_model_len`` option, which also stands in where the server reports none;
``collect.py backend=openai`` accepts the default ``backend_options`` ({max_model_len: 1024}). The servers
are real HTTP servers on 127.0.0.1 answering ``/v1/models`` (tests/fixtures/fake_openai_server.py for the
collector run)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rollouts.backends import make_backend
from rollouts.backends.openai_http import OpenAIBackend
from rollouts.config import load_config
from rollouts.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def models_server() -> Iterator[tuple[str, list[dict]]]:
    """A server whose ``/v1/models`` lists the ``models`` the test puts in the returned list."""
    models: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = json.dumps({"object": "list", "data": models}).encode()
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", models
    server.shutdown()
    server.server_close()


def _backend(url: str, **options) -> OpenAIBackend:
    return OpenAIBackend("unused-tokenizer-path", base_url=url, max_retries=0, **options)


def test_the_servers_max_model_len_bounded_by_the_option(models_server):
    url, models = models_server
    models += [{"id": "a", "object": "model", "max_model_len": 1536},
               {"id": "b", "object": "model", "max_model_len": 4096}]  # fmt: skip
    b = _backend(url)
    assert (b.served_model_name, b.max_model_len, b.describe()["max_model_len"]) == ("a", 1536, 1536)
    assert _backend(url, served_model_name="b").max_model_len == 4096
    assert _backend(url, max_model_len=512).max_model_len == 512  # the option bounds it
    assert _backend(url, max_model_len=8192).max_model_len == 1536  # the server's is the real limit


def test_the_option_stands_in_where_the_server_reports_none(models_server):
    url, models = models_server
    models.append({"id": "m", "object": "model"})  # an OpenAI-compatible server without the field
    assert _backend(url).max_model_len is None and "max_model_len" not in _backend(url).describe()
    assert _backend(url, max_model_len=1024).max_model_len == 1024
    models[0]["max_model_len"] = "lots"  # unusable: as if none
    assert _backend(url).max_model_len is None


@pytest.mark.parametrize("bad", [0, -5, "1024", 1024.5, True])
def test_a_bad_option_names_it(models_server, bad):
    url, models = models_server
    models.append({"id": "m", "object": "model", "max_model_len": 1024})
    with pytest.raises(ConfigError, match="max_model_len must be a positive integer"):
        _backend(url, max_model_len=bad)


def test_collects_default_backend_options_build_an_openai_backend(models_server):
    """``collect.py backend=openai``'s config, with its default backend_options, as the collector builds it."""
    url, models = models_server
    models.append({"id": "m", "object": "model", "max_model_len": 2048})
    cfg = load_config(None, ["backend=openai"])
    assert cfg.backend_options == {"max_model_len": 1024}  # the default the collector passes
    backend = make_backend(cfg.backend, "unused", **cfg.backend_options, base_url=url)
    assert backend.max_model_len == 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_collect_backend_openai_with_the_default_options_runs(tmp_path):
    """A real collect.py run (real featurizer, cache writer) with backend=openai and the default
    backend_options plus the server's address: the cache records the context length it ran with."""
    from rollouts.cache import load_cache

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "tests.fixtures.fake_openai_server", str(port)], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        out = tmp_path / "cache"
        p = subprocess.run(
            [sys.executable, "collect.py", "--no-progress", "backend=openai",
             f"backend_options={{max_model_len: 1024, base_url: 'http://127.0.0.1:{port}/v1'}}",
             "menu=[{strategy: sample_pool, n: 2}]", "budgets=[1, 2]", "calibration_queries=0", "limit=2",
             f"output={out}"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        server.kill()
        server.wait()
    assert p.returncode == 0, p.stderr[-2000:]
    meta = load_cache(out).meta
    assert meta["backend"]["backend"] == "openai" and meta["backend"]["max_model_len"] == 1024


def test_route_checks_questions_against_the_same_context_as_the_backend(models_server):
    """route.py's question check (before the engine starts) uses the length the backend will use: the
    server's, bounded by the option, which stands in where the server reports none."""
    from route import LiveRouter

    url, models = models_server
    models.append({"id": "m", "object": "model", "max_model_len": 1536})
    length = LiveRouter._context_length  # needs no router for the openai backend
    assert length(None, "openai", {"base_url": url}) == _backend(url).max_model_len == 1536  # type: ignore[arg-type]
    for option in (512, 8192):
        got = length(None, "openai", {"base_url": url, "max_model_len": option})  # type: ignore[arg-type]
        assert got == _backend(url, max_model_len=option).max_model_len == min(option, 1536)
    models[0].pop("max_model_len")
    assert length(None, "openai", {"base_url": url, "max_model_len": 700}) == 700  # type: ignore[arg-type]
