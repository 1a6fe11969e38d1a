"""The SB3 callbacks of a training job: TensorBoard ``ttc/`` scalars of both envs, the validation
metrics after each evaluation, best-model bookkeeping and the evaluation before the first update.

Only ``train.py`` (through :mod:`policies.training`) uses them, so stable-baselines3 is imported at
the top here and nowhere near the loaders that evaluation and serving import.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback, EvalCallback
from stable_baselines3.common.logger import HParam, Logger, TensorBoardOutputFormat

from env.outcomes import OutcomeTable
from policies.base import score_choices
from policies.trust import save_model
from rollouts.atomic import write_text_atomic


def tb_tag(action_id: str) -> str:
    """An action id as a TensorBoard tag (characters TensorBoard would mangle become ``_``)."""
    return re.sub(r"[^A-Za-z0-9_.@=,/-]", "_", action_id)


def log_hparams(logger: Any, hparams: dict[str, Any]) -> None:
    """The run's hyperparameters in TensorBoard's HPARAMS tab, with the metrics it should list beside them."""
    metrics = {"ttc/utility": 0.0, "ttc/accuracy": 0.0, "eval/mean_reward": 0.0}
    logger.record("hparams", HParam(hparams, metrics), exclude=("stdout", "log", "json", "csv"))


def write_tb_scalars(logger: Logger, scalars: dict[str, float], step: int) -> None:
    """Write ``scalars`` at ``step`` straight to the logger's TensorBoard file, outside SB3's pending
    values: after ``learn`` those hold the last update's train/*, whose step was already logged."""
    for fmt in logger.output_formats:
        if isinstance(fmt, TensorBoardOutputFormat):
            for key, value in scalars.items():
                fmt.writer.add_scalar(key, value, step)
            fmt.writer.flush()


def record_val(logger: Logger, values: dict[str, Any], step: int) -> None:
    """``ttc/val/<key>`` at ``step``, the step of the evaluation's ``eval/*`` (its callback runs after
    the evaluation was dumped: without this dump they would wait for the next rollout's step)."""
    for k, v in values.items():
        logger.record(f"ttc/val/{k}", float(v))
    logger.dump(step)


class EpisodeMetricsCallback(BaseCallback):
    """Sums the finished training episodes' ``info`` of each rollout into ``ttc/`` scalars (the
    subclass says which), and logs the hyperparameters once at the start of a fresh run."""

    def __init__(self, hparams: dict[str, Any] | None):
        super().__init__()
        self.hparams = hparams
        self._reset()

    def _reset(self) -> None:
        self.n = 0

    def _add(self, info: dict[str, Any]) -> None:
        raise NotImplementedError

    def _record(self) -> None:
        raise NotImplementedError

    def _on_training_start(self) -> None:
        if self.hparams is not None and self.model.num_timesteps == 0:
            log_hparams(self.logger, self.hparams)

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", []):
            if "utility" in info:  # a finished episode
                self._add(info)
                self.n += 1
        return True

    def _on_rollout_end(self) -> None:
        if self.n == 0:
            return
        self._record()
        self._reset()


class TTCMetricsCallback(EpisodeMetricsCallback):
    """Allocate-v0: ttc/accuracy, mean_tokens, mean_seconds, utility and ttc/share/<action>."""

    def __init__(self, action_ids: list[str], hparams: dict[str, Any] | None):
        self.action_ids = list(action_ids)
        super().__init__(hparams)

    def _reset(self) -> None:
        super()._reset()
        self.sums = np.zeros(4)
        self.counts = np.zeros(len(self.action_ids))

    def _add(self, info: dict[str, Any]) -> None:
        self.sums += (info["correct"], info["tokens"], info["seconds"], info["utility"])
        self.counts[info["action"]] += 1

    def _record(self) -> None:
        acc, tok, sec, util = self.sums / self.n
        self.logger.record("ttc/accuracy", acc)
        self.logger.record("ttc/mean_tokens", tok)
        self.logger.record("ttc/mean_seconds", sec)
        self.logger.record("ttc/utility", util)
        for i, a in enumerate(self.action_ids):
            self.logger.record(f"ttc/share/{tb_tag(a)}", self.counts[i] / self.n)


class EscalateMetricsCallback(EpisodeMetricsCallback):
    """Escalate-v0: accuracy, tokens, seconds, utility, ttc/rounds, ttc/samples, ttc/beam_share and
    ttc/stop/<final step action> shares."""

    KEYS = ("correct", "tokens", "seconds", "utility", "rounds", "samples", "beam")

    def _reset(self) -> None:
        super()._reset()
        self.sums = np.zeros(len(self.KEYS))
        self.stops: dict[str, int] = {}

    def _add(self, info: dict[str, Any]) -> None:
        self.sums += tuple(info[k] for k in self.KEYS)
        self.stops[info["stop"]] = self.stops.get(info["stop"], 0) + 1

    def _record(self) -> None:
        names = ("accuracy", "mean_tokens", "mean_seconds", "utility", "rounds", "samples", "beam_share")
        for k, v in zip(names, self.sums / self.n, strict=True):
            self.logger.record(f"ttc/{k}", v)
        for k, c in self.stops.items():
            self.logger.record(f"ttc/stop/{tb_tag(k)}", c / self.n)


