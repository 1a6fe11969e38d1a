"""The Pareto PNGs of an evaluation: accuracy against mean tokens (``pareto_tokens.png``) and against mean
seconds (``pareto_seconds.png``), each static config (labelled) and their frontier in grey behind the
policies' λ sweeps.

Each policy is drawn as one sweep along the plot's own λ axis with the other λ at 0 (``λ_T`` for the
tokens plot, ``λ_L`` for the seconds one), its points joined in order of cost. The y-axis spans the
static configs and the deployable policies, where they differ; the hindsight oracle, far above them,
is marked at the top edge and its accuracy range named in the legend. Labels are moved apart on the
rendered figure (:mod:`evaluation.plot_labels`).

:func:`write_oneshot_plots` draws a one-shot run (PPO as shipped, i.e. behind its gate, PPO without the
gate and the probe router), :func:`write_sequential_plots` a sequential one (the sequential policy, the
one-shot run and the best stopping rule, all on the same sample orders).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from evaluation.plot_labels import place_labels

#: (cost key, file name) of the two plots
PLOTS = (("mean_tokens", "pareto_tokens.png"), ("mean_seconds", "pareto_seconds.png"))
#: (policy key, legend name, colour, marker, line width) of a one-shot evaluation's sweeps
ONESHOT = (
    ("probe_router", "probe router", "tab:orange", "s", 1.2),
    ("ppo", "PPO without its gate", "tab:blue", "o", 1.2),
    ("ppo_gated", "PPO as shipped (gated)", "tab:red", "D", 2.2),
)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    return plt


def _axes_of(cost: str) -> tuple[str, str, str]:
    """(the plot's λ key, the other λ key, the sweep's symbol) of a cost axis."""
    if cost == "mean_tokens":
        return "lambda_tokens", "lambda_seconds", "λ_T"
    return "lambda_seconds", "lambda_tokens", "λ_L"


def sweep(points: list[dict[str, Any]], name: str, cost: str) -> tuple[list[float], list[float]]:
    """(costs, accuracies) of policy ``name`` along the plot's λ axis (the other λ at 0), in order of
    cost (in λ order a sweep can double back)."""
    lam, other, _ = _axes_of(cost)
    line = [p for p in points if p[other] == 0.0 and name in p["policies"]]
    line.sort(key=lambda p: (p["policies"][name][cost], p[lam]))
    return [p["policies"][name][cost] for p in line], [p["policies"][name]["accuracy"] for p in line]


def _statics(policies: dict[str, Any], cost: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The static configs' names (``static:`` and the pool prefix dropped), costs and accuracies."""
    keys = [k for k in policies if k.startswith("static:")]
    names = [k.removeprefix("static:").split("/")[-1] for k in keys]
    xs = np.array([policies[k][cost] for k in keys], dtype=float)
    ys = np.array([policies[k]["accuracy"] for k in keys], dtype=float)
    return names, xs, ys


def _frontier(xs: np.ndarray, ys: np.ndarray) -> tuple[list[float], list[float]]:
    """The step through each static config no cheaper one beats in accuracy."""
    fx, fy, best = [], [], -np.inf
    for i in np.argsort(xs, kind="stable"):
        if ys[i] > best:
            fx.append(float(xs[i]))
            fy.append(float(ys[i]))
            best = ys[i]
    return fx, fy


def _limits(xs: list[float], ys: list[float]) -> tuple[tuple[float, float], tuple[float, float]]:
    """Axis limits around the drawn points, with room for the labels."""
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    dx, dy = max(x1 - x0, 1e-9), max(y1 - y0, 1e-3)
    return (x0 - 0.04 * dx, x1 + 0.22 * dx), (y0 - 0.08 * dy, y1 + 0.12 * dy)


def _oracle_at_edge(ax: Any, xs: list[float], ys: list[float], what: str) -> None:
    """The oracle's sweep, far above the plotted range: its points marked along the top edge at their
    costs, its accuracy range in the legend."""
    from matplotlib.transforms import blended_transform_factory

    trans = blended_transform_factory(ax.transData, ax.transAxes)
    ax.plot(
        xs, [0.975] * len(xs), ls="none", marker="^", ms=7, mfc="none", mec="tab:green", mew=1.5,
        transform=trans, clip_on=False, zorder=5,
        label=f"{what}: accuracy {min(ys):.2f}–{max(ys):.2f},\nabove this range (△ at the top edge, at its cost)",
    )  # fmt: skip


