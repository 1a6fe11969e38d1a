"""Evaluate a sequential (``ttc/Escalate-v0``) run: ``evaluate.py --run RUN`` dispatches here.

Every policy runs on the same held-out queries and the same R sample orders per query (common random
numbers, :func:`policies.escalate_sim.make_orders`), through the same episode code as the env:

- ``sequential``: the run's MaskablePPO step policy (deterministic);
- ``oneshot_ppo``: a one-shot ``ttc/Allocate-v0`` run (``--compare-run``), its choice per query played
  as ``draw@N, stop:<selector>`` (or the beam) on the same orders;
- ``static:<action>``: every one-shot action the same way; ``best_static`` is the hindsight best on the
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
import math
from pathlib import Path
from typing import Any

import numpy as np

from rollouts.errors import ConfigError

TOL = 1e-9


def bootstrap_weights(n: int, r: int, n_boot: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n_boot, n) query weights and (n_boot, n, r) order weights (draw counts / size)."""
    rng = np.random.default_rng(seed)
    wq = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot) / n
    wr = rng.multinomial(r, np.full(r, 1.0 / r), size=(n_boot, n)) / r
    return wq, wr


def resampled_means(u: np.ndarray, wq: np.ndarray, wr: np.ndarray) -> np.ndarray:
    """(n_boot,) resampled means of a per (query, order) array (n, r)."""
    return np.einsum("bq,bqr,qr->b", wq, wr, u)


def compare(d: np.ndarray, wq: np.ndarray, wr: np.ndarray) -> dict[str, Any]:
    """Point estimate, 90 % interval and verdict of a paired difference array (n, r)."""
    bs = resampled_means(d, wq, wr)
    lo, hi = np.percentile(bs, [5, 95])
    return {
        "diff": float(d.mean()),
        "ci90": [float(lo), float(hi)],
        "above_90": bool(lo > TOL),
        "below_90": bool(hi < -TOL),
        "_boot": bs,
    }