class ValMetricsCallback(BaseCallback):
    """After each evaluation: ttc/val/ accuracy, tokens, seconds, utility over (val query, λ) pairs."""

    def __init__(self, table: OutcomeTable, rows: np.ndarray, lambdas: list[tuple[float, float]]):
        super().__init__()
        self.table, self.rows, self.lambdas = table, rows, lambdas

    def _on_step(self) -> bool:
        from policies.ppo import PPOPolicy

        pol, table, rows = PPOPolicy(self.model), self.table, self.rows
        agg = np.zeros(4)
        for lt, ls in self.lambdas:
            r = score_choices(table, rows, pol.choose(table, rows, lt, ls), lt, ls)
            agg += (r["accuracy"], r["mean_tokens"], r["mean_seconds"], r["utility"])
        agg /= len(self.lambdas)
        keys = ("accuracy", "mean_tokens", "mean_seconds", "utility")
        record_val(self.logger, dict(zip(keys, agg, strict=True)), self.num_timesteps)
        return True


class EscalateValCallback(BaseCallback):
    """After each evaluation: ttc/val/ accuracy, tokens, seconds, utility, rounds over (val query,
    order, λ), played by ``sim`` (a :class:`policies.escalate_sim.Simulator` of the val split)."""

    def __init__(self, sim: Any, lambdas: list[tuple[float, float]]):
        super().__init__()
        self.sim, self.lambdas = sim, lambdas

    def _on_step(self) -> bool:
        from policies.escalate_sim import model_policy

        pol = model_policy(self.model)
        agg = np.zeros(5)
        for lt, ls in self.lambdas:
            s = self.sim.run(pol, lt, ls).summary(lt, ls)
            agg += (s["accuracy"], s["mean_tokens"], s["mean_seconds"], s["utility"], s["mean_rounds"])
        agg /= len(self.lambdas)
        keys = ("accuracy", "mean_tokens", "mean_seconds", "utility", "rounds")
        record_val(self.logger, dict(zip(keys, agg, strict=True)), self.num_timesteps)
        return True


class BestTracker(BaseCallback):
    """Called on each new best validation result: saves ``best_model.zip`` (the EvalCallback saves
    nothing itself) and writes the value and step to ``best.json`` (a resume reads it back, so a later
    best must beat the killed job's). Both are replaced atomically, the zip recorded as trusted
    (:func:`policies.trust.save_model`): a kill mid-save leaves the previous pair."""

    def __init__(self, best_path: Path, model_path: Path):
        super().__init__()
        self.best_path, self.model_path = best_path, model_path

    def _on_step(self) -> bool:
        assert isinstance(self.parent, EvalCallback)  # callback_on_new_best of the EvalCallback
        save_model(self.model, self.model_path)
        best = {"best_mean_reward": float(self.parent.best_mean_reward), "timesteps": int(self.num_timesteps)}
        write_text_atomic(self.best_path, json.dumps(best) + "\n")
        return True


class TrustedCheckpointCallback(CheckpointCallback):
    """SB3's CheckpointCallback (``<save_path>/<prefix>_<steps>_steps.zip``), each zip written atomically
    and recorded as trusted (:func:`policies.trust.save_model`)."""

    def _on_step(self) -> bool:
        if self.n_calls % self.save_freq == 0:
            save_model(self.model, self._checkpoint_path(extension="zip"))
        return True


class EvalAtStart(BaseCallback):
    """One validation pass before the first PPO update of a fresh run, so the starting policy (the
    warm-started utility actor, the one-shot clone) is a candidate for best_model.zip: PPO is kept
    only if it helps. Also logs the warm start's MSEs (``warm_start``) at step 0."""

    def __init__(self, eval_cb: EvalCallback, fresh: bool, warm_start: dict[str, Any] | None):
        super().__init__()
        self.eval_cb, self.fresh, self.warm_start = eval_cb, fresh, warm_start

    def _on_training_start(self) -> None:
        if self.warm_start is not None:
            for k in ("train_mse", "val_mse", "val_mse_prior_only"):
                self.logger.record(f"ttc/warm_start/{k}", self.warm_start[k])
        if self.fresh:
            self.eval_cb._on_step()  # n_calls == 0: EvalCallback evaluates, logs at step 0, saves if best

    def _on_step(self) -> bool:
        return True
