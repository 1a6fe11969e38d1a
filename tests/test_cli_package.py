"""In a checkout, ``ttc_alloc.cli.<name>`` (what the console scripts import) is the top-level ``<name>.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_cli_package_finds_the_checkout_modules(tmp_path: Path) -> None:
    code = (
        "import importlib.util\n"
        "for n in ('collect', 'train', 'evaluate', 'route', 'serve'):\n"
        "    spec = importlib.util.find_spec('ttc_alloc.cli.' + n)\n"
        "    print(spec.origin)\n"
    )
    # From another folder, with only the checkout on the path: no editable finder decides this.
    r = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    origins = [Path(p) for p in r.stdout.split()]
    assert origins == [REPO / f"{n}.py" for n in ("collect", "train", "evaluate", "route", "serve")]
