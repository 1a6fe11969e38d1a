"""The stopping rules of a sequential run, tuned once when it is trained and reused when it is evaluated.

``train.py`` (``env.kind: escalate``) simulates every configuration of
:func:`policies.stopping_rules.rule_grid` on the run's train + validation queries (``rule_orders``
sample orders each, default 1, seed ``TUNE_SEED``) and writes each configuration's mean accuracy, tokens and
seconds to ``<run>/rules.json``. The utility is linear in λ, so the tuned pick of a family at any
(λ_T, λ_L) is an argmax over these means (:func:`policies.stopping_rules.tune_means`): the
sequential evaluation reads them instead of simulating ~300 configurations again, and only plays
the picked ones on the evaluated split. A run without the file (trained before it existed), or one
whose file no longer matches the step menu, the rule grid or the evaluated cache (or one trained with
``rule_orders: 0``), is tuned on its validation split at evaluation time, as before; or give it the
file afterwards::

    python -m policies.rule_tuning --run runs/<sequential run> [--orders 1]
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policies.stopping_rules import Rule, rule_grid, rule_means, simulate_rules, tune_means

RULES_FILE = "rules.json"
TUNE_ORDERS = 1  # sample orders per train + val query (train.py's rule_orders default)
TUNE_SEED = 0


@dataclass
class TunedRules:
    """Every rule configuration's mean outcome on the tuning queries, per family."""

    families: dict[str, list[Rule]]
    means: dict[str, np.ndarray]  # family -> (n configurations, 3): accuracy, tokens, seconds
    info: dict[str, Any]  # split, n_queries, n_orders, seed, step_menu, cache, seconds

    def picks(self, lambdas: list[tuple[float, float]]) -> dict[str, list[int]]:
        """Per family, the index of its tuned configuration at each λ point."""
        return {f: tune_means(self.means[f], lambdas) for f in self.families}

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.info,
            "families": {
                f: [
                    {"rule": r.name, "accuracy": m[0], "mean_tokens": m[1], "mean_seconds": m[2]}
                    for r, m in zip(rules, self.means[f].tolist(), strict=True)
                ]
                for f, rules in self.families.items()
            },
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any], menu: Any) -> TunedRules | None:
        """The tuning of ``doc`` for step menu ``menu``; None when it was made for another menu or
        another rule grid (then the caller tunes again)."""
        grid = rule_grid(menu)
        stored = doc.get("families") or {}
        if list(doc.get("step_menu") or []) != list(menu.ids) or set(stored) != set(grid):
            return None
        if any([c.get("rule") for c in stored[f]] != [r.name for r in grid[f]] for f in grid):
            return None
        keys = ("accuracy", "mean_tokens", "mean_seconds")
        means = {f: np.array([[c[k] for k in keys] for c in stored[f]], dtype=np.float64) for f in grid}
        info = {k: v for k, v in doc.items() if k != "families"}
        return cls(grid, means, info)


def tune_rules(
    table: Any, menu: Any, encoder: Any, units: Any, rows: np.ndarray, *, split: str = "train+val",
    n_orders: int = TUNE_ORDERS, seed: int = TUNE_SEED, progress: bool = False,
) -> TunedRules:  # fmt: skip
    """Simulate every configuration of the rule grid on ``rows`` (``n_orders`` orders each) once."""
    from tqdm import tqdm

    from policies.escalate_sim import Simulator, make_orders
    from policies.stopping_rules import rule_notes

    t0 = time.time()
    orders, picks = make_orders(table, menu, rows, n_orders, seed=seed)
    sim = Simulator(table, menu, encoder, units, rows, orders, picks)
    families = rule_grid(menu)
    means = {
        f: rule_means(simulate_rules(sim, rules))
        for f, rules in tqdm(families.items(), desc=f"stopping rules on {split}", disable=not progress)
    }
    info = {
        "split": split,
        "n_queries": int(len(rows)),
        "n_orders": n_orders,
        "seed": seed,
        "step_menu": list(menu.ids),
        "cache": str(Path(table.cache_path).resolve()),
        "seconds": round(time.time() - t0, 2),
    }
    notes = rule_notes(menu)
    if notes:  # families left out of the grid, and why
        info["notes"] = notes
    return TunedRules(families, means, info)


