"""Evaluate a trained run (or a checkpoint) against every baseline on the held-out split and a λ grid.

    python evaluate.py --run runs/<name>                       # best_model.zip, test split, 5x5 grid
    python evaluate.py --checkpoint runs/<name>/checkpoints/ppo_20000_steps.zip --json results.json
    python evaluate.py --run runs/<name> --lambda-tokens 0 1e-4 --lambda-seconds 0 0.1
    python evaluate.py --export runs/<name>/export               # the ONNX export: never unpickles

A ``.zip`` checkpoint is a pickle and runs code when loaded: one your own train.py did not write (its
sha256 is not in your trust store, policies/trust.py) needs ``--trust-checkpoint``; without it ``--run``
evaluates the run's ONNX export instead (a ``warning:`` line names it). Share and evaluate exports.

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

A sequential run (``env.kind: escalate``) is evaluated by :mod:`evaluation.sequential` instead: the
same grid and split, every policy on the same ``--orders`` sample orders per query, the stopping-rule
baselines, and the one-shot run given by ``--compare-run``.

From Python: ``evaluate(EvalOptions(run=...))`` (:mod:`evaluation.options`), in steps:
:func:`evaluation.source.load_source` (which model, which run) → :func:`load_inputs` (the outcome table,
the splits as rows, the λ grid) → :func:`load_policies` → :class:`evaluation.oneshot.GridEvaluation`
(every policy at every λ point, with :mod:`evaluation.bootstrap`) → :func:`solve_budgets` →
:func:`evaluation.report.write_results` (the tables, the JSON and :mod:`evaluation.pareto`'s PNGs).

Errors (missing run, bad λ, bad target, other action menu, bad cache...) print one ``error: ...`` line
and exit 2 before anything is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rollouts.console import HelpFormatter, phase
from rollouts.errors import ConfigError, TTCError, report

if TYPE_CHECKING:  # the heavy imports wait until the arguments are parsed: a usage error answers at once
    import numpy as np

    from env.outcomes import OutcomeTable
    from evaluation.oneshot import OneShotPolicies
    from evaluation.options import EvalOptions
    from evaluation.source import ModelSource


@dataclass
class EvalInputs:
    """The outcome table, the run's splits as table rows and the λ axes of a one-shot evaluation."""

    table: OutcomeTable
    rows_of: dict[str, np.ndarray]  # split name -> table rows
    rows: np.ndarray  # the evaluated split's rows with every action measured
    n_dropped: int  # the evaluated split's rows left out (some action never measured)
    lt_axis: list[float]
    ls_axis: list[float]
    latency_load: int | None  # seconds are priced at this many queries in flight (None: alone, as cached)


def load_inputs(opts: EvalOptions, source: ModelSource) -> EvalInputs:
    """The run's outcome table (at ``--latency-load``), its rows per split and the λ grid."""
    from env.allocate_env import EnvConfig, stored_env_dict
    from env.outcomes import OutcomeTable
    from env.splits import SPLITS, split_rows
    from policies.base import lambda_grid
    from policies.ppo import check_menu

    cache = source.cache
    lt_axis, ls_axis = opts.lambda_axes()
    env_config = EnvConfig.from_dict(stored_env_dict(source.model_meta["env"]))
    with phase(f"loading the outcome table of {cache}"):  # --latency-load prices at it
        table = OutcomeTable.for_env(cache, env_config, latency_load=opts.latency_load)
    check_menu(source.model_meta, table, str(source.model_path))
    if not table.latency_available and ls_axis and any(v > 0 for v in ls_axis):
        raise ConfigError(f"--lambda-seconds > 0 but {table.latency_note}")
    splits_path = source.run_dir / "splits.json"
    splits = json.loads(splits_path.read_text())
    rows_of = {s: split_rows(table, splits, s) for s in SPLITS}
    rows = rows_of[opts.split]
    complete = table.mask[rows].all(axis=1)
    n_dropped = int((~complete).sum())
    rows = rows[complete]  # static configs are only comparable where every action was measured
    live = env_config.source == "live"  # a live run's train rows hold only what its policy asked for
    if len(rows) == 0:
        hint = f" (a live run: `python collect.py complete {source.run_dir} --split {opts.split}` completes it)"
        raise ConfigError(f"the {opts.split} split has no queries with every action measured in {cache}"
                          + (hint if live else ""))
    if len(rows_of["train"]) == 0:
        raise ConfigError(f"the train split has no queries in {cache} (the router and λ grid need it)")
    grid = lambda_grid(table, rows_of["val" if live else "train"], opts.grid_n)  # as the live run's own λ grid
    return EvalInputs(
        table, rows_of, rows, n_dropped, lt_axis or grid["lambda_tokens"], ls_axis or grid["lambda_seconds"],
        table.latency_load,
    )


