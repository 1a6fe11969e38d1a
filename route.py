"""Route live queries with an exported policy: the query's features, the ONNX policy's choice, and
that choice run on the engine, with the prompt, featurizer, sampling, scorer and strategy code of the
collection the policy was trained on (``policy.json``'s ``serving`` spec, written at export).

    python route.py --export runs/<name>/export --lambda-tokens 1e-4 --lambda-seconds 0.05 "What is 17 + 25?"
    python route.py --export runs/<name>/export --dataset jsonl:queries.jsonl --limit 20   # with references
    python route.py --export ... --backend openai --backend-options "{base_url: 'http://127.0.0.1:8000/v1'}"

One JSON line per query on stdout, printed as each batched engine call finishes (so not in input
order: ``index`` is the question's position): ``question``, ``action`` (menu id), ``params`` (the strategy run),
``answer``, ``correct`` (only with a reference answer), ``tokens`` (charged as the cache charges them:
generated tokens, plus the scorer's for score-based selectors), ``generated_tokens`` (what the engine
generated: a race's cancelled samples count the tokens streamed before the cancel), for a race
``samples_launched`` / ``samples_finished`` / ``samples_cancelled``, ``seconds`` (wall time of the engine
call that ran the query; queries routed to the same action share one batched call, ``batch`` says
how many) and ``lambda_tokens`` / ``lambda_seconds``. A question that is empty, not valid UTF-8,
longer than ``--max-chars`` or whose prompt does not fit the engine's context with the generation
budget (rollouts/questions.py) gets a line with ``index``, ``question`` and ``error`` instead, as does
each question of a batch the engine fails on; the others still run, and the exit status is 1. Errors (no export, an export without a serving
spec, a missing model, an engine that does not start, a bad λ or dataset) print one
``error: ...`` line and exit 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from rollouts.errors import TTCError
from rollouts.questions import DEFAULT_MAX_CHARS, QuestionLimits, check_question
from rollouts.strategies.race import SAMPLE_COUNTS

Answers = list[str | None] | None  # the questions' reference answers (None: none has one)


class RouteError(TTCError):
    """Bad route.py input: no questions, a bad option, an export of another kind."""


class LiveRouter:
    """An exported policy plus the engine and featurizer it was trained against."""

    kind = "allocate"  # the env kind of the exports this router runs (policy.json "kind")

    def __init__(
        self,
        export_dir: str | Path,
        backend: Any = None,
        backend_kind: str | None = None,
        backend_options: dict[str, Any] | None = None,
    ) -> None:
        from policies.onnx_policy import OnnxPolicy
        from rollouts.backends import SamplingSpec, make_backend
        from rollouts.console import note
        from rollouts.features import Featurizer
        from rollouts.models import resolve_model
        from rollouts.scorers import scorer_from_description

        self.policy = OnnxPolicy(export_dir)
        kind = self.policy.doc.get("kind", "allocate")
        if kind != self.kind:  # a one-shot and a sequential export need different routers (--mode)
            what = "sequential (ttc/Escalate-v0)" if kind == "escalate" else "one-shot (ttc/Allocate-v0)"
            mode = "sequential" if kind == "escalate" else "oneshot"
            raise RouteError(f"{export_dir}: a {what} export; route it with --mode {mode}")
        spec = self.policy.doc.get("serving")
        if not spec:
            raise RouteError(
                f"{export_dir}: the export has no serving spec, so nothing says how to reproduce its rollouts "
                "live (it was trained on an imported cache, or exported without its cache at hand: "
                "python -m policies.export CHECKPOINT DIR where the cache is)"
            )
        self.serving = spec
        fz = spec["featurizer"]
        if int(fz["dim"]) != self.policy.feature_dim:
            raise RouteError(
                f"the featurizer gives {fz['dim']} features, the policy expects {self.policy.feature_dim}"
            )
        self.model_path = resolve_model(spec["model"])
        note(f"loading the featurizer ({spec['model']}, layer {fz['layer']})")
        self.featurizer = Featurizer(self.model_path, layer=int(fz["layer"]), name=spec["model"])
        self._backend = backend
        self.backend_kind = backend_kind or spec["backend"]
        self._make_backend = lambda: make_backend(self.backend_kind, self.model_path, **(backend_options or {}))
        self.scorer = scorer_from_description(spec["scorer"])
        s = spec["sampling"]
        self.sampling = SamplingSpec(
            temperature=s["temperature"], top_p=s["top_p"], max_tokens=s["max_tokens"], logprobs=True
        )
        self.suffix, self.system = s["prompt_suffix"], s.get("system_prompt")
        self.limits = QuestionLimits.for_engine(
            self._context_length(backend_kind or spec["backend"], backend_options or {}), s["max_tokens"]
        )

    def _context_length(self, kind: str, options: dict[str, Any]) -> int:
        """The engine's context length in tokens, known before any question runs: for ``openai``, what the
        server reports in its ``/v1/models`` (vLLM does), bounded by a ``max_model_len`` option (as the
        backend bounds it); else the option, else the offline vLLM backend's default, else the model's own."""
        if kind == "openai":
            import inspect

            from rollouts.backends.openai_http import OpenAIBackend
            from rollouts.serving.upstream import max_model_len

            default_url = inspect.signature(OpenAIBackend).parameters["base_url"].default
            reported = max_model_len(str(options.get("base_url", default_url)), options.get("api_key"))
            known = [int(n) for n in (options.get("max_model_len"), reported) if n is not None]
            if known:
                return min(known)
        if "max_model_len" in options:
            return int(options["max_model_len"])
        if kind == "vllm":
            import inspect

            from rollouts.backends.vllm_offline import VLLMBackend

            return int(inspect.signature(VLLMBackend).parameters["max_model_len"].default)
        return int(getattr(self.featurizer.lm.config, "max_position_embeddings", 2048))

    def check(self, question: Any) -> str | None:
        """Why a question is refused before routing (rollouts/questions.py), None if it can run."""
        from rollouts.prompts import build_messages, prompt_token_ids

        tok = self.featurizer.tokenizer
        _, problem = check_question(
            question, self.limits, lambda q: prompt_token_ids(tok, build_messages(q, self.suffix, self.system))
        )
        return problem

    @property
    def backend(self) -> Any:
        """The engine, started on first use (choosing an action needs only the featurizer)."""
        if self._backend is None:
            from rollouts.console import phase

            with phase(f"starting the {self.backend_kind} engine ({self.serving['model']})"):
                self._backend = self._make_backend()
        return self._backend

    def prompted(
        self, questions: list[str], answers: Answers = None, progress: bool = False
    ) -> tuple[list[Any], Any]:
        """The prompted queries (the served model's chat template, as at collection) and their
        hidden-state features, computed as the collection computed them (one-shot and sequential)."""
        from rollouts.prompts import build_messages, prompt_token_ids
        from rollouts.strategies.base import PromptedQuery

        answers = answers or [None] * len(questions)
        tok = self.featurizer.tokenizer  # the served model's own tokenizer and chat template
        prompted = [
            PromptedQuery(
                "live-" + hashlib.sha256(q.encode()).hexdigest()[:16],
                q,
                a,
                prompt_token_ids(tok, build_messages(q, self.suffix, self.system)),
            )
            for q, a in zip(questions, answers, strict=True)
        ]
        return prompted, self.featurizer.features([p.prompt_ids for p in prompted], progress=progress)

    def choose(self, questions: list[str], answers: Answers = None, lambda_tokens: float = 0.0,
               lambda_seconds: float = 0.0, progress: bool = False) -> tuple[list[Any], list[str]]:
        """The prompted queries (the served model's chat template, as at collection) and the policy's
        action id for each, from hidden-state features computed as the collection computed them."""
        prompted, feats = self.prompted(questions, answers, progress)
        chosen = self.policy.act_index(
            feats, [len(p.prompt_ids) for p in prompted], lambda_tokens, lambda_seconds
        )
        return prompted, [self.policy.menu[int(i)] for i in chosen]

    def run_action(self, group: list[Any], action: str, backend: Any = None) -> list[dict[str, Any]]:
        """Run one menu action for these prompted queries in one batched engine call (the strategy code
        of the collection). Per query: ``answer``, ``text`` (the selected completion), ``correct`` (None
        without a reference), ``tokens`` (charged as the cache charges them), ``generated_tokens`` (every
        token the engine generated for it), ``rounds`` (its engine calls) and ``finish_reason`` ("length"
        when the selected completion was cut at the token budget). ``backend``: another engine view
        than :attr:`backend` (serve.py's cancellable one)."""
        from rollouts.grading import grade
        from rollouts.strategies import parse_serving_action

        strategy, selector = parse_serving_action(self.serving["actions"][action])  # written by serving_spec
        seed = int(self.serving.get("seed", 0))
        engine = self.backend if backend is None else backend
        return strategy.answer(engine, group, self.sampling, self.scorer, grade, seed, selector)

    def route(self, questions: list[str], answers: Answers = None, lambda_tokens: float = 0.0,
              lambda_seconds: float = 0.0) -> list[dict[str, Any]]:
        """Choose and run an action for each question; one result dict per question, in order."""
        results: dict[int, dict[str, Any]] = {}
        for batch in self.route_batches(questions, answers, lambda_tokens, lambda_seconds):
            results.update(batch)
        return [results[i] for i in range(len(questions))]

    def route_batches(self, questions: list[str], answers: Answers = None, lambda_tokens: float = 0.0,
                      lambda_seconds: float = 0.0, progress: bool = False) -> Iterator[dict[int, dict[str, Any]]]:
        """Like :meth:`route`, yielding ``{question index: result}`` as each batched engine call ends.

        A batch the engine fails on yields ``{"question", "action", "error"}`` rows for its questions.
        Questions are not checked here: pass only those :meth:`check` accepts.
        """
        from rollouts.backends.base import BackendError

        prompted, actions = self.choose(questions, answers, lambda_tokens, lambda_seconds, progress)
        _ = self.backend  # started here, so no query's seconds include the engine start
        for action in dict.fromkeys(actions):  # one batched engine call per chosen action
            idx = [i for i, a in enumerate(actions) if a == action]
            group = [prompted[i] for i in idx]
            run = self.serving["actions"][action]  # a pool budget or a beam config (serving_spec)
            t0 = time.perf_counter()
            try:
                done = self.run_action(group, action)
            except (BackendError, ValueError) as exc:  # the engine refused this batch; the others still run
                msg = " ".join(f"engine call failed: {type(exc).__name__}: {exc}".split())
                yield {i: {"question": prompted[i].question, "action": action, "error": msg} for i in idx}
                continue
            seconds = time.perf_counter() - t0
            results: dict[int, dict[str, Any]] = {}
            for i, o in zip(idx, done):
                results[i] = {
                    "question": prompted[i].question,
                    "action": action,
                    "params": run,
                    "answer": o["answer"],
                    **({"correct": bool(o["correct"])} if prompted[i].answer is not None else {}),
                    "tokens": int(o["tokens"]),
                    "generated_tokens": int(o["generated_tokens"]),
                    **{k: o[k] for k in SAMPLE_COUNTS if k in o},  # a race's samples
                    "seconds": round(seconds, 3),
                    "batch": len(idx),
                    "lambda_tokens": lambda_tokens,
                    "lambda_seconds": lambda_seconds,
                }
            yield results


def make_parser() -> argparse.ArgumentParser:
    from rollouts.console import HelpFormatter

    p = argparse.ArgumentParser(
        description=textwrap.fill(" ".join(__doc__.split("\n\n")[0].split()), 100),
        formatter_class=HelpFormatter,
        epilog="Exit status: 0 every question answered, 1 some refused or failed (their lines have "
        "'error'), 2 nothing routed (bad export, λ, dataset, engine...).",
    )
    p.add_argument("questions", nargs="*", help="questions to route (no reference answer)")
    p.add_argument(
        "--export",
        required=True,
        help="an export folder (policy.json + policy.onnx), e.g. runs/<name>/export",
    )
    p.add_argument(
        "--dataset",
        help="also route a dataset, as collect.py names them: jsonl:<path>, hf:<id>[:split], arith:<seed>",
    )
    p.add_argument("--limit", type=int, help="at most this many dataset queries (default: all)")
    p.add_argument("--offset", type=int, default=0, help="skip this many dataset queries first")
    p.add_argument("--lambda-tokens", type=float, default=0.0, help="price of one generated token (λ_T)")
    p.add_argument("--lambda-seconds", type=float, default=0.0, help="price of one second of latency (λ_L)")
    p.add_argument("--backend", choices=["vllm", "openai"], help="the engine (default: the collection's)")
    p.add_argument(
        "--backend-options",
        default="{}",
        help="YAML mapping passed to the backend, e.g. \"{base_url: 'http://127.0.0.1:8000/v1'}\" or "
        "\"{max_model_len: 2048}\" (also the context length questions are checked against; default: {}, the "
        "backend's own settings)",
    )
    p.add_argument(
        "--max-chars",
        type=int,
        default=DEFAULT_MAX_CHARS,
        help="refuse questions longer than this many characters (default: %(default)s)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they go to stderr)")
    p.add_argument(
        "--mode",
        choices=["oneshot", "sequential"],
        default="oneshot",
        help="oneshot: a ttc/Allocate-v0 export; sequential: a ttc/Escalate-v0 export, decided round by round",
    )
    return p


def _preview(question: Any, n: int = 200) -> Any:
    return question[:n] + "..." if isinstance(question, str) and len(question) > n else question


def main(argv: list[str] | None = None) -> int:
    from rollouts.console import plain_warnings

    plain_warnings()
    args = make_parser().parse_args(argv)
    from rollouts.console import results_only_stdout

    # stdout carries the JSON lines alone: the engine's logs (vLLM prints to stdout, from this process
    # and its workers, also when it shuts down at exit) go to stderr, to the end of the process
    with results_only_stdout(restore=False) as out:
        return _main(args, out)


def _main(args: argparse.Namespace, out: TextIO) -> int:
    import yaml
    from tqdm.auto import tqdm

    from env.outcomes import validate_lambda
    from rollouts.config import load_yaml_text
    from rollouts.datasets import load_queries
    from rollouts.errors import PATH_INPUT_ERRORS, report

    def emit(row: dict[str, Any]) -> None:
        print(json.dumps(row), file=out, flush=True)

    failed = 0
    try:
        lt = validate_lambda("--lambda-tokens", args.lambda_tokens)
        ls = validate_lambda("--lambda-seconds", args.lambda_seconds)
        if args.max_chars < 1:
            raise RouteError(f"--max-chars must be >= 1, got {args.max_chars}")
        questions: list[str] = list(args.questions)
        answers: list[str | None] = [None] * len(questions)
        if args.dataset:
            # an undecodable line becomes one refused question, not the end of the run
            queries = load_queries(args.dataset, args.limit, args.offset, invalid_utf8="keep")
            questions += [q.question for q in queries]
            answers += [q.answer for q in queries]
        if not questions:
            raise RouteError("no questions: give them as arguments or with --dataset SOURCE")
        try:
            options = load_yaml_text(args.backend_options) or {}
        except yaml.YAMLError as exc:
            raise RouteError(f"--backend-options: malformed YAML ({exc})") from exc
        if not isinstance(options, dict):
            raise RouteError(f"--backend-options must be a YAML mapping, got {args.backend_options!r}")
        sequential = None
        if args.mode == "sequential":  # policies/sequential_router.py: rounds drawn live, step by step
            from policies.sequential_router import SequentialRouter

            sequential = SequentialRouter(LiveRouter, args.export, backend_kind=args.backend, backend_options=options)
            router = sequential.live
        else:
            router = LiveRouter(args.export, backend_kind=args.backend, backend_options=options)
        router.limits = QuestionLimits(args.max_chars, router.limits.max_prompt_tokens)
        good = []
        for i, q in enumerate(questions):  # each bad question gets its own error line; the rest run
            problem = router.check(q)
            if problem is None:
                good.append(i)
            else:
                failed += 1
                emit({"index": i, "question": _preview(q), "error": problem})
        if good:
            _ = router.backend  # started now: the progress bar's clock and no query's seconds include it
        if good and sequential is not None:  # one question at a time, printed as each one finishes
            rows = sequential.route_iter([questions[i] for i in good], [answers[i] for i in good], lt, ls)
            for j, row in enumerate(rows):
                emit({"index": good[j], **row})
        elif good:
            bar = tqdm(total=len(good), desc="route", unit="query", disable=args.no_progress, file=sys.stderr)
            batches = router.route_batches(
                [questions[i] for i in good], [answers[i] for i in good], lt, ls, progress=not args.no_progress
            )
            for batch in batches:  # printed as each batched engine call finishes
                for j, row in sorted(batch.items()):
                    failed += "error" in row
                    emit({"index": good[j], **row})
                bar.update(len(batch))
            bar.close()
    except PATH_INPUT_ERRORS as exc:
        return report(exc)
    if failed:
        print(f"{failed} of {len(questions)} questions refused or failed (lines with 'error')", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":  # vLLM's engine spawns workers: keep the entry point guarded
    raise SystemExit(main())
