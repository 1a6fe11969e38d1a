import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import train
from tests.fixtures.synthetic_cache import make_synthetic_cache

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--no-progress", "--hyperparams", "n_envs=4", "eval_freq=1024", "checkpoint_freq=1024", "val_grid=2"]


def test_run_folder_contents(tiny_run):
    for name in ("config.yml", "args.yml", "command.txt", "splits.json", "best_model.zip", "final_model.zip",
                 "best.json", "train_summary.json", "export/policy.onnx", "export/policy.json"):  # fmt: skip
        assert (tiny_run / name).exists(), name
    cfg = yaml.safe_load((tiny_run / "config.yml").read_text())
    assert cfg["seed"] == 0 and cfg["n_envs"] == 4 and cfg["name"] == "tiny"
    assert isinstance(cfg["env"]["lambda_tokens_range"], list)  # "auto" resolved and stored
    assert "train.py" in (tiny_run / "command.txt").read_text()
    # the default actor is the warm-started utility head; its MSEs are kept with the run
    assert cfg["ppo"]["policy"] == "utility" and cfg["ppo"]["utility_warm_start"] is True
    ws = json.loads((tiny_run / "train_summary.json").read_text())[0]["warm_start"]
    assert ws["val_mse"] < ws["val_mse_prior_only"]
    # best.json: the best validation reward and the step it was reached (not the last evaluation's)
    best = json.loads((tiny_run / "best.json").read_text())
    ev = np.load(tiny_run / "eval" / "evaluations.npz")
    means = ev["results"].mean(axis=1)
    assert best["best_mean_reward"] == pytest.approx(float(means.max()))
    assert best["timesteps"] == int(ev["timesteps"][int(np.argmax(means))])
    splits = json.loads((tiny_run / "splits.json").read_text())
    assert set(splits["train"]).isdisjoint(splits["test"])
    assert sorted(p.name for p in (tiny_run / "checkpoints").glob("*.zip")) == [
        "ppo_1024_steps.zip", "ppo_2048_steps.zip", "ppo_3072_steps.zip"]  # fmt: skip
    tags = _tb_tags(tiny_run)
    for t in ("ttc/accuracy", "ttc/mean_tokens", "ttc/mean_seconds", "ttc/utility", "ttc/share/pool_n=8/sample@1",
              "eval/mean_reward", "rollout/ep_rew_mean", "train/entropy_loss", "ttc/val/utility",
              "ttc/warm_start/val_mse"):  # fmt: skip
        assert t in tags, t
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tiny_run / "tb" / "PPO_1"))
    ea.Reload()
    assert "_hparams_/experiment" in ea.PluginTagToContent("hparams")  # hyperparameters logged once
    # the validation curves share one step axis: each evaluation's eval/* and ttc/val/* at its step
    steps = {tag: [e.step for e in ea.Scalars(tag)] for tag in ("eval/mean_reward", "ttc/val/utility")}
    assert steps["eval/mean_reward"] == steps["ttc/val/utility"] == [int(t) for t in ev["timesteps"]]


def _tb_tags(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    dirs = sorted((run / "tb").iterdir())
    assert [d.name for d in dirs] == ["PPO_1"]  # one curve folder, also after resume
    ea = EventAccumulator(str(dirs[0]))
    ea.Reload()
    return ea.Tags()["scalars"]


def _steps(run, tag="ttc/utility"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run / "tb" / "PPO_1"))
    ea.Reload()
    return [e.step for e in ea.Scalars(tag)]


def test_resume_continues_curves(synthetic_cache, tmp_path):
    runs = tmp_path / "runs"
    assert (
        train.main(
            [
                "--cache",
                str(synthetic_cache),
                "--runs-dir",
                str(runs),
                "--name",
                "r",
                "--total-timesteps",
                "2048",
                *FAST,
            ]
        )
        == 0
    )
    run = runs / "r"
    first = _steps(run)
    assert (
        train.main(
            ["--runs-dir", str(runs), "--name", "r", "--resume", "--total-timesteps", "4096", "--no-progress"]
        )
        == 0
    )
    steps = _steps(run)
    assert steps[: len(first)] == first and max(steps) >= 4096 and steps == sorted(steps)
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary[-1]["resumed"] and summary[-1]["timesteps"] >= 4096
    assert len((run / "command.txt").read_text().splitlines()) == 2
    _tb_tags(run)


def _snapshot(folder: Path):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--hyperparams", "ppo.learnin_rate=0.1"], "unknown config key 'ppo.learnin_rate'"),
        (["--hyperparams", "ppo.policy=lstm"], "ppo.policy must be 'mlp' or 'utility'"),
        (["--hyperparams", "ppo.policy=mlp"], "ppo.utility_warm_start needs ppo.policy: utility"),
        (["--hyperparams", "ppo.utility_ensemble=0"], "ppo.utility_ensemble must be an integer >= 1"),
        (["--hyperparams", "bogus=1"], "unknown config key 'bogus'"),
        (
            ["--hyperparams", "env.lambda_tokens=-1", "env.penalty_mode=fixed"],
            "env.lambda_tokens must be a finite number >= 0",
        ),
        (["--hyperparams", "env.lambda_seconds=.nan"], "env.lambda_seconds must be a finite number >= 0"),
        ([], "run folder exists"),
    ],
)
def test_bad_input_one_clear_error_nothing_overwritten(tiny_run, capsys, extra, message):
    before = _snapshot(tiny_run)
    rc = train.main(["--cache", "unused", "--runs-dir", str(tiny_run.parent), "--name", "tiny", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert _snapshot(tiny_run) == before


def test_cache_missing_fields(tmp_path, capsys):
    d = make_synthetic_cache(tmp_path / "c", n_queries=8)
    lines = (d / "records.jsonl").read_text().splitlines()
    rec = json.loads(lines[3])
    del rec["tokens"]
    lines[3] = json.dumps(rec)
    (d / "records.jsonl").write_text("\n".join(lines) + "\n")
    rc = train.main(["--cache", str(d), "--runs-dir", str(tmp_path / "runs"), "--name", "x", *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and "records.jsonl:4: missing field 'tokens'" in err
    assert not (tmp_path / "runs").exists()


def test_resume_with_other_menu_is_refused(tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "runs" / "copy"
    shutil.copytree(tiny_run, run)
    other = make_synthetic_cache(tmp_path / "k4", n_queries=40, k=4)
    cfg = yaml.safe_load((run / "config.yml").read_text())
    cfg["cache"] = str(other)
    (run / "config.yml").write_text(yaml.safe_dump(cfg))
    before = _snapshot(run)
    rc = train.main(
        ["--runs-dir", str(tmp_path / "runs"), "--name", "copy", "--resume", "--total-timesteps", "9000"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "another action menu" in err and "only in the model" in err and "pool:n=4" in err
    assert _snapshot(run) == before


def test_cli_exit_code(tmp_path):
    out = subprocess.run(
        [sys.executable, "train.py", "--hyperparams", "nope=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and out.stderr.strip() == "error: unknown config key 'nope'"
