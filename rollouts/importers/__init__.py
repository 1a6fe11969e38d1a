"""Bring your own rollouts: import third-party strategy runs into a rollout cache (schema v1).

Adapters (``generic``, ``qwen25math``, ``search_and_learn``) turn their native rows into run dicts
of the generic format (``generic.parse_run``); the ``Importer`` here validates them, fills what is
missing and labels where every field came from:

- ``correct`` missing: graded with math-verify against the reference (``graded:math-verify``);
- ``answer`` missing: extracted from the sample text with math-verify (``extracted:math-verify``);
- token counts missing: counted from the text with a named tokenizer (``tokenizer:<name>``);
- ``seconds`` missing: from a latency model fitted on this project's own measurements
  (``modelled:<label>``, ``seconds_source="modelled"``), or ``missing`` without one;
- scorer tokens missing for scored samples: prompt + sample tokens (what a reward model reads).

Query features are computed with a local featurizer on the chat-formatted question (the collector's
prompt builder), batched, and the featurizer is recorded in the cache meta. Question text and
reference answers are not stored unless ``keep_text``: a query keeps its dataset, index and the
sha256 of its text. Errors are reported as ``file:line: reason``; ``on_error="skip"`` imports the
rest, ``"stop"`` stops at the first bad line after writing the good lines before it. Keys already in
the cache are skipped, so a re-run neither loses nor duplicates anything.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rollouts.cache import (
    CacheError,
    CacheWriter,
    load_cache,
    read_meta,
    record_key,
    validate_query,
    validate_record,
)
from rollouts.importers.generic import LineError, Run, Sample, parse_run
from rollouts.latency import LatencyModel, Round

DEFAULT_FEATURIZER = "smollm2-135m-instruct"
ON_ERROR = ("skip", "stop")


# ----------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True)
class ImportIssue:
    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


class ImportErrorReport:
    """The bad lines of an import, each reported as ``file:line: reason``."""

    def __init__(self) -> None:
        self.issues: list[ImportIssue] = []

    def add(self, file: str, line: int, reason: str) -> ImportIssue:
        issue = ImportIssue(file, line, reason)
        self.issues.append(issue)
        return issue

    def lines(self) -> list[str]:
        return [str(i) for i in self.issues]

    def __len__(self) -> int:
        return len(self.issues)

    def __bool__(self) -> bool:
        return bool(self.issues)

    def __str__(self) -> str:
        return "\n".join(self.lines())


# ----------------------------------------------------------------------------------------------
# Pieces the importer is given


class FeaturizerLike(Protocol):
    tokenizer: Any

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]: ...

    def features(self, prompts: Sequence[list[int]], progress: bool = True) -> Any: ...

    def describe(self) -> dict[str, Any]: ...


class Reader(Protocol):
    """An adapter: iterates (file, line, run dict or LineError) and describes its source."""

    name: str

    def __iter__(self) -> Any: ...

    def describe(self) -> dict[str, Any]: ...


_FEATURIZERS: dict[tuple[str, int], Any] = {}


def load_featurizer(model: str = DEFAULT_FEATURIZER, layer: int = -1, batch_size: int = 16) -> Any:
    """A ``rollouts.features.Featurizer`` for a bundled name, local folder or HF id (cached per process)."""
    key = (model, layer)
    if key not in _FEATURIZERS:
        from rollouts.features import Featurizer
        from rollouts.models import resolve_model

        _FEATURIZERS[key] = Featurizer(resolve_model(model), layer=layer, batch_size=batch_size, name=model)
    return _FEATURIZERS[key]


def load_tokenizer(name: str, allow_download: bool = False) -> Any:
    """An HF tokenizer for counting tokens, found without the network unless ``allow_download``.

    ``name`` is a bundled model name, a local folder (a model folder, or a tokenizer-only one: a
    ``tokenizer.json`` with or without ``tokenizer_config.json``, no ``config.json`` needed), a single
    ``tokenizer.json`` file (transformers' fast tokenizer loads it alone), or an HF id already in the
    local HF cache. Anything else raises ``ModelNotFound`` at once, naming it.
    """
    from rollouts.models import BUNDLED, ModelNotFound, resolve_model

    if name in BUNDLED:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(resolve_model(name))
    p = Path(name).expanduser()
    if p.is_file():
        if p.suffix != ".json":
            raise ModelNotFound(f"tokenizer file {p} is not a tokenizer.json")
        from transformers import PreTrainedTokenizerFast

        try:
            return PreTrainedTokenizerFast(tokenizer_file=str(p))
        except Exception as exc:  # tokenizers raises its own exception types for a bad file
            raise ModelNotFound(f"tokenizer file {p} cannot be read ({exc})") from None
    if p.is_dir():
        from transformers import AutoTokenizer, PreTrainedTokenizerFast

        try:
            return AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        except (OSError, ValueError, KeyError):
            if not (p / "tokenizer.json").exists():
                raise ModelNotFound(f"tokenizer folder {p} has no tokenizer.json and no loadable tokenizer") from None
            return PreTrainedTokenizerFast(tokenizer_file=str(p / "tokenizer.json"))
    if name.startswith((".", "/", "~")):
        raise ModelNotFound(f"tokenizer path {name!r} does not exist")
    if not allow_download:
        # look in the local HF cache before importing transformers (seconds): a miss fails at once
        from huggingface_hub import try_to_load_from_cache

        def cached(f: str) -> bool:
            try:
                return isinstance(try_to_load_from_cache(name, f), str)
            except ValueError:  # not even a valid repo id
                return False

        if not any(cached(f) for f in ("tokenizer.json", "tokenizer_config.json")):
            raise ModelNotFound(f"tokenizer {name!r}: not a bundled name, local folder or tokenizer.json file, and not "
                                "in the local HF cache (no download without --tokenizer-download)")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=not allow_download)
    except (OSError, ValueError) as exc:
        how = ("the download failed" if allow_download else
               "it is not in the local HF cache and --tokenizer-download was not given")
        raise ModelNotFound(f"tokenizer {name!r}: not a bundled name, local folder or tokenizer.json file, and "
                            f"{how} ({type(exc).__name__})") from None


def default_messages_fn(suffix: str | None = None, system: str | None = None) -> tuple[Callable, dict[str, Any]]:
    """The collector's prompt builder (rollouts.prompts.build_messages) and its description."""
    from rollouts.prompts import DEFAULT_SUFFIX, build_messages

    suffix = DEFAULT_SUFFIX if suffix is None else suffix
    return (lambda q: build_messages(q, suffix, system)), {"prompt_suffix": suffix, "system_prompt": system}


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fmt(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True, separators=(",", ":"))


def config_id_for(run: Run, n: int | None) -> str:
    """Stable config id: ``pool:n=K[,param=value...]`` for pools (as collected), else ``<method>[:params]``."""
    if run.strategy == "sample_pool":
        extra = ",".join(f"{k}={_fmt(v)}" for k, v in sorted(run.params.items()) if k != "n")
        return f"pool:n={n}" + (f",{extra}" if extra else "")
    extra = ",".join(f"{k}={_fmt(v)}" for k, v in sorted(run.params.items()) if k != "method")
    return run.method + (f":{extra}" if extra else "")


def _import_identity(entry: dict[str, Any]) -> dict[str, Any]:
    """An import entry of meta.json without what changes from run to run."""
    return {k: v for k, v in entry.items() if k not in ("started_at", "counts")}


def pool_signature(run: Run) -> str:
    """What makes pool lines one config whatever their size: the config id without ``n``."""
    return config_id_for(run, 0)


# ----------------------------------------------------------------------------------------------
# Summary


@dataclass
class ImportSummary:
    """What one import did (this run) and what the cache holds afterwards."""

    format: str
    out: str
    lines: int = 0
    imported: int = 0
    already_present: int = 0
    stopped: bool = False
    errors: ImportErrorReport = field(default_factory=ImportErrorReport)
    queries_new: int = 0
    features_reused: int = 0  # new queries whose features came from the feature store
    samples: int = 0
    results: int = 0
    fields: Counter = field(default_factory=Counter)  # "<field>:<origin>" -> count, for this run
    cache: dict[str, Any] = field(default_factory=dict)  # rollouts.stats.summarize + selector accuracies

    def share(self, fld: str, origin_prefix: str) -> float | None:
        tot = sum(v for k, v in self.fields.items() if k.startswith(fld + ":"))
        hit = sum(v for k, v in self.fields.items() if k.startswith(f"{fld}:{origin_prefix}"))
        return hit / tot if tot else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format, "out": self.out, "lines": self.lines, "imported": self.imported,
            "already_present": self.already_present, "stopped": self.stopped, "errors": self.errors.lines(),
            "queries_new": self.queries_new, "features_reused": self.features_reused, "samples": self.samples, "results": self.results,
            "fields": dict(self.fields), "cache": self.cache,
        }