def load_tuned_rules(run_dir: Path, menu: Any) -> TunedRules | None:
    """``<run_dir>/rules.json`` for ``menu``, or None (no file, or made for another menu or rule grid)."""
    path = Path(run_dir) / RULES_FILE
    if not path.is_file():
        return None
    return TunedRules.from_dict(json.loads(path.read_text()), menu)


def _write(path: Path, tuned: TunedRules) -> None:
    path.write_text(json.dumps(tuned.to_dict(), indent=1) + "\n")
    n_configs, info = sum(len(r) for r in tuned.families.values()), tuned.info
    print(
        f"stopping rules: {n_configs} configurations tuned on {info['n_queries']} train+val queries x "
        f"{info['n_orders']} orders in {info['seconds']} s ({path})"
    )
    for n in info.get("notes") or []:
        print(f"stopping rules: {n}")


def write_run_rules(job: Any, progress: bool = False) -> dict[str, Any]:
    """Tune the rules on a sequential training job's train + val queries and write ``rules.json``
    (kept when a resumed run already has one for this step menu and rule grid); returns the train
    summary's entry."""
    from env.escalate_menu import EscalateMenu
    from policies.escalate_sim import playable_rows

    path = job.run_dir / RULES_FILE
    menu = EscalateMenu(job.table, job.env_cfg)
    if path.is_file() and load_tuned_rules(job.run_dir, menu) is not None:
        return {"file": RULES_FILE, "kept": True}
    rows = playable_rows(job.table, menu, np.concatenate([job.train_rows, job.val_rows]))
    units, n_orders = job.env_kwargs["units"], job.cfg.rule_orders
    tuned = tune_rules(job.table, menu, job.encoder, units, rows, n_orders=n_orders, progress=progress)
    _write(path, tuned)
    return {"file": RULES_FILE, "n_queries": tuned.info["n_queries"], "seconds": tuned.info["seconds"]}


def tune_existing_run(run: str, n_orders: int = TUNE_ORDERS, progress: bool = True) -> Path:
    """Write ``rules.json`` for a sequential run folder trained without one (its own cache, splits,
    step menu and encoders); returns the file."""
    from env.allocate_env import stored_env_dict
    from env.escalate_env import env_config_from
    from env.escalate_menu import EscalateMenu
    from env.outcomes import OutcomeTable
    from env.seen import SeenUnits
    from env.splits import split_rows
    from policies.escalate_sim import playable_rows
    from policies.observation import ObsEncoder
    from policies.ppo import read_meta
    from rollouts.config import load_yaml_text
    from rollouts.errors import ConfigError

    run_dir = Path(run)
    model, splits_path = run_dir / "best_model.zip", run_dir / "splits.json"
    if not model.is_file() or not splits_path.is_file():
        raise ConfigError(f"{run_dir}: not a run folder (best_model.zip and splits.json needed)")
    if n_orders < 1:
        raise ConfigError(f"--orders must be >= 1, got {n_orders}")
    meta = read_meta(model)
    if meta.get("kind") != "escalate":
        raise ConfigError(f"{model}: a one-shot run; stopping rules are tuned for sequential runs")
    config_path = run_dir / "config.yml"
    run_cfg = load_yaml_text(config_path.read_text()) if config_path.is_file() else {}
    cache = run_cfg.get("cache") or meta.get("cache")
    if not cache:
        raise ConfigError(f"{run_dir}: no cache in config.yml or the model")
    env_config = env_config_from(stored_env_dict(meta["env"]))
    table = OutcomeTable.for_env(cache, env_config)
    menu = EscalateMenu(table, env_config)  # type: ignore[arg-type]
    splits = json.loads(splits_path.read_text())
    both = np.concatenate([split_rows(table, splits, "train"), split_rows(table, splits, "val")])
    rows = playable_rows(table, menu, both)
    encoder, units = ObsEncoder.from_dict(meta["encoder"]), SeenUnits.from_dict(meta["escalate"]["units"])
    tuned = tune_rules(table, menu, encoder, units, rows, n_orders=n_orders, progress=progress)
    _write(run_dir / RULES_FILE, tuned)
    return run_dir / RULES_FILE


def main(argv: list[str] | None = None) -> int:
    import argparse

    from rollouts.errors import TTCError, report

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a sequential run folder")
    ap.add_argument("--orders", type=int, default=TUNE_ORDERS, help="sample orders per train+val query")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    try:
        tune_existing_run(args.run, args.orders, progress=not args.no_progress)
    except TTCError as exc:
        return report(exc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