def load_policies(opts: EvalOptions, source: ModelSource, inputs: EvalInputs) -> OneShotPolicies:
    """PPO (the zip or the export), the probe router fitted on train (calibrated on val), both with their
    gates, and the baselines."""
    from evaluation.oneshot import ExportedPolicy, OneShotPolicies
    from policies.baselines import OraclePolicy, TrainBestStaticPolicy, static_policies
    from policies.budget import budget_rows
    from policies.gate import StaticFallback
    from policies.gate_fit import GatedPolicy, crossfit_router_gains, fit_gate, run_gate, shrink_gain
    from policies.ppo import PPOPolicy, load_model
    from policies.probe_router import ProbeConfig, ProbeRouter

    table, rows_of, onnx = inputs.table, inputs.rows_of, source.onnx
    dim = onnx.feature_dim if onnx is not None else len(source.model_meta["encoder"]["feature_mean"])
    if dim != table.features.shape[1]:
        raise ConfigError(
            f"{source.model_path}: the policy was trained on {dim} features per query, {source.cache} has "
            f"{table.features.shape[1]} (another featurizer)"
        )
    trust = opts.trust_checkpoint
    ppo = ExportedPolicy(onnx, gated=False) if onnx is not None else PPOPolicy(load_model(source.model_path, table, trust=trust))
    router = ProbeRouter(ProbeConfig(seed=opts.seed)).fit(table, rows_of["train"], rows_of["val"])
    # the gated policies (policies/gate.py): the run's gate with its gain shrinkage, and the router's
    # own gate from the same cross-fitted rule, so the router comparison stays fair
    trval = budget_rows(rows_of, "train+val")
    ppo_gated: Any
    if onnx is not None:  # the export carries its gate and its shrunk actor: ppo is it with the gate off
        gate = onnx.gate or run_gate(source.run_dir, None, table, rows_of["train"], rows_of["val"], source.run_config)
        ppo_gated = ExportedPolicy(onnx)
    else:
        gated_model = load_model(source.model_path, table, trust=trust)
        gate = run_gate(source.run_dir, gated_model, table, rows_of["train"], rows_of["val"], source.run_config)
        if gate.shrinkage is not None:
            shrink_gain(gated_model, gate.shrinkage)
        ppo_gated = GatedPolicy(PPOPolicy(gated_model), gate)
    router_gate = fit_gate(
        gate.fallback, gate.regions, crossfit_router_gains(table, trval, seed=opts.seed), gate.confidence,
        seed=opts.seed,
    )  # fmt: skip
    return OneShotPolicies(
        ppo=ppo, ppo_gated=ppo_gated, router=router, router_gated=GatedPolicy(router, router_gate),
        gate=gate, router_gate=router_gate, trval_static=StaticFallback.fit(table, trval),
        statics=static_policies(table), oracle=OraclePolicy(), train_static=TrainBestStaticPolicy(rows_of["train"]),
        seed=opts.seed,
    )  # fmt: skip


def solve_budgets(opts: EvalOptions, inputs: EvalInputs, ppo: Any) -> list[dict[str, Any]] | None:
    """``--target-tokens``/``--target-seconds``: PPO's λ per target, solved on ``--budget-split``."""
    if not (opts.target_tokens or opts.target_seconds):
        return None
    from policies.budget import budget_report, budget_rows

    table = inputs.table
    solve = budget_rows(inputs.rows_of, opts.budget_split)
    return budget_report(
        table, lambda r, lt, ls: ppo.choose(table, r, lt, ls), solve[table.mask[solve].all(axis=1)], inputs.rows,
        {k: v for k, v in (("tokens", opts.target_tokens), ("seconds", opts.target_seconds)) if v},
    )  # fmt: skip


