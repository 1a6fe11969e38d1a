"""--resume: the folder named by --name, original args.yml kept, TensorBoard without leftover points
after a kill -9, a torn latest checkpoint skipped for the previous one."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import train

ROOT = Path(__file__).resolve().parents[1]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def _steps(run: Path, tag: str = "ttc/utility", purge: bool = True) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run / "tb" / "PPO_1"), purge_orphaned_data=purge)
    ea.Reload()
    return [e.step for e in ea.Scalars(tag)] if tag in ea.Tags()["scalars"] else []


def test_torn_latest_checkpoint_and_copied_run(tiny_run, tmp_path, capsys):
    """A copy resumes in the copy (the original untouched) from the previous checkpoint when the latest is torn."""
    import shutil

    original = _digest(tiny_run)
    run = tmp_path / "runs" / "copy"
    shutil.copytree(tiny_run, run)
    args_before = (run / "args.yml").read_text()
    latest = run / "checkpoints" / "ppo_3072_steps.zip"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # a write cut short
    rc = train.main(["--runs-dir", str(tmp_path / "runs"), "--name", "copy", "--resume", "--total-timesteps", "4096",
                     "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"warning: {latest}: unreadable checkpoint" in err
    summary = __import__("json").loads((run / "train_summary.json").read_text())[-1]
    assert summary["resumed"] and summary["timesteps"] >= 4096
    assert summary["steps_this_run"] == summary["timesteps"] - 2048  # continued from ppo_2048_steps.zip
    assert _digest(tiny_run) == original  # nothing written into the run it was copied from
    assert (run / "args.yml").read_text() == args_before  # the original arguments
    cmds = (run / "command.txt").read_text().splitlines()
    assert len(cmds) == 2 and "--resume" in cmds[1]
    assert yaml.safe_load((run / "config.yml").read_text())["name"] == "copy"
    steps = _steps(run)
    assert steps == sorted(set(steps)) and max(steps) >= 4096


@pytest.mark.parametrize("name", ["../tiny", "..", "a/b"])
def test_resume_name_is_a_folder_name(tiny_run, capsys, name):
    rc = train.main(["--runs-dir", str(tiny_run.parent / "sub"), "--name", name, "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "name must be a folder name" in err[0], err


@pytest.mark.slow
def test_kill_9_then_resume_keeps_each_step_once(synthetic_cache, tmp_path):
    runs = tmp_path / "runs"
    run = runs / "k"
    cmd = [sys.executable, "train.py", "--cache", str(synthetic_cache), "--runs-dir", str(runs), "--name", "k",
           "--total-timesteps", "40000", "--no-progress", "--hyperparams", "n_envs=4", "eval_freq=4096",
           "checkpoint_freq=4096", "val_grid=2", "export=false"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    try:
        while True:  # kill once points past the first checkpoint are on disk (SB3 flushes every dump)
            assert p.poll() is None and time.time() < deadline, p.communicate()
            if (run / "checkpoints" / "ppo_4096_steps.zip").exists() and max(_steps(run) or [0]) >= 4096 + 1024:
                break
            time.sleep(0.2)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    ck = max(int(c.stem.split("_")[1]) for c in (run / "checkpoints").glob("ppo_*_steps.zip"))
    leftover = [s for s in _steps(run) if s > ck]
    assert leftover  # the killed job logged past its last checkpoint
    assert (runs / ".k.lock").exists()  # its lock file stayed behind; it must not block the resume
    total = ck + 4096
    out = subprocess.run([sys.executable, "train.py", "--runs-dir", str(runs), "--name", "k", "--resume",
                          "--total-timesteps", str(total), "--no-progress"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    for tag in ("ttc/utility", "rollout/ep_rew_mean", "train/entropy_loss"):
        steps = _steps(run, tag)
        assert steps == sorted(set(steps)), (tag, steps)  # each step once, increasing
        assert max(steps) >= total
    raw = _steps(run, purge=False)
    assert len(raw) > len(set(raw))  # without TensorBoard's purge the killed job's points would repeat
