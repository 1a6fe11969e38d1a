"""Which collector runs a config: ``executor: local`` (one process, :class:`rollouts.collector.Collector`)
or ``executor: ray`` (replica actors, :class:`rollouts.ray_executor.RayCollector`).

The choice lives here, above both, so that neither module imports the other's user (no import cycle)
and every caller (the CLI, tests) gets the configured executor.
"""

from __future__ import annotations

from rollouts.backends import Backend
from rollouts.collector import Collector
from rollouts.config import CollectConfig


def make_collector(cfg: CollectConfig, backend: Backend | None = None, progress: bool = True) -> Collector:
    """The collector ``cfg.executor`` names (Ray is imported only for ``executor: ray``)."""
    if cfg.executor == "ray":
        from rollouts.ray_executor import RayCollector

        return RayCollector(cfg, backend=backend, progress=progress)
    return Collector(cfg, backend=backend, progress=progress)