def evaluate(opts: EvalOptions) -> dict[str, Any]:
    """Evaluate the model ``opts`` names and write its results (see the module docstring); returns the
    JSON's numbers with ``out_dir`` added."""
    opts.validate()
    with phase("loading the model"):
        import torch

        from evaluation.source import load_source

        torch.set_num_threads(1)
        source = load_source(opts)
    if source.model_meta.get("kind") == "escalate":  # a sequential run: its own evaluation
        if opts.target_tokens or opts.target_seconds or opts.latency_load is not None:
            raise ConfigError("--target-* and --latency-load are for one-shot runs (env.kind: allocate)")
        from evaluation.sequential import evaluate_escalate

        return evaluate_escalate(opts, source)
    if opts.compare_run:
        raise ConfigError("--compare-run is for a sequential (env.kind: escalate) run")
    from evaluation.oneshot import GridEvaluation
    from evaluation.pareto import write_oneshot_plots
    from evaluation.report import oneshot_markdown, write_csv, write_results

    inputs = load_inputs(opts, source)
    with phase("fitting the probe router and the gates (cross-fitted on train + validation)"):
        policies = load_policies(opts, source, inputs)
    grid = GridEvaluation(policies, inputs.table, inputs.rows, opts.n_boot, opts.seed)
    points = grid.run(inputs.lt_axis, inputs.ls_axis, opts.progress)
    result = {
        "run": str(source.run_dir),
        "model": str(source.model_path),
        "cache": str(source.cache),
        "split": opts.split,
        "n_queries": int(len(inputs.rows)),
        "n_dropped_incomplete": inputs.n_dropped,
        "menu": list(inputs.table.action_ids),
        "latency": inputs.table.latency_note or "seconds from the cache",
        "grid": {"lambda_tokens": inputs.lt_axis, "lambda_seconds": inputs.ls_axis},
        "latency_load": inputs.latency_load,
        "points": points,
        "budgets": solve_budgets(opts, inputs, policies.ppo),
        "summary": grid.summary(),
    }
    out_dir = Path(opts.out) if opts.out else source.run_dir / "eval"
    return write_results(
        result, out_dir, oneshot_markdown, write_oneshot_plots if opts.plots else None, write_csv, opts.json_path
    )


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--run", help="run folder (runs/<name>)")
    p.add_argument(
        "--checkpoint",
        help="a model zip (default: the run's best_model.zip); zips run code when loaded, so one your "
        "train.py did not write needs --trust-checkpoint",
    )
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="load a zip your train.py did not write (without it, --run evaluates the run's ONNX export)",
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
    p.add_argument("--budget-split", default="train+val", metavar="{train+val,val}",
                   help="queries the targets are solved on (default: train+val, never the test split)")
    p.add_argument("--latency-load", type=int, metavar="K",
                   help="price seconds with K queries in flight (default: the run's env.latency_load)")
    p.add_argument(
        "--compare-run", help="sequential runs: a one-shot run folder to compare with, on the same orders"
    )
    p.add_argument(
        "--orders", type=int, default=16, help="sequential runs: sample orders per query (default 16)"
    )
    return p


def options_from_args(args: argparse.Namespace) -> EvalOptions:
    """The :class:`EvalOptions` of parsed ``evaluate.py`` flags (:func:`make_parser`)."""
    from evaluation.options import EvalOptions

    return EvalOptions(
        run=args.run,
        checkpoint=args.checkpoint,
        which_model=args.model,
        export=args.export,
        trust_checkpoint=args.trust_checkpoint,
        cache=args.cache,
        split=args.split,
        grid_n=args.grid,
        lambda_tokens=args.lambda_tokens,
        lambda_seconds=args.lambda_seconds,
        seed=args.seed,
        n_boot=args.bootstrap,
        target_tokens=args.target_tokens,
        target_seconds=args.target_seconds,
        budget_split=args.budget_split,
        latency_load=args.latency_load,
        compare_run=args.compare_run,
        n_orders=args.orders,
        out=args.out,
        json_path=args.json_path,
        plots=not args.no_plots,
        progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    from rollouts.console import plain_warnings

    plain_warnings()
    args = make_parser().parse_args(argv)
    if not (args.run or args.checkpoint or args.export):  # answered before the heavy imports
        return report(ConfigError("give --run RUN_FOLDER, --checkpoint PATH or --export DIR"))
    try:
        res = evaluate(options_from_args(args))
    except TTCError as exc:
        return report(exc)
    from evaluation.report import oneshot_markdown, sequential_markdown

    if res.get("kind") == "escalate":
        print(sequential_markdown(res))
        print(f"written: {res['out_dir']}/results.md, pareto_tokens.png, pareto_seconds.png")
        return 0
    print(oneshot_markdown(res))
    if res["budgets"]:
        from policies.budget import budget_markdown

        print(budget_markdown(res["budgets"]))
    print(f"written: {res['out_dir']}/results.csv, results.md, pareto_tokens.png, pareto_seconds.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
