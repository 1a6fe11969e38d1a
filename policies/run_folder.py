"""The files of a run folder that a training job writes besides the models (the layout is in
``train.py``'s docstring): the resolved config, the splits, the arguments and command lines, and the
history of ``train_summary.json`` (one entry per start or resume).
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from rollouts.atomic import write_text_atomic
from rollouts.errors import ConfigError


def write_run_folder(
    run_dir: Path,
    config: dict[str, Any],
    splits: dict[str, Any],
    resume: bool,
    argv: list[str] | None,
    args_dict: dict | None,
) -> None:
    """config.yml (the resolved ``config``), splits.json (fresh run), args.yml (first start only) and
    one more line of command.txt (``argv``, default ``sys.argv``). The caller holds the folder's lock."""
    if not resume and run_dir.exists():
        raise ConfigError(
            f"{run_dir}: run folder exists; pass --resume to continue it or choose another --name"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yml", yaml.safe_dump(config, sort_keys=False))
    if not resume:
        write_text_atomic(run_dir / "splits.json", json.dumps(splits, indent=1) + "\n")
    if not (run_dir / "args.yml").exists():  # the run's original arguments; resumes add to command.txt
        write_text_atomic(run_dir / "args.yml", yaml.safe_dump(args_dict or {}, sort_keys=False))
    with open(run_dir / "command.txt", "a") as fh:
        fh.write(shlex.join(argv or sys.argv) + "\n")


def append_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """One more entry of ``train_summary.json`` (a list; an old single-object file is its first entry)."""
    summary_path = run_dir / "train_summary.json"
    history = json.loads(summary_path.read_text()) if summary_path.exists() else []
    history = history if isinstance(history, list) else [history]
    write_text_atomic(summary_path, json.dumps([*history, summary], indent=1) + "\n")
