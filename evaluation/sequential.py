"""Evaluate a sequential (``ttc/Escalate-v0``) run: ``evaluate.py --run RUN`` dispatches here.

Every policy runs on the same held-out queries and the same R sample orders per query (common random
numbers, :func:`policies.escalate_sim.make_orders`), through the same episode code as the env:

- ``sequential``: the run's MaskablePPO step policy (deterministic);
- ``oneshot_ppo``: a one-shot ``ttc/Allocate-v0`` run (``--compare-run``) as shipped: behind its gate
  and gain shrinkage (``gate.json``), its choice per query played as ``draw@N, stop:<selector>`` (or
  the beam, or a race finish by finish with the finish watch) on the same orders; a choice the step
  menu cannot play (an action of another pool, a budget that is no draw size, a race on the round
  watch) is scored from the outcome table, the same for every order.
  ``oneshot_ppo_ungated`` is the same network without its gate;
- ``static:<action>``: every one-shot action the same way (with the finish watch, the races too:
  launch N, wait finish by finish, stop when the race stops); ``best_static`` is the hindsight best on the
  evaluated split at each λ point; ``oracle``: per query the one-shot action with the best mean utility
  over its orders (the one-shot hindsight oracle); ``oracle_no_races``: the same over the menu without
  its races (reported where the menu has races);
- ``rule:<family>``: the stopping rules of :mod:`policies.stopping_rules`, each family's configuration
  tuned per λ point: from the run's ``rules.json`` (every configuration simulated once on train + val
  when the run was trained, :mod:`policies.rule_tuning`), or, for a run without it, on the validation
  split now (the JSON's ``rule_tuning`` says which). ``best_rule`` is the family with the best mean
  test utility over the grid (a hindsight pick: the strictest bar).

Summary shares of the oracle gap (``*_gap_share_summed``) are summed-gap shares: Σ_points (U − U_best
static) / Σ_points (U_oracle − U_best static), null when the summed oracle gap is below 1e-9; the
per-point ``*_gap_share`` are null where that point's oracle gap is. The bars count points as a share
of the grid (``above_oneshot_ppo_90_at_40pct_of_points``: above with 90 % confidence at ≥ 40 % of the
points).

Statistics: a paired two-stage bootstrap (queries resampled, then each query's R orders), the same
resamples at every point; a difference counts as a win/loss "with 90 % confidence" when its 90 %
interval lies above/below zero by more than 1e-9 (ties within 1e-9 are equal).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from evaluation.bootstrap import TOL, two_stage_compare, two_stage_weights
from evaluation.options import EvalOptions
from evaluation.pareto import write_sequential_plots
from evaluation.report import sequential_markdown, strip_private, write_results
from evaluation.sequential_setup import SequentialSetup, load_setup
from evaluation.sequential_summary import savings, summarize, summary_from
from evaluation.source import ModelSource
from rollouts.console import note, phase
from rollouts.errors import ConfigError

__all__ = ["SequentialEvaluation", "SequentialSetup", "evaluate_escalate", "load_setup"]


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


class SequentialEvaluation:
    """Every policy of a sequential evaluation on the same sample orders: the statics and the stopping
    rules are simulated once (the rules' picks from the run's ``rules.json``, or tuned on val), then
    each λ point prices them (:meth:`run`)."""

    def __init__(self, opts: EvalOptions, setup: SequentialSetup):
        from policies.base import lambda_grid
        from policies.baselines import TrainBestStaticPolicy
        from policies.escalate_sim import Simulator, make_orders, oneshot_policy
        from policies.sequential_gate import FloorPlayer
        from policies.stopping_rules import rule_grid, rule_notes

        self.opts, self.setup = opts, setup
        table, menu = setup.table, setup.menu
        grid = lambda_grid(table, setup.train_rows, opts.grid_n)
        lt_axis, ls_axis = opts.lambda_axes()
        self.lt_axis, self.ls_axis = lt_axis or grid["lambda_tokens"], ls_axis or grid["lambda_seconds"]
        self.lambdas = [(lt, ls) for lt in self.lt_axis for ls in self.ls_axis]

        def simulator(r: np.ndarray) -> Simulator:
            orders, picks = make_orders(table, menu, r, opts.n_orders, seed=opts.seed)
            return Simulator(table, menu, setup.encoder, setup.units, r, orders, picks)

        self.sim = simulator(setup.rows)
        self._val_sim: Simulator | None = None
        self._make_val_sim = lambda: simulator(setup.val_rows)
        # one-shot actions on the same orders (λ-independent: price them per point)
        policies = {a.id: p for a in table.menu if (p := oneshot_policy(menu, a)) is not None}
        self.oneshot_ids = list(policies)
        no_races = [a.id for a in table.menu if a.id in policies and a.race is None]
        self.no_race_ids = no_races if len(no_races) < len(policies) else []  # only where races are played
        self.static = {aid: self.sim.run(p, 0.0, 0.0) for aid, p in policies.items()}
        self.families = rule_grid(menu)
        self.rule_notes = rule_notes(menu)  # families left out of the grid, and why
        self.floors = FloorPlayer(self.sim)  # the rule floors of the run's gate, on the same orders
        self.trainval_static = TrainBestStaticPolicy(np.concatenate([setup.train_rows, setup.val_rows]))
        self.points: list[dict[str, Any]] = []
        self.boot_seq_minus_rule: dict[str, list[np.ndarray]] = {f: [] for f in self.families}

    @property
    def val_sim(self) -> Any:
        """The validation split's simulator (built when the rules are tuned at evaluation time)."""
        if self._val_sim is None:
            self._val_sim = self._make_val_sim()
        return self._val_sim

    def action_result(self, action_id: str) -> Any:
        """The outcomes of one-shot action ``action_id`` on the evaluated rows and orders: simulated on
        the orders when the step menu can play it, else the outcome table's expectation for the action
        (another pool, a budget that is no draw size), the same for every order: a one-shot policy's
        choice needs no step menu."""
        if action_id not in self.static:
            from policies.escalate_sim import SimResult

            t, rows, r_n = self.setup.table, self.setup.rows, self.opts.n_orders
            ai = t.action_ids.index(action_id)
            act = t.menu[ai]

            def per_order(values: np.ndarray) -> np.ndarray:
                return np.repeat(np.asarray(values, dtype=np.float64)[:, None], r_n, axis=1)

            self.static[action_id] = SimResult(
                correct=per_order(t.correct[rows, ai]), tokens=per_order(t.tokens[rows, ai]),
                seconds=per_order(t.seconds[rows, ai]), rounds=np.ones((len(rows), r_n)),
                samples=per_order(np.full(len(rows), act.n if act.is_pool else 0)),
                beam=np.full((len(rows), r_n), not act.is_pool), final=[[action_id] * r_n for _ in rows],
            )  # fmt: skip
        return self.static[action_id]

    def choice_result(self, ids: list[str]) -> Any:
        """The outcomes of playing one-shot action ``ids[i]`` on evaluated query i (rows of
        :meth:`action_result`), as one :class:`policies.escalate_sim.SimResult`."""
        from policies.escalate_sim import SimResult

        res = [self.action_result(a) for a in ids]

        def rows(name: str) -> np.ndarray:
            return np.stack([getattr(r, name)[i] for i, r in enumerate(res)])

        return SimResult(
            correct=rows("correct"), tokens=rows("tokens"), seconds=rows("seconds"), rounds=rows("rounds"),
            samples=rows("samples"), beam=rows("beam"), final=[r.final[i] for i, r in enumerate(res)],
        )  # fmt: skip

    def _tune_rules(self) -> None:
        """Each family's configuration per point, from the run's ``rules.json`` (tuned on train + val
        when it was trained) or, for a run without one, every configuration simulated on val now;
        then the picked configurations once on the evaluated split."""
        from tqdm import tqdm

        from policies.rule_tuning import load_tuned_rules
        from policies.stopping_rules import simulate_rules, tune

        tuned = load_tuned_rules(self.setup.run_dir, self.setup.menu)
        here = Path(self.setup.table.cache_path).resolve()
        if tuned is not None and Path(tuned.info.get("cache", "")).resolve() != here:
            tuned = None  # tuned on another cache than the one evaluated
        if tuned is not None:
            self.rule_picks = tuned.picks(self.lambdas)
            self.rule_tuning = {"from": "rules.json", **tuned.info}
        else:
            note(f"tuning the stopping rules on the validation split ({len(self.setup.val_rows)} queries)")
            bar = tqdm(self.families.items(), desc="stopping rules on val", disable=not self.opts.progress)
            val_results = {f: simulate_rules(self.val_sim, rules) for f, rules in bar}
            self.rule_picks = {f: tune(val_results[f], self.lambdas) for f in self.families}
            self.rule_tuning = {
                "from": "tuned now", "split": "val", "n_queries": int(len(self.setup.val_rows)),
                "n_orders": self.opts.n_orders, "seed": self.opts.seed,
            }  # fmt: skip
        self.test_rules: dict[tuple[str, int], Any] = {}
        for f, idx in self.rule_picks.items():
            for i in sorted(set(idx)):
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

    def oneshot_choice(self, policy: Any, lt: float, ls: float) -> tuple[list[str], np.ndarray]:
        """A one-shot policy's action id per evaluated query at (λ_T, λ_L) and its (query, order) utilities."""
        table = self.setup.table
        ids = [table.action_ids[int(a)] for a in policy.choose(table, self.setup.rows, lt, ls)]
        util = np.stack([self.action_result(a).utility(lt, ls)[i] for i, a in enumerate(ids)])
        return ids, util

    def _policies_at(self, lt: float, ls: float) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, str]]:
        """Every policy's summary and (query, order) utilities at (λ_T, λ_L), and the rule picked per family."""
        oneshot_ids, static = self.oneshot_ids, self.static
        pols: dict[str, Any] = {}
        util: dict[str, np.ndarray] = {}
        seq = self.sim.run(self.seq_policy, lt, ls)
        pols["sequential_ungated"], util["sequential_ungated"] = seq.summary(lt, ls), seq.utility(lt, ls)
        pols["sequential"], util["sequential"] = self._shipped(pols, util, lt, ls)
        for aid in oneshot_ids:
            pols[f"static:{aid}"] = static[aid].summary(lt, ls)
            util[f"static:{aid}"] = static[aid].utility(lt, ls)
        # the one-shot oracle: per query the action with the best mean over its orders; beside it the
        # same oracle over the menu without races (how far the races moved the hindsight bound)
        for name, ids in (("oracle", oneshot_ids), ("oracle_no_races", self.no_race_ids)):
            if not ids:
                continue
            per_q = np.stack([util[f"static:{a}"].mean(axis=1) for a in ids], axis=1)  # (n, A)
            choice = per_q.argmax(axis=1)
            stack = np.stack([util[f"static:{a}"] for a in ids], axis=0)  # (A, n, r)
            util[name] = stack[choice, np.arange(len(self.setup.rows))]
            pols[name] = summary_from(static, [ids[c] for c in choice], lt, ls)
        # the static a user deploys without hindsight: the train + val best at this point (races too)
        ids, util["trainval_static"] = self.oneshot_choice(self.trainval_static, lt, ls)
        pols["trainval_static"] = {**self.static[ids[0]].summary(lt, ls), "action": ids[0]}
        one = self.setup.oneshot
        if one is not None:  # the shipped (gated) one-shot policy, and the bare network
            for name, policy in (("oneshot_ppo", one.shipped), ("oneshot_ppo_ungated", one.ungated)):
                ids, util[name] = self.oneshot_choice(policy, lt, ls)
                pols[name] = summary_from({a: self.action_result(a) for a in set(ids)}, ids, lt, ls)
        chosen_rules = {}
        for f in self.families:
            i = self.rule_picks[f][self.lambdas.index((lt, ls))]
            res = self.test_rules[(f, i)]
            pols[f"rule:{f}"] = {**res.summary(lt, ls), "config": self.families[f][i].to_dict()}
            util[f"rule:{f}"] = res.utility(lt, ls)
            chosen_rules[f] = self.families[f][i].name
        return pols, util, chosen_rules

    def _shipped(
        self, pols: dict[str, Any], util: dict[str, np.ndarray], lt: float, ls: float
    ) -> tuple[dict[str, Any], np.ndarray]:
        """The shipped sequential policy at (λ_T, λ_L): the step policy where the run's gate is open,
        its floor where it is closed (``floor`` added to ``pols``/``util``); the step policy alone for
        a run without a gate."""
        gate = self.setup.gate
        if gate is None:
            return pols["sequential_ungated"], util["sequential_ungated"]
        floor = gate.floor(lt, ls)
        if floor.kind == "oneshot":
            assert self.setup.floor_oneshot is not None  # load_setup loads it
            ids, u = self.oneshot_choice(self.setup.floor_oneshot.shipped, lt, ls)
            summ = {**self.choice_result(ids).summary(lt, ls), "share": summary_from(
                {a: self.action_result(a) for a in set(ids)}, ids, lt, ls)["share"]}  # fmt: skip
        else:
            res = self.action_result(floor.name) if floor.kind == "static" else self.floors.result(floor)
            summ, u = res.summary(lt, ls), res.utility(lt, ls)
        pols["floor"] = {**summ, "floor": floor.to_dict()}
        util["floor"] = u
        if gate.is_open(lt, ls):
            return pols["sequential_ungated"], util["sequential_ungated"]
        return pols["floor"], u

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
            "sequential_gate_open": None if self.setup.gate is None else bool(self.setup.gate.is_open(lt, ls)),
            "sequential_vs_best_static": compare(util["sequential"] - util[f"static:{best}"]),
            "sequential_vs_oracle": compare(util["sequential"] - util["oracle"]),
            "sequential_ungated_vs_best_static": compare(util["sequential_ungated"] - util[f"static:{best}"]),
            "sequential_vs_trainval_static": compare(util["sequential"] - util["trainval_static"]),
        }
        if "floor" in util:
            point["sequential_vs_floor"] = compare(util["sequential"] - util["floor"])
        if self.setup.oneshot is not None:
            point["oneshot_ppo_gate_open"] = bool(self.setup.oneshot.gate.is_open(lt, ls))
            for name in ("oneshot_ppo", "oneshot_ppo_ungated"):
                point[f"sequential_vs_{name}"] = compare(util["sequential"] - util[name])
                point[f"{name}_gap_share"] = None if gap < TOL else (util[name].mean() - u_bs) / gap
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
        summary = summarize(points, best_rule, fam_mean, self.boot_seq_minus_rule, have_oneshot, opts.n_boot)
        summary["savings"] = savings(points, self.oneshot_ids)
        summary["sequential_ungated_mean_utility"] = float(
            np.mean([p["policies"]["sequential_ungated"]["utility"] for p in points])
        )
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
            "pools": [p.to_dict() for p in setup.menu.pools],
            "oneshot_menu": self.oneshot_ids,
            "grid": {"lambda_tokens": list(self.lt_axis), "lambda_seconds": list(self.ls_axis)},
            "rule_grid_sizes": {f: len(r) for f, r in self.families.items()},
            **({"rule_notes": self.rule_notes} if self.rule_notes else {}),
            "rule_tuning": self.rule_tuning,
            "sequential_gate": None if setup.gate is None else {
                "open_share": setup.gate.open_share, "oneshot_run": setup.gate.oneshot_run,
            },  # fmt: skip
            "points": points,
            "summary": summary,
        }
