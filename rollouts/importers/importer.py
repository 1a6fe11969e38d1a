"""The importer: validates, fills (:mod:`rollouts.importers.records`) and writes runs from a reader
into a cache directory, featurizing new queries batch by batch; resumable (keys already in the
cache are skipped). The filling rules are in the package docstring (:mod:`rollouts.importers`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollouts.cache import CacheError, CacheWriter, load_cache, read_meta, record_key, validate_query
from rollouts.importers.base import (
    ON_ERROR,
    FeaturizerLike,
    ImportStopped,
    ImportSummary,
    Reader,
    sha256_text,
)
from rollouts.importers.generic import LineError, Run, parse_run
from rollouts.importers.records import RecordBuilder
from rollouts.latency import LatencyModel


def default_messages_fn(suffix: str | None = None, system: str | None = None) -> tuple[Callable, dict[str, Any]]:
    """The collector's prompt builder (rollouts.prompts.build_messages) and its description."""
    from rollouts.prompts import DEFAULT_SUFFIX, build_messages

    suffix = DEFAULT_SUFFIX if suffix is None else suffix
    return (lambda q: build_messages(q, suffix, system)), {"prompt_suffix": suffix, "system_prompt": system}


def _import_identity(entry: dict[str, Any]) -> dict[str, Any]:
    """An import entry of meta.json without what changes from run to run."""
    return {k: v for k, v in entry.items() if k not in ("started_at", "counts")}


def selector_accuracies(cache: Any) -> dict[str, dict[str, float | None]]:
    """Per pool config: best_score@K and weighted@K over whole pools (majority is in stats.summarize)."""
    from rollouts.strategies.selectors import expected_correct

    out: dict[str, dict[str, float | None]] = {}
    for cid in cache.config_ids:
        recs = [r for r in cache.records if r["config_id"] == cid and r["strategy"] == "sample_pool"]
        if not recs:
            continue
        acc: dict[str, list[float]] = {"best_score": [], "weighted": []}
        for r in recs:
            ss = r["samples"]
            if any(s["correct"] is None for s in ss) or any(s.get("score") is None for s in ss):
                continue
            for sel in acc:  # ties at random, counted as their expectation (the outcome table's value)
                answers, correct, scores = ([s[k] for s in ss] for k in ("answer", "correct", "score"))
                acc[sel].append(expected_correct(sel, answers, correct, scores))
        out[cid] = {f"{k}_accuracy": (sum(v) / len(v) if v else None) for k, v in acc.items()}
    return out


@dataclass
class _Pending:
    run: Run
    record: dict[str, Any]
    prompt_ids: list[int]


