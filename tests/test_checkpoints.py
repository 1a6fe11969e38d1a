"""Checkpoints are pickles: an outside .zip is refused without --trust-checkpoint, and evaluating the ONNX
export never unpickles anything. The planted checkpoint is a real one with one extra pickled entry that
creates a marker file when loaded (SB3 unpickles every ``:serialized:`` entry of the zip's ``data``)."""

from __future__ import annotations

import base64
import json
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest

import evaluate
from evaluation.options import EvalOptions


class _Plant:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling calls open(marker, "w"): the "planted command"
        return (open, (self.marker, "w"))


def plant(src: Path, dst: Path, marker: Path) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "data":
                d = json.loads(data)
                d["planted"] = {":type:": "<class 'object'>",
                                ":serialized:": base64.b64encode(pickle.dumps(_Plant(marker))).decode()}  # fmt: skip
                data = json.dumps(d).encode()
            zout.writestr(item, data)
    return dst


@pytest.fixture()
def planted(tiny_run, tmp_path):
    marker = tmp_path / "PWNED"
    return plant(tiny_run / "best_model.zip", tmp_path / "gift.zip", marker), marker


def test_the_planted_checkpoint_runs_code_when_loaded(planted):
    from policies.ppo import read_meta

    zip_path, marker = planted
    read_meta(zip_path)  # what any loading of a .zip does first
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
