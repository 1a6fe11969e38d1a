"""Evaluate a sequential (``ttc/Escalate-v0``) run: ``evaluate.py --run RUN`` dispatches here.

Every policy runs on the same held-out queries and the same R sample orders per query (common random
numbers, :func:`policies.escalate_sim.make_orders`), through the same episode code as the env:

- ``sequential``: the run's MaskablePPO step policy (deterministic);
- ``oneshot_ppo``: a one-shot ``ttc/Allocate-v0`` run (``--compare-run``), its choice per query played
  as ``draw@N, stop:<selector>`` (or the beam) on the same orders;
- ``static:<action>``: every one-shot action the same way (with the finish watch, the races too:
  launch N, wait finish by finish, stop when the race stops); ``best_static`` is the hindsight best on the
  evaluated split at each λ point; ``oracle``: per query the one-shot action with the best mean utility
  over its orders (the one-shot hindsight oracle);
- ``rule:<family>``: the stopping rules of :mod:`policies.stopping_rules`, each family's configuration
  tuned on the validation split per λ point. ``best_rule`` is the family with the best mean test
  utility over the grid (a hindsight pick: the strictest bar).

Statistics: a paired two-stage bootstrap (queries resampled, then each query's R orders), the same
resamples at every point; a difference counts as a win/loss "with 90 % confidence" when its 90 %
interval lies above/below zero by more than 1e-9 (ties within 1e-9 are equal).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from env.outcomes import OutcomeTable
from evaluation.bootstrap import TOL, two_stage_compare, two_stage_weights
from evaluation.options import EvalOptions
from evaluation.pareto import write_sequential_plots
from evaluation.report import sequential_markdown, strip_private, write_results
from evaluation.source import ModelSource
from rollouts.console import note, phase
from rollouts.errors import ConfigError


def evaluate_escalate(opts: EvalOptions, source: ModelSource) -> dict[str, Any]:
    """Evaluate the sequential run ``source`` (``evaluate.py`` dispatches here) and write its results;
    returns the JSON's numbers with ``out_dir`` added."""
    if opts.n_orders < 1:
        raise ConfigError(f"--orders must be >= 1, got {opts.n_orders}")
    with phase(f"loading the outcome table of {source.cache}"):
        setup = load_setup(opts, source)
    with phase(f"simulating the static configs on {opts.n_orders} sample orders per query"):
        evaluation = SequentialEvaluation(opts, setup)
    evaluation.run()
    out_dir = Path(opts.out) if opts.out else source.run_dir / "eval"
    plot = write_sequential_plots if opts.plots else None
    return write_results(
        strip_private(evaluation.result(source)), out_dir, sequential_markdown, plot, json_path=opts.json_path
    )


@dataclass
class SequentialSetup:
    """What a sequential evaluation runs on: the table, the step menu, the run's encoders and the rows."""

    table: OutcomeTable
    menu: Any  # env.escalate_menu.EscalateMenu
    encoder: Any  # policies.observation.ObsEncoder of the run
    units: Any  # env.seen.SeenUnits of the run
    model_path: Path
    oneshot: Any  # the --compare-run policy (policies.ppo.PPOPolicy), or None
    rows: np.ndarray  # the evaluated split: queries with a pool and every action
    val_rows: np.ndarray  # the same on the validation split (the rules are tuned there)
    train_rows: np.ndarray  # the λ grid's


