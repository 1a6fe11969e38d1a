"""MaskablePPO on ``ttc/Escalate-v0``: the checkpoint meta, the export fields and the warm start
from a one-shot run (its TensorBoard callbacks are in :mod:`policies.callbacks`).

A sequential checkpoint carries the same ``ttc_meta`` as a one-shot one (``format``, ``menu`` = the
cache's one-shot action ids, so :func:`policies.ppo.check_menu` still refuses another cache's menu,
``encoder``, ``env``, ``cache``) plus ``kind: "escalate"`` and ``escalate``: the step menu, the pool
config and size, and the ``SeenUnits`` of the observation's seen part. :func:`env_kind` tells the two
apart (one-shot checkpoints have no ``kind``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from env.escalate_menu import EscalateMenu
from env.outcomes import OutcomeTable
from env.penalties import reward_divisor
from env.seen import SeenUnits, menu_seen_features
from policies.observation import ObsEncoder
from policies.ppo import make_meta

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


def pools_used(meta: dict[str, Any]) -> dict[str, Any]:
    """The train summary's record of the pools a sequential run's env draws from (``{}`` for a one-shot
    run): each pool's config id, its label in the draw ids and its size."""
    if env_kind(meta) != KIND:
        return {}
    menu = EscalateMenu.from_dict(meta["escalate"])
    return {"pools": [{"config": p.config, "label": p.label, "size": p.size} for p in menu.pools]}


def describe_pools(menu: EscalateMenu) -> str:
    """One line saying which pools the env draws from (printed when a sequential run starts)."""
    if len(menu.pools) == 1:
        return f"ttc/Escalate-v0 draws from one pool: {menu.pool_config} (K = {menu.pool_size})"
    parts = ", ".join(f"{p.config} (K = {p.size}, draw@k:{p.label})" for p in menu.pools)
    return f"ttc/Escalate-v0 draws from {len(menu.pools)} pools: {parts}"


def export_fields(meta: dict[str, Any]) -> dict[str, Any]:
    """What ``policy.json`` of a sequential export adds or replaces (see :mod:`policies.export`)."""
    esc = meta["escalate"]
    return {
        "kind": KIND,
        "menu": list(esc["step_menu"]),
        "menu_names": list(esc["step_menu"]),
        "oneshot_menu": list(meta["menu"]),
        "escalate": esc,
        "seen_features": list(menu_seen_features(EscalateMenu.from_dict(esc))),
    }


def env_simulator(env: Any, table: OutcomeTable, encoder: ObsEncoder, n_orders: int, seed: int) -> Any:
    """A :class:`policies.escalate_sim.Simulator` over an Escalate-v0 env's queries, menu and units,
    with ``n_orders`` sample orders per query drawn from ``seed``."""
    from policies.escalate_sim import Simulator, make_orders

    orders, picks = make_orders(table, env.menu, env.rows, n_orders, seed=seed)
    return Simulator(table, env.menu, encoder, env.units, env.rows, orders, picks)


def clone_oneshot_into(
    model, oneshot_run: str, table: OutcomeTable, encoder: ObsEncoder, train_env: Any, env_cfg: Any, seed: int,
    trust: bool = False,
) -> dict[str, Any]:
    """:func:`warm_start_from_oneshot` on the training env's queries (two sample orders each) at 32 λ
    drawn as the env draws them; the report gains the seconds it took. ``trust``: load the one-shot
    run's zip even if this user's train.py did not write it (policies/trust.py)."""
    import time

    train_env.reset(seed=seed)
    lambdas = [train_env.draw_lambdas() for _ in range(32)]
    sim = env_simulator(train_env, table, encoder, 2, seed=seed + 1)
    t0 = time.time()
    cost_scale = train_env.cost_scale
    clone = warm_start_from_oneshot(
        model, oneshot_run, table, sim, lambdas, env_cfg, cost_scale, seed=seed, trust=trust
    )
    clone["seconds"] = round(time.time() - t0, 2)
    return clone


