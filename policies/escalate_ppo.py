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
from policies.ppo import log_hparams, make_meta, tb_tag

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
                log_hparams(self.logger, hparams)

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


def warm_start_from_oneshot(
    model,
    oneshot_run: str,
    table: OutcomeTable,
    sim,
    lambdas: list[tuple[float, float]],
    env_cfg: Any,
    cost_scale: tuple[float, float],
    epochs: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """Behaviour-clone a one-shot run before PPO: the actor learns to play the one-shot policy's choice
    as its first move (``draw@N`` then ``stop:<selector>``, or the beam), the critic the normalised
    return-to-go of those episodes. PPO then starts at the one-shot policy and learns where watching
    the samples pays (validation at step 0 keeps the clone if PPO does not improve on it).

    ``sim``: a :class:`policies.escalate_sim.Simulator` over the train split's queries and orders;
    ``lambdas``: the (λ_T, λ_L) pairs to clone at (drawn as the env draws them)."""
    from pathlib import Path

    import torch

    from policies.escalate_sim import plan_policy
    from policies.ppo import PPOPolicy, check_menu, load_model, read_meta

    p = Path(oneshot_run)
    path = p / "best_model.zip" if p.is_dir() else p
    if env_kind(read_meta(path)) != "allocate":
        from rollouts.errors import ConfigError

        raise ConfigError(f"{path}: warm_start_from needs a one-shot (ttc/Allocate-v0) run")
    check_menu(read_meta(path), table, str(path))
    oneshot = PPOPolicy(load_model(path, table))
    plans = [sim.menu.oneshot_plan(a) for a in table.menu]
    obs_l, mask_l, act_l, rtg_l = [], [], [], []
    for lt, ls in lambdas:
        choice = oneshot.choose(table, sim.rows, lt, ls)
        row_plan = {int(q): int(a) for q, a in zip(sim.rows, choice, strict=True)}
        if any(plans[a] is None for a in row_plan.values()):
            continue  # a choice the step menu cannot play (another pool config)
        follow = plan_policy([pl or [] for pl in plans], row_plan)
        seen: list[tuple[Any, float, float]] = []

        def record(obs, masks, episodes, follow=follow, seen=seen):
            a = follow(obs, masks, episodes)
            obs_l.append(obs.copy())
            mask_l.append(masks.copy())
            act_l.append(a.copy())
            seen.extend((ep, ep.state.tokens, ep.state.seconds) for ep in episodes)
            return a

        sim.run(record, lt, ls)
        norm = (
            env_cfg.reward_norm_floor + lt * cost_scale[0] + ls * cost_scale[1]
            if env_cfg.reward_norm == "context"
            else 1.0
        )
        rtg_l.append(
            np.array(
                [
                    (ep.correct - lt * (ep.state.tokens - t0) - ls * (ep.state.seconds - s0)) / norm
                    for ep, t0, s0 in seen
                ]
            )
            * env_cfg.reward_scale
        )
    obs = torch.as_tensor(np.concatenate(obs_l))
    masks = np.concatenate(mask_l)
    acts = torch.as_tensor(np.concatenate(act_l))
    rtg = torch.as_tensor(np.concatenate(rtg_l), dtype=torch.float32)
    policy = model.policy
    opt = torch.optim.Adam(policy.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    n = len(acts)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for lo in range(0, n, 1024):
            idx = perm[lo : lo + 1024]
            values, logp, _ = policy.evaluate_actions(obs[idx], acts[idx], action_masks=masks[idx.numpy()])
            loss = -logp.mean() + 0.5 * torch.nn.functional.mse_loss(values.flatten(), rtg[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        dist = policy.get_distribution(obs, action_masks=masks)
        agree = float((dist.distribution.probs.argmax(dim=1) == acts).float().mean())
    return {
        "run": str(path),
        "samples": int(n),
        "lambdas": len(lambdas),
        "epochs": epochs,
        "agreement": agree,
    }
