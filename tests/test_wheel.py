"""The built wheel is whole: a non-editable install into a fresh venv runs every CLI from another folder.

The editable install that scripts/setup.sh makes hides packaging holes (a module missing from the wheel is
still importable from the checkout), so this builds the wheel from a copy of the tracked files, installs
it with ``--no-deps`` into a new venv that sees the test venv's third-party packages through a plain
path line (no editable finder, no checkout on ``sys.path``), and runs the entry points from a temp folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # builds a wheel and a venv (~30 s)


def _tracked_copy(dst: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    src, dist, venv = root / "src", root / "dist", root / "venv"
    src.mkdir()
    _tracked_copy(src)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)],
        check=True,
    )  # fmt: skip
    (wheel,) = dist.glob("ttc_alloc-*.whl")
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
    # Then the third-party packages of the test venv, as a plain path line: .pth files in a folder added
    # this way (the editable finder's among them) are not processed. Added after the install, or pip
    # would see the editable ttc-alloc there and skip the wheel.
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def test_wheel_ships_every_module(wheel_venv: Path, tmp_path: Path) -> None:
    modules = [
        "collect", "train", "evaluate", "route", "rollouts.backends.openai_http", "rollouts.strategies.beam_search",
        "rollouts.importers.generic", "env.allocate_env", "policies.export", "policies.onnx_policy",
    ]  # fmt: skip
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    print(importlib.import_module(m).__file__)"
    out = subprocess.run(
        [str(wheel_venv / "bin" / "python"), "-c", code, *modules],
        cwd=tmp_path, env=_clean_env(), check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    assert len(out) == len(modules)
    for path in out:
        assert Path(path).resolve().is_relative_to(wheel_venv.resolve()), path


@pytest.mark.parametrize("cli", ["collect", "train", "evaluate", "route"])
def test_console_scripts_help_outside_checkout(wheel_venv: Path, tmp_path: Path, cli: str) -> None:
    env = _clean_env()
    for cmd in (
        [str(wheel_venv / "bin" / f"ttc-{cli}"), "--help"],
        [str(wheel_venv / "bin" / "python"), "-m", cli, "--help"],
    ):
        r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (cmd, r.stderr[-2000:])
        assert "usage:" in r.stdout