def load_setup(opts: EvalOptions, source: ModelSource) -> SequentialSetup:
    """The run's outcome table and step menu (checked against the model's), ``--compare-run``'s policy
    and the rows per split."""
    from env.allocate_env import stored_env_dict
    from env.escalate_env import env_config_from
    from env.escalate_menu import EscalateMenu
    from env.seen import SeenUnits
    from env.splits import split_rows
    from policies.observation import ObsEncoder
    from policies.ppo import check_menu

    model_path, model_meta, cache, split = source.model_path, source.model_meta, source.cache, opts.split
    env_config = env_config_from(stored_env_dict(model_meta["env"]))
    table = OutcomeTable.for_env(cache, env_config, latency_load=opts.latency_load)
    check_menu(model_meta, table, str(model_path))
    menu = EscalateMenu(table, env_config)  # type: ignore[arg-type]
    if list(menu.ids) != list(model_meta["escalate"]["step_menu"]):
        raise ConfigError(f"{model_path}: its step menu {model_meta['escalate']['step_menu']} is not {menu.ids}")
    oneshot = _compare_policy(opts.compare_run, table, opts.trust_checkpoint)
    encoder = ObsEncoder.from_dict(model_meta["encoder"])
    units = SeenUnits.from_dict(model_meta["escalate"]["units"])
    splits = json.loads((source.run_dir / "splits.json").read_text())

    def rows_for(s: str) -> np.ndarray:
        r = split_rows(table, splits, s)
        has_pool = np.array([bool(table.pool_records(int(q), menu.pool_config)) for q in r], dtype=bool)
        return r[has_pool & table.mask[r].all(axis=1)] if len(r) else r

    rows, val_rows = rows_for(split), rows_for("val")
    train_rows = split_rows(table, splits, "train")
    if len(rows) == 0 or len(val_rows) == 0:
        raise ConfigError(f"the {split} or val split has no queries with a pool and every action in {cache}")
    return SequentialSetup(table, menu, encoder, units, model_path, oneshot, rows, val_rows, train_rows)


def _compare_policy(compare_run: str | None, table: OutcomeTable, trust: bool) -> Any:
    """The one-shot run ``--compare-run`` names (its best model), on this table's menu; None without.
    ``trust``: load it even if this user's train.py did not write it (policies/trust.py)."""
    if not compare_run:
        return None
    from policies.ppo import PPOPolicy, check_menu, load_model, read_meta

    run = Path(compare_run)
    compare_path = run / "best_model.zip" if run.is_dir() else run
    compare_meta = read_meta(compare_path, trust)
    if compare_meta.get("kind") == "escalate":
        raise ConfigError(
            f"{compare_path}: --compare-run needs a one-shot (ttc/Allocate-v0) run, this one is sequential"
        )
    check_menu(compare_meta, table, str(compare_path))
    return PPOPolicy(load_model(compare_path, table, trust=trust))


