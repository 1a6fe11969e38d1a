"""What a sequential evaluation runs on (:func:`load_setup`): the run's outcome table, step menu,
encoders and rows per split, and the one-shot run of ``--compare-run`` as shipped (behind its gate)
and ungated."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from env.outcomes import OutcomeTable
from evaluation.options import EvalOptions
from evaluation.source import ModelSource
from rollouts.errors import ConfigError


@dataclass
class OneShotCompare:
    """The ``--compare-run`` policy: ``shipped`` is the run's policy behind its gate and gain shrinkage
    (what its export routes with), ``ungated`` the bare network."""

    shipped: Any  # policies.gate_fit.GatedPolicy
    ungated: Any  # policies.ppo.PPOPolicy
    gate: Any  # policies.gate.Gate
    path: Path


@dataclass
class SequentialSetup:
    """What a sequential evaluation runs on: the table, the step menu, the run's encoders and the rows."""

    table: OutcomeTable
    menu: Any  # env.escalate_menu.EscalateMenu
    encoder: Any  # policies.observation.ObsEncoder of the run
    units: Any  # env.seen.SeenUnits of the run
    model_path: Path
    oneshot: OneShotCompare | None  # the --compare-run policy, or None
    rows: np.ndarray  # the evaluated split: queries with a pool and every action
    val_rows: np.ndarray  # the same on the validation split (rules are tuned there without rules.json)
    train_rows: np.ndarray  # the λ grid's
    run_dir: Path


def load_setup(opts: EvalOptions, source: ModelSource) -> SequentialSetup:
    """The run's outcome table and step menu (checked against the model's), ``--compare-run``'s policy
    and the rows per split."""
    from env.allocate_env import stored_env_dict
    from env.escalate_env import env_config_from
    from env.escalate_menu import EscalateMenu
    from env.seen import SeenUnits
    from env.splits import split_rows
    from policies.escalate_sim import playable_rows
    from policies.observation import ObsEncoder
    from policies.ppo import check_menu

    model_path, model_meta, cache, split = source.model_path, source.model_meta, source.cache, opts.split
    env_config = env_config_from(stored_env_dict(model_meta["env"]))
    table = OutcomeTable.for_env(cache, env_config, latency_load=opts.latency_load)
    check_menu(model_meta, table, str(model_path))
    menu = EscalateMenu(table, env_config)  # type: ignore[arg-type]
    if list(menu.ids) != list(model_meta["escalate"]["step_menu"]):
        raise ConfigError(f"{model_path}: its step menu {model_meta['escalate']['step_menu']} is not {menu.ids}")
    oneshot = compare_policy(opts.compare_run, table, opts.trust_checkpoint)
    encoder = ObsEncoder.from_dict(model_meta["encoder"])
    units = SeenUnits.from_dict(model_meta["escalate"]["units"])
    splits = json.loads((source.run_dir / "splits.json").read_text())
    rows = playable_rows(table, menu, split_rows(table, splits, split))
    val_rows = playable_rows(table, menu, split_rows(table, splits, "val"))
    train_rows = split_rows(table, splits, "train")
    if len(rows) == 0 or len(val_rows) == 0:
        raise ConfigError(f"the {split} or val split has no queries with a pool and every action in {cache}")
    return SequentialSetup(
        table, menu, encoder, units, model_path, oneshot, rows, val_rows, train_rows, source.run_dir
    )


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
