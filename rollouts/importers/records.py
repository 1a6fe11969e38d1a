"""One third-party run → one validated cache record: the importer's filling rules (module
docstring of :mod:`rollouts.importers`): grading, token counts, scores, seconds and the provenance
of each field, and the config ids that group the runs."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rollouts.cache import CacheError, validate_record
from rollouts.importers.base import FeaturizerLike, Reader, sha256_text
from rollouts.importers.generic import LineError, Run, Sample, parse_run
from rollouts.latency import LatencyModel, Round


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _fmt(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True, separators=(",", ":"))


def config_id_for(run: Run, n: int | None) -> str:
    """Stable config id: ``pool:n=K[,param=value...]`` for pools (as collected), else ``<method>[:params]``."""
    if run.strategy == "sample_pool":
        extra = ",".join(f"{k}={_fmt(v)}" for k, v in sorted(run.params.items()) if k != "n")
        return f"pool:n={n}" + (f",{extra}" if extra else "")
    extra = ",".join(f"{k}={_fmt(v)}" for k, v in sorted(run.params.items()) if k != "method")
    return run.method + (f":{extra}" if extra else "")


def pool_signature(run: Run) -> str:
    """What makes pool lines one config whatever their size: the config id without ``n``."""
    return config_id_for(run, 0)


class RecordBuilder:
    """Builds the cache record of each run with the import's tokenizer, latency model and options;
    remembers each pool source's K (:meth:`scan_pool_sizes`) and the prompt ids per question."""

    def __init__(
        self,
        *,
        featurizer: FeaturizerLike,
        messages_fn: Callable[[str], list[dict[str, str]]],
        tokenizer: Any,
        tokenizer_name: str,
        tokens_exact: bool,
        latency_model: LatencyModel | None,
        latency_label: str | None,
        keep_text: bool,
        score_scale: str,
        grade_timeout_s: int,
    ):
        self.featurizer = featurizer
        self.messages_fn = messages_fn
        self.tokenizer = tokenizer
        self.tokenizer_name = tokenizer_name
        self.tokens_exact = tokens_exact
        self.latency = latency_model
        self.latency_label = latency_label
        self.keep_text = keep_text
        self.score_scale = score_scale
        self.grade_timeout_s = grade_timeout_s
        self._prompt_cache: dict[str, list[int]] = {}
        self._pool_n: dict[str, int] = {}  # pool signature -> the config's K (largest pool)

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
        known = [s for s in sample_seconds if s is not None]
        if sample_seconds and len(known) == len(sample_seconds):
            fields[f"seconds:{given}"] += 1
            return round(max(known), 4), "measured", f"{given}:max over samples"
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
        tokens, tok_prov = self._search_tokens(res, beams, fields, given)
        result = self._search_result(run, res, s, beams)
        prov: dict[str, Any] = {"correct": corr_origin, "answer": ans_origin, "tokens": tok_prov}
        scorer, prov["scorer_tokens"] = self._search_scorer_tokens(run, res, beams, p, tokens, given)
        rounds, approx, its = self._search_rounds(run, res, beams, p, tokens)
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

    def _search_tokens(self, res: Any, beams: list[Any], fields: Counter, given: str) -> tuple[int, str]:
        """The generated tokens of a search result and their origin (given, summed or counted)."""
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
        return tokens, tok_prov

    def _search_result(self, run: Run, res: Any, s: Sample, beams: list[Any]) -> dict[str, Any]:
        """The record's ``result``: the graded final answer, its score and the final beams."""
        result: dict[str, Any] = {"answer": s.answer, "correct": s.correct}
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
        return result

    @staticmethod
    def _search_scorer_tokens(run: Run, res: Any, beams: list[Any], p: int, tokens: int, given: str) -> tuple[int, str]:
        """The scorer's tokens (given, or modelled as the prompt + generated tokens it read) and their origin."""
        if run.scorer_tokens is not None or res.scorer_tokens is not None:
            scorer = int(run.scorer_tokens if run.scorer_tokens is not None else res.scorer_tokens)  # type: ignore[arg-type]
            origin = given
        elif any(b.score is not None for b in beams) or res.score is not None:
            scorer = p * max(len(beams), 1) + tokens
            origin = "modelled:prompt+generated tokens (final beams; lower bound)"
        else:
            scorer = 0
            origin = "none:not given"
        return scorer, origin

    @staticmethod
    def _search_rounds(run: Run, res: Any, beams: list[Any], p: int, tokens: int) -> tuple[list[Round], str, list]:
        """The engine rounds the latency model prices (the iterations, or one round of the declared or
        inferred width, said in ``approx``) and the iterations themselves."""
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
        return rounds, approx, its

    def _pool_config(self, run: Run) -> str:
        """One config per pool source whatever a line's K: ``pool:n=<largest K of that source>``."""
        assert run.samples is not None
        return config_id_for(run, self._pool_n.get(pool_signature(run), len(run.samples)))

    def key_of(self, run: Run) -> tuple[str, str, int]:
        if run.samples is not None:
            return (run.query_id, self._pool_config(run), run.seed)
        return (run.query_id, config_id_for(run, None), run.seed)

    def scan_pool_sizes(self, reader: Reader, stored_keys: set[tuple[str, str, int]]) -> None:
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
