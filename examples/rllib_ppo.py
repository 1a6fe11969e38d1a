"""Train RLlib PPO on the bundled cache through the masked env wrapper, then evaluate it like any policy.

    python -m examples.rllib_ppo                                   # 3 small iterations, test split
    python -m examples.rllib_ppo --iterations 10 --json runs/rllib_ppo.json

The env is ``ttc/Allocate-v0`` registered with ``ray.tune.registry.register_env`` (``env/rllib.py``):
observations ``{"observations", "action_mask"}`` and RLlib's action-masking PPO module. The env
settings are train.py's defaults (``configs/train_default.yaml`` ``env:``). The trained module is
wrapped as an ``AllocationPolicy`` (``policies/rllib_policy.py``) and scored on the test split at a
λ grid with evaluate.py's tools: ``score_choices`` next to the statics, the train-picked static and
the oracle, and the paired bootstrap of U_policy − U_best static.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_ppo(cache: str, env_cfg: dict, seed: int = 0, batch: int = 512, minibatch: int = 128, epochs: int = 2):
    """RLlib PPO on the masked ``ttc/Allocate-v0`` (one env runner in this process)."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.rllib.examples.rl_modules.classes.action_masking_rlm import ActionMaskingTorchRLModule

    from env.rllib import register_rllib_envs

    register_rllib_envs(["ttc/Allocate-v0"])
    config = (
        PPOConfig()
        .environment("ttc/Allocate-v0", env_config={"cache": cache, "split": "train", **env_cfg})
        .env_runners(num_env_runners=0)
        .rl_module(rl_module_spec=RLModuleSpec(
            module_class=ActionMaskingTorchRLModule,
            model_config={"head_fcnet_hiddens": [64, 64], "head_fcnet_activation": "tanh"},
        ))
        # one-step episodes: the return is the reward (gamma 0), small batches (2 shared cores)
        .training(gamma=0.0, lambda_=1.0, lr=3e-4, train_batch_size_per_learner=batch,
                  minibatch_size=minibatch, num_epochs=epochs)
        .debugging(seed=seed)
    )
    return config.build_algo()


def evaluate_policy(policy, cache: str, env_cfg: dict, grid_n: int = 3, n_boot: int = 1000) -> dict:
    """The policy vs statics / train-best static / oracle on the test split at an n x n λ grid."""
    import numpy as np

    from env.outcomes import OutcomeTable
    from env.splits import make_splits, split_rows
    from evaluation.bootstrap import bootstrap_vs_best_static
    from policies.base import lambda_grid, score_choices
    from policies.baselines import OraclePolicy, TrainBestStaticPolicy, static_policies

    table = OutcomeTable(cache, mc_subsets=env_cfg.get("mc_subsets", 128), outcome_seed=env_cfg.get("outcome_seed", 0))
    splits = make_splits(table.query_ids, env_cfg.get("split_seed", 0), env_cfg.get("split_fractions", (0.7, 0.15, 0.15)))
    train = split_rows(table, splits, "train")
    test = split_rows(table, splits, "test")
    test = test[table.mask[test].all(axis=1)]
    grid = lambda_grid(table, train, grid_n)
    statics, oracle, train_best = static_policies(table), OraclePolicy(), TrainBestStaticPolicy(train)
    points = []
    for lt, ls in grid["points"]:
        a = policy.choose(table, test, lt, ls)
        pols = {policy.name: score_choices(table, test, a, lt, ls),
                "oracle": score_choices(table, test, oracle.choose(table, test, lt, ls), lt, ls)}
        stat = {sp.name: score_choices(table, test, sp.choose(table, test, lt, ls), lt, ls) for sp in statics}
        best = max(stat, key=lambda k: stat[k]["utility"])
        pols["best_static"] = stat[best]
        pols["static_train_best"] = stat[f"static:{table.action_ids[train_best.action(table, lt, ls)]}"]
        boot = bootstrap_vs_best_static(table.utility(lt, ls)[test], a, n_boot=n_boot, seed=0)
        points.append({"lambda_tokens": lt, "lambda_seconds": ls, "best_static": best, "policies": pols,
                       f"{policy.name}_vs_best_static": boot})
    return {"cache": cache, "split": "test", "n_queries": int(len(test)), "points": points,
            "mean_utility": {k: float(np.mean([p["policies"][k]["utility"] for p in points]))
                             for k in points[0]["policies"]}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=str(ROOT / "data" / "default_cache"))
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--batch", type=int, default=512, help="train_batch_size_per_learner")
    ap.add_argument("--grid", type=int, default=3, help="λ grid points per axis")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the evaluation as JSON here")
    args = ap.parse_args(argv)
    if args.iterations < 1 or args.batch < 8 or args.grid < 2:
        print("error: --iterations >= 1, --batch >= 8 and --grid >= 2", file=sys.stderr)
        return 2
    if not Path(args.cache).is_dir():
        print(f"error: cache {args.cache} not found", file=sys.stderr)
        return 2
    import ray
    import torch

    from env.allocate_env import AllocateEnv
    from policies.rllib_policy import RLlibPolicy
    from rollouts.config import load_yaml_file

    torch.set_num_threads(1)
    env_cfg = load_yaml_file(ROOT / "configs" / "train_default.yaml")["env"]
    own_ray = not ray.is_initialized()  # a caller's cluster (e.g. the tests') is left running
    if own_ray:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    training = []
    try:
        algo = build_ppo(args.cache, env_cfg, seed=args.seed, batch=args.batch, minibatch=min(128, args.batch))
        for it in range(1, args.iterations + 1):
            t0 = time.perf_counter()
            res = algo.train()
            runners = res.get("env_runners", {})
            training.append({"iteration": it, "seconds": round(time.perf_counter() - t0, 2),
                             "episode_return_mean": runners.get("episode_return_mean"),
                             "env_steps": runners.get("num_env_steps_sampled_lifetime")})
            print(f"iteration {it}: episode_return_mean {training[-1]['episode_return_mean']:.4f} "
                  f"({training[-1]['seconds']:.1f} s, {training[-1]['env_steps']} env steps so far)")
        train_env = AllocateEnv(args.cache, split="train", **env_cfg)  # what the env runner observed
        policy = RLlibPolicy(algo.get_module(), train_env.encoder, train_env.table.action_ids)
        result = evaluate_policy(policy, args.cache, env_cfg, grid_n=args.grid)
        result["training"] = training
        algo.stop()
    finally:
        if own_ray:
            ray.shutdown()
    print(f"test split, {result['n_queries']} queries, {len(result['points'])} λ points; mean utility:")
    for name, u in result["mean_utility"].items():
        print(f"  {name:18s} {u:.4f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