def clone_floor_into(
    model, make_floor_at: Any, table: OutcomeTable, encoder: ObsEncoder, train_env: Any, env_cfg: Any, seed: int
) -> dict[str, Any]:
    """Behaviour-clone the sequential policy's floor (:mod:`policies.sequential_gate`) before PPO, on
    the training env's queries (two orders each) at 32 λ drawn as the env draws them: at each λ the
    actor learns the step decisions of the floor there (a tuned rule, a static's plan, or the one-shot
    policy's choices), the critic their normalised return-to-go. ``make_floor_at(sim)`` gives
    ``floor_at(λ_T, λ_L)``: the floor's step policy on ``sim``'s queries at that λ and its name, or
    None where the step menu cannot play it. PPO then starts
    at the floor instead of at a random policy (which, on a small cache, can settle on a one-step
    beam for every query: its reward comes at once, while a draw pays only after the right stop)."""
    import time

    train_env.reset(seed=seed)
    lambdas = [train_env.draw_lambdas() for _ in range(32)]
    sim = env_simulator(train_env, table, encoder, 2, seed=seed + 1)
    t0 = time.time()
    names: dict[str, int] = {}
    floor_at = make_floor_at(sim)

    def follow_at(lt: float, ls: float) -> Any:
        got = floor_at(lt, ls)
        if got is None:
            return None
        policy, name = got
        names[name] = names.get(name, 0) + 1
        return policy

    targets = _clone_targets(follow_at, sim, lambdas, env_cfg, train_env.cost_scale)
    report = {"from": "floor", **behaviour_clone(model, *targets, seed=seed), "lambdas": len(lambdas),
              "floors": dict(sorted(names.items())), "seconds": round(time.time() - t0, 2)}  # fmt: skip
    return report


def _clone_targets(
    follow_at: Any, sim: Any, lambdas: list[tuple[float, float]], env_cfg: Any, cost_scale: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Observations, masks, actions and normalised returns-to-go of the step episodes that play
    ``follow_at(λ)`` (a step policy, or None to skip that λ) at each λ."""
    obs_l, mask_l, act_l, rtg_l = [], [], [], []
    for lt, ls in lambdas:
        follow = follow_at(lt, ls)
        if follow is None:
            continue
        seen: list[tuple[Any, float, float]] = []

        def record(obs, masks, episodes, follow=follow, seen=seen):
            a = follow(obs, masks, episodes)
            obs_l.append(obs.copy())
            mask_l.append(masks.copy())
            act_l.append(np.asarray(a).copy())
            seen.extend((ep, ep.state.tokens, ep.state.seconds) for ep in episodes)
            return a

        sim.run(record, lt, ls)
        norm = reward_divisor(env_cfg, (lt, ls), cost_scale)
        rtg = [
            (ep.correct - lt * (ep.state.tokens - t0) - ls * (ep.state.seconds - s0)) / norm for ep, t0, s0 in seen
        ]
        rtg_l.append(np.array(rtg) * env_cfg.reward_scale)
    if not act_l:
        from rollouts.errors import ConfigError

        raise ConfigError("nothing to clone: at no drawn λ can the step menu play the policy cloned")
    return np.concatenate(obs_l), np.concatenate(mask_l), np.concatenate(act_l), np.concatenate(rtg_l)


def behaviour_clone(
    model, obs_np: np.ndarray, masks: np.ndarray, acts_np: np.ndarray, rtg_np: np.ndarray, epochs: int = 20,
    seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Fit the actor to ``acts`` (cross-entropy over the legal actions) and the critic to the
    returns-to-go ``rtg`` (MSE), Adam, minibatches of 1 024; returns the samples and the agreement."""
    import torch

    obs, acts = torch.as_tensor(obs_np), torch.as_tensor(acts_np)
    rtg = torch.as_tensor(rtg_np, dtype=torch.float32)
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
    return {"samples": int(n), "epochs": epochs, "agreement": agree}


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
    trust: bool = False,
) -> dict[str, Any]:
    """Behaviour-clone a one-shot run before PPO: the actor learns to play the one-shot policy's choice
    as its first move (``draw@N`` then ``stop:<selector>``, or the beam), the critic the normalised
    return-to-go of those episodes. PPO then starts at the one-shot policy and learns where watching
    the samples pays (validation at step 0 keeps the clone if PPO does not improve on it).

    ``sim``: a :class:`policies.escalate_sim.Simulator` over the train split's queries and orders;
    ``lambdas``: the (λ_T, λ_L) pairs to clone at (drawn as the env draws them)."""
    from pathlib import Path

    from policies.ppo import PPOPolicy, check_menu, load_model, read_meta
    from rollouts.errors import ConfigError

    p = Path(oneshot_run)
    path = p / "best_model.zip" if p.is_dir() else p
    meta = read_meta(path, trust)
    if env_kind(meta) != "allocate":
        raise ConfigError(f"{path}: warm_start_from needs a one-shot (ttc/Allocate-v0) run")
    check_menu(meta, table, str(path))
    from policies.escalate_sim import oneshot_follower

    oneshot = PPOPolicy(load_model(path, table, trust=trust))
    targets = _clone_targets(oneshot_follower(oneshot, table, sim), sim, lambdas, env_cfg, cost_scale)
    return {"run": str(path), **behaviour_clone(model, *targets, epochs=epochs, seed=seed), "lambdas": len(lambdas)}


