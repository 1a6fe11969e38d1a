"""What the tools print and keep: usage errors answered before the heavy imports, --help with every
default and no absolute path, run folders with relative paths, one tie-break in the cache summary and
the env, Pareto plots whose labels keep apart and whose y-axis spans the policies."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "data" / "default_cache"


def test_evaluate_without_arguments_answers_at_once():
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, str(ROOT / "evaluate.py")], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - t0
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: ") and "--run" in out.stderr and len(out.stderr.splitlines()) == 1
    assert elapsed < 2.0, f"{elapsed:.2f} s"


def _parsers() -> dict[str, argparse.ArgumentParser]:
    import collect
    import evaluate
    import route
    import train
    from rollouts.importers.cli import build_parser

    return {
        "collect.py": collect.collect_parser(), "collect.py stats": collect.stats_parser(),
        "collect.py pack": collect.pack_parser(), "collect.py recalibrate": collect.recalibrate_parser(),
        "collect.py import": build_parser(), "train.py": train.make_parser(), "evaluate.py": evaluate.make_parser(),
        "route.py": route.make_parser(),
    }  # fmt: skip


@pytest.mark.parametrize("name", list(_parsers()))
def test_help_names_every_default_and_no_absolute_path(name):
    parser = _parsers()[name]
    text = parser.format_help()
    assert str(ROOT) not in text and "/home/" not in text
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or action.dest == "help":
            continue
        assert action.help, f"{name} {action.option_strings[0]}: no help"
        has_default = action.default is not None and action.default is not False and action.default != []
        if has_default:
            assert "default" in parser._get_formatter()._expand_help(action), (name, action.option_strings)


def test_args_yml_and_config_hold_relative_paths(synthetic_cache, tmp_path, monkeypatch):
    """A run started with paths inside the working directory (one of them written absolute) stores
    them relative; the default config is named as the help names it."""
    import shutil

    import train

    shutil.copytree(synthetic_cache, tmp_path / "cache")
    monkeypatch.chdir(tmp_path)
    rc = train.main(
        ["--cache", str(tmp_path / "cache"), "--runs-dir", "runs", "--name", "rel", "--total-timesteps", "256",
         "--no-progress", "--hyperparams", "n_envs=2", "eval_freq=128", "checkpoint_freq=256", "val_grid=2",
         "gate=false", "export=false"]
    )  # fmt: skip
    assert rc == 0
    run = tmp_path / "runs" / "rel"
    args = yaml.safe_load((run / "args.yml").read_text())
    assert args["cache"] == "cache" and args["runs_dir"] == "runs" and args["config"] == "configs/train_default.yaml"
    for f in ("args.yml", "config.yml"):  # command.txt keeps the command as typed
        text = (run / f).read_text()
        assert str(tmp_path) not in text and str(ROOT) not in text, f


@pytest.mark.skipif(not (CACHE / "meta.json").exists(), reason="bundled cache missing")
def test_cache_summary_majority_equals_the_env():
    """collect.py stats' majority over the whole pool breaks ties as the outcome table does (at
    random, counted as the expectation): the same number for the same thing."""
    from env.outcomes import OutcomeTable

    out = subprocess.run([sys.executable, str(ROOT / "collect.py"), "stats", str(CACHE), "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    table = OutcomeTable(CACHE)
    for cid, entry in summary["configs"].items():
        if entry["strategy"] != "sample_pool":
            continue
        k = max(int(key.split("/")[1]) for key in summary["pass_rate_histogram_n1"][cid])
        a = table.action_ids.index(f"{cid}/majority@{k}")
        env_value = float(table.correct[table.mask[:, a], a].mean())
        assert entry["majority_accuracy"] == pytest.approx(env_value, abs=1e-12)
        assert f"{entry['majority_accuracy']:.3f}" == f"{env_value:.3f}"


def text_overlaps(fig) -> list[tuple[str, str]]:
    """Pairs of visible texts of the rendered ``fig`` whose boxes overlap (by more than a pixel)."""
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ticks, shown = set(), []  # tick labels: only those of ticks inside the view are drawn
    for ax in fig.axes:
        for axis, (lo, hi) in ((ax.xaxis, sorted(ax.get_xlim())), (ax.yaxis, sorted(ax.get_ylim()))):
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                ticks |= {id(tick.label1), id(tick.label2)}
                if lo <= tick.get_loc() <= hi:
                    shown += [tick.label1, tick.label2]
    texts = [t for t in fig.findobj(Text) if id(t) not in ticks] + shown
    texts = [t for t in texts if t.get_visible() and t.get_text().strip()]
    boxes = [Text.get_window_extent(t, renderer) for t in texts]
    bad = []
    for (ta, a), (tb, b) in itertools.combinations(zip(texts, boxes, strict=True), 2):
        w = min(a.x1, b.x1) - max(a.x0, b.x0)
        h = min(a.y1, b.y1) - max(a.y0, b.y0)
        if w > 1 and h > 1:
            bad.append((ta.get_text(), tb.get_text()))
    return bad


def check_pareto_figure(fig, oracle_above: bool) -> None:
    """No two texts overlap; every marker drawn has a legend entry; the y-axis spans the drawn
    policies and statics (the oracle, when far above, marked on the edge, not stretching it)."""
    assert text_overlaps(fig) == []
    ax = fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    for line in ax.lines:
        if line.get_marker() not in (None, "", "None", " "):
            assert not line.get_label().startswith("_"), "a marker without a legend entry"
            assert line.get_label() in labels
    for coll in ax.collections:
        assert coll.get_label() in labels
    lo, hi = ax.get_ylim()
    ys = [y for line in ax.lines if line.get_marker() not in (None, "", "None", " ")
          and line.get_transform() == ax.transData for y in line.get_ydata()]  # fmt: skip
    ys += [float(y) for coll in ax.collections for _, y in coll.get_offsets()]
    assert lo <= min(ys) and max(ys) <= hi
    assert (max(ys) - min(ys)) / (hi - lo) > 0.75  # the band the policies and statics span fills the plot
    if oracle_above:
        assert any(lab.startswith("oracle") and "above this range" in lab for lab in labels)


def test_math_verify_timeout_notice_is_not_shown():
    """Off the main thread math-verify runs without its own timeout (grade() enforces one) and would
    warn "Timeout is disabled ..." on the user's terminal."""
    code = (
        "import threading\n"
        "from rollouts.grading import extract_answer\n"
        "out = []\n"
        "t = threading.Thread(target=lambda: out.append(extract_answer('so the answer is $\\\\boxed{5}$')))\n"
        "t.start(); t.join(); print(out[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "5", out.stderr[-2000:]
    assert "Timeout is disabled" not in out.stderr


def test_results_only_stdout_sends_everything_else_to_stderr():
    """route.py's stdout discipline: inside results_only_stdout, print, raw writes to file descriptor 1
    and child processes (vLLM's workers) land on stderr; the yielded stream is the real stdout."""
    code = (
        "import os, subprocess, sys\n"
        "from rollouts.console import results_only_stdout\n"
        "with results_only_stdout() as out:\n"
        "    print('noise from print')\n"
        "    os.write(1, b'noise from fd 1\\n')\n"
        "    subprocess.run([sys.executable, '-c', 'print(\"noise from a child\")'])\n"
        "    print('{\"ok\": 1}', file=out, flush=True)\n"
        "print('after')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ['{"ok": 1}', "after"]
    assert out.stderr.splitlines() == ["noise from print", "noise from fd 1", "noise from a child"]
    # restore=False (route.py: the engine logs as the process ends): fd 1 stays on stderr
    kept = code.replace("results_only_stdout()", "results_only_stdout(restore=False)")
    out = subprocess.run([sys.executable, "-c", kept], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert out.stdout.splitlines() == ['{"ok": 1}'] and out.stderr.splitlines()[-1] == "after"
