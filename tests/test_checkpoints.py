"""Checkpoints are pickles: a .zip that this user's train.py did not write (its sha256 is not in the trust
store, policies/trust.py) is refused without --trust-checkpoint on every path that unpickles, wherever it
lies (a planted zip inside a real run folder too), and evaluating the ONNX export never unpickles anything.
The planted checkpoint is a real one with one extra pickled entry that creates a marker file when loaded
(SB3 unpickles every ``:serialized:`` entry of the zip's ``data``). Zips are written atomically: a kill -9
during a save leaves the previous one loadable."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

import evaluate
from evaluation.options import EvalOptions
from tests.fixtures.planted_checkpoint import plant


@pytest.fixture()
def planted(tiny_run, tmp_path):
    marker = tmp_path / "PWNED"
    return plant(tiny_run / "best_model.zip", tmp_path / "gift.zip", marker), marker


def test_the_planted_checkpoint_runs_code_when_loaded(planted):
    from policies.ppo import read_meta

    zip_path, marker = planted
    read_meta(zip_path, trust=True)  # what any loading of a .zip does first (trusted: --trust-checkpoint)
    assert marker.exists()  # so the refusals below are real


def test_outside_checkpoint_needs_trust(tiny_run, planted, capsys, tmp_path):
    zip_path, marker = planted
    before = {p: p.stat().st_mtime_ns for p in tiny_run.rglob("*")}
    rc = evaluate.main(["--run", str(tiny_run), "--checkpoint", str(zip_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--trust-checkpoint" in err[0] and str(zip_path) in err[0]
    assert not marker.exists() and not (tmp_path / "o").exists()
    assert {p: p.stat().st_mtime_ns for p in tiny_run.rglob("*")} == before
    # with the explicit flag it is loaded (and the planted code runs: that is what trusting means)
    rc = evaluate.main(["--run", str(tiny_run), "--checkpoint", str(zip_path), "--trust-checkpoint",
                        "--out", str(tmp_path / "o"), "--grid", "2", "--bootstrap", "0", "--no-plots"])  # fmt: skip
    assert rc == 0 and marker.exists()


def test_export_evaluation_never_unpickles(tiny_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    marker = tmp_path / "PWNED"
    for z in run.rglob("*.zip"):  # every checkpoint of the run is planted
        plant(tiny_run / "best_model.zip", z, marker)
    res = evaluate.evaluate(EvalOptions(export=str(run / "export"), run=str(run), out=str(tmp_path / "o"),
                                        grid_n=2, plots=False, n_boot=0))  # fmt: skip
    assert not marker.exists()
    ref = evaluate.evaluate(
        EvalOptions(run=str(tiny_run), out=str(tmp_path / "ref"), grid_n=2, plots=False, n_boot=0)
    )
    assert res["model"] == str(run / "export") and res["n_queries"] == ref["n_queries"]
    for a, b in zip(res["points"], ref["points"], strict=True):  # the export chooses as the checkpoint does
        # (as shipped: with its gate and gain shrinkage, policies/gate.py; the export's plain "ppo" is
        # the shrunk network with the gate off, the checkpoint's the unshrunk one)
        assert a["policies"]["ppo_gated"]["utility"] == pytest.approx(b["policies"]["ppo_gated"]["utility"], abs=1e-9)


# ----------------------------------------------------------------------------------------------
# Every path that unpickles: one error line naming the zip and --trust-checkpoint, exit 2, no payload run


def _digest(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def planted_run(tiny_run, tmp_path):
    """A copy of a real run folder (command.txt and all) whose every zip is planted."""
    run, marker = tmp_path / "theirs", tmp_path / "PWNED"
    shutil.copytree(tiny_run, run)
    for z in run.rglob("*.zip"):
        plant(tiny_run / "best_model.zip", z, marker)
    return run, marker


def _refused(rc: int, capsys, zip_path: Path, marker: Path) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert str(zip_path) in err[0] and "--trust-checkpoint" in err[0] and "sha256" in err[0]
    assert not marker.exists()


def test_evaluate_checkpoint_inside_a_run_folder_is_refused(planted_run, capsys, tmp_path):
    run, marker = planted_run
    before = _digest(run)
    for z in (run / "best_model.zip", run / "checkpoints" / "ppo_2048_steps.zip"):
        rc = evaluate.main(["--checkpoint", str(z), "--out", str(tmp_path / "o")])  # command.txt beside it
        _refused(rc, capsys, z, marker)
    rc = evaluate.main(["--run", str(run), "--model", "final", "--out", str(tmp_path / "o")])  # no export of it
    _refused(rc, capsys, run / "final_model.zip", marker)
    assert _digest(run) == before and not (tmp_path / "o").exists()


def test_evaluate_run_falls_back_to_the_onnx_export(planted_run, tiny_run, capsys, tmp_path):
    run, marker = planted_run
    rc = evaluate.main(["--run", str(run), "--out", str(tmp_path / "o"), "--json", str(tmp_path / "r.json"),
                        "--grid", "2", "--bootstrap", "0", "--no-plots", "--no-progress"])  # fmt: skip
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 0 and not marker.exists()
    warned = [line for line in err if line.startswith("warning: ")]
    assert len(warned) == 1 and str(run / "best_model.zip") in warned[0] and str(run / "export") in warned[0]
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["model"] == str(run / "export")
    # the run with no export: refused, naming --export as the other way
    shutil.rmtree(run / "export")
    rc = evaluate.main(["--run", str(run), "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--export" in err[0] and not marker.exists()


def test_export_refuses_a_planted_zip(planted_run, capsys, tmp_path):
    from policies import export

    run, marker = planted_run
    rc = export.main([str(run / "final_model.zip"), str(tmp_path / "x")])
    _refused(rc, capsys, run / "final_model.zip", marker)
    assert not (tmp_path / "x").exists() and not (tmp_path / ".x.partial").exists()


def test_resume_refuses_a_planted_checkpoint(planted_run, tiny_run, capsys):
    import train

    run, marker = planted_run
    args = ["--runs-dir", str(run.parent), "--name", run.name, "--resume", "--total-timesteps", "4096", "--no-progress"]
    before = _digest(run)
    rc = train.main(args)
    _refused(rc, capsys, run / "best_model.zip", marker)  # checked before any training
    shutil.copy(tiny_run / "best_model.zip", run / "best_model.zip")  # only the checkpoints planted now
    before = _digest(run)
    rc = train.main(args)
    _refused(rc, capsys, run / "checkpoints" / "ppo_3072_steps.zip", marker)  # the newest: no silent skip
    assert _digest(run) == before


def test_warm_start_from_refuses_a_planted_zip(planted, synthetic_cache, capsys, tmp_path):
    import train

    zip_path, marker = planted
    esc = str(Path(__file__).resolve().parents[1] / "configs" / "train_escalate.yaml")
    rc = train.main(["--config", esc, "--cache", str(synthetic_cache), "--runs-dir", str(tmp_path / "runs"),
                     "--name", "ws", "--hyperparams", f"warm_start_from={zip_path}"])  # fmt: skip
    _refused(rc, capsys, zip_path, marker)
    assert not (tmp_path / "runs" / "ws").exists()


def test_zips_train_wrote_load_without_flags(tiny_run, tmp_path, capsys):
    """Every zip of a train.py run is trusted as it is, in a copy of the run too (the hash is of the content);
    a zip saved any other way (SB3's own save) is not."""
    from policies.ppo import load_model
    from policies.trust import UntrustedCheckpointError, store_path

    zips = sorted(tiny_run.rglob("*.zip"))
    assert {z.name for z in zips} >= {"best_model.zip", "final_model.zip", "ppo_1024_steps.zip"}
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    for z in [*zips, *sorted(copy.rglob("*.zip"))]:
        assert load_model(z).ttc_meta["format"] == "ttc-alloc/ppo"
    assert store_path().is_file() and tiny_run.resolve() not in store_path().resolve().parents
    model = load_model(tiny_run / "final_model.zip")
    model.save(tmp_path / "plain.zip")
    with pytest.raises(UntrustedCheckpointError, match="plain.zip"):
        load_model(tmp_path / "plain.zip")
    rc = evaluate.main(["--run", str(copy), "--out", str(tmp_path / "o"), "--grid", "2", "--bootstrap", "0",
                        "--no-plots", "--no-progress"])  # fmt: skip
    assert rc == 0 and "warning" not in capsys.readouterr().err


def test_a_store_others_can_write_vouches_for_nothing(tiny_run, tmp_path, monkeypatch):
    from policies.ppo import load_model
    from policies.trust import ENV_VAR, store_path
    from rollouts.errors import ConfigError

    store = tmp_path / "store.jsonl"
    shutil.copy(store_path(), store)
    monkeypatch.setenv(ENV_VAR, str(store))
    load_model(tiny_run / "best_model.zip")
    store.chmod(0o666)
    with pytest.raises(ConfigError, match="writable by other users"):
        load_model(tiny_run / "best_model.zip")


# ----------------------------------------------------------------------------------------------
# Atomic saves

_SAVE_LOOP = """
import sys
from policies.ppo import load_model
from policies.trust import save_model
model = load_model(sys.argv[1])
save_model(model, sys.argv[2])
print("saving", flush=True)
while True:
    save_model(model, sys.argv[2])
"""


def test_kill_9_during_a_best_model_save_leaves_the_previous_one(tiny_run, tmp_path):
    """A process saving best_model.zip over and over (train.py's save, policies/trust.py) is killed with
    SIGKILL at a random moment: the file under the name is a whole, trusted, loadable model. (The same
    loop with SB3's own ``model.save`` leaves a torn zip nearly every time: it writes in place.)"""
    import random
    import signal
    import subprocess
    import sys
    import time

    from policies.ppo import load_model

    root = Path(__file__).resolve().parents[1]
    best = tmp_path / "best_model.zip"
    shutil.copy(tiny_run / "best_model.zip", best)
    p = subprocess.Popen([sys.executable, "-c", _SAVE_LOOP, str(tiny_run / "final_model.zip"), str(best)],
                         cwd=root, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "saving"
        time.sleep(random.uniform(0.05, 0.5))  # the loop does nothing but save: the kill lands in one
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    with zipfile.ZipFile(best) as zf:
        assert zf.testzip() is None
    assert load_model(best).ttc_meta["format"] == "ttc-alloc/ppo"  # no flag: still recorded as trusted
    assert [p.name for p in tmp_path.glob("*.zip")] == ["best_model.zip"]  # a killed save's temp file is hidden


def test_an_unwritable_trust_store_stops_training_before_it_starts(synthetic_cache, tmp_path, monkeypatch, capsys):
    import train
    from policies.trust import ENV_VAR

    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "a_file" / "store.jsonl"))  # its folder cannot be made
    rc = train.main(["--cache", str(synthetic_cache), "--runs-dir", str(tmp_path / "runs"), "--name", "x",
                     "--total-timesteps", "256", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and ENV_VAR in err[0] and "trust store" in err[0]
    assert not (tmp_path / "runs" / "x").exists()