class SequentialEvaluation:
    """Every policy of a sequential evaluation on the same sample orders: the statics and the stopping
    rules are simulated once (the rules tuned on val), then each λ point prices them (:meth:`run`)."""

    def __init__(self, opts: EvalOptions, setup: SequentialSetup):
        from policies.base import lambda_grid
        from policies.escalate_sim import Simulator, make_orders, oneshot_policy
        from policies.stopping_rules import rule_grid

        self.opts, self.setup = opts, setup
        table, menu = setup.table, setup.menu
        grid = lambda_grid(table, setup.train_rows, opts.grid_n)
        lt_axis, ls_axis = opts.lambda_axes()
        self.lt_axis, self.ls_axis = lt_axis or grid["lambda_tokens"], ls_axis or grid["lambda_seconds"]
        self.lambdas = [(lt, ls) for lt in self.lt_axis for ls in self.ls_axis]

        def simulator(r: np.ndarray) -> Simulator:
            orders, picks = make_orders(table, menu, r, opts.n_orders, seed=opts.seed)
            return Simulator(table, menu, setup.encoder, setup.units, r, orders, picks)

        self.sim, self.val_sim = simulator(setup.rows), simulator(setup.val_rows)
        # one-shot actions on the same orders (λ-independent: price them per point)
        policies = {a.id: p for a in table.menu if (p := oneshot_policy(menu, a)) is not None}
        self.oneshot_ids = list(policies)
        self.static = {aid: self.sim.run(p, 0.0, 0.0) for aid, p in policies.items()}
        self.families = rule_grid(menu)
        self.points: list[dict[str, Any]] = []
        self.boot_seq_minus_rule: dict[str, list[np.ndarray]] = {f: [] for f in self.families}

    def _tune_rules(self) -> None:
        """Every rule configuration once on val, the per-point pick of each family once on test."""
        from tqdm import tqdm

        from policies.stopping_rules import simulate_rules, tune

        note(f"tuning the stopping rules on the validation split ({len(self.setup.val_rows)} queries)")
        val_results = {
            f: simulate_rules(self.val_sim, rules)
            for f, rules in tqdm(self.families.items(), desc="stopping rules on val", disable=not self.opts.progress)
        }
        self.rule_picks = {f: tune(val_results[f], self.lambdas) for f in self.families}
        self.test_rules: dict[tuple[str, int], Any] = {}
        for f, idx in self.rule_picks.items():
            for i in set(idx):
                self.test_rules[(f, i)] = simulate_rules(self.sim, [self.families[f][i]])[0]

    def run(self) -> list[dict[str, Any]]:
        """One record per (λ_T, λ_L), λ_T outer (the JSON's ``points``)."""
        from tqdm import tqdm

        from policies.escalate_sim import model_policy
        from policies.ppo import load_model

        opts = self.opts
        self._tune_rules()
        self.seq_policy = model_policy(
            load_model(self.setup.model_path, self.setup.table, trust=opts.trust_checkpoint)
        )
        n_q = len(self.setup.rows)
        self.weights = two_stage_weights(n_q, opts.n_orders, opts.n_boot, opts.seed) if opts.n_boot > 0 else None
        for lt, ls in tqdm(self.lambdas, desc="λ points", disable=not opts.progress):
            self.points.append(self._point(lt, ls))
        return self.points

    def _policies_at(self, lt: float, ls: float) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, str]]:
        """Every policy's summary and (query, order) utilities at (λ_T, λ_L), and the rule picked per family."""
        table, oneshot_ids, static = self.setup.table, self.oneshot_ids, self.static
        pols: dict[str, Any] = {}
        util: dict[str, np.ndarray] = {}
        seq = self.sim.run(self.seq_policy, lt, ls)
        pols["sequential"], util["sequential"] = seq.summary(lt, ls), seq.utility(lt, ls)
        for aid in oneshot_ids:
            pols[f"static:{aid}"] = static[aid].summary(lt, ls)
            util[f"static:{aid}"] = static[aid].utility(lt, ls)
        # the one-shot oracle: per query the action with the best mean over its orders
        per_q = np.stack([util[f"static:{a}"].mean(axis=1) for a in oneshot_ids], axis=1)  # (n, A)
        choice = per_q.argmax(axis=1)
        stack = np.stack([util[f"static:{a}"] for a in oneshot_ids], axis=0)  # (A, n, r)
        util["oracle"] = stack[choice, np.arange(len(self.setup.rows))]
        pols["oracle"] = _summary_from({a: static[a] for a in oneshot_ids}, [oneshot_ids[c] for c in choice], lt, ls)
        if self.setup.oneshot is not None:
            acts = self.setup.oneshot.choose(table, self.setup.rows, lt, ls)
            ids = [table.action_ids[int(a)] for a in acts]
            util["oneshot_ppo"] = np.stack([util[f"static:{a}"][i] for i, a in enumerate(ids)])
            pols["oneshot_ppo"] = _summary_from({a: static[a] for a in set(ids)}, ids, lt, ls)
        chosen_rules = {}
        for f in self.families:
            i = self.rule_picks[f][self.lambdas.index((lt, ls))]
            res = self.test_rules[(f, i)]
            pols[f"rule:{f}"] = {**res.summary(lt, ls), "config": self.families[f][i].to_dict()}
            util[f"rule:{f}"] = res.utility(lt, ls)
            chosen_rules[f] = self.families[f][i].name
        return pols, util, chosen_rules

    def _point(self, lt: float, ls: float) -> dict[str, Any]:
        pols, util, chosen_rules = self._policies_at(lt, ls)

        def compare(d: np.ndarray) -> dict[str, Any]:
            return two_stage_compare(d, self.weights)

        best = max(self.oneshot_ids, key=lambda a: util[f"static:{a}"].mean())
        u_bs, u_or = util[f"static:{best}"].mean(), util["oracle"].mean()
        gap = u_or - u_bs
        u_seq = util["sequential"].mean()
        point: dict[str, Any] = {
            "lambda_tokens": lt,
            "lambda_seconds": ls,
            "policies": pols,
            "best_static": best,
            "oracle_gap": gap,
            "sequential_gap_share": None if gap < TOL else (u_seq - u_bs) / gap,
            "sequential_above_oracle": bool(u_seq > u_or + TOL),
            "rules": chosen_rules,
            "sequential_vs_best_static": compare(util["sequential"] - util[f"static:{best}"]),
            "sequential_vs_oracle": compare(util["sequential"] - util["oracle"]),
        }
        if self.setup.oneshot is not None:
            point["sequential_vs_oneshot_ppo"] = compare(util["sequential"] - util["oneshot_ppo"])
            point["oneshot_ppo_gap_share"] = None if gap < TOL else (util["oneshot_ppo"].mean() - u_bs) / gap
        for f in self.families:
            c = compare(util["sequential"] - util[f"rule:{f}"])
            point[f"sequential_vs_rule:{f}"] = c
            if "_boot" in c:
                self.boot_seq_minus_rule[f].append(c["_boot"])
        return point

    def result(self, source: ModelSource) -> dict[str, Any]:
        """The JSON of the evaluation (after :meth:`run`), ``_boot`` arrays still in it."""
        points, opts, setup = self.points, self.opts, self.setup
        # the best rule family: best mean test utility over the grid
        fam_mean = {
            f: float(np.mean([p["policies"][f"rule:{f}"]["utility"] for p in points])) for f in self.families
        }
        best_rule = max(fam_mean, key=fam_mean.get)  # type: ignore[arg-type]
        have_oneshot = setup.oneshot is not None
        summary = _summarize(points, best_rule, fam_mean, self.boot_seq_minus_rule, have_oneshot, opts.n_boot)
        summary["savings"] = savings(points, self.oneshot_ids)
        return {
            "kind": "escalate",
            "run": str(source.run_dir),
            "model": str(source.model_path),
            "compare_run": opts.compare_run,
            "cache": str(source.cache),
            "split": opts.split,
            "n_queries": len(setup.rows),
            "n_orders": opts.n_orders,
            "n_val_queries": int(len(setup.val_rows)),
            "step_menu": list(setup.menu.ids),
            "oneshot_menu": self.oneshot_ids,
            "grid": {"lambda_tokens": list(self.lt_axis), "lambda_seconds": list(self.ls_axis)},
            "rule_grid_sizes": {f: len(r) for f, r in self.families.items()},
            "points": points,
            "summary": summary,
        }