def draw_pareto(
    result: dict[str, Any], cost: str, sweeps: list[tuple[str, str, str, str, float]], title: str, oracle: str
) -> Any:
    """The figure of one cost axis: the labelled statics and their frontier, one sweep per policy of
    ``sweeps`` ((key, legend name, colour, marker, width)), the oracle ``oracle`` at the top edge."""
    plt = _pyplot()
    points = result["points"]
    _, _, sym = _axes_of(cost)
    names, sx, sy = _statics(points[0]["policies"], cost)
    fig, ax = plt.subplots(figsize=(10, 5.6))
    ax.scatter(sx, sy, c="grey", s=20, zorder=3, label="static config (one action for every query)")
    fx, fy = _frontier(sx, sy)
    ax.step(fx, fy, where="post", c="grey", lw=1, zorder=2, label="static frontier")
    steps_x = fx[:1] + [v for v in fx[1:] for _ in range(2)]  # the frontier's corners, for the labels
    steps_y = [v for v in fy[:-1] for _ in range(2)] + fy[-1:]
    drawn_x, drawn_y, lines = list(sx), list(sy), [(steps_x, steps_y)]
    for key, label, color, marker, width in sweeps:
        x, y = sweep(points, key, cost)
        if not x:
            continue
        ax.plot(x, y, c=color, marker=marker, lw=width, ms=4 + width, zorder=4, label=f"{label} ({sym} sweep)")
        drawn_x += x
        drawn_y += y
        lines.append((x, y))
    xlim, ylim = _limits(drawn_x, drawn_y)
    ox, oy = sweep(points, oracle, cost)
    if ox and max(oy) > ylim[1]:
        _oracle_at_edge(ax, ox, oy, "oracle (hindsight best action per query)")
    elif ox:
        ax.plot(ox, oy, c="tab:green", marker="^", zorder=4, label=f"oracle (hindsight, {sym} sweep)")
        xlim, ylim = _limits(drawn_x + ox, drawn_y + oy)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel(cost.replace("_", " ") + " per query")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    place_labels(ax, sx.tolist(), sy.tolist(), names, lines=lines, fontsize=7, color="dimgrey")
    return fig


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)


def write_oneshot_plots(result: dict[str, Any], out_dir: Path) -> None:
    """A one-shot run's plots: the probe router, PPO without its gate and PPO as shipped (gated)."""
    for cost, fname in PLOTS:
        title = f"{result['split']} split ({result.get('n_queries', '?')} queries): accuracy vs {cost.split('_')[1]}"
        _save(draw_pareto(result, cost, list(ONESHOT), title, "oracle"), out_dir / fname)


def sequential_sweeps(result: dict[str, Any]) -> list[tuple[str, str, str, str, float]]:
    """The sweeps of a sequential evaluation's plots: the sequential policy, the one-shot run
    (``--compare-run``) and the stopping-rule family that did best."""
    best_rule = result["summary"]["best_rule"]
    tuned_on = (result.get("rule_tuning") or {}).get("split", "val")  # train+val from the run's rules.json
    return [
        ("sequential", "sequential policy", "tab:blue", "o", 2.2),
        ("oneshot_ppo", "one-shot run (--compare-run)", "tab:orange", "s", 1.2),
        (f"rule:{best_rule}", f"stopping rule {best_rule} (tuned on {tuned_on})", "tab:purple", "D", 1.2),
    ]


def write_sequential_plots(result: dict[str, Any], out_dir: Path) -> None:
    """A sequential run's plots: the sequential policy, the one-shot run (``--compare-run``) and the
    stopping-rule family that did best, on the same sample orders."""
    sweeps = sequential_sweeps(result)
    for cost, fname in PLOTS:
        title = f"{result['split']} split, sequential vs one-shot (same sample orders): accuracy vs {cost.split('_')[1]}"
        _save(draw_pareto(result, cost, sweeps, title, "oracle"), out_dir / fname)