def escalate_warm_start(job: Any, model: Any, train_env: Any) -> dict[str, Any]:
    """Before PPO on ``ttc/Escalate-v0`` (a fresh run): with ``clone_floor`` (the default) tune the
    stopping rules on train + val (``rules.json``) and clone the floor; else, with ``warm_start_from``,
    clone that one-shot run. Returns train_summary.json's entries (``clone_of_floor`` /
    ``clone_of_oneshot``, ``rules``)."""
    from env.escalate_menu import EscalateMenu
    from policies.escalate_sim import playable_rows
    from policies.rule_tuning import load_tuned_rules, write_run_rules
    from policies.sequential_gate import floor_follower
    from policies.shipped_oneshot import compare_policy
    from rollouts.console import phase

    cfg, table = job.cfg, job.table
    if not cfg.clone_floor:
        if not cfg.warm_start_from:
            return {}
        with phase(f"behaviour cloning: the step policy imitates the one-shot run {cfg.warm_start_from}"):
            clone = clone_oneshot_into(
                model, cfg.warm_start_from, table, job.encoder, train_env, job.env_cfg, seed=cfg.seed,
                trust=job.trust_checkpoint,
            )
        print(f"cloned the one-shot run {clone['run']}: {clone['samples']} steps, agreement {clone['agreement']:.3f}")
        return {"clone_of_oneshot": clone}
    rules = write_run_rules(job, progress=cfg.progress_bar)
    menu = EscalateMenu(table, job.env_cfg)
    tuned = load_tuned_rules(job.run_dir, menu)
    one = compare_policy(cfg.floor_oneshot or cfg.warm_start_from, table, job.trust_checkpoint)
    rows = playable_rows(table, menu, np.concatenate([job.train_rows, job.val_rows]))

    def make_floor_at(sim: Any) -> Any:
        return floor_follower(table, menu, tuned, rows, None if one is None else one.shipped, sim)

    with phase("behaviour cloning: the step policy imitates its floor (the best tuned rule, static or one-shot policy per λ)"):
        clone = clone_floor_into(model, make_floor_at, table, job.encoder, train_env, job.env_cfg, seed=cfg.seed)
    print(f"cloned the floor ({', '.join(clone['floors'])}): {clone['samples']} steps, agreement {clone['agreement']:.3f}")
    return {"clone_of_floor": clone, "rules": rules}
