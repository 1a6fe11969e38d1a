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
from policies.shipped_oneshot import OneShotCompare, compare_policy
from rollouts.errors import ConfigError


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
    gate: Any = None  # policies.sequential_gate.SequentialGate of the run (None: trained without one)
    floor_oneshot: OneShotCompare | None = None  # the one-shot policy the gate's floor may play


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
    from policies.sequential_gate import GATE_FILE, load_sequential_gate

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
    gate = load_sequential_gate(source.run_dir)
    floor_oneshot = None
    if gate is not None and any(f.kind == "oneshot" for row in gate.floors for f in row):
        if not gate.oneshot_run:
            raise ConfigError(f"{source.run_dir / GATE_FILE}: a one-shot floor without its run")
        if not Path(gate.oneshot_run).exists():
            raise ConfigError(
                f"{source.run_dir / GATE_FILE}: its floor plays the one-shot run {gate.oneshot_run}, which is not there"
            )
        floor_oneshot = compare_policy(gate.oneshot_run, table, opts.trust_checkpoint)
    return SequentialSetup(
        table, menu, encoder, units, model_path, oneshot, rows, val_rows, train_rows, source.run_dir,
        gate, floor_oneshot,
    )  # fmt: skip
