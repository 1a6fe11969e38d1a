"""Evaluate a trained run (or a checkpoint) against every baseline on the held-out split and a λ grid.

    python evaluate.py --run runs/<name>                       # best_model.zip, test split, 5x5 grid
    python evaluate.py --checkpoint runs/<name>/checkpoints/ppo_20000_steps.zip --json results.json
    python evaluate.py --run runs/<name> --lambda-tokens 0 1e-4 --lambda-seconds 0 0.1
    python evaluate.py --export runs/<name>/export               # the ONNX export: never unpickles

A ``.zip`` checkpoint is a pickle and runs code when loaded: ``--checkpoint`` of a file outside the
run folder needs ``--trust-checkpoint``; share and evaluate exports (``--export``) instead.

For each (λ_T, λ_L) point and each policy: accuracy (expected correctness), mean tokens, mean seconds
and utility = accuracy − λ_T·tokens − λ_L·seconds, on the run's test split (``--split``; queries
where some action was never measured are left out and counted in ``n_dropped_incomplete``). Policies:
``ppo`` (argmax over legal actions), ``probe_router`` (the seed paper's router, fitted on the train
split and Platt-calibrated on the validation split), ``oracle`` (per-query hindsight best),
``random``, ``static:<action id>`` for every action of the menu and ``static_train_best`` (the static
action with the best mean utility on the train split at that point: what one would deploy without
routing). ``best_static`` is the static action with the highest utility on the evaluated split at
that point (a hindsight choice, so the bar PPO must clear is the strictest one). Gap share = (U_policy − U_best_static) / (U_oracle −
U_best_static) (null when the gap is below 1e-9).

The default grid is 5 x 5: per axis 0 and 4 log-spaced values (0.032, 0.1, 0.32, 1) x λ_max, with
λ_max = 1 / (largest per-action mean tokens, resp. seconds, on the train split): from "accuracy only"
to "cost dominates" (the most expensive action's cost alone equals one unit of accuracy).

Outputs in ``--out`` (default ``<run>/eval/``): ``results.csv`` (one row per point and policy),
``results.md`` (per-point summary), ``pareto_tokens.png`` and ``pareto_seconds.png``, and with
``--json PATH`` the same numbers as JSON. JSON keys::

    run, model, cache, split, n_queries, n_dropped_incomplete, menu (action ids),
    latency ("seconds from the cache", or why λ_L is fixed at 0: the λ_L axis is then [0]), latency_load
    grid: {lambda_tokens: [...], lambda_seconds: [...]}
    budgets: null, or per target {cost, target, lambda_tokens, lambda_seconds, solved_on_mean, eval_mean,
              eval_rel_error, eval_accuracy, static_within_budget, static_closest_cost, ...}
    points: [ { lambda_tokens, lambda_seconds,
                policies: { <policy>: {accuracy, mean_tokens, mean_seconds, utility, share: {action id: fraction}} },
                best_static (action id), oracle_gap (U_oracle − U_best_static),
                ppo_gap_share, probe_router_gap_share,
                static_train_best (action id), ppo_ge_best_static (bool), ppo_ge_probe_router (bool),
                ppo_ge_static_train_best (bool), static_train_best_ge_best_static (bool),
                ppo_vs_best_static: {diff, ci90: [lo, hi], p_ge} } ]
    summary: { n_points, ppo_ge_best_static (count), ppo_ge_probe_router (count), ppo_ge_static_train_best (count),
               static_train_best_ge_best_static (count: the no-routing reference for ppo_ge_best_static),
               ppo_gap_share_mean, ppo_gap_share_min, probe_router_gap_share_mean,
               ppo_below_best_static_ci (count of points whose 90% CI upper end is < −1e-9),
               all_points_ge_best_static_p: {ppo, probe_router, static_train_best} (share of bootstrap
               resamples in which that policy is >= the re-picked best static at every point; null
               when --bootstrap 0), n_boot }

Gated policies (``policies/gate.py``): ``ppo_gated`` is the run's policy with its gain shrinkage
and its gate (``<run>/gate.json``, fitted now if the run has none), ``probe_router_gated`` the router
behind a gate fitted here by the same cross-fitted rule; ``static_trainval_best`` is the static
picked on train + validation (the gates' fallback). With ``--export``, ``ppo_gated`` is the export
as shipped (its own gate and shrunk actor) and ``ppo`` the same network with the gate off. Extra point keys: ``ppo_gated_gap_share``,
``ppo_gated_ge_best_static``, ``ppo_gated_ge_static_train_best``, ``ppo_gated_vs_best_static``,
``static_trainval_best``, ``gate: {ppo|probe_router: {open, deviation_share}}`` (deviation share:
queries whose choice differs from the fallback), ``vs_static_train_best`` and
``vs_static_trainval_best``: ``{ppo|ppo_gated|probe_router|probe_router_gated: {diff, ci90, p_ge}}``
(paired bootstrap of U_policy − U_that static; ``p_ge`` = P(policy ≥ it)). Extra summary keys:
``ppo_gated_ge_best_static``, ``ppo_gated_ge_static_train_best``, ``ppo_gated_gap_share_mean``,
``ppo_gated_below_best_static_ci``, ``below_static_train_best_ci`` and
``below_static_trainval_best_ci`` (per policy: points whose 90% CI upper end is < 0),
``gap_share_mean_boot_std`` (the bootstrap spread of the mean gap share, PPO and gated), ``gate``
(open shares, shrinkage α, evidence method, points open).

``ppo_vs_best_static`` is a paired bootstrap over the evaluated queries (``--bootstrap`` resamples,
default 1000) of U_PPO − U_best static with the best static re-picked in each resample: on a test
split of ~100 queries the hindsight best static is itself lucky, and the interval says whether a
point where PPO is below it is a loss or noise.

Budgets instead of prices: ``--target-tokens T [T ...]`` / ``--target-seconds S [S ...]`` find, per
target, the λ_T (λ_L) at which PPO's mean cost meets the target on the non-test queries
(``--budget-split``: ``train+val`` by default, or ``val``; bisection, ``policies/budget.py``; the other λ
stays 0), then report PPO on the evaluated split at that λ (mean cost, its miss of the target,
accuracy) beside the most accurate static config within the target and the static config of the
closest mean cost (JSON ``budgets``). ``--latency-load K`` prices seconds with K queries in flight
(``env.latency_load``; default: the run's).

A sequential run (``env.kind: escalate``) is evaluated by :mod:`policies.escalate_eval` instead: the
same grid and split, every policy on the same ``--orders`` sample orders per query, the stopping-rule
baselines, and the one-shot run given by ``--compare-run``.

Errors (missing run, bad λ, bad target, other action menu, bad cache...) print one ``error: ...`` line
and exit 2 before anything is written.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from env.outcomes import validate_lambda
from policies.budget import BUDGET_SPLITS, budget_rows
from rollouts.config import load_yaml_text
from rollouts.errors import ConfigError, TTCError, report

TOL = (
    1e-9  # utilities within TOL are a tie: every ≥ / below count below uses it (float sums of equal actions)
)


def below(x: float) -> bool:
    """x < 0 beyond the tie tolerance (an upper CI end of −1e-15 is a tie, not a loss)."""
    return bool(x < -TOL)


def resolve_model(
    run: str | None, checkpoint: str | None, which: str, trust_checkpoint: bool = False
) -> tuple[Path, Path]:
    """(run folder, model zip). A ``.zip`` is unpickled on loading, so one that is not inside the run
    folder (``--run``, or the train.py run folder it sits in) needs ``trust_checkpoint``."""
    if checkpoint:
        ck = Path(checkpoint)
        if not ck.is_file():
            raise ConfigError(f"{ck}: checkpoint not found")
        if run:
            run_dir = Path(run)
        else:
            run_dir = ck.parent.parent if ck.parent.name == "checkpoints" else ck.parent
        inside = ck.resolve().is_relative_to(run_dir.resolve()) and (run_dir / "command.txt").is_file()
        if not (inside or trust_checkpoint):
            raise ConfigError(
                f"{ck}: checkpoint outside the run folder {run_dir}; a .zip checkpoint runs code when loaded, "
                "so pass --trust-checkpoint if you made it yourself, or evaluate its ONNX export with --export DIR"
            )
        return run_dir, ck
    if not run:
        raise ConfigError("give --run RUN_FOLDER or --checkpoint PATH")
    run_dir = Path(run)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: run folder not found")
    model = run_dir / f"{which}_model.zip"
    if not model.is_file():
        raise ConfigError(
            f"{model}: model not found (train first, or pass --model final|best / --checkpoint)"
        )
    return run_dir, model


def evaluate(
    run: str | None = None,
    checkpoint: str | None = None,
    cache: str | None = None,
    split: str = "test",
    grid_n: int = 5,
    lambda_tokens: list[float] | None = None,
    lambda_seconds: list[float] | None = None,
    which: str = "best",
    out: str | None = None,
    json_path: str | None = None,
    seed: int = 0,
    plots: bool = True,
    n_boot: int = 1000,
    export: str | None = None,
    trust_checkpoint: bool = False,
    progress: bool = False,
    target_tokens: list[float] | None = None,
    target_seconds: list[float] | None = None,
    latency_load: int | None = None,
    budget_split: str = "train+val",
    compare_run: str | None = None,
    n_orders: int = 16,
) -> dict[str, Any]:
    import torch
    from tqdm.auto import tqdm

    from env.allocate_env import EnvConfig
    from env.outcomes import OutcomeTable
    from policies.base import lambda_grid, score_choices
    from policies.baselines import OraclePolicy, RandomPolicy, TrainBestStaticPolicy, static_policies
    from policies.ppo import PPOPolicy, check_menu, load_model, read_meta
    from policies.probe_router import ProbeConfig, ProbeRouter

    torch.set_num_threads(1)
    lt_axis = [validate_lambda("--lambda-tokens", v) for v in lambda_tokens] if lambda_tokens else None
    ls_axis = [validate_lambda("--lambda-seconds", v) for v in lambda_seconds] if lambda_seconds else None
    if n_boot < 0:
        raise ConfigError(f"--bootstrap must be >= 0, got {n_boot}")
    if grid_n < 2:
        raise ConfigError(f"--grid must be >= 2, got {grid_n}")
    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split must be train, val or test, got {split!r}")
    if budget_split not in BUDGET_SPLITS:
        raise ConfigError(f"--budget-split must be one of {', '.join(BUDGET_SPLITS)}, got {budget_split!r}")
    onnx = None
    if export:  # the ONNX export: plain numbers and a graph, nothing is unpickled
        from policies.onnx_policy import OnnxPolicy

        if checkpoint:
            raise ConfigError("give --export or --checkpoint, not both")
        onnx = OnnxPolicy(export)
        if onnx.doc.get("kind") == "escalate":
            raise ConfigError(
                f"{export}: a sequential export; evaluate its run with --run (the step policy needs the env)"
            )
        source = onnx.doc.get("source") or {}
        run_dir, model_path = Path(run or source.get("run") or Path(export).resolve().parent), Path(export)
        cfg_path = run_dir / "config.yml"
        if not cfg_path.is_file():
            raise ConfigError(f"{run_dir}: config.yml not found (pass --run with the export's run folder)")
        meta = {"env": load_yaml_text(cfg_path.read_text()).get("env") or {}, "menu": onnx.menu,
                "cache": source.get("cache")}  # fmt: skip
    else:
        run_dir, model_path = resolve_model(run, checkpoint, which, trust_checkpoint)
        meta = read_meta(model_path)
    cfg_path, splits_path = run_dir / "config.yml", run_dir / "splits.json"
    if not splits_path.is_file():
        raise ConfigError(f"{run_dir}: splits.json not found (pass --run with the checkpoint's run folder)")
    run_cfg = load_yaml_text(cfg_path.read_text()) if cfg_path.is_file() else {}
    cache = cache or run_cfg.get("cache") or meta.get("cache")
    if meta.get("kind") == "escalate":  # a sequential run: its own evaluation (policies/escalate_eval.py)
        if target_tokens or target_seconds or latency_load is not None:
            raise ConfigError("--target-* and --latency-load are for one-shot runs (env.kind: allocate)")
        from policies.escalate_eval import evaluate_escalate

        return evaluate_escalate(
            run_dir, model_path, meta, cache, split, grid_n, lt_axis, ls_axis, out, json_path, plots,
            n_boot, n_orders, compare_run, seed, progress,
        )  # fmt: skip
    if compare_run:
        raise ConfigError("--compare-run is for a sequential (env.kind: escalate) run")
    env_cfg = EnvConfig.from_dict(meta["env"])
    load = env_cfg.latency_load if latency_load is None else latency_load  # price seconds at this load
    table = OutcomeTable(
        cache, mc_subsets=env_cfg.mc_subsets, outcome_seed=env_cfg.outcome_seed,
        latency_load=load, latency_load_models=env_cfg.latency_load_models,
    )  # fmt: skip
    check_menu(meta, table, str(model_path))
    if not table.latency_available and ls_axis and any(v > 0 for v in ls_axis):
        raise ConfigError(f"--lambda-seconds > 0 but {table.latency_note}")
    splits = json.loads(splits_path.read_text())
    rows_of = {
        s: table.indices([q for q in splits[s] if q in table.qindex]) for s in ("train", "val", "test")
    }
    rows = rows_of[split]
    complete = table.mask[rows].all(axis=1)
    n_dropped = int((~complete).sum())
    rows = rows[complete]  # static configs are only comparable where every action was measured
    if len(rows) == 0:
        raise ConfigError(f"the {split} split has no queries with every action measured in {cache}")
    if len(rows_of["train"]) == 0:
        raise ConfigError(f"the train split has no queries in {cache} (the router and λ grid need it)")
    grid = lambda_grid(table, rows_of["train"], grid_n)
    lt_axis = lt_axis or grid["lambda_tokens"]
    ls_axis = ls_axis or grid["lambda_seconds"]
    out_dir = Path(out) if out else run_dir / "eval"

    dim = onnx.feature_dim if onnx is not None else len(meta["encoder"]["feature_mean"])
    if dim != table.features.shape[1]:
        raise ConfigError(
            f"{model_path}: the policy was trained on {dim} features per query, {cache} has "
            f"{table.features.shape[1]} (another featurizer)"
        )
    ppo = ExportedPolicy(onnx) if onnx is not None else PPOPolicy(load_model(model_path, table))
    router = ProbeRouter(ProbeConfig(seed=seed)).fit(table, rows_of["train"], rows_of["val"])
    # the gated policies (policies/gate.py): the run's gate with its gain shrinkage, and the router's
    # own gate from the same cross-fitted rule, so the router comparison stays fair
    from policies.gate import StaticFallback
    from policies.gate_fit import GatedPolicy, crossfit_router_gains, fit_gate, run_gate, shrink_gain

    trval = np.concatenate([rows_of["train"], rows_of["val"]])
    if onnx is not None:  # the export carries its gate and its shrunk actor: ppo is it with the gate off
        gate = onnx.gate or run_gate(run_dir, None, table, rows_of["train"], rows_of["val"], run_cfg)
        ppo, ppo_gated = ExportedPolicy(onnx, gated=False), ExportedPolicy(onnx)
    else:
        gated_model = load_model(model_path, table)
        gate = run_gate(run_dir, gated_model, table, rows_of["train"], rows_of["val"], run_cfg)
        if gate.shrinkage is not None:
            shrink_gain(gated_model, gate.shrinkage)
        ppo_gated = GatedPolicy(PPOPolicy(gated_model), gate)
    router_gate = fit_gate(
        gate.fallback,
        gate.regions,
        crossfit_router_gains(table, trval, seed=seed),
        gate.confidence,
        seed=seed,
    )
    router_gated = GatedPolicy(router, router_gate)
    trval_static = StaticFallback.fit(table, trval)
    statics = static_policies(table)
    oracle = OraclePolicy()
    train_static = TrainBestStaticPolicy(rows_of["train"])
    # the same resampled test sets at every λ point: the share of resamples in which a policy clears
    # the hindsight best static at *all* points is how likely the grid criterion is on a fresh split
    weights = resample_weights(len(rows), n_boot, seed) if n_boot > 0 else None
    gated_names = ("ppo", "ppo_gated", "probe_router", "probe_router_gated")
    all_points_ge = {k: np.ones(n_boot, dtype=bool) for k in (*gated_names, "static_train_best")}
    gap_boot = {k: [] for k in ("ppo", "ppo_gated")}
    points = []
    bar = tqdm(total=len(lt_axis) * len(ls_axis), desc="evaluate", unit="λ point", disable=not progress)
    for lt in lt_axis:
        for ls in ls_axis:
            bar.update(1)
            pols: dict[str, Any] = {}
            a_ppo, a_router = ppo.choose(table, rows, lt, ls), router.choose(table, rows, lt, ls)
            pols["ppo"] = score_choices(table, rows, a_ppo, lt, ls)
            pols["probe_router"] = score_choices(table, rows, a_router, lt, ls)
            a_ppo_g = ppo_gated.choose(table, rows, lt, ls)
            a_router_g = router_gated.choose(table, rows, lt, ls)
            pols["ppo_gated"] = score_choices(table, rows, a_ppo_g, lt, ls)
            pols["probe_router_gated"] = score_choices(table, rows, a_router_g, lt, ls)
            a_fallback = trval_static.choose(table.mask[rows], lt, ls)
            pols["oracle"] = score_choices(table, rows, oracle.choose(table, rows, lt, ls), lt, ls)
            pols["random"] = score_choices(
                table, rows, RandomPolicy(seed).choose(table, rows, lt, ls), lt, ls
            )
            for sp in statics:
                pols[sp.name] = score_choices(table, rows, sp.choose(table, rows, lt, ls), lt, ls)
            # every evaluated row has every action, so the train-picked static is one of the statics
            a_train_idx = train_static.action(table, lt, ls)
            a_train = table.action_ids[a_train_idx]
            pols["static_train_best"] = pols[f"static:{a_train}"]
            a_trval = table.action_ids[trval_static.action(lt, ls)]
            pols["static_trainval_best"] = pols[f"static:{a_trval}"]
            best = max((sp.name for sp in statics), key=lambda n: pols[n]["utility"])
            u_rows = table.utility(lt, ls)[rows]
            if weights is not None:
                picks = {
                    "ppo": a_ppo,
                    "ppo_gated": a_ppo_g,
                    "probe_router": a_router,
                    "probe_router_gated": a_router_g,
                    "static_train_best": np.full(len(rows), a_train_idx),
                }
                for k, a in picks.items():
                    all_points_ge[k] &= resampled_diff_to_best_static(u_rows, a, weights) >= -TOL
                a_or = oracle.choose(table, rows, lt, ls)
                for k in gap_boot:
                    gap_boot[k].append(resampled_gap_share(u_rows, picks[k], a_or, weights))
            u_bs, u_or = pols[best]["utility"], pols["oracle"]["utility"]
            gap = u_or - u_bs

            def share(u, gap=gap, u_bs=u_bs):
                return None if gap < TOL else (u - u_bs) / gap

            points.append(
                {
                    "lambda_tokens": lt,
                    "lambda_seconds": ls,
                    "policies": pols,
                    "best_static": best.removeprefix("static:"),
                    "oracle_gap": gap,
                    "ppo_gap_share": share(pols["ppo"]["utility"]),
                    "probe_router_gap_share": share(pols["probe_router"]["utility"]),
                    "ppo_ge_best_static": bool(pols["ppo"]["utility"] >= u_bs - TOL),
                    "ppo_ge_probe_router": bool(
                        pols["ppo"]["utility"] >= pols["probe_router"]["utility"] - TOL
                    ),
                    "static_train_best": a_train,
                    "ppo_ge_static_train_best": bool(
                        pols["ppo"]["utility"] >= pols["static_train_best"]["utility"] - TOL
                    ),
                    "static_train_best_ge_best_static": bool(
                        pols["static_train_best"]["utility"] >= u_bs - TOL
                    ),
                    "ppo_vs_best_static": bootstrap_vs_best_static(
                        u_rows, a_ppo, n_boot=n_boot, seed=seed, weights=weights
                    ),
                    "ppo_gated_gap_share": share(pols["ppo_gated"]["utility"]),
                    "ppo_gated_ge_best_static": bool(pols["ppo_gated"]["utility"] >= u_bs - TOL),
                    "ppo_gated_ge_static_train_best": bool(
                        pols["ppo_gated"]["utility"] >= pols["static_train_best"]["utility"] - TOL
                    ),
                    "ppo_gated_vs_best_static": bootstrap_vs_best_static(
                        u_rows, a_ppo_g, n_boot=n_boot, seed=seed, weights=weights
                    ),
                    "static_trainval_best": a_trval,
                    "gate": {
                        name: {
                            "open": g.is_open(lt, ls),
                            "deviation_share": float((a != a_fallback).mean()),
                        }
                        for name, g, a in (
                            ("ppo", gate, a_ppo_g),
                            ("probe_router", router_gate, a_router_g),
                        )
                    },
                    "vs_static_train_best": {
                        name: bootstrap_vs_action(u_rows, a, a_train_idx, weights)
                        for name, a in zip(gated_names, (a_ppo, a_ppo_g, a_router, a_router_g))
                    },
                    # the static one would pick from all the data the policy saw (= the gate's fallback)
                    "vs_static_trainval_best": {
                        name: bootstrap_vs_action(u_rows, a, trval_static.action(lt, ls), weights)
                        for name, a in zip(gated_names, (a_ppo, a_ppo_g, a_router, a_router_g))
                    },
                }
            )
    bar.close()
    budgets = None
    if target_tokens or target_seconds:
        from policies.budget import budget_report

        solve = budget_rows(rows_of, budget_split)
        budgets = budget_report(
            table, lambda r, lt, ls: ppo.choose(table, r, lt, ls), solve[table.mask[solve].all(axis=1)], rows,
            {k: v for k, v in (("tokens", target_tokens), ("seconds", target_seconds)) if v},
        )  # fmt: skip
    shares = [p["ppo_gap_share"] for p in points if p["ppo_gap_share"] is not None]
    rshares = [p["probe_router_gap_share"] for p in points if p["probe_router_gap_share"] is not None]
    gshares = [p["ppo_gated_gap_share"] for p in points if p["ppo_gated_gap_share"] is not None]
    result = {
        "run": str(run_dir),
        "model": str(model_path),
        "cache": str(cache),
        "split": split,
        "n_queries": int(len(rows)),
        "n_dropped_incomplete": n_dropped,
        "menu": list(table.action_ids),
        "latency": table.latency_note or "seconds from the cache",
        "grid": {"lambda_tokens": lt_axis, "lambda_seconds": ls_axis},
        "latency_load": load,
        "points": points,
        "budgets": budgets,
        "summary": {
            "n_points": len(points),
            "ppo_ge_best_static": sum(p["ppo_ge_best_static"] for p in points),
            "ppo_ge_probe_router": sum(p["ppo_ge_probe_router"] for p in points),
            "ppo_ge_static_train_best": sum(p["ppo_ge_static_train_best"] for p in points),
            "static_train_best_ge_best_static": sum(p["static_train_best_ge_best_static"] for p in points),
            "ppo_gap_share_mean": float(np.mean(shares)) if shares else None,
            "ppo_gap_share_min": float(np.min(shares)) if shares else None,
            "probe_router_gap_share_mean": float(np.mean(rshares)) if rshares else None,
            "ppo_below_best_static_ci": sum(below(p["ppo_vs_best_static"]["ci90"][1]) for p in points),
            "ppo_gated_ge_best_static": sum(p["ppo_gated_ge_best_static"] for p in points),
            "ppo_gated_ge_static_train_best": sum(p["ppo_gated_ge_static_train_best"] for p in points),
            "ppo_gated_gap_share_mean": float(np.mean(gshares)) if gshares else None,
            "ppo_gated_below_best_static_ci": sum(
                below(p["ppo_gated_vs_best_static"]["ci90"][1]) for p in points
            ),
            "below_static_train_best_ci": {
                k: sum(below(p["vs_static_train_best"][k]["ci90"][1]) for p in points) for k in gated_names
            },
            "below_static_trainval_best_ci": {
                k: sum(below(p["vs_static_trainval_best"][k]["ci90"][1]) for p in points) for k in gated_names
            },
            "gap_share_mean_boot_std": (
                {k: mean_gap_share_spread(v) for k, v in gap_boot.items()} if weights is not None else None
            ),
            "gate": {
                "ppo": {"open_share": gate.open_share, "shrinkage": gate.shrinkage, "method": gate.method},
                "probe_router": {"open_share": router_gate.open_share},
                "points_open": {
                    k: sum(p["gate"][k]["open"] for p in points) for k in ("ppo", "probe_router")
                },
            },
            "all_points_ge_best_static_p": (
                {k: float(v.mean()) for k, v in all_points_ge.items()} if weights is not None else None
            ),
            "n_boot": n_boot,
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(result, out_dir / "results.csv")
    (out_dir / "results.md").write_text(markdown(result))
    if plots:
        write_plots(result, out_dir)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=1, default=_json_default) + "\n")
    result["out_dir"] = str(out_dir)
    return result


class ExportedPolicy:
    """The ONNX export (policies/onnx_policy.py) behind the policies' ``choose`` call, on cache rows."""

    name = "ppo"

    def __init__(self, onnx: Any, gated: bool = True):
        self.onnx, self.gated = onnx, gated

    def choose(self, table: Any, rows: np.ndarray, lambda_tokens: float, lambda_seconds: float) -> np.ndarray:
        rows = np.asarray(rows)
        a = self.onnx.act_index(
            table.features[rows], table.prompt_tokens[rows], lambda_tokens, lambda_seconds,
            mask=table.mask[rows], use_gate=self.gated,
        )  # fmt: skip
        return np.asarray(a, dtype=np.int64).reshape(len(rows))


