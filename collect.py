"""Collect rollouts into a cache, summarise a cache, import third-party rollouts, or pack a cache.

    python collect.py [--config configs/collect_default.yaml] [key=value ...]   # collect (resumes)
    python collect.py stats [CACHE] [--json]                                    # summary (default: bundled)
    python collect.py import FORMAT PATH --out CACHE [...]                       # bring your own rollouts
    python collect.py pack SRC DST [--drop-text]                                 # gzip a cache for bundling
    python collect.py recalibrate [--config ...] [key=value ...]                 # re-measure latency, re-model
    python collect.py complete RUN [--split test]                                # a live run's split, every item

Errors (bad config, unknown strategy, missing model, unreachable server, corrupt cache line) print
one ``error:`` line naming the culprit and exit with status 2; the cache keeps every record written.
One writer per cache: a second collector, import, recalibration or pack into the same cache exits 2
at once naming the holder's pid (an OS lock on ``<parent>/.<cache>.lock``, rollouts/locks.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rollouts.console import HelpFormatter, display_path

BUNDLED_CACHE = Path(__file__).resolve().parent / "data" / "default_cache"
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "collect_default.yaml"
CONFIG_HELP = "YAML config (default: configs/collect_default.yaml of this project)"


def collect_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="collect.py",
        description="Collect rollouts into a cache (resumable; one collector per cache at a time).",
        epilog="other commands (each has --help):\n" + "\n".join(
            line for line in (__doc__ or "").splitlines() if line.strip().startswith("python collect.py ")
            and not line.strip().startswith("python collect.py [")
        ),
        formatter_class=HelpFormatter,
    )
    ap.add_argument("--config", help=CONFIG_HELP)
    ap.add_argument("--output", help="cache directory (default: the config's output)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value (YAML values), e.g. limit=20 dataset=arith:3")
    return ap


def recalibrate_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="collect.py recalibrate", formatter_class=HelpFormatter,
                                 description="Re-measure latency alone on the engine, refit, re-model records.")
    ap.add_argument("--config", help=CONFIG_HELP)
    ap.add_argument("--output", help="cache directory (default: the config's output)")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. calibration_queries=6")
    return ap


def stats_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="collect.py stats", description="Summarise a rollout cache.",
                                 formatter_class=HelpFormatter)
    ap.add_argument("cache", nargs="?", help="cache directory (default: the bundled data/default_cache)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    return ap


def pack_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="collect.py pack", description="Write a gzip-compressed copy of a cache.",
                                 formatter_class=HelpFormatter)
    ap.add_argument("src", help="cache directory to read")
    ap.add_argument("dst", help="directory to write the compressed copy to")
    ap.add_argument("--drop-text", action="store_true", help="drop generated texts (keep answers and counts)")
    return ap


def cmd_collect(argv: list[str]) -> int:
    args = collect_parser().parse_args(argv)
    from rollouts.cache import load_cache
    from rollouts.config import load_config
    from rollouts.executors import make_collector
    from rollouts.stats import format_summary, summarize

    overrides = list(args.overrides) + ([f"output={args.output}"] if args.output else [])
    cfg = load_config(args.config or str(DEFAULT_CONFIG), overrides)
    col = make_collector(cfg, progress=not args.no_progress)
    try:
        run = col.collect()
    finally:
        col.close()
    print(format_summary(summarize(load_cache(cfg.output))))
    print(f"this run: {run['generated_tokens']} generated tokens in {run['wall_s']:.1f} s "
          f"({run['generated_tokens'] / max(run['wall_s'], 1e-9):.1f} tok/s)")
    return 0


def cmd_recalibrate(argv: list[str]) -> int:
    args = recalibrate_parser().parse_args(argv)
    from rollouts.config import load_config
    from rollouts.executors import make_collector

    cfg = load_config(args.config or str(DEFAULT_CONFIG), list(args.overrides) + ([f"output={args.output}"] if args.output else []))
    col = make_collector(cfg)
    try:
        n = col.recalibrate()
    finally:
        col.close()
    fit = col.latency.fit if col.latency else {}
    print(f"re-modelled {n} records; latency model holdout: {fit.get('holdout')}")
    return 0


def complete_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="collect.py complete", formatter_class=HelpFormatter,
        description="Run every menu item of a live training run (env.source: live) on each query of one of its "
                    "splits, into its cache (resumable): evaluate.py then compares policies, statics and the oracle "
                    "exactly.")
    ap.add_argument("run", help="the live run's folder (its config.yml names the cache, the live block and the split)")
    ap.add_argument("--split", default="test", choices=("train", "val", "test"), help="which split (default: test)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def cmd_complete(argv: list[str]) -> int:
    args = complete_parser().parse_args(argv)
    from env.live_source import complete_split
    from rollouts.config import load_yaml_file
    from rollouts.errors import ConfigError

    cfg = load_yaml_file(Path(args.run) / "config.yml")
    if (cfg.get("env") or {}).get("source") != "live":
        raise ConfigError(f"{args.run}: not a live run (env.source is not live); collect.py collects a cache whole")
    done = complete_split(cfg, args.split, progress=not args.no_progress)
    print(f"{done['split']} split of {cfg['cache']}: {done['queries']} queries complete "
          f"({done['engine_seconds']} engine seconds this time)")
    return 0


def cmd_stats(argv: list[str]) -> int:
    args = stats_parser().parse_args(argv)
    from rollouts.cache import load_cache
    from rollouts.stats import format_summary, summarize

    s = summarize(load_cache(args.cache or display_path(BUNDLED_CACHE)))
    print(json.dumps(s, indent=2) if args.json else format_summary(s))
    return 0


def cmd_pack(argv: list[str]) -> int:
    args = pack_parser().parse_args(argv)
    from rollouts.cache_rewrite import write_compressed_copy
    from rollouts.locks import FolderLock

    with FolderLock(args.dst, "cache"):
        write_compressed_copy(args.src, args.dst, drop_text=args.drop_text)
    print(f"packed {args.src} -> {args.dst}")
    return 0


def cmd_import(argv: list[str]) -> int:
    from rollouts.importers.cli import main

    return main(argv)


def main(argv: list[str] | None = None) -> int:
    from rollouts.console import plain_warnings

    plain_warnings()
    argv = sys.argv[1:] if argv is None else argv
    commands = {"stats": cmd_stats, "pack": cmd_pack, "import": cmd_import, "recalibrate": cmd_recalibrate,
                "complete": cmd_complete}
    cmd = commands.get(argv[0]) if argv else None
    from rollouts.errors import TTCError, report

    try:
        return cmd(argv[1:]) if cmd else cmd_collect(argv)
    except TTCError as exc:
        return report(exc)


if __name__ == "__main__":  # vLLM spawns workers: everything stays under this guard
    sys.exit(main())
