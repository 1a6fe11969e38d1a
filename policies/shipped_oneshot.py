"""The shipped one-shot policy of a run folder: its network behind its gate and gain shrinkage
(``gate.json``; what its export routes with), and the bare network beside it. Used where a
sequential run is compared with a one-shot run (``evaluate.py --compare-run``) and where a one-shot
run is a floor of the sequential policy (:mod:`policies.sequential_gate`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from env.outcomes import OutcomeTable
from rollouts.errors import ConfigError


@dataclass
class OneShotCompare:
    """The ``--compare-run`` policy: ``shipped`` is the run's policy behind its gate and gain shrinkage
    (what its export routes with), ``ungated`` the bare network."""

    shipped: Any  # policies.gate_fit.GatedPolicy
    ungated: Any  # policies.ppo.PPOPolicy
    gate: Any  # policies.gate.Gate
    path: Path


def compare_policy(compare_run: str | None, table: OutcomeTable, trust: bool = False) -> OneShotCompare | None:
    """The one-shot run ``--compare-run`` names (its best model, or the zip it names) on this table's
    menu, shipped (gated: its ``gate.json``, or the same gate fitted now on its own train + val
    queries for a run without one) and ungated; None without ``--compare-run``. ``trust``: load it even
    if this user's train.py did not write it (policies/trust.py)."""
    if not compare_run:
        return None
    from env.splits import split_rows
    from policies.gate_fit import GatedPolicy, run_gate, shrink_gain
    from policies.ppo import PPOPolicy, check_menu, load_model, read_meta
    from rollouts.config import load_yaml_text

    run = Path(compare_run)
    compare_path = run / "best_model.zip" if run.is_dir() else run
    compare_meta = read_meta(compare_path, trust)
    if compare_meta.get("kind") == "escalate":
        raise ConfigError(
            f"{compare_path}: --compare-run needs a one-shot (ttc/Allocate-v0) run, this one is sequential"
        )
    check_menu(compare_meta, table, str(compare_path))
    run_dir = run if run.is_dir() else compare_path.parent
    if run_dir.name == "checkpoints":
        run_dir = run_dir.parent
    gate_model = load_model(compare_path, table, trust=trust)
    if (run_dir / "gate.json").is_file():
        gate = run_gate(run_dir, gate_model, table, [], [], {})
    else:
        splits_path, config_path = run_dir / "splits.json", run_dir / "config.yml"
        if not splits_path.is_file():
            raise ConfigError(f"{run_dir}: no gate.json and no splits.json (the one-shot run's gate needs one)")
        splits = json.loads(splits_path.read_text())
        run_cfg = load_yaml_text(config_path.read_text()) if config_path.is_file() else {}
        train, val = split_rows(table, splits, "train"), split_rows(table, splits, "val")
        gate = run_gate(run_dir, gate_model, table, train, val, run_cfg)
    if gate.shrinkage is not None:
        shrink_gain(gate_model, gate.shrinkage)
    shipped = GatedPolicy(PPOPolicy(gate_model), gate)
    return OneShotCompare(shipped, PPOPolicy(load_model(compare_path, table, trust=trust)), gate, compare_path)
