"""MaskablePPO on ``ttc/Escalate-v0``: the checkpoint meta, the TensorBoard callbacks, the val metrics.

A sequential checkpoint carries the same ``ttc_meta`` as a one-shot one (``format``, ``menu`` = the
cache's one-shot action ids, so :func:`policies.ppo.check_menu` still refuses another cache's menu,
``encoder``, ``env``, ``cache``) plus ``kind: "escalate"`` and ``escalate``: the step menu, the pool
config and size, and the ``SeenUnits`` of the observation's seen part. :func:`env_kind` tells the two
apart (one-shot checkpoints have no ``kind``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from env.allocate_env import ObsEncoder
from env.escalate_env import SEEN_FEATURES, EscalateMenu, SeenUnits
from env.outcomes import OutcomeTable
from policies.ppo import make_meta, tb_tag

KIND = "escalate"


def env_kind(meta: dict[str, Any]) -> str:
    """``"escalate"`` for a sequential checkpoint or export, ``"allocate"`` for a one-shot one."""
    return str(meta.get("kind") or (meta.get("env") or {}).get("kind") or "allocate")


def make_escalate_meta(
    table: OutcomeTable, encoder: ObsEncoder, env_cfg: dict[str, Any], menu: EscalateMenu, units: SeenUnits
) -> dict[str, Any]:
    meta = make_meta(table, encoder, env_cfg)
    meta["kind"] = KIND
    meta["escalate"] = {
        **menu.to_dict(),
        "step_menu": list(menu.ids),
        "units": units.to_dict(),
        "latency_model": table.meta.get("latency_model"),  # live routing reports its prediction per round
    }
    return meta


def make_escalate_metrics_callback(hparams: dict[str, Any] | None):
    """ttc/ scalars of each rollout's finished episodes: accuracy, tokens, seconds, utility,
    ttc/rounds, ttc/samples, ttc/beam_share and ttc/stop/<final step action> shares."""
    from stable_baselines3.common.callbacks import BaseCallback

    class EscalateMetricsCallback(BaseCallback):
        def __init__(self):
            super().__init__()
            self._reset()

        def _reset(self):
            self.n = 0
            self.sums = np.zeros(7)
            self.stops: dict[str, int] = {}

        def _on_training_start(self) -> None:
            if hparams is not None and self.model.num_timesteps == 0:
                from stable_baselines3.common.logger import HParam

                metrics = {"ttc/utility": 0.0, "ttc/accuracy": 0.0, "eval/mean_reward": 0.0}
                self.logger.record(
                    "hparams", HParam(hparams, metrics), exclude=("stdout", "log", "json", "csv")
                )

        def _on_step(self) -> bool:
            for info in self.locals.get("infos", []):
                if "utility" in info:
                    self.sums += (
                        info["correct"],
                        info["tokens"],
                        info["seconds"],
                        info["utility"],
                        info["rounds"],
                        info["samples"],
                        info["beam"],
                    )
                    self.stops[info["stop"]] = self.stops.get(info["stop"], 0) + 1
                    self.n += 1
            return True

        def _on_rollout_end(self) -> None:
            if self.n == 0:
                return
            acc, tok, sec, util, rounds, samples, beam = self.sums / self.n
            for k, v in (
                ("accuracy", acc),
                ("mean_tokens", tok),
                ("mean_seconds", sec),
                ("utility", util),
                ("rounds", rounds),
                ("samples", samples),
                ("beam_share", beam),
            ):
                self.logger.record(f"ttc/{k}", v)
            for k, c in self.stops.items():
                self.logger.record(f"ttc/stop/{tb_tag(k)}", c / self.n)
            self._reset()

    return EscalateMetricsCallback()


def make_escalate_val_callback(sim, lambdas: list[tuple[float, float]]):
    """After each evaluation: ttc/val/ accuracy, tokens, seconds, utility, rounds over (val query, order, λ)."""
    from stable_baselines3.common.callbacks import BaseCallback

    from policies.escalate_sim import model_policy

    class EscalateValCallback(BaseCallback):
        def _on_step(self) -> bool:
            pol = model_policy(self.model)
            agg = np.zeros(5)
            for lt, ls in lambdas:
                s = sim.run(pol, lt, ls).summary(lt, ls)
                agg += (s["accuracy"], s["mean_tokens"], s["mean_seconds"], s["utility"], s["mean_rounds"])
            agg /= len(lambdas)
            for k, v in zip(
                ("accuracy", "mean_tokens", "mean_seconds", "utility", "rounds"), agg, strict=True
            ):
                self.logger.record(f"ttc/val/{k}", float(v))
            return True

    return EscalateValCallback()


def export_fields(meta: dict[str, Any]) -> dict[str, Any]:
    """What ``policy.json`` of a sequential export adds or replaces (see :mod:`policies.export`)."""
    esc = meta["escalate"]
    return {
        "kind": KIND,
        "menu": list(esc["step_menu"]),
        "menu_names": list(esc["step_menu"]),
        "oneshot_menu": list(meta["menu"]),
        "escalate": esc,
        "seen_features": list(SEEN_FEATURES),
    }
