"""``python collect.py import FORMAT PATH --out CACHE [...]``: import third-party rollouts.

Exit status: 0 everything imported (or already present), 1 some lines were skipped (reported as
``file:line: reason``), 2 stopped at a bad line (``--on-error stop``) or a fatal error.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

FORMATS = {
    "generic": "generic",
    "qwen25math": "qwen25math",
    "qwen": "qwen25math",
    "search_and_learn": "search_and_learn",
    "search-and-learn": "search_and_learn",
    "sal": "search_and_learn",
}


def make_reader(fmt: str, path: str, args: argparse.Namespace) -> Any:
    """The adapter for a format name."""
    kind = FORMATS[fmt]
    if kind == "generic":
        from rollouts.importers.generic import GenericReader

        return GenericReader(path)
    if kind == "qwen25math":
        from rollouts.importers.qwen25math import QwenHarnessReader

        return QwenHarnessReader(path, dataset=args.dataset, scorer=args.scorer_name or "reward-model")
    from rollouts.importers.search_and_learn import SearchAndLearnReader

    return SearchAndLearnReader(path, approach=args.approach, agg_strategy=args.agg_strategy,
                                dataset=args.dataset, prm=args.scorer_name or "prm")


class _Limited:
    """A reader cut to its first ``n`` lines."""

    def __init__(self, reader: Any, n: int):
        self.reader, self.n, self.name = reader, n, reader.name

    def describe(self) -> dict[str, Any]:
        return {**self.reader.describe(), "limit": self.n}

    def __len__(self) -> int:
        return min(len(self.reader), self.n)

    def __iter__(self) -> Any:
        return itertools.islice(iter(self.reader), self.n)


def build_parser() -> argparse.ArgumentParser:
    from rollouts.console import HelpFormatter

    ap = argparse.ArgumentParser(
        prog="collect.py import",
        description="Import third-party rollouts into a rollout cache (see docs/import.md).",
        formatter_class=HelpFormatter,
    )
    ap.add_argument("format", choices=sorted(FORMATS), help="input format")
    ap.add_argument("path", help="input file (or folder, for qwen25math)")
    ap.add_argument("--out", required=True, help="cache directory to create or extend (re-runs skip what is there)")
    ap.add_argument("--on-error", choices=("skip", "stop"), default="skip",
                    help="bad line: report it and go on (skip, default) or stop there (exit 2)")
    ap.add_argument("--featurizer", default=None,
                    help="model for query features: bundled name, local folder or HF id (default: smollm2-135m-instruct)")
    ap.add_argument("--layer", type=int, default=-1, help="hidden layer for features (default: %(default)s)")
    ap.add_argument("--tokenizer", default=None,
                    help="tokenizer for missing token counts: bundled name, local folder (tokenizer-only is fine), "
                         "a tokenizer.json file, or an HF id in the local HF cache (default: the featurizer's)")
    ap.add_argument("--tokenizer-download", action="store_true",
                    help="let --tokenizer download an HF id from the hub (default: local files only)")
    ap.add_argument("--tokenizer-exact", action="store_true",
                    help="the tokenizer is the generating model's own: counts are exact, not approximate "
                         "(implied when --tokenizer equals --model)")
    ap.add_argument("--latency-model", default=None,
                    help="seconds for runs without timings: api:a=S,b=S_PER_PROMPT_TOKEN,c=S_PER_GENERATED_TOKEN "
                         "(an API's rates; parallel samples are one round), a latency model JSON, a measurements "
                         "file, or a measured cache directory (e.g. configs/latency_cpu_smollm2.json for this "
                         "project's CPU engine). Default: the target cache's model, else none")
    ap.add_argument("--no-latency-model", action="store_true",
                    help="no latency model, even the target cache's: missing seconds stay missing (a cache with "
                         "no seconds at all trains and evaluates with λ_L fixed at 0)")
    ap.add_argument("--feature-store", default=None,
                    help="folder of features already computed, reused for the same prompts and featurizer "
                         "(default: ~/.cache/ttc-alloc/features; 'none' to disable)")
    ap.add_argument("--keep-text", action="store_true",
                    help="store question, reference and sample texts (default: dataset, index and sha256 only)")
    ap.add_argument("--score-scale", choices=("prob", "logit"), default="prob",
                    help="generic format: scores are probabilities, or logits mapped through a sigmoid")
    ap.add_argument("--model", help="name of the model that generated the rollouts (cache meta)")
    ap.add_argument("--dataset", help="dataset name recorded for the queries and in the cache meta")
    ap.add_argument("--scorer-name", help="name of the reward model / PRM that produced the scores")
    ap.add_argument("--approach", choices=("best_of_n", "beam_search", "dvts"),
                    help="search_and_learn: the approach of the file (default: from the file name, else best_of_n)")
    ap.add_argument("--agg-strategy", choices=("last", "min", "prod"), default="last",
                    help="search_and_learn: aggregation of per-step PRM scores (default: %(default)s)")
    ap.add_argument("--prompt-suffix", default=None,
                    help="suffix of the featurizer's user message (default: the collector's)")
    ap.add_argument("--system-prompt", default=None, help="system message of the featurizer's prompt")
    ap.add_argument("--limit", type=int, default=None, help="import only the first N lines")
    ap.add_argument("--batch-size", type=int, default=16, help="featurizer batch size")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for the featurizer; 0: torch's default, every core (default: "
                         "%(default)s: on a 2-core machine busy with other jobs, a 40-question import took "
                         "590 and 629 s with 1 thread, 600 and 721 s on both cores, alternating runs; "
                         "give more threads on an idle machine with many cores)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def resolve_latency_model(args: argparse.Namespace, out: Path) -> Any:
    from rollouts.latency import LatencyModel
    from rollouts.latency_fit import load_latency_model

    if args.no_latency_model:
        return None
    if args.latency_model:
        return load_latency_model(args.latency_model)
    if (out / "meta.json").exists():
        from rollouts.cache import read_meta

        meta = read_meta(out)
        if meta.get("latency_model"):
            return LatencyModel.from_dict(meta["latency_model"])
    # never another engine's model by default: this project's CPU model would define the λ_L axis of
    # an API model's rollouts (configs/latency_cpu_smollm2.json stays available as --latency-model)
    return None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def render(summary: Any, file: Any = None) -> None:
    """Print the import summary with rich."""
    from rich.console import Console
    from rich.table import Table

    con = Console(file=file or sys.stdout, width=140)
    s = summary
    c = s.cache
    con.print(f"[bold]import {s.format}[/] -> {s.out}: {s.lines} lines read, {s.imported} records imported, "
              f"{s.already_present} already present, {len(s.errors)} bad lines" + (" (stopped)" if s.stopped else ""))
    if c:
        con.print(f"cache: {c['queries']} queries ({s.queries_new} new, {s.features_reused} of them with features "
                  f"reused from the feature store), {c['records']} records; this run: "
                  f"{s.samples} samples in pools, {s.results} search results")
    f = s.fields
    tot = lambda k: sum(v for kk, v in f.items() if kk.startswith(k + ":"))  # noqa: E731
    if tot("correct"):
        con.print(f"correctness: {_pct(s.share('correct', 'given'))} given, "
                  f"{_pct(s.share('correct', 'graded:math-verify'))} graded by math-verify"
                  + (f" ({f['grading:timed_out']} timed out)" if f.get("grading:timed_out") else ""))
        con.print(f"modelled or derived: tokens counted by tokenizer {_pct(s.share('tokens', 'tokenizer'))}, "
                  f"answers extracted {_pct(s.share('answer', 'extracted'))}, "
                  f"seconds modelled {_pct(s.share('seconds', 'modelled'))}, "
                  f"seconds missing {_pct(s.share('seconds', 'missing'))}")
    if c and c.get("configs"):
        t = Table(title="per strategy (whole cache)")
        for col in ("config", "strategy", "records", "acc", "maj@K", "best_score@K", "weighted@K", "pass@K",
                    "tokens", "seconds"):
            t.add_column(col, justify="left" if col in ("config", "strategy") else "right")
        fmt = lambda v, p=3: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
        for cid, e in c["configs"].items():
            t.add_row(cid, e["strategy"], str(e["records"]), fmt(e.get("accuracy")), fmt(e.get("majority_accuracy")),
                      fmt(e.get("best_score_accuracy")), fmt(e.get("weighted_accuracy")), fmt(e.get("pass_at_n")),
                      fmt(e.get("mean_tokens"), 1), fmt(e.get("mean_seconds"), 2))
        con.print(t)
    if c and c.get("tokens_approximate"):
        con.print(f"approximate token counts: {c['tokens_approximate']} of {c['records']} records counted with "
                  f"{c.get('tokenizer', {}).get('name')}, not the generating model's tokenizer "
                  "(--tokenizer NAME --tokenizer-exact if it is)")
    for cid, sp in ((c or {}).get("short_pools") or {}).items():
        ks = ", ".join(f"{v} with k={k}" for k, v in sp["records_by_k"].items())
        con.print(f"[yellow]short pools[/] in {cid}: {ks} of K={sp['K']} samples; for those queries the budgets "
                  "above k are masked (evaluate.py leaves queries without every action out of the comparison)")
    if s.errors:
        con.print(f"[red]{len(s.errors)} bad line(s)[/], listed on stderr as file:line: reason")


def main(argv: list[str]) -> int:
    """Entry point of ``collect.py import``; returns the exit status."""
    argv = list(argv)
    if argv and argv[0] == "import":
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    from rollouts.datasets import check_text_file
    from rollouts.errors import LIBRARY_INPUT_ERRORS, ConfigError, report
    from rollouts.importers import DEFAULT_FEATURIZER, Importer, load_featurizer, load_tokenizer
    from rollouts.locks import FolderLock, FolderLocked

    out = Path(args.out)
    if args.threads < 0:
        return report(ConfigError(f"--threads must be >= 0 (0: every core), got {args.threads}"))
    lock, existed = FolderLock(out, "cache"), out.exists()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        lock.acquire()  # before the featurizer loads: a second import into this cache exits at once
        check_text_file(args.path)  # empty or undecodable input: file and line, before anything is written
        reader = make_reader(args.format, args.path, args)
        if args.limit is not None:
            reader = _Limited(reader, args.limit)
        latency = resolve_latency_model(args, out)
        # the tokenizer first: a name that cannot be found fails before the featurizer loads
        tokenizer = load_tokenizer(args.tokenizer, allow_download=args.tokenizer_download) if args.tokenizer else None
        featurizer = load_featurizer(args.featurizer or DEFAULT_FEATURIZER, args.layer, args.batch_size)
        meta: dict[str, Any] = {
            "path": str(Path(args.path).resolve()),
            "options": {k: v for k, v in sorted(vars(args).items())
                        if k not in ("format", "path", "out", "json", "no_progress") and v not in (None, False)},
        }
        if args.model:
            meta["model"] = args.model
        if args.dataset:
            meta["dataset"] = args.dataset
        store = None
        if args.feature_store != "none":
            from rollouts.feature_store import FeatureStore, default_store_dir

            store = FeatureStore(args.feature_store or default_store_dir())
        importer = Importer(
            out, featurizer=featurizer, tokenizer=tokenizer,
            tokenizer_name=args.tokenizer or (args.featurizer or DEFAULT_FEATURIZER),
            latency_model=latency, on_error=args.on_error, keep_text=args.keep_text, score_scale=args.score_scale,
            prompt_suffix=args.prompt_suffix, system_prompt=args.system_prompt, meta=meta,
            progress=not args.no_progress, tokenizer_exact=args.tokenizer_exact, feature_store=store,
        )
        if latency is None:
            print("note: no latency model: runs without timings keep seconds missing; if no record has seconds, "
                  "train.py and evaluate.py run with λ_L fixed at 0 (give --latency-model api:a=..,b=..,c=.. "
                  "for an API's rates, see docs/import.md)", file=sys.stderr)
        summary = importer.run(reader)
    # ValueError besides TTCError (itself one): plain ones below the importer are bad input too (rollouts/errors.py)
    except LIBRARY_INPUT_ERRORS as exc:
        q = out / "queries.jsonl"
        if not isinstance(exc, FolderLocked) and not existed and out.is_dir() and not (q.exists() and q.stat().st_size):
            import shutil

            shutil.rmtree(out, ignore_errors=True)  # this run made it and wrote no query: leave nothing behind
        return report(exc)
    finally:
        lock.release()
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2, default=str))
    else:
        render(summary)
    if summary.errors:
        for line in summary.errors.lines():
            print(line, file=sys.stderr)
    if summary.stopped:
        return 2
    return 1 if summary.errors else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