def _summary_from(results: dict[str, Any], ids: list[str], lt: float, ls: float) -> dict[str, Any]:
    """Summary of a policy that plays one-shot action ids[i] on query i (rows of the static results)."""
    c = np.stack([results[a].correct[i] for i, a in enumerate(ids)])
    t = np.stack([results[a].tokens[i] for i, a in enumerate(ids)])
    s = np.stack([results[a].seconds[i] for i, a in enumerate(ids)])
    share: dict[str, float] = {}
    for a in ids:
        share[a] = share.get(a, 0.0) + 1.0 / len(ids)
    return {
        "accuracy": float(c.mean()),
        "mean_tokens": float(t.mean()),
        "mean_seconds": float(s.mean()),
        "utility": float((c - lt * t - ls * s).mean()),
        "share": dict(sorted(share.items())),
    }


def _summarize(
    points: list[dict[str, Any]],
    best_rule: str,
    fam_mean: dict[str, float],
    boots: dict[str, list[np.ndarray]],
    have_oneshot: bool,
    n_boot: int,
) -> dict[str, Any]:
    s: dict[str, Any] = {
        "n_points": len(points),
        "best_rule": best_rule,
        "rule_mean_utility": fam_mean,
        "sequential_mean_utility": float(np.mean([p["policies"]["sequential"]["utility"] for p in points])),
        "sequential_below_best_rule_90": sum(
            p[f"sequential_vs_rule:{best_rule}"]["below_90"] for p in points
        ),
        "sequential_above_best_rule_90": sum(
            p[f"sequential_vs_rule:{best_rule}"]["above_90"] for p in points
        ),
        "sequential_below_best_static_90": sum(p["sequential_vs_best_static"]["below_90"] for p in points),
        "sequential_above_best_static_90": sum(p["sequential_vs_best_static"]["above_90"] for p in points),
        "sequential_above_oracle_points": [
            [p["lambda_tokens"], p["lambda_seconds"]] for p in points if p["sequential_above_oracle"]
        ],
        "sequential_gap_share_mean": _mean([p["sequential_gap_share"] for p in points]),
        "n_boot": n_boot,
    }
    if boots[best_rule]:
        mb = np.mean(np.stack(boots[best_rule]), axis=0)  # the grid mean in each resample
        lo, hi = np.percentile(mb, [5, 95])
        d = s["sequential_mean_utility"] - fam_mean[best_rule]
        s["sequential_vs_best_rule_grid_mean"] = {
            "diff": d,
            "ci90": [float(lo), float(hi)],
            "above_90": bool(lo > TOL),
        }
    if have_oneshot:
        s["sequential_below_oneshot_ppo_90"] = sum(p["sequential_vs_oneshot_ppo"]["below_90"] for p in points)
        s["sequential_above_oneshot_ppo_90"] = sum(p["sequential_vs_oneshot_ppo"]["above_90"] for p in points)
        s["oneshot_ppo_gap_share_mean"] = _mean([p["oneshot_ppo_gap_share"] for p in points])
        s["bars"] = {
            "never_below_oneshot_ppo_90": s["sequential_below_oneshot_ppo_90"] == 0,
            "above_oneshot_ppo_90_at_10_points": s["sequential_above_oneshot_ppo_90"] >= 10,
            "never_below_best_rule_90": s["sequential_below_best_rule_90"] == 0,
            "grid_mean_above_best_rule_90": bool(
                s.get("sequential_vs_best_rule_grid_mean", {}).get("above_90", False)
            ),
        }
    return s


