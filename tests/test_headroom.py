"""scripts/headroom_tier_policy.py on the bundled cache: the diagnostic runs and counts sensibly."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "data" / "default_cache"


def _script():
    spec = importlib.util.spec_from_file_location("headroom", ROOT / "scripts" / "headroom_tier_policy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not (CACHE / "meta.json").exists(), reason="bundled cache missing")
def test_headroom_over_split_seeds(capsys):
    assert _script().main(["--cache", str(CACHE), "--split-seeds", "2"]) == 0
    out = capsys.readouterr().out
    counts = re.findall(r"split seed (\d+): .* at (\d+)/25 points for the tier policy, (\d+)/25", out)
    assert [c[0] for c in counts] == ["0", "1"]
    assert all(0 <= int(a) <= 25 and 0 <= int(b) <= 25 for _, a, b in counts)
    shares = [float(x) for x in re.findall(r"mean gap share ([+-][0-9.]+)$", out, flags=re.M)]
    assert len(shares) == 2 and all(-1.0 <= x <= 1.0 for x in shares)
    assert len(re.findall(r"^λ_T=", out, flags=re.M)) == 5


@pytest.mark.skipif(not (CACHE / "meta.json").exists(), reason="bundled cache missing")
def test_headroom_rejects_a_cache_from_another_generator(capsys):
    assert _script().main(["--cache", str(CACHE), "--arith-seed", "1"]) == 2
    assert "are not from arith:1" in capsys.readouterr().err


def test_headroom_refuses_run_and_split_seeds_together(tmp_path, capsys):
    assert _script().main(["--run", str(tmp_path), "--split-seeds", "3"]) == 2
    assert "--split-seeds" in capsys.readouterr().err
