"""The ``executor=ray`` config keys: validated with one error naming the culprit (no cluster started)."""

from __future__ import annotations

import pytest

from rollouts.config import load_config
from rollouts.errors import ConfigError


@pytest.mark.parametrize(("override", "message"), [
    ("executor=spark", "unknown executor 'spark'"),
    ("replicas=0", "replicas and tensor_parallel_size must be >= 1"),
    ("replica_restarts=-1", "replica_restarts >= 0"),
    ("replica_resources={gpus: 1}", "replica_resources: unknown keys ['gpus']"),
    ("replica_resources=4", "replica_resources must be a mapping"),
    ("replicas=two", "replicas must be an integer"),
    ("tensor_parallel_size=2", "tensor_parallel_size=2 needs replica_resources.num_gpus >= 2, got 0"),
])
def test_bad_ray_settings_are_refused(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, ["executor=ray", override])


def test_ray_settings_load():
    cfg = load_config(None, ["executor=ray", "ray_address=auto", "replicas=4", "tensor_parallel_size=2",
                             "replica_resources={num_cpus: 4, num_gpus: 2}"])
    assert (cfg.executor, cfg.ray_address, cfg.replicas, cfg.replica_resources["num_gpus"]) == ("ray", "auto", 4, 2)
    assert load_config(None, []).executor == "local"


def test_replicas_get_this_checkout_and_the_engine_environment(monkeypatch):
    from rollouts.ray_executor import ROOT, replica_env

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = replica_env()
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["PYTHONPATH"].split(":")[:2] == [str(ROOT), "/elsewhere"]