def savings(points: list[dict[str, Any]], oneshot_ids: list[str]) -> dict[str, Any]:
    """Tokens and seconds the sequential policy needs to reach the most accurate static's accuracy
    (the cheapest grid point that matches it), as ratios to that static's."""
    p0 = points[0]["policies"]
    top = max(oneshot_ids, key=lambda a: p0[f"static:{a}"]["accuracy"])
    ref = p0[f"static:{top}"]
    match = [p for p in points if p["policies"]["sequential"]["accuracy"] >= ref["accuracy"] - TOL]
    out: dict[str, Any] = {
        "most_accurate_static": top,
        "static_accuracy": ref["accuracy"],
        "static_tokens": ref["mean_tokens"],
        "static_seconds": ref["mean_seconds"],
        "matching_points": len(match),
        "sequential_max_accuracy": max(p["policies"]["sequential"]["accuracy"] for p in points),
    }
    if match:
        bt = min(match, key=lambda p: p["policies"]["sequential"]["mean_tokens"])
        bsec = min(match, key=lambda p: p["policies"]["sequential"]["mean_seconds"])
        out["tokens_ratio"] = bt["policies"]["sequential"]["mean_tokens"] / ref["mean_tokens"]
        out["tokens_point"] = [bt["lambda_tokens"], bt["lambda_seconds"]]
        out["seconds_ratio"] = bsec["policies"]["sequential"]["mean_seconds"] / ref["mean_seconds"]
        out["seconds_point"] = [bsec["lambda_tokens"], bsec["lambda_seconds"]]
    return out


def _mean(xs: list[float | None]) -> float | None:
    """The mean of the values that are not None (None when there are none)."""
    values = [x for x in xs if x is not None]
    return float(np.mean(values)) if values else None