def selector_accuracies(cache: Any) -> dict[str, dict[str, float | None]]:
    """Per pool config: best_score@K and weighted@K over whole pools (majority is in stats.summarize)."""
    from rollouts.strategies.selectors import select

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
            for sel in acc:
                i = select(sel, [s["answer"] for s in ss], [s["score"] for s in ss])
                acc[sel].append(float(ss[i]["correct"]))
        out[cid] = {f"{k}_accuracy": (sum(v) / len(v) if v else None) for k, v in acc.items()}
    return out


# ----------------------------------------------------------------------------------------------
# The importer


class ImportStopped(Exception):
    """on_error="stop" met a bad line; the lines before it were imported."""

    def __init__(self, issue: ImportIssue):
        super().__init__(str(issue))
        self.issue = issue


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
        self._prompt_cache: dict[str, list[int]] = {}
        # counts from a tokenizer other than the generating model's are approximate, and say so
        model = self.extra_meta.get("model")
        self.tokens_exact = bool(tokenizer_exact or (model is not None and model == self.tokenizer_name))
        self.feature_store = feature_store
        self._pool_n: dict[str, int] = {}  # pool signature -> the config's K (largest pool)
        self._fbar: Any = None

    # -- meta -------------------------------------------------------------------------------------
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

    # -- filling ----------------------------------------------------------------------------------
    def _count_tokens(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        enc = self.tokenizer(texts, add_special_tokens=False)
        return [len(ids) for ids in enc["input_ids"]]

    def _prompt(self, run: Run) -> list[int]:
        key = sha256_text(run.question)
        if key not in self._prompt_cache:
            self._prompt_cache[key] = list(self.featurizer.prompt_ids(self.messages_fn(run.question)))
        return self._prompt_cache[key]

    def _grade(self, reference: str, s: Sample, fields: Counter, given: str) -> tuple[str, str]:
        """Fill a sample's answer/correct in place; returns (correct origin, answer origin)."""
        from rollouts.grading import extract_answer, grade

        if s.has_answer:
            ans_origin = given
        elif s.correct is not None:
            s.answer, ans_origin = extract_answer(s.text or ""), "extracted:math-verify"
        else:
            g = grade(reference, s.text or "", self.grade_timeout_s)
            s.answer, s.correct, ans_origin = g.answer, g.correct, "extracted:math-verify"
            if g.timed_out:
                fields["grading:timed_out"] += 1
            fields[f"answer:{ans_origin}"] += 1
            fields["correct:graded:math-verify"] += 1
            return "graded:math-verify", ans_origin
        fields[f"answer:{ans_origin}"] += 1
        if s.correct is not None:
            fields[f"correct:{given}"] += 1
            return given, ans_origin
        if s.answer is None:
            s.correct = False  # no final answer: wrong
        else:
            g = grade(reference, f"\\boxed{{{s.answer}}}", self.grade_timeout_s)
            s.correct = g.correct
            if g.timed_out:
                fields["grading:timed_out"] += 1
        fields["correct:graded:math-verify"] += 1
        return "graded:math-verify", ans_origin

    def _score(self, run: Run, s: Sample, where: str) -> tuple[float | None, float | None]:
        if s.score is None:
            return None, None
        if run.score_scale == "logit":
            return sigmoid(s.score), s.score
        if not 0.0 <= s.score <= 1.0:
            raise LineError(f"{where}score {s.score} is outside [0, 1]; give probabilities or set "
                            "score_scale 'logit' (--score-scale logit)")
        return s.score, None

    @staticmethod
    def _origin(origins: set[str]) -> str:
        return next(iter(origins)) if len(origins) == 1 else "+".join(sorted(origins))

    def _pool_record(self, run: Run, prompt_ids: list[int], fields: Counter, given: str) -> dict[str, Any]:
        assert run.samples is not None
        samples = run.samples
        missing = [i for i, s in enumerate(samples) if s.tokens is None]
        if any(samples[i].text is None for i in missing):
            i = next(i for i in missing if samples[i].text is None)
            raise LineError(f"samples[{i}]: no 'tokens' and no 'text' to count them from")
        counted = self._count_tokens([samples[i].text for i in missing])  # type: ignore[misc]
        for i, n in zip(missing, counted, strict=True):
            samples[i].tokens = n
        tok_origin = set()
        if len(missing) < len(samples):
            tok_origin.add(given)
        if missing:
            tok_origin.add(f"tokenizer:{self.tokenizer_name}")
        fields[f"tokens:{given}"] += len(samples) - len(missing)
        fields[f"tokens:tokenizer:{self.tokenizer_name}"] += len(missing)
        origins = [self._grade(run.reference, s, fields, given) for s in samples]
        p = len(prompt_ids)
        out_samples: list[dict[str, Any]] = []
        score_origin: set[str] = set()
        scorer_origin: set[str] = set()
        scorer_total = 0
        for i, s in enumerate(samples):
            score, raw = self._score(run, s, f"samples[{i}]: ")
            d: dict[str, Any] = {"answer": s.answer, "correct": s.correct, "tokens": s.tokens}
            if score is not None:
                d["score"] = score
                score_origin.add(given if raw is None else f"{given}:sigmoid(raw_score)")
                if raw is not None:
                    d["raw_score"] = raw
                if s.scorer_tokens is not None:
                    d["scorer_tokens"] = s.scorer_tokens
                    scorer_origin.add(given)
                else:
                    d["scorer_tokens"] = p + int(s.tokens or 0)
                    scorer_origin.add("modelled:prompt+sample tokens")
                scorer_total += d["scorer_tokens"]
            elif s.scorer_tokens is not None:
                d["scorer_tokens"] = s.scorer_tokens
                scorer_origin.add(given)
                scorer_total += s.scorer_tokens
            if s.seconds is not None:
                d["seconds"] = s.seconds
            if s.finish_reason is not None:
                d["finish_reason"] = s.finish_reason
            if self.keep_text and s.text is not None:
                d["text"] = s.text
            out_samples.append(d)
        k = len(samples)
        rounds = [Round(p, k, max(int(s.tokens or 0) for s in samples))]
        prov: dict[str, Any] = {
            "correct": self._origin({o[0] for o in origins}),
            "answer": self._origin({o[1] for o in origins}),
            "tokens": self._origin(tok_origin),
        }
        if score_origin:
            prov["score"] = self._origin(score_origin)
        if run.scorer_tokens is not None:
            scorer_total, prov["scorer_tokens"] = run.scorer_tokens, given
        elif scorer_origin:
            prov["scorer_tokens"] = self._origin(scorer_origin)
        else:
            prov["scorer_tokens"] = "none:no scorer"
        seconds, source, prov["seconds"] = self._seconds(
            run.seconds, [s.seconds for s in samples], rounds, given, fields)
        params = {**run.params, "n": k}
        return {
            "query_id": run.query_id, "config_id": self._pool_config(run), "strategy": "sample_pool",
            "params": params, "seed": run.seed, "samples": out_samples,
            "tokens": int(sum(int(s.tokens or 0) for s in samples)), "scorer_tokens": int(scorer_total),
            "seconds": seconds, "seconds_source": source, "rounds": [r.__dict__ for r in rounds], "provenance": prov,
        }

    def _seconds(self, line_seconds: float | None, sample_seconds: list[float | None], rounds: list[Round],
                 given: str, fields: Counter, approx: str = "") -> tuple[float | None, str, str]:
        if line_seconds is not None:
            fields[f"seconds:{given}"] += 1
            return round(line_seconds, 4), "measured", given
        if sample_seconds and all(s is not None for s in sample_seconds):
            fields[f"seconds:{given}"] += 1
            return round(max(sample_seconds), 4), "measured", f"{given}:max over samples"  # type: ignore[type-var]
        if self.latency is not None:
            fields[f"seconds:modelled:{self.latency_label}"] += 1
            return round(self.latency.predict(rounds), 4), "modelled", f"modelled:{self.latency_label}{approx}"
        fields["seconds:missing"] += 1
        return None, "missing", "missing:no latency model"

    def _search_record(self, run: Run, prompt_ids: list[int], fields: Counter, given: str) -> dict[str, Any]:
        res = run.result
        assert res is not None
        p = len(prompt_ids)
        beams = res.beams or []
        # final answer and correctness
        s = Sample(answer=res.answer, text=res.text, correct=res.correct, has_answer=res.has_answer)
        corr_origin, ans_origin = self._grade(run.reference, s, fields, given)
        # tokens
        if res.tokens is not None:
            tokens, tok_prov = res.tokens, given
            fields[f"tokens:{given}"] += 1
        elif beams and all(b.tokens is not None for b in beams):
            tokens, tok_prov = sum(int(b.tokens or 0) for b in beams), f"{given}:sum over final beams (lower bound)"
            fields[f"tokens:{given}"] += 1
        elif beams and all(b.tokens is not None or b.text is not None for b in beams):
            todo = [b.text for b in beams if b.tokens is None]
            tokens = sum(int(b.tokens) for b in beams if b.tokens is not None) + sum(self._count_tokens(todo))  # type: ignore[arg-type]
            tok_prov = f"tokenizer:{self.tokenizer_name}:final beams (lower bound)"
            fields[f"tokens:tokenizer:{self.tokenizer_name}"] += 1
        elif res.text is not None:
            tokens = self._count_tokens([res.text])[0]
            tok_prov = f"tokenizer:{self.tokenizer_name}:final text only (lower bound)"
            fields[f"tokens:tokenizer:{self.tokenizer_name}"] += 1
        else:
            raise LineError("result: no 'tokens' and no text to count them from")
        result: dict[str, Any] = {"answer": s.answer, "correct": s.correct}
        prov: dict[str, Any] = {"correct": corr_origin, "answer": ans_origin, "tokens": tok_prov}
        if res.score is not None:
            sc, raw = self._score(run, Sample(score=res.score), "result: ")
            result["score"] = sc
            if raw is not None:
                result["raw_score"] = raw
        if self.keep_text and res.text is not None:
            result["text"] = res.text
        out_beams = []
        for i, b in enumerate(beams):
            d: dict[str, Any] = {}
            if b.has_answer:
                d["answer"] = b.answer
            if b.tokens is not None:
                d["tokens"] = b.tokens
            if b.score is not None:
                d["score"], raw = self._score(run, b, f"result.beams[{i}]: ")
                if raw is not None:
                    d["raw_score"] = raw
            if b.correct is not None:
                d["correct"] = b.correct
            if self.keep_text and b.text is not None:
                d["text"] = b.text
            out_beams.append(d)
        if out_beams:
            result["beams"] = out_beams
        # scorer tokens
        if run.scorer_tokens is not None or res.scorer_tokens is not None:
            scorer = int(run.scorer_tokens if run.scorer_tokens is not None else res.scorer_tokens)  # type: ignore[arg-type]
            prov["scorer_tokens"] = given
        elif any(b.score is not None for b in beams) or res.score is not None:
            scorer = p * max(len(beams), 1) + tokens
            prov["scorer_tokens"] = "modelled:prompt+generated tokens (final beams; lower bound)"
        else:
            scorer = 0
            prov["scorer_tokens"] = "none:not given"
        # latency rounds
        approx = ""
        its = res.iterations or []
        if its and all("width" in it and "max_gen_tokens" in it for it in its):
            rounds = [Round(int(it.get("prompt_tokens", p)), int(it["width"]), int(it["max_gen_tokens"])) for it in its]
        elif run.width is not None:
            # a declared width: the tokens are that many parallel sequences of one round
            rounds = [Round(p, run.width, math.ceil(tokens / run.width))]
            approx = f":one round of width {run.width} (declared)"
        else:
            width = int(run.params.get("n") or len(beams) or 1)
            rounds = [Round(p, width, math.ceil(tokens / width))]
            src = "params.n" if run.params.get("n") else "final beams" if beams else "no width declared"
            approx = f":one-round approximation (width {width}, {src})"
        seconds, source, prov["seconds"] = self._seconds(
            run.seconds if run.seconds is not None else res.seconds, [], rounds, given, fields, approx)
        params = dict(run.params)
        if run.method != run.strategy:
            params["method"] = run.method
        rec: dict[str, Any] = {
            "query_id": run.query_id, "config_id": config_id_for(run, None), "strategy": run.strategy,
            "params": params, "seed": run.seed, "result": result, "tokens": int(tokens), "scorer_tokens": scorer,
            "seconds": seconds, "seconds_source": source, "rounds": [r.__dict__ for r in rounds], "provenance": prov,
        }
        if run.strategy == "beam_search":
            rec["iterations"] = its
        return rec

    def _pool_config(self, run: Run) -> str:
        """One config per pool source whatever a line's K: ``pool:n=<largest K of that source>``."""
        assert run.samples is not None
        return config_id_for(run, self._pool_n.get(pool_signature(run), len(run.samples)))

    def key_of(self, run: Run) -> tuple[str, str, int]:
        if run.samples is not None:
            return (run.query_id, self._pool_config(run), run.seed)
        return (run.query_id, config_id_for(run, None), run.seed)

    def _scan_pool_sizes(self, reader: Reader, stored_keys: set[tuple[str, str, int]]) -> None:
        """First pass: the largest pool of each pool source (and of the cache's own pool configs), so
        short pools join their source's config instead of becoming configs of their own."""
        sizes: dict[str, int] = {}
        for file, line, obj in reader:
            if isinstance(obj, LineError):
                continue
            try:
                run = parse_run(obj, file, line, default_score_scale=self.score_scale)
            except LineError:
                continue  # reported by the main pass
            if run.samples is not None:
                sig = pool_signature(run)
                sizes[sig] = max(sizes.get(sig, 0), len(run.samples))
        stored: dict[str, int] = {}
        for cid in {k[1] for k in stored_keys}:
            m = re.match(r"^pool:n=(\d+)(,.*)?$", cid)
            if m:
                sig = "pool:n=0" + (m.group(2) or "")
                stored[sig] = max(stored.get(sig, 0), int(m.group(1)))
        # an extended cache keeps its config when the new pools fit in it
        self._pool_n = {sig: (stored[sig] if stored.get(sig, 0) >= k else k) for sig, k in sizes.items()}

    def build_record(self, run: Run, given: str) -> tuple[dict[str, Any], list[int], Counter]:
        """The validated cache record for one run, its prompt token ids and its field origins."""
        prompt_ids = self._prompt(run)
        fields: Counter = Counter()
        if run.strategy == "sample_pool":
            rec = self._pool_record(run, prompt_ids, fields, given)
        else:
            rec = self._search_record(run, prompt_ids, fields, given)
        rec["provenance"]["source"] = f"{Path(run.file).name}:{run.line}"
        if "tokenizer:" in rec["provenance"]["tokens"] and not self.tokens_exact:
            rec["provenance"]["tokens_approximate"] = (
                f"counted with {self.tokenizer_name}, not the generating model's tokenizer")
            fields["tokens_approximate"] += 1
        try:
            validate_record(rec, run.where)
        except CacheError as exc:
            raise LineError(str(exc).removeprefix(f"{run.where}: ")) from exc
        return rec, prompt_ids, fields

    # -- main loop --------------------------------------------------------------------------------
    def run(self, reader: Reader, total: int | None = None) -> ImportSummary:
        """Import everything the reader yields; returns the summary (also when stopped)."""
        from tqdm.auto import tqdm

        desc = reader.describe()
        fmt = desc.get("format", getattr(reader, "name", "?"))
        given = f"given:{fmt}"
        summary = ImportSummary(format=fmt, out=str(self.out))
        writer = self._open(reader)
        self._scan_pool_sizes(reader, writer.keys)
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
                    key = self.key_of(run)
                    if key in seen:
                        raise LineError(f"duplicate query/strategy key {key} (first at line {seen[key]})")
                    if writer.has(*key):
                        seen[key] = line
                        questions.setdefault(run.query_id, (sha, f"{Path(file).name}:{line}"))
                        summary.already_present += 1
                        continue
                    if run.query_id in writer.query_ids:
                        self._check_stored_query(run, sha)
                    rec, prompt_ids, fields = self.build_record(run, given)
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
        stored = getattr(self, "_stored_sha", None)
        if stored is None:
            stored = self._stored_sha = {}
            qp = self.out / "queries.jsonl"
            from rollouts.cache import iter_jsonl

            for _, q in iter_jsonl(qp):
                stored[q["query_id"]] = q.get("text_sha256")
        if stored.get(run.query_id) not in (None, sha):
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