class Importer:
    """Validates, fills and writes runs from a reader into a cache directory (resumable)."""

    def __init__(
        self,
        out: str | Path,
        *,
        featurizer: FeaturizerLike,
        tokenizer: Any | None = None,
        tokenizer_name: str | None = None,
        latency_model: LatencyModel | None = None,
        on_error: str = "skip",
        keep_text: bool = False,
        score_scale: str = "prob",
        prompt_suffix: str | None = None,
        system_prompt: str | None = None,
        meta: dict[str, Any] | None = None,
        chunk_runs: int = 512,
        progress: bool = True,
        grade_timeout_s: int = 5,
        tokenizer_exact: bool = False,
        feature_store: Any | None = None,
    ):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}")
        self.out = Path(out)
        self.featurizer = featurizer
        self.tokenizer = tokenizer if tokenizer is not None else featurizer.tokenizer
        self.tokenizer_name = tokenizer_name or featurizer.describe().get("model", "featurizer")
        self.latency = latency_model
        self.latency_label = (latency_model.fit.get("label") or "latency_model") if latency_model else None
        self.on_error = on_error
        self.keep_text = keep_text
        self.score_scale = score_scale
        self.messages_fn, self.prompt_desc = default_messages_fn(prompt_suffix, system_prompt)
        self.extra_meta = meta or {}
        self.chunk_runs = chunk_runs
        self.progress = progress
        self.grade_timeout_s = grade_timeout_s
        # counts from a tokenizer other than the generating model's are approximate, and say so
        model = self.extra_meta.get("model")
        self.tokens_exact = bool(tokenizer_exact or (model is not None and model == self.tokenizer_name))
        self.feature_store = feature_store
        self._fbar: Any = None
        self._stored_sha: dict[str, str | None] | None = None  # query id -> sha256 of the cache's question
        self.records = RecordBuilder(
            featurizer=featurizer, messages_fn=self.messages_fn, tokenizer=self.tokenizer,
            tokenizer_name=self.tokenizer_name, tokens_exact=self.tokens_exact, latency_model=latency_model,
            latency_label=self.latency_label, keep_text=keep_text, score_scale=score_scale,
            grade_timeout_s=grade_timeout_s,
        )  # fmt: skip

    def _meta(self, reader: Reader) -> dict[str, Any]:
        desc = dict(reader.describe())
        meta: dict[str, Any] = {
            "source": "import",
            "featurizer": dict(self.featurizer.describe()),
            "prompt": {"builder": "rollouts.prompts.build_messages", **self.prompt_desc},
            "tokenizer": {"name": self.tokenizer_name, "used_for": "token counts missing from the input",
                          "exact": self.tokens_exact},
            "latency_definition": (
                "wall-clock seconds one query sees when its strategy runs alone; imported records keep given "
                "seconds ('measured', provenance 'given:<format>') or get meta.latency_model's estimate "
                "('modelled', provenance 'modelled:<label>')"
            ),
        }
        for key in ("model", "dataset"):
            val = self.extra_meta.get(key, desc.pop(key, None))
            if val is not None:
                meta[key] = val
        sampling = {**(self.extra_meta.get("sampling") or desc.pop("sampling", None) or {}), **self.prompt_desc}
        meta["sampling"] = sampling
        if self.latency is not None:
            meta["latency_model"] = self.latency.to_dict()
        entry = {**desc, **{k: v for k, v in self.extra_meta.items() if k not in ("model", "dataset", "sampling")}}
        entry.setdefault("started_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        entry.setdefault("options", {})
        entry["options"] = {
            **entry["options"], "tokenizer": self.tokenizer_name, "tokens_exact": self.tokens_exact,
            "latency": self.latency_label or "none", "keep_text": self.keep_text, "score_scale": self.score_scale,
            "on_error": self.on_error, "featurizer": meta["featurizer"].get("model"),
        }
        meta["imports"] = [entry]
        return meta

    def _open(self, reader: Reader) -> CacheWriter:
        new = self._meta(reader)
        if (self.out / "meta.json").exists():
            old = read_meta(self.out)
            if old.get("featurizer") and old["featurizer"] != new["featurizer"]:
                raise CacheError(
                    f"{self.out}: its queries were featurized with {old['featurizer']}, not {new['featurizer']}; "
                    "import with the same --featurizer or into a new cache"
                )
            dim = self._stored_dim()
            if dim is not None and dim != new["featurizer"].get("dim", dim):
                raise CacheError(f"{self.out}: its queries have {dim} features, the featurizer gives "
                                 f"{new['featurizer']['dim']}; import into a new cache")
            for key in ("prompt_suffix", "system_prompt"):
                if key in old.get("sampling", {}) and old["sampling"][key] != self.prompt_desc[key]:
                    raise CacheError(f"{self.out}: its queries were featurized with {key} {old['sampling'][key]!r}, "
                                     f"not {self.prompt_desc[key]!r}")
            imports = list(old.get("imports", []))
            # one entry per import (input path, sha256, options); a re-run of the same one (a resume) adds
            # to its counts instead of adding an entry
            same = [i for i, e in enumerate(imports) if _import_identity(e) == _import_identity(new["imports"][0])]
            if same:
                imports.append(imports.pop(same[0]))
            else:
                imports.append(new["imports"][0])
            new = {**old, **new, "imports": imports, "sampling": {**old.get("sampling", {}), **new["sampling"]}}
            if (old.get("latency_model") and self.latency is not None
                    and LatencyModel.from_dict(old["latency_model"]).to_dict() != self.latency.to_dict()):
                raise CacheError(f"{self.out}: its records were modelled with another latency model; "
                                 "import with the same --latency-model or into a new cache")
        return CacheWriter(self.out, meta=new)

    def _stored_dim(self) -> int | None:
        from rollouts.cache import iter_jsonl

        qp = self.out / "queries.jsonl"
        if not qp.exists():
            return None
        for _, q in iter_jsonl(qp):
            return len(q.get("features", []))
        return None

    def run(self, reader: Reader, total: int | None = None) -> ImportSummary:
        """Import everything the reader yields; returns the summary (also when stopped)."""
        from tqdm.auto import tqdm

        desc = reader.describe()
        fmt = desc.get("format", getattr(reader, "name", "?"))
        given = f"given:{fmt}"
        summary = ImportSummary(format=fmt, out=str(self.out))
        writer = self._open(reader)
        self.records.scan_pool_sizes(reader, writer.keys)
        seen: dict[tuple[str, str, int], int] = {}
        questions: dict[str, tuple[str, str]] = {}  # query_id -> (sha256 of question, where)
        pending: list[_Pending] = []
        if total is None:
            try:
                total = len(reader)  # type: ignore[arg-type]
            except TypeError:
                total = None
        bar = tqdm(total=total, desc=f"import {fmt}", unit="line", disable=not self.progress)
        try:
            for file, line, obj in reader:
                summary.lines += 1
                bar.update(1)
                try:
                    if isinstance(obj, LineError):
                        raise obj
                    run = parse_run(obj, file, line, default_score_scale=self.score_scale)
                    sha = sha256_text(run.question)
                    prev = questions.get(run.query_id)
                    if prev is not None and prev[0] != sha:
                        raise LineError(f"query_id {run.query_id!r} was used at {prev[1]} for a different question")
                    key = self.records.key_of(run)
                    if key in seen:
                        raise LineError(f"duplicate query/strategy key {key} (first at line {seen[key]})")
                    if writer.has(*key):
                        seen[key] = line
                        questions.setdefault(run.query_id, (sha, f"{Path(file).name}:{line}"))
                        summary.already_present += 1
                        continue
                    if run.query_id in writer.query_ids:
                        self._check_stored_query(run, sha)
                    rec, prompt_ids, fields = self.records.build_record(run, given)
                    assert record_key(rec) == key
                    seen[key] = line
                    questions.setdefault(run.query_id, (sha, f"{Path(file).name}:{line}"))
                    summary.fields.update(fields)
                    pending.append(_Pending(run, rec, prompt_ids))
                except LineError as exc:
                    issue = summary.errors.add(file, line, str(exc))
                    if self.on_error == "stop":
                        summary.stopped = True
                        self._flush(writer, pending, summary)
                        pending = []
                        raise ImportStopped(issue) from None
                    continue
                if len(pending) >= self.chunk_runs:
                    self._flush(writer, pending, summary)
                    pending = []
            self._flush(writer, pending, summary)
        except ImportStopped:
            pass
        finally:
            bar.close()
            if self._fbar is not None:
                self._fbar.close()
                self._fbar = None
            if self.feature_store is not None:
                self.feature_store.close()
            self._record_counts(writer, summary)
            writer.close()
        self._finish(summary)
        return summary

    def _record_counts(self, writer: CacheWriter, summary: ImportSummary) -> None:
        """This run's counts into its meta.json ``imports`` entry (the last one)."""
        imports = list(writer.meta.get("imports") or [])
        if not imports:
            return
        prev = imports[-1].get("counts") or {}
        added = {"imported": summary.imported, "queries_new": summary.queries_new,
                 "features_reused": summary.features_reused, "samples": summary.samples, "results": summary.results,
                 "tokens_approximate": summary.fields.get("tokens_approximate", 0)}
        counts = {k: int(prev.get(k, 0)) + v for k, v in added.items()}
        counts.update(lines=summary.lines, already_present=summary.already_present, bad_lines=len(summary.errors),
                      stopped=summary.stopped, runs=int(prev.get("runs", 0)) + 1)
        imports[-1] = {**imports[-1], "counts": counts}
        writer.update_meta(imports=imports)

    def _check_stored_query(self, run: Run, sha: str) -> None:
        """Refuse a query id that the cache holds for another question (read once per import)."""
        if self._stored_sha is None:
            from rollouts.cache import iter_jsonl

            queries = iter_jsonl(self.out / "queries.jsonl")
            self._stored_sha = {q["query_id"]: q.get("text_sha256") for _, q in queries}
        if self._stored_sha.get(run.query_id) not in (None, sha):
            raise LineError(f"query_id {run.query_id!r} is already in the cache for a different question")

    def _flush(self, writer: CacheWriter, pending: list[_Pending], summary: ImportSummary) -> None:
        """Write pending records, featurizing their new queries batch by batch: each batch's queries and
        records are on disk as soon as it is done, so a killed import loses at most one batch."""
        if not pending:
            return
        from rollouts.feature_store import prompt_key

        by_query: dict[str, list[_Pending]] = {}
        for p in pending:
            by_query.setdefault(p.run.query_id, []).append(p)
        new = [q for q in by_query if q not in writer.query_ids]
        desc = self.featurizer.describe()
        keys = {q: prompt_key(by_query[q][0].prompt_ids) for q in new}
        stored = self.feature_store.get(desc, list(keys.values())) if self.feature_store is not None else {}

        def write(qid: str, feats: Any) -> None:
            if qid not in writer.query_ids:
                q = self._query(by_query[qid][0], feats)
                validate_query(q, by_query[qid][0].run.where)
                writer.add_query(q)
                summary.queries_new += 1
            for p in by_query[qid]:
                if writer.add_record(p.record):
                    summary.imported += 1
                    if p.record["strategy"] == "sample_pool":
                        summary.samples += len(p.record["samples"])
                    else:
                        summary.results += 1

        for qid in by_query:  # queries already in the cache, or featurized before
            if qid in writer.query_ids:
                write(qid, None)
            elif keys[qid] in stored:
                summary.features_reused += 1
                write(qid, stored[keys[qid]])
        todo = [q for q in new if keys[q] not in stored]
        if not todo:
            return
        bar = self._features_bar(len(todo))
        prompts = [by_query[q][0].prompt_ids for q in todo]
        batches = (self.featurizer.iter_features(prompts, bar) if hasattr(self.featurizer, "iter_features")
                   else iter([(list(range(len(todo))), self.featurizer.features(prompts, progress=False))]))
        for pos, feats in batches:
            if self.feature_store is not None:
                self.feature_store.put(desc, [(keys[todo[i]], f) for i, f in zip(pos, feats, strict=True)])
            for i, f in zip(pos, feats, strict=True):
                write(todo[i], f)

    def _features_bar(self, n: int) -> Any:
        """One featurization bar (with ETA) for the whole import; its total grows as queries arrive."""
        from tqdm.auto import tqdm

        if self._fbar is None:
            self._fbar = tqdm(total=0, desc="features", unit="q", disable=not self.progress, position=1)
        self._fbar.total += n
        self._fbar.refresh()
        return self._fbar

    def _query(self, p: _Pending, feats: Any) -> dict[str, Any]:
        run = p.run
        q: dict[str, Any] = {
            "query_id": run.query_id, "dataset": run.dataset, "index": run.index,
            "text_sha256": sha256_text(run.question),
            "question": run.question if self.keep_text else None,
            "answer": run.reference if self.keep_text else None,
            "prompt_tokens": len(p.prompt_ids),
            "features": [round(float(x), 5) for x in feats],
        }
        if run.meta:
            q["meta"] = run.meta
        return q

    def _finish(self, summary: ImportSummary) -> None:
        from rollouts.stats import summarize

        if not (self.out / "records.jsonl").exists():
            return
        cache = load_cache(self.out)
        s = summarize(cache)
        for cid, acc in selector_accuracies(cache).items():
            s["configs"][cid].update(acc)
        summary.cache = s
