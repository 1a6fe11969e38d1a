"""The README's commands, as written, in a scratch folder (slow): set up is CI's own; then the main
command's training, and the "Next" section's evaluation, TensorBoard and route commands.

The commands are read from README.md, not copied here, so a README edit that breaks one fails this
test. ``.venv/bin/<tool>`` becomes this interpreter's environment, the scripts are the checkout's, and
the scratch folder links the checkout's ``data`` (the run folder lands in the scratch folder's ``runs``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _commands() -> dict[str, list[str]]:
    """The README's train (after ``setup.sh &&``), evaluate, tensorboard and route commands, as argv."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [ln.split("&&")[-1].strip() for b in blocks for ln in b.splitlines()]
    found = {}
    for name in ("train.py", "evaluate.py", "tensorboard", "route.py"):
        (line,) = [ln for ln in lines if f" {name}" in ln or f"/{name}" in ln][:1]
        found[name] = _argv(line.split("  #")[0])
    return found


def _argv(line: str) -> list[str]:
    argv = shlex.split(line)
    exe = argv[0].removeprefix(".venv/bin/")
    argv[0] = sys.executable if exe == "python" else str(BIN / exe)
    if exe == "python" and argv[1].endswith(".py"):
        argv[1] = str(ROOT / argv[1])
    return argv


def _run(argv: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, (argv, p.stdout[-2000:], p.stderr[-3000:])
    return p


def test_the_readme_commands_work_as_written(tmp_path):
    cmds = _commands()
    (tmp_path / "data").symlink_to(ROOT / "data")
    # the main command: trains the default run and says where it went, last
    p = _run(cmds["train.py"], tmp_path, 1800)
    assert p.stdout.strip().splitlines()[-1] == "run folder: runs/default_run"
    run = tmp_path / "runs" / "default_run"
    # Next: the evaluation writes what the README lists
    _run(cmds["evaluate.py"], tmp_path, 1800)
    for name in ("results.md", "results.csv", "pareto_tokens.png", "pareto_seconds.png"):
        assert (run / "eval" / name).is_file(), name
    assert json.loads((run / "eval.json").read_text())["points"]
    # TensorBoard is there (the README starts its server; here only that the tool runs)
    _run([cmds["tensorboard"][0], "--version"], tmp_path, 120)
    # route: one JSON line per question on stdout, with the chosen action and the answer
    p = _run(cmds["route.py"], tmp_path, 1800)
    (line,) = [json.loads(x) for x in p.stdout.strip().splitlines()]
    assert line["action"] and "answer" in line and line["tokens"] > 0