def evaluate_escalate(
    run_dir: Path,
    model_path: Path,
    meta: dict[str, Any],
    cache: str,
    split: str = "test",
    grid_n: int = 5,
    lt_axis: list[float] | None = None,
    ls_axis: list[float] | None = None,
    out: str | None = None,
    json_path: str | None = None,
    plots: bool = True,
    n_boot: int = 1000,
    n_orders: int = 16,
    compare_run: str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    from tqdm import tqdm

    from env.allocate_env import ObsEncoder
    from env.escalate_env import EscalateMenu, SeenUnits, env_config_from
    from env.outcomes import OutcomeTable
    from policies.base import lambda_grid
    from policies.escalate_sim import Simulator, make_orders, model_policy, plan_policy
    from policies.ppo import PPOPolicy, check_menu, load_model, read_meta
    from policies.stopping_rules import rule_grid, simulate_rules, tune

    if n_orders < 1:
        raise ConfigError(f"--orders must be >= 1, got {n_orders}")
    env_cfg = env_config_from(meta["env"])
    table = OutcomeTable(cache, mc_subsets=env_cfg.mc_subsets, outcome_seed=env_cfg.outcome_seed)
    check_menu(meta, table, str(model_path))
    menu = EscalateMenu(table, env_cfg)  # type: ignore[arg-type]
    if list(menu.ids) != list(meta["escalate"]["step_menu"]):
        raise ConfigError(f"{model_path}: its step menu {meta['escalate']['step_menu']} is not {menu.ids}")
    oneshot = None
    if compare_run:
        cr = Path(compare_run)
        cm = cr / "best_model.zip" if cr.is_dir() else cr
        cmeta = read_meta(cm)
        if cmeta.get("kind") == "escalate":
            raise ConfigError(
                f"{cm}: --compare-run needs a one-shot (ttc/Allocate-v0) run, this one is sequential"
            )
        check_menu(cmeta, table, str(cm))
        oneshot = PPOPolicy(load_model(cm, table))
    encoder = ObsEncoder.from_dict(meta["encoder"])
    units = SeenUnits.from_dict(meta["escalate"]["units"])
    splits = json.loads((run_dir / "splits.json").read_text())

    def rows_for(s: str) -> np.ndarray:
        r = table.indices([q for q in splits[s] if q in table.qindex])
        has_pool = np.array([bool(table.pool_records(int(q), menu.pool_config)) for q in r], dtype=bool)
        return r[has_pool & table.mask[r].all(axis=1)] if len(r) else r

    rows, val_rows = rows_for(split), rows_for("val")
    train_rows = table.indices([q for q in splits["train"] if q in table.qindex])
    if len(rows) == 0 or len(val_rows) == 0:
        raise ConfigError(f"the {split} or val split has no queries with a pool and every action in {cache}")
    grid = lambda_grid(table, train_rows, grid_n)
    lt_axis = lt_axis or grid["lambda_tokens"]
    ls_axis = ls_axis or grid["lambda_seconds"]
    points = [(lt, ls) for lt in lt_axis for ls in ls_axis]

    def simulator(r: np.ndarray) -> Simulator:
        orders, picks = make_orders(table, menu, r, n_orders, seed=seed)
        return Simulator(table, menu, encoder, units, r, orders, picks)

    sim, val_sim = simulator(rows), simulator(val_rows)
    n_q = len(rows)
    # one-shot actions on the same orders (λ-independent: price them per point)
    plans = [menu.oneshot_plan(a) for a in table.menu]
    oneshot_ids = [a.id for a, p in zip(table.menu, plans, strict=True) if p is not None]
    static = {
        a.id: sim.run(plan_policy([p]), 0.0, 0.0)
        for a, p in zip(table.menu, plans, strict=True)
        if p is not None
    }
    # stopping rules: every configuration once on val, the per-point pick once on test
    families = rule_grid(menu)
    val_results = {
        f: simulate_rules(val_sim, rules)
        for f, rules in tqdm(families.items(), desc="stopping rules on val", disable=not progress)
    }
    picks = {f: tune(val_results[f], points) for f in families}
    test_rule_cache: dict[tuple[str, int], Any] = {}
    for f, idx in picks.items():
        for i in set(idx):
            test_rule_cache[(f, i)] = simulate_rules(sim, [families[f][i]])[0]
    model = load_model(model_path, table)
    seq_pol = model_policy(model)
    wq, wr = bootstrap_weights(n_q, n_orders, n_boot, seed) if n_boot > 0 else (None, None)

    def cmp(d):
        if wq is None:
            return {
                "diff": float(d.mean()),
                "ci90": [float(d.mean())] * 2,
                "above_90": False,
                "below_90": False,
            }
        return compare(d, wq, wr)

    out_points = []
    boot_seq_minus_rule: dict[str, list[np.ndarray]] = {f: [] for f in families}
    for lt, ls in tqdm(points, desc="λ points", disable=not progress):
        pols: dict[str, Any] = {}
        util: dict[str, np.ndarray] = {}
        seq = sim.run(seq_pol, lt, ls)
        pols["sequential"], util["sequential"] = seq.summary(lt, ls), seq.utility(lt, ls)
        for aid in oneshot_ids:
            pols[f"static:{aid}"] = static[aid].summary(lt, ls)
            util[f"static:{aid}"] = static[aid].utility(lt, ls)
        best = max(oneshot_ids, key=lambda a: util[f"static:{a}"].mean())
        # the one-shot oracle: per query the action with the best mean over its orders
        per_q = np.stack([util[f"static:{a}"].mean(axis=1) for a in oneshot_ids], axis=1)  # (n, A)
        choice = per_q.argmax(axis=1)
        stack = np.stack([util[f"static:{a}"] for a in oneshot_ids], axis=0)  # (A, n, r)
        util["oracle"] = stack[choice, np.arange(n_q)]
        pols["oracle"] = _summary_from(
            {a: static[a] for a in oneshot_ids}, [oneshot_ids[c] for c in choice], lt, ls
        )
        if oneshot is not None:
            acts = oneshot.choose(table, rows, lt, ls)
            ids = [table.action_ids[int(a)] for a in acts]
            util["oneshot_ppo"] = np.stack([util[f"static:{a}"][i] for i, a in enumerate(ids)])
            pols["oneshot_ppo"] = _summary_from({a: static[a] for a in set(ids)}, ids, lt, ls)
        chosen_rules = {}
        for f in families:
            i = picks[f][points.index((lt, ls))]
            res = test_rule_cache[(f, i)]
            pols[f"rule:{f}"] = {**res.summary(lt, ls), "config": families[f][i].to_dict()}
            util[f"rule:{f}"] = res.utility(lt, ls)
            chosen_rules[f] = families[f][i].name
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
            "sequential_vs_best_static": cmp(util["sequential"] - util[f"static:{best}"]),
            "sequential_vs_oracle": cmp(util["sequential"] - util["oracle"]),
        }
        if oneshot is not None:
            point["sequential_vs_oneshot_ppo"] = cmp(util["sequential"] - util["oneshot_ppo"])
            point["oneshot_ppo_gap_share"] = None if gap < TOL else (util["oneshot_ppo"].mean() - u_bs) / gap
        for f in families:
            c = cmp(util["sequential"] - util[f"rule:{f}"])
            point[f"sequential_vs_rule:{f}"] = c
            if "_boot" in c:
                boot_seq_minus_rule[f].append(c["_boot"])
        out_points.append(point)

    # the best rule family: best mean test utility over the grid
    fam_mean = {
        f: float(np.mean([p["policies"][f"rule:{f}"]["utility"] for p in out_points])) for f in families
    }
    best_rule = max(fam_mean, key=fam_mean.get)  # type: ignore[arg-type]
    summary = _summarize(out_points, best_rule, fam_mean, boot_seq_minus_rule, oneshot is not None, n_boot)
    summary["savings"] = savings(out_points, oneshot_ids)
    result = {
        "kind": "escalate",
        "run": str(run_dir),
        "model": str(model_path),
        "compare_run": compare_run,
        "cache": str(cache),
        "split": split,
        "n_queries": n_q,
        "n_orders": n_orders,
        "n_val_queries": int(len(val_rows)),
        "step_menu": list(menu.ids),
        "oneshot_menu": oneshot_ids,
        "grid": {"lambda_tokens": list(lt_axis), "lambda_seconds": list(ls_axis)},
        "rule_grid_sizes": {f: len(r) for f, r in families.items()},
        "points": out_points,
        "summary": summary,
    }
    out_dir = Path(out) if out else run_dir / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    clean = _strip_boot(result)
    (out_dir / "results.md").write_text(markdown(clean))
    if plots:
        write_plots(clean, out_dir)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(clean, indent=1) + "\n")
    clean["out_dir"] = str(out_dir)
    return clean


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


