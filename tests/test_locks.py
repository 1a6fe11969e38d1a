"""One job per run folder and per cache: the second exits 2 naming the holder; a killed holder never blocks."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rollouts.locks import FolderLock, FolderLocked, is_locked, lock_path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
HOLD = "import sys, time; from rollouts.locks import FolderLock; FolderLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)"  # noqa: E501


def _hold(folder: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_holder_is_refused_and_a_killed_one_never_blocks(tmp_path):
    folder = tmp_path / "run"
    holder = _hold(folder)
    try:
        assert is_locked(folder) == str(holder.pid)
        with pytest.raises(FolderLocked) as ei:
            FolderLock(folder, "run folder").acquire()
        assert f"pid {holder.pid}" in str(ei.value) and str(folder) in str(ei.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_path(folder).exists()  # the killed job's lock file stays behind...
    assert is_locked(folder) is None  # ...and holds nothing
    with FolderLock(folder), FolderLock(folder):  # re-entrant in one process
        assert lock_path(folder).read_text().strip() == str(os.getpid())
    assert not lock_path(folder).exists()  # removed on release
    assert not folder.exists()  # the lock lives beside the folder and creates nothing in it


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.mark.slow
def test_two_trainings_on_one_name(synthetic_cache, tmp_path):
    runs = tmp_path / "runs"
    cmd = [sys.executable, "train.py", "--cache", str(synthetic_cache), "--runs-dir", str(runs), "--name", "same",
           "--total-timesteps", "8192", "--no-progress", "--hyperparams", "n_envs=4", "eval_freq=2048",
           "checkpoint_freq=2048", "val_grid=2", "export=false"]  # fmt: skip
    procs = [subprocess.Popen([*cmd, "--seed", str(s)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for s in (0, 1)]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], outs
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    err = outs[loser][1].strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in outs[loser][1]
    assert "in use by another job (pid " in err[0] or "run folder exists" in err[0], err
    run = runs / "same"
    import yaml

    assert yaml.safe_load((run / "config.yml").read_text())["seed"] == winner  # nothing mixed
    assert len((run / "command.txt").read_text().splitlines()) == 1
    assert [d.name for d in (run / "tb").iterdir()] == ["PPO_1"]


def test_train_while_locked_exits_at_once_and_touches_nothing(tiny_run, capsys):
    import train

    before = _digest(tiny_run)
    holder = _hold(tiny_run)
    try:
        for extra in ([], ["--resume", "--total-timesteps", "9000"]):
            rc = train.main(["--runs-dir", str(tiny_run.parent), "--name", "tiny", "--no-progress", *extra])
            err = capsys.readouterr().err.strip().splitlines()
            assert rc == 2 and len(err) == 1 and f"run folder in use by another job (pid {holder.pid}" in err[0], err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert _digest(tiny_run) == before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def fake_server():
    """tests/fixtures/fake_openai_server.py (a labelled fixture), 0.3 s per request."""
    port = _free_port()
    p = subprocess.Popen([sys.executable, "-m", "tests.fixtures.fake_openai_server", str(port), "0.3"], cwd=ROOT,
                         env=ENV, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert p.stdout.readline().strip() == "ready"
    yield f"http://127.0.0.1:{port}/v1"
    p.kill()
    p.wait()


def _collect_cmd(url: str, out: Path, limit: int) -> list[str]:
    return [sys.executable, "collect.py", "--no-progress", "backend=openai", f"backend_options={{base_url: '{url}'}}",
            "menu=[{strategy: sample_pool, n: 2}]", "budgets=[1, 2]", "calibration_queries=0", f"limit={limit}",
            "batch_queries=1", f"output={out}"]  # fmt: skip


@pytest.mark.slow
def test_two_collectors_on_one_cache(fake_server, tmp_path):
    out = tmp_path / "cache"
    first = subprocess.Popen(_collect_cmd(fake_server, out, 6), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.time() + 120
        while is_locked(out) != str(first.pid):  # the first collector holds the cache
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.2)
        t0 = time.time()
        second = subprocess.run(_collect_cmd(fake_server, out, 6), cwd=ROOT, env=ENV, capture_output=True,
                                text=True, timeout=120)  # fmt: skip
        took = time.time() - t0
        assert first.poll() is None  # the second one was refused while the first still ran
    finally:
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    err = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(err) == 1, second.stderr
    assert err[0] == (f"error: {out}: cache in use by another job (pid {first.pid}, lock {lock_path(out)}); "
                      "wait for it to finish")  # fmt: skip
    assert took < 60  # before any engine or featurizer work
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    keys = [(r["query_id"], r["config_id"], r["seed"]) for r in records]
    assert len(keys) == len(set(keys)) == 6  # every record once
    assert len((out / "queries.jsonl").read_text().splitlines()) == 6


def test_a_symlink_takes_the_same_lock(tmp_path):
    """Every name of one folder (a symlink to it, a path through a linked parent) is one lock."""
    real = tmp_path / "data" / "cache"
    real.mkdir(parents=True)
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    (tmp_path / "linked_parent").symlink_to(tmp_path / "data", target_is_directory=True)
    names = [tmp_path / "alias", tmp_path / "linked_parent" / "cache", tmp_path / "data" / "." / "cache"]
    assert {lock_path(n) for n in names} == {lock_path(real)}
    holder = _hold(tmp_path / "alias")
    try:
        for name in (real, *names):
            assert is_locked(name) == str(holder.pid)
            with pytest.raises(FolderLocked, match=f"pid {holder.pid}"):
                FolderLock(name, "cache").acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with FolderLock(real), FolderLock(tmp_path / "alias"):  # re-entrant across names in one process
        assert lock_path(tmp_path / "alias").read_text().strip() == str(os.getpid())