def resample_weights(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n) bootstrap resamples of n queries, each row the draw counts / n: a resample's mean of
    any per-query quantity is then one matrix product. The same seed gives the same resamples, so
    every λ point of one evaluation is judged on the same resampled query sets."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot) / n


def resampled_diff_to_best_static(utility: np.ndarray, choice: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(n_boot,) U_policy − U_best static in each resample, the best static re-picked per resample."""
    u_pol = utility[np.arange(len(choice)), choice]
    return weights @ u_pol - (weights @ utility).max(axis=1)


def resampled_gap_share(
    utility: np.ndarray, choice: np.ndarray, oracle: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """(n_boot,) gap share of a policy in each resample (NaN where the resample's gap is < TOL)."""
    idx = np.arange(len(choice))
    best = (weights @ utility).max(axis=1)
    gap = weights @ utility[idx, oracle] - best
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(gap >= TOL, (weights @ utility[idx, choice] - best) / gap, np.nan)


def mean_gap_share_spread(per_point: list[np.ndarray]) -> float | None:
    """The std over resamples of the mean gap share over points (points without a gap left out;
    None when no resample has any)."""
    shares = np.array(per_point)  # (points, n_boot)
    ok = np.isfinite(shares)
    n = ok.sum(axis=0)
    if not n.any():
        return None
    means = np.where(ok, shares, 0.0).sum(axis=0)[n > 0] / n[n > 0]
    return float(means.std())


def bootstrap_vs_action(
    utility: np.ndarray, choice: np.ndarray, action: int, weights: np.ndarray | None
) -> dict[str, Any]:
    """Paired bootstrap of U_policy − U_action (a fixed static action, e.g. the train-picked one):
    ``diff``, ``ci90`` and ``p_ge`` = P(policy ≥ that static) over the resamples (tolerance TOL)."""
    d_q = utility[np.arange(len(choice)), choice] - utility[:, action]
    diff = float(d_q.mean())
    if weights is None:
        return {"diff": diff, "ci90": [diff, diff], "p_ge": float(diff >= -TOL)}
    d = weights @ d_q
    lo, hi = np.percentile(d, [5, 95])
    return {"diff": diff, "ci90": [float(lo), float(hi)], "p_ge": float((d >= -TOL).mean())}


def bootstrap_vs_best_static(
    utility: np.ndarray,
    choice: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    weights: np.ndarray | None = None,
) -> dict[str, Any]:
    """Paired bootstrap over queries of U_policy − U_best static, the best static re-picked in each
    resample (so the hindsight pick's luck is part of the spread).

    ``utility``: (R, A) per-query expected utility of every action; ``choice``: (R,) the policy's
    actions; ``weights``: resamples from :func:`resample_weights` (made from ``n_boot`` and ``seed``
    when not given). Returns the point estimate ``diff``, ``ci90`` (5th and 95th percentiles) and
    ``p_ge``, the share of resamples where the policy is >= the best static.
    """
    n = len(choice)
    diff = float(utility[np.arange(n), choice].mean() - utility.mean(axis=0).max())
    if weights is None:
        if n_boot <= 0:
            return {"diff": diff, "ci90": [diff, diff], "p_ge": float(diff >= -TOL)}
        weights = resample_weights(n, n_boot, seed)
    d = resampled_diff_to_best_static(utility, choice, weights)
    lo, hi = np.percentile(d, [5, 95])
    return {"diff": diff, "ci90": [float(lo), float(hi)], "p_ge": float((d >= -TOL).mean())}


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(type(o))


def write_csv(result: dict[str, Any], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "lambda_tokens",
                "lambda_seconds",
                "policy",
                "accuracy",
                "mean_tokens",
                "mean_seconds",
                "utility",
                "gap_share",
                "is_best_static",
            ]
        )
        for p in result["points"]:
            for name, m in p["policies"].items():
                gs = p.get(f"{name}_gap_share") if name in ("ppo", "probe_router", "ppo_gated") else None
                w.writerow(
                    [
                        p["lambda_tokens"],
                        p["lambda_seconds"],
                        name,
                        f"{m['accuracy']:.6f}",
                        f"{m['mean_tokens']:.3f}",
                        f"{m['mean_seconds']:.5f}",
                        f"{m['utility']:.6f}",
                        "" if gs is None else f"{gs:.4f}",
                        name == f"static:{p['best_static']}",
                    ]
                )


def _fmt(x, nd=3):
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [
        f"# Evaluation: {result['model']}",
        "",
        f"Cache `{result['cache']}`, split `{result['split']}` ({result['n_queries']} queries), "
        f"{len(result['menu'])} actions. Utility = accuracy − λ_T·tokens − λ_L·seconds (expected values).",
        "",
        f"PPO ≥ best static at {s['ppo_ge_best_static']}/{s['n_points']} points; PPO ≥ probe router at "
        f"{s['ppo_ge_probe_router']}/{s['n_points']}; mean gap share closed: PPO {_fmt(s['ppo_gap_share_mean'], 2)}, "
        f"router {_fmt(s['probe_router_gap_share_mean'], 2)} (min PPO {_fmt(s['ppo_gap_share_min'], 2)}).",
        f"PPO ≥ the static config picked on the train split (no hindsight) at "
        f"{s['ppo_ge_static_train_best']}/{s['n_points']} points; that static itself is ≥ the hindsight best "
        f"static at {s['static_train_best_ge_best_static']}/{s['n_points']} (what no routing at all scores). "
        f"Points where PPO is below the best static with 90% confidence (paired bootstrap over queries, "
        f"{s['n_boot']} resamples, best static re-picked per resample): {s['ppo_below_best_static_ci']}/{s['n_points']}.",
    ]
    if result.get("latency", "seconds from the cache") != "seconds from the cache":
        lines.append(f"Latency: {result['latency']}; the λ_L axis is [0].")
    joint = s.get("all_points_ge_best_static_p")
    if joint:
        lines.append(
            f"Share of those resamples in which a policy is ≥ the best static at every point: PPO "
            f"{joint['ppo']:.2f}, router {joint['probe_router']:.2f}, train-picked static {joint['static_train_best']:.2f}."
        )
    lines += [
        "",
        "| λ_T | λ_L | best static | U static | U oracle | U router | U PPO | PPO − static [90% CI] | P(PPO ≥ static) | PPO gap share | router gap share | PPO acc | PPO tokens | PPO s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in result["points"]:
        pol = p["policies"]
        bs = pol[f"static:{p['best_static']}"]
        vs = p["ppo_vs_best_static"]
        lines.append(
            f"| {p['lambda_tokens']:.3g} | {p['lambda_seconds']:.3g} | {p['best_static']} | {_fmt(bs['utility'])} | "
            f"{_fmt(pol['oracle']['utility'])} | {_fmt(pol['probe_router']['utility'])} | {_fmt(pol['ppo']['utility'])} | "
            f"{vs['diff']:+.3f} [{vs['ci90'][0]:+.3f}, {vs['ci90'][1]:+.3f}] | {vs['p_ge']:.2f} | "
            f"{_fmt(p['ppo_gap_share'], 2)} | {_fmt(p['probe_router_gap_share'], 2)} | {_fmt(pol['ppo']['accuracy'])} | "
            f"{pol['ppo']['mean_tokens']:.1f} | {pol['ppo']['mean_seconds']:.3f} |"
        )
    if "ppo_gated_ge_best_static" in s:
        g = s["gate"]
        below = s["below_static_train_best_ci"]
        lines += [
            "",
            f"Gated (policies/gate.py): PPO's gate is open at {g['points_open']['ppo']}/{s['n_points']} points "
            f"(gain shrinkage α = {_fmt(g['ppo']['shrinkage'], 3)}, evidence: {g['ppo']['method']}), the router's at "
            f"{g['points_open']['probe_router']}/{s['n_points']}. Gated PPO ≥ best static at "
            f"{s['ppo_gated_ge_best_static']}/{s['n_points']}, ≥ the train-picked static at "
            f"{s['ppo_gated_ge_static_train_best']}/{s['n_points']}, mean gap share {_fmt(s['ppo_gated_gap_share_mean'], 3)} "
            f"(ungated {_fmt(s['ppo_gap_share_mean'], 3)}), below the best static with 90% confidence at "
            f"{s['ppo_gated_below_best_static_ci']}. Below the train-picked static with 90% confidence: PPO "
            f"{below['ppo']}, gated {below['ppo_gated']}, router {below['probe_router']}, gated router "
            f"{below['probe_router_gated']}; below the train+validation-picked static (the fallback): PPO "
            f"{s['below_static_trainval_best_ci']['ppo']}, gated {s['below_static_trainval_best_ci']['ppo_gated']}.",
            "",
            "| λ_T | λ_L | train-picked static | fallback (train+val) | PPO gate | deviating | gated − train static [90% CI] | P(gated ≥) | P(PPO ≥) | router gate | P(router gated ≥) | P(router ≥) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in result["points"]:
            v = p["vs_static_train_best"]
            vg = v["ppo_gated"]
            lines.append(
                f"| {p['lambda_tokens']:.3g} | {p['lambda_seconds']:.3g} | {p['static_train_best']} | "
                f"{p['static_trainval_best']} | {'open' if p['gate']['ppo']['open'] else 'closed'} | "
                f"{p['gate']['ppo']['deviation_share']:.2f} | {vg['diff']:+.3f} [{vg['ci90'][0]:+.3f}, {vg['ci90'][1]:+.3f}] | "
                f"{vg['p_ge']:.2f} | {v['ppo']['p_ge']:.2f} | {'open' if p['gate']['probe_router']['open'] else 'closed'} | "
                f"{v['probe_router_gated']['p_ge']:.2f} | {v['probe_router']['p_ge']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def write_plots(result: dict[str, Any], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = result["points"]
    statics = [k for k in points[0]["policies"] if k.startswith("static:")]
    for cost, fname, axis_lam, other in (
        ("mean_tokens", "pareto_tokens.png", "lambda_tokens", "lambda_seconds"),
        ("mean_seconds", "pareto_seconds.png", "lambda_seconds", "lambda_tokens"),
    ):
        fig, ax = plt.subplots(figsize=(7, 5))
        p0 = points[0]["policies"]
        xs = np.array([p0[s][cost] for s in statics])
        ys = np.array([p0[s]["accuracy"] for s in statics])
        ax.scatter(xs, ys, c="grey", s=18, label="static configs")
        for x, y, name in zip(xs, ys, statics, strict=True):  # label each static config
            ax.annotate(
                name.removeprefix("static:").split("/")[-1],
                (x, y),
                fontsize=6,
                color="dimgrey",
                xytext=(3, 2),
                textcoords="offset points",
            )
        order = np.argsort(xs)
        fx, fy, best = [], [], -np.inf
        for i in order:
            if ys[i] > best:
                fx.append(xs[i])
                fy.append(ys[i])
                best = ys[i]
        ax.step(fx, fy, where="post", c="grey", lw=1, label="static frontier")
        for name, color, marker in (
            ("probe_router", "tab:orange", "s"),
            ("ppo", "tab:blue", "o"),
            ("oracle", "tab:green", "^"),
        ):
            allx = [p["policies"][name][cost] for p in points]
            ally = [p["policies"][name]["accuracy"] for p in points]
            ax.scatter(allx, ally, c=color, marker=marker, s=14, alpha=0.35)
            # the sweep's points in order of cost (in λ order a sweep can double back)
            line = [p for p in points if p[other] == 0.0]
            line.sort(key=lambda p: (p["policies"][name][cost], p[axis_lam]))
            ax.plot(
                [p["policies"][name][cost] for p in line],
                [p["policies"][name]["accuracy"] for p in line],
                c=color,
                marker=marker,
                label=f"{name} ({'λ_T' if axis_lam == 'lambda_tokens' else 'λ_L'} sweep)",
            )
        ax.set_xlabel(cost.replace("_", " "))
        ax.set_ylabel("accuracy")
        ax.set_title(f"{result['split']} split: accuracy vs {cost.split('_')[1]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=120)
        plt.close(fig)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--run", help="run folder (runs/<name>)")
    p.add_argument(
        "--checkpoint",
        help="a model zip (default: the run's best_model.zip); zips run code when loaded, so one outside "
        "the run folder needs --trust-checkpoint",
    )
    p.add_argument(
        "--trust-checkpoint", action="store_true", help="load a --checkpoint from outside the run folder"
    )
    p.add_argument(
        "--export",
        metavar="DIR",
        help="evaluate an ONNX export (policy.json + policy.onnx) instead of a zip: never unpickles; "
        "the run folder comes from --run, policy.json's source, or DIR's parent",
    )
    p.add_argument(
        "--model", choices=("best", "final"), default="best", help="which model of the run (default: best)"
    )
    p.add_argument("--cache", help="rollout cache (default: the run's)")
    p.add_argument("--split", default="test", help="train | val | test (default: test)")
    p.add_argument("--grid", type=int, default=5, help="grid points per λ axis (default: 5)")
    p.add_argument("--lambda-tokens", type=float, nargs="+", help="explicit λ_T axis values")
    p.add_argument("--lambda-seconds", type=float, nargs="+", help="explicit λ_L axis values")
    p.add_argument("--out", help="output folder (default: <run>/eval)")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="also write the numbers as JSON")
    p.add_argument("--seed", type=int, default=0, help="seed of the router probe and the random policy")
    p.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples for PPO − best static (0: none)"
    )
    p.add_argument("--no-plots", action="store_true", help="skip the Pareto PNGs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--target-tokens", type=float, nargs="+", metavar="T",
                   help="mean tokens per query to meet: λ_T solved by bisection (policies/budget.py)")
    p.add_argument("--target-seconds", type=float, nargs="+", metavar="S",
                   help="mean seconds per query to meet: λ_L solved the same way")
    p.add_argument("--budget-split", default="train+val", choices=BUDGET_SPLITS,
                   help="queries the targets are solved on (default train+val: never the test split)")
    p.add_argument("--latency-load", type=int, metavar="K",
                   help="price seconds with K queries in flight (default: the run's env.latency_load)")
    p.add_argument(
        "--compare-run", help="sequential runs: a one-shot run folder to compare with, on the same orders"
    )
    p.add_argument(
        "--orders", type=int, default=16, help="sequential runs: sample orders per query (default 16)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        res = evaluate(
            run=args.run,
            checkpoint=args.checkpoint,
            cache=args.cache,
            split=args.split,
            grid_n=args.grid,
            lambda_tokens=args.lambda_tokens,
            lambda_seconds=args.lambda_seconds,
            which=args.model,
            out=args.out,
            json_path=args.json_path,
            seed=args.seed,
            plots=not args.no_plots,
            n_boot=args.bootstrap,
            export=args.export,
            trust_checkpoint=args.trust_checkpoint,
            progress=not args.no_progress,
            target_tokens=args.target_tokens,
            target_seconds=args.target_seconds,
            latency_load=args.latency_load,
            budget_split=args.budget_split,
            compare_run=args.compare_run,
            n_orders=args.orders,
        )
    except TTCError as exc:
        return report(exc)
    if res.get("kind") == "escalate":
        from policies.escalate_eval import markdown as escalate_markdown

        print(escalate_markdown(res))
        print(f"written: {res['out_dir']}/results.md, pareto_tokens.png, pareto_seconds.png")
        return 0
    print(markdown(res))
    if res["budgets"]:
        from policies.budget import budget_markdown

        print(budget_markdown(res["budgets"]))
    print(f"written: {res['out_dir']}/results.csv, results.md, pareto_tokens.png, pareto_seconds.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
