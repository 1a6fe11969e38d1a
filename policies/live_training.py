"""The training side of a live run (``env.source: live``, ``env/live_source.py``).

- :class:`LiveVecEnv` wraps the training envs: before a vectorised step it hands the step's (query,
  action) pairs to the live source (the sequential env: the records each env's step needs, its query's
  pools on an episode's first step and a beam's config), which runs the missing outcomes on the engine
  together (one batched call per config) and prices them into the table; then the envs step as they
  would on a cache. PPO waits for the engine meanwhile.
- :class:`LiveMetricsCallback` logs ``ttc/live/new_records``, ``ttc/live/cache_hit_rate``,
  ``ttc/live/engine_seconds`` and ``ttc/live/records/<config>`` each rollout, prints the engine time and
  new records beside the progress bar, and stops training once a cap (``live.max_new_records``,
  ``live.max_engine_seconds``) is reached: the job then saves and exports as at the end.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from env.live_source import LiveSource, pairs_of
from policies.callbacks import tb_tag
from rollouts.console import note


class LiveVecEnv(VecEnvWrapper):
    """Training envs whose missing outcomes are generated, all of one step together, before they step."""

    def __init__(self, venv: VecEnv, source: LiveSource):
        super().__init__(venv)
        self.source = source
        self.sequential = bool(venv.has_attr("live_needs"))

    def step_async(self, actions: np.ndarray) -> None:
        acts = np.asarray(actions).reshape(-1)
        if self.sequential:  # ttc/Escalate-v0: the records each env's step needs (EscalateEnv.live_needs)
            needs = [n for i, a in enumerate(acts) for n in self.venv.env_method("live_needs", int(a), indices=[i])[0]]
            self.source.ensure_configs(len(acts), needs)
        else:
            rows = np.array(self.venv.get_attr("query_row"))
            self.source.ensure(pairs_of(rows, acts))
        self.venv.step_async(actions)

    def step_wait(self) -> Any:
        return self.venv.step_wait()

    def reset(self) -> Any:
        return self.venv.reset()


class LiveMetricsCallback(BaseCallback):
    """See the module docstring."""

    def __init__(self, source: LiveSource, progress: bool):
        super().__init__()
        self.source, self.progress = source, progress
        self._stopped = False

    def _on_step(self) -> bool:
        cap = self.source.exhausted
        if cap and not self._stopped:
            self._stopped = True
            note(f"live: {cap} reached after {self.num_timesteps} steps: training stops here")
        return cap is None

    def _on_rollout_end(self) -> None:
        s = self.source.stats()
        self.logger.record("ttc/live/new_records", s["new_records"])
        self.logger.record("ttc/live/engine_seconds", s["engine_seconds"])
        if s["cache_hit_rate"] is not None:
            self.logger.record("ttc/live/cache_hit_rate", s["cache_hit_rate"])
        for cfg, n in s["records_per_config"].items():
            self.logger.record(f"ttc/live/records/{tb_tag(cfg)}", n)
        if self.progress:
            note(f"live: engine {s['engine_seconds']:.1f} s, {s['new_records']} new records, "
                 f"cache hit rate {s['cache_hit_rate']}")


def live_source(job: Any) -> LiveSource | None:
    """The live source of a training job (None for a cached run)."""
    return getattr(job.table, "source", None)


def wrap_envs(job: Any, envs: Any) -> Any:
    """The job's envs, the training ones wrapped in :class:`LiveVecEnv` for a live run."""
    src = live_source(job)
    if src is not None:
        envs.train = LiveVecEnv(envs.train, src)
        # SB3's eval callback notes that the training envs are wrapped and the validation env is not: by design
        warnings.filterwarnings("ignore", message="Training and eval env are not of the same type")
    return envs


def add_callbacks(job: Any, callbacks: CallbackList) -> CallbackList:
    """The job's callbacks, plus :class:`LiveMetricsCallback` for a live run."""
    src = live_source(job)
    return callbacks if src is None else CallbackList([callbacks, LiveMetricsCallback(src, job.cfg.progress_bar)])
