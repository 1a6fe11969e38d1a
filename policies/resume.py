"""Resuming a run: the newest checkpoint that loads (a torn one is skipped with a warning), and a
TensorBoard logger that hides what the killed process logged after that checkpoint.

A job killed between two checkpoints has logged points past the checkpoint it will resume from; the
resumed job logs those steps again. TensorBoard's own mechanism handles this: a writer opened with
``purge_step=S`` starts its event file with a ``SessionLog.START`` at step S, and readers
(TensorBoard, ``EventAccumulator``) drop every earlier-file event with step >= S on reading it.
"""

from __future__ import annotations

import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rollouts.errors import ConfigError

T = TypeVar("T")


def checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(steps, path)`` of ``run_dir/checkpoints/ppo_<steps>_steps.zip``, newest first."""
    found = []
    for p in (Path(run_dir) / "checkpoints").glob("ppo_*_steps.zip"):
        try:
            found.append((int(p.stem.split("_")[1]), p))
        except (IndexError, ValueError):
            continue
    return sorted(found, reverse=True)


def require_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """:func:`checkpoints`, or ConfigError if there is none to resume from."""
    cps = checkpoints(run_dir)
    if not cps:
        raise ConfigError(f"{run_dir}: no checkpoint to resume from in {Path(run_dir) / 'checkpoints'}")
    return cps


def _intact(path: Path) -> None:
    """Raise if the zip is truncated or a member's CRC is wrong (a write cut short by a kill)."""
    with zipfile.ZipFile(path) as zf:
        # a cut-short SB3 zip can still open as the torch archive nested in it: check the members too
        missing = {"data", "policy.pth"} - set(zf.namelist())
        if missing:
            raise zipfile.BadZipFile(f"truncated: no {', '.join(sorted(missing))}")
        bad = zf.testzip()
    if bad is not None:
        raise zipfile.BadZipFile(f"member {bad} is corrupt")


def load_latest_good(run_dir: str | Path, load: Callable[[Path], T]) -> tuple[Path, T]:
    """Load the newest checkpoint that is intact; each skipped one gets a warning on stderr.

    ``load`` raising a project error other than CheckpointError (other menu, other env) is not a
    torn file and propagates.
    """
    from policies.ppo import CheckpointError

    problems = []
    for _, path in require_checkpoints(run_dir):
        try:
            _intact(path)
            return path, load(path)
        except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, CheckpointError) as exc:
            problems.append(f"{path.name} ({exc})")
            print(f"warning: {path}: unreadable checkpoint ({exc}); trying the previous one", file=sys.stderr)
    raise ConfigError(f"{run_dir}: no readable checkpoint to resume from: {'; '.join(problems)}")


def purging_logger(tb_dir: str | Path, tb_log_name: str, purge_step: int) -> Any:
    """An SB3 logger writing into the run's latest ``<tb_log_name>_<n>`` folder (as SB3 does with
    ``reset_num_timesteps=False``) whose events file hides the old events at steps >= ``purge_step``."""
    from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat
    from stable_baselines3.common.utils import get_latest_run_id
    from torch.utils.tensorboard import SummaryWriter

    class _PurgingTensorBoard(TensorBoardOutputFormat):
        def __init__(self, folder: str):  # SB3's, with purge_step (its own writer has none)
            self.writer = SummaryWriter(log_dir=folder, purge_step=purge_step)
            self._is_closed = False

    run_id = max(get_latest_run_id(str(tb_dir), tb_log_name), 1)
    folder = str(Path(tb_dir) / f"{tb_log_name}_{run_id}")
    return Logger(folder=folder, output_formats=[_PurgingTensorBoard(folder)])