def _summarize(points, best_rule, fam_mean, boots, have_oneshot, n_boot) -> dict[str, Any]:
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


def savings(points, oneshot_ids) -> dict[str, Any]:
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


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _strip_boot(o):
    if isinstance(o, dict):
        return {k: _strip_boot(v) for k, v in o.items() if k != "_boot"}
    if isinstance(o, list):
        return [_strip_boot(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.bool_):
        return bool(o)
    return o


def _f(x, nd=3):
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    br = s["best_rule"]
    lines = [
        f"# Sequential evaluation: {result['model']}",
        "",
        f"Cache `{result['cache']}`, split `{result['split']}` ({result['n_queries']} queries × "
        f"{result['n_orders']} sample orders, the same for every policy). Utility = accuracy − λ_T·tokens − "
        f"λ_L·seconds. Bootstrap: {s['n_boot']} paired resamples of queries and orders; '90%' = the 90% "
        "interval of the difference lies above (below) zero.",
        "",
        f"Best stopping rule (family, tuned on val per point; best mean test utility): `{br}`. "
        f"Sequential below it at {s['sequential_below_best_rule_90']}/{s['n_points']} points with 90% "
        f"confidence, above at {s['sequential_above_best_rule_90']}.",
    ]
    gm = s.get("sequential_vs_best_rule_grid_mean")
    if gm:
        lines.append(
            f"Grid-mean utility: sequential {s['sequential_mean_utility']:.4f}, {br} "
            f"{s['rule_mean_utility'][br]:.4f}; difference {gm['diff']:+.4f} [90% CI {gm['ci90'][0]:+.4f}, "
            f"{gm['ci90'][1]:+.4f}]."
        )
    if "sequential_above_oneshot_ppo_90" in s:
        lines.append(
            f"Versus the one-shot PPO run: above with 90% confidence at {s['sequential_above_oneshot_ppo_90']}"
            f"/{s['n_points']} points, below at {s['sequential_below_oneshot_ppo_90']}. Bars: {s['bars']}."
        )
    sv = s["savings"]
    if "tokens_ratio" in sv:
        lines.append(
            f"Savings: to reach the most accurate static `{sv['most_accurate_static']}` "
            f"(accuracy {sv['static_accuracy']:.3f}, {sv['static_tokens']:.1f} tokens, {sv['static_seconds']:.2f} s) "
            f"the sequential policy needs {sv['tokens_ratio']:.2f}× its tokens and {sv['seconds_ratio']:.2f}× its seconds."
        )
    else:
        lines.append(
            f"Savings: the sequential policy never reaches the most accurate static `{sv['most_accurate_static']}`'s "
            f"accuracy {sv['static_accuracy']:.3f} on the grid (its best: {sv['sequential_max_accuracy']:.3f})."
        )
    lines += [
        "",
        "| λ_T | λ_L | best static | U static | U oracle | U 1-shot PPO | U best rule | U seq | seq − 1-shot [90% CI] | "
        "seq − rule [90% CI] | seq gap share | seq acc | seq tokens | seq s | rounds | beam |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in result["points"]:
        pol = p["policies"]
        one = pol.get("oneshot_ppo")
        vs1 = p.get("sequential_vs_oneshot_ppo")
        vr = p[f"sequential_vs_rule:{br}"]
        seq = pol["sequential"]
        lines.append(
            f"| {p['lambda_tokens']:.3g} | {p['lambda_seconds']:.3g} | {p['best_static']} | "
            f"{_f(pol['static:' + p['best_static']]['utility'])} | {_f(pol['oracle']['utility'])} | "
            f"{_f(one['utility']) if one else '–'} | {_f(pol['rule:' + br]['utility'])} | {_f(seq['utility'])} | "
            + (f"{vs1['diff']:+.3f} [{vs1['ci90'][0]:+.3f}, {vs1['ci90'][1]:+.3f}]" if vs1 else "–")
            + f" | {vr['diff']:+.3f} [{vr['ci90'][0]:+.3f}, {vr['ci90'][1]:+.3f}] | {_f(p['sequential_gap_share'], 2)} | "
            f"{_f(seq['accuracy'])} | {seq['mean_tokens']:.1f} | {seq['mean_seconds']:.2f} | {seq['mean_rounds']:.2f} | "
            f"{seq['beam_share']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def write_plots(result: dict[str, Any], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = result["points"]
    br = result["summary"]["best_rule"]
    p0 = points[0]["policies"]
    statics = [k for k in p0 if k.startswith("static:")]
    for cost, fname in (("mean_tokens", "pareto_tokens.png"), ("mean_seconds", "pareto_seconds.png")):
        fig, ax = plt.subplots(figsize=(7, 5))
        xs = np.array([p0[s][cost] for s in statics])
        ys = np.array([p0[s]["accuracy"] for s in statics])
        ax.scatter(xs, ys, c="grey", s=18, label="static configs (same orders)")
        fx, fy, best = [], [], -np.inf
        for i in np.argsort(xs):
            if ys[i] > best:
                fx.append(xs[i])
                fy.append(ys[i])
                best = ys[i]
        ax.step(fx, fy, where="post", c="grey", lw=1, label="static frontier")
        for name, color, marker in (
            ("sequential", "tab:blue", "o"),
            ("oneshot_ppo", "tab:orange", "s"),
            (f"rule:{br}", "tab:purple", "D"),
            ("oracle", "tab:green", "^"),
        ):
            if name not in p0:
                continue
            ax.scatter(
                [p["policies"][name][cost] for p in points],
                [p["policies"][name]["accuracy"] for p in points],
                c=color,
                marker=marker,
                s=16,
                alpha=0.6,
                label=f"{name} (25 λ points)" if len(points) == 25 else name,
            )
        ax.set_xlabel(cost.replace("_", " "))
        ax.set_ylabel("accuracy")
        ax.set_title(f"{result['split']} split, sequential vs one-shot: accuracy vs {cost.split('_')[1]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=120)
        plt.close(fig)
