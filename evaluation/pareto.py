"""The Pareto PNGs of an evaluation: accuracy against mean tokens (``pareto_tokens.png``) and against mean
seconds (``pareto_seconds.png``), the static configs and their frontier in grey behind the policies.

:func:`write_oneshot_plots` draws a one-shot run (PPO, the probe router and the oracle as λ sweeps),
:func:`write_sequential_plots` a sequential one (every λ point of the sequential policy, the one-shot
run, the best stopping rule and the oracle, all on the same sample orders).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: (cost key, file name) of the two plots
PLOTS = (("mean_tokens", "pareto_tokens.png"), ("mean_seconds", "pareto_seconds.png"))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    return plt


def _plot_statics(ax: Any, policies: dict[str, Any], cost: str, label: str, annotate: bool) -> None:
    """The static configs of one point's ``policies`` (accuracy and cost do not depend on λ) and their
    frontier: the step through each static no cheaper one beats in accuracy."""
    statics = [k for k in policies if k.startswith("static:")]
    xs = np.array([policies[s][cost] for s in statics])
    ys = np.array([policies[s]["accuracy"] for s in statics])
    ax.scatter(xs, ys, c="grey", s=18, label=label)
    if annotate:
        for x, y, name in zip(xs, ys, statics, strict=True):  # label each static config
            ax.annotate(
                name.removeprefix("static:").split("/")[-1],
                (x, y),
                fontsize=6,
                color="dimgrey",
                xytext=(3, 2),
                textcoords="offset points",
            )
    fx, fy, best = [], [], -np.inf
    for i in np.argsort(xs):
        if ys[i] > best:
            fx.append(xs[i])
            fy.append(ys[i])
            best = ys[i]
    ax.step(fx, fy, where="post", c="grey", lw=1, label="static frontier")


def _save(plt: Any, fig: Any, ax: Any, cost: str, title: str, path: Path) -> None:
    ax.set_xlabel(cost.replace("_", " "))
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_oneshot_plots(result: dict[str, Any], out_dir: Path) -> None:
    """A one-shot run's plots: each policy's points, and its sweep along one λ axis (the other at 0)."""
    plt = _pyplot()
    points = result["points"]
    for cost, fname in PLOTS:
        axis_lam, other = (
            ("lambda_tokens", "lambda_seconds") if cost == "mean_tokens" else ("lambda_seconds", "lambda_tokens")
        )
        fig, ax = plt.subplots(figsize=(7, 5))
        _plot_statics(ax, points[0]["policies"], cost, "static configs", annotate=True)
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
        title = f"{result['split']} split: accuracy vs {cost.split('_')[1]}"
        _save(plt, fig, ax, cost, title, out_dir / fname)


def write_sequential_plots(result: dict[str, Any], out_dir: Path) -> None:
    """A sequential run's plots: every λ point of each policy (the best rule family's included)."""
    plt = _pyplot()
    points = result["points"]
    best_rule = result["summary"]["best_rule"]
    p0 = points[0]["policies"]
    for cost, fname in PLOTS:
        fig, ax = plt.subplots(figsize=(7, 5))
        _plot_statics(ax, p0, cost, "static configs (same orders)", annotate=False)
        for name, color, marker in (
            ("sequential", "tab:blue", "o"),
            ("oneshot_ppo", "tab:orange", "s"),
            (f"rule:{best_rule}", "tab:purple", "D"),
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
        title = f"{result['split']} split, sequential vs one-shot: accuracy vs {cost.split('_')[1]}"
        _save(plt, fig, ax, cost, title, out_dir / fname)
