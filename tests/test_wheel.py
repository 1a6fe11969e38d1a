"""The built wheel is whole and installs beside Hugging Face's ``evaluate``.

The editable install that scripts/setup.sh makes hides packaging holes (a module missing from the wheel is
still importable from the checkout), so this builds the wheel from a copy of the tracked files, installs
it with ``--no-deps`` into a new venv together with Hugging Face's ``evaluate`` (from the package index,
also ``--no-deps``), lets that venv see the test venv's third-party packages through a plain path line
(no editable finder, no checkout on ``sys.path``), and runs the entry points from a temp folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLIS = ["collect", "train", "evaluate", "route", "serve"]
#: The wheel's only top-level names: the project's own packages.
TOP_LEVEL = {"env", "evaluation", "policies", "rollouts", "ttc_alloc"}

pytestmark = pytest.mark.slow  # builds a wheel and a venv, downloads Hugging Face's evaluate (8 min 49 s at load 8-10)


def _tracked_copy(dst: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    src, dist = root / "src", root / "dist"
    src.mkdir()
    _tracked_copy(src)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)],
        check=True,
    )  # fmt: skip
    (whl,) = dist.glob("ttc_alloc-*.whl")
    return whl


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory, wheel: Path) -> Path:
    root = tmp_path_factory.mktemp("venv")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            cwd=root, env=_clean_env(), check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    # Clean env and cwd: a checkout on PYTHONPATH or in cwd carries ttc_alloc.egg-info, and pip would
    # take the project as installed already.
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        cwd=root, env=_clean_env(), check=True,
    )  # fmt: skip
    # Hugging Face's evaluate into the same site-packages (its dependencies, datasets' among them, come
    # from the test venv below).
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "evaluate"],
        cwd=root, env=_clean_env(), check=True, timeout=300,
    )  # fmt: skip
    # Then the third-party packages of the test venv, as a plain path line: .pth files in a folder added
    # this way (the editable finder's among them) are not processed. Added after the installs, or pip
    # would see the editable ttc-alloc there and skip the wheel.
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=300)


def test_wheel_has_no_generic_top_level_module(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0].removesuffix(".py") for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == TOP_LEVEL, sorted(top)
    for cli in CLIS:
        assert f"ttc_alloc/cli/{cli}.py" in names


def test_wheel_ships_every_module(wheel_venv: Path, tmp_path: Path) -> None:
    modules = [
        *(f"ttc_alloc.cli.{cli}" for cli in CLIS), "rollouts.backends.openai_http", "rollouts.strategies.beam_search",
        "rollouts.importers.generic", "env.allocate_env", "policies.export", "policies.onnx_policy",
    ]  # fmt: skip
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    print(importlib.import_module(m).__file__)"
    r = _run(tmp_path, str(wheel_venv / "bin" / "python"), "-c", code, *modules)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.split()
    assert len(out) == len(modules)
    for path in out:
        assert Path(path).resolve().is_relative_to(wheel_venv.resolve()), path


def test_hugging_face_evaluate_beside_ttc_evaluate(wheel_venv: Path, tmp_path: Path) -> None:
    py = str(wheel_venv / "bin" / "python")
    code = "import evaluate\nassert callable(evaluate.load), evaluate\nprint(evaluate.__file__)"
    r = _run(tmp_path, py, "-c", code)
    assert r.returncode == 0, r.stderr[-2000:]
    hf = Path(r.stdout.strip().splitlines()[-1]).resolve()
    assert hf.is_relative_to(wheel_venv.resolve()) and hf.parent.name == "evaluate", hf
    r = _run(tmp_path, str(wheel_venv / "bin" / "ttc-evaluate"), "--help")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage:" in r.stdout and "--run" in r.stdout


@pytest.mark.parametrize("cli", CLIS)
def test_console_scripts_help_outside_checkout(wheel_venv: Path, tmp_path: Path, cli: str) -> None:
    for cmd in (
        [str(wheel_venv / "bin" / f"ttc-{cli}"), "--help"],
        [str(wheel_venv / "bin" / "python"), "-m", f"ttc_alloc.cli.{cli}", "--help"],
    ):
        r = _run(tmp_path, *cmd)
        assert r.returncode == 0, (cmd, r.stderr[-2000:])
        assert "usage:" in r.stdout
