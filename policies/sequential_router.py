"""Live step-by-step routing with a sequential (``ttc/Escalate-v0``) export: ``route.py --mode sequential``.

Per question: the same prompt and hidden-state features as the collection; then, step by step, the
ONNX step policy sees ``[query features, encoded λ, seen]`` (``seen`` rebuilt by
:class:`env.seen.SeenState` from the samples the engine returned, the env's own code) and
either draws k more samples (one engine call with n = k; the same prompt, so vLLM's prefix cache serves
later rounds), stops and answers with a selector (``select``), or runs a beam search (``BeamSpec``).
Questions run one after another, so each round's seconds are those of the query alone, as the cache's
latency model defines them.

The two watches of ``env.watch``, as the env plays them:

- ``round``: a draw runs the pool strategy with n = k (the collector's code) and the policy decides
  once the whole round is back;
- ``finish``: a draw is one streaming request of k samples (:meth:`Backend.generate_watched`, the
  races' code); each sample that finishes is graded, scored and fed to :meth:`SeenState.finish`, and the
  policy decides right there: ``wait`` reads on, a stop or a beam closes the stream, which cancels the
  samples still running on the engine (they keep what they generated). Once the round has finished, the
  policy decides as between rounds.

Each result carries ``rounds``, ``widths``, ``round_tokens`` (what the engine generated for every
launched sample, cancelled ones included), ``round_seconds`` (measured) and ``predicted_round_seconds``
and ``predicted_round_tokens`` (the cache's latency model for the same round up to its last decode
step, and the lockstep model's tokens: what the env charges),
``samples_launched`` / ``samples_finished`` / ``samples_cancelled``, plus ``tokens``/``seconds`` totals
and the ``steps`` taken (with the finish watch its ``wait`` steps too).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from env.escalate_menu import EscalateMenu
from env.seen import SeenState, SeenUnits, menu_seen_features, new_state, step_mask
from policies.sequential_gate import floor_decider
from rollouts.scorers import Trajectory
from rollouts.strategies import PoolSpec, StrategySpec, parse_serving_action
from rollouts.strategies.base import request_seed
from rollouts.strategies.pool import pool_sample
from rollouts.strategies.race import SAMPLE_COUNTS
from rollouts.strategies.selectors import CONFIDENCE_VOTE, answer_key


def confidences(samples: list[dict[str, Any]]) -> list[float] | None:
    """Each sample's confidence, exp of its mean token log-prob (``mean_logprob``, computed by the pool
    strategy as the collector computes it), or None when a sample has none (the engine returned no
    log-probs): a ``confidence`` rule floor then refuses to decide."""
    lps = [s.get("mean_logprob") for s in samples]
    if any(x is None for x in lps):
        return None
    return [math.exp(float(x)) for x in lps if x is not None]


class _Look:
    """One question's decision point: writes the ``seen`` features of a :class:`SeenState` into the
    observation, masks the step menu, asks ``decide`` and records the step taken."""

    def __init__(self, obs: np.ndarray, n_base: int, beams_ok: list[bool], decide: Any):
        self.obs, self.n_base, self.beams_ok, self.decide_fn = obs, n_base, beams_ok, decide
        self.steps: list[str] = []

    def decide(self, router: SequentialRouter, st: SeenState) -> int:
        st.features(router.units, self.obs[0, self.n_base :])
        mask = step_mask(router.menu, st, self.beams_ok)[None, :]
        a = int(self.decide_fn(self.obs, mask, st))
        self.steps.append(router.actions[a].id)
        return a


class SequentialRouter:
    """A sequential export plus the engine and featurizer it was trained against (see module doc).

    ``live_router_cls`` is ``route.LiveRouter`` (passed in, so route.py's own error classes are the ones
    raised): it loads the export, serving spec, featurizer, engine, sampling and scorer for both modes;
    this class adds the decision loop."""

    def __init__(self, live_router_cls: type, export_dir: Any, **kwargs: Any) -> None:
        sequential_cls = type("SequentialLiveRouter", (live_router_cls,), {"kind": "escalate"})
        self.live = live_router = sequential_cls(export_dir, **kwargs)
        doc = live_router.policy.doc
        esc = doc["escalate"]
        self.menu = EscalateMenu.from_dict(esc)
        if len(self.menu.pools) > 1:
            from rollouts.errors import ConfigError

            raise ConfigError(
                f"{export_dir}: live routing draws from the one pool its serving spec runs, this export draws from "
                f"{len(self.menu.pools)} ({', '.join(self.menu.pool_configs)}); train with env.pools: primary to serve it"
            )
        self.actions = self.menu.actions
        self.units = SeenUnits.from_dict(esc["units"])
        self.has_scores = bool(esc["has_scores"])
        lm = esc.get("latency_model")  # the training cache's: what the env charged for a round
        self.latency = None
        if lm:
            from rollouts.latency import LatencyModel

            self.latency = LatencyModel.from_dict(lm)
        self.gate, self.floor_policy = None, None
        if doc.get("sequential_gate"):  # the rule floor: played where the gate is closed
            from pathlib import Path

            from policies.onnx_policy import OnnxPolicy
            from policies.sequential_gate import ONESHOT_FLOOR_DIR, SequentialGate

            self.gate = SequentialGate.from_dict(doc["sequential_gate"])
            if any(f.kind == "oneshot" for row in self.gate.floors for f in row):
                self.floor_policy = OnnxPolicy(Path(export_dir) / ONESHOT_FLOOR_DIR)
        serving = live_router.serving["actions"]  # the beam configs the serving spec can run (else None)
        self.beam_runs: list[StrategySpec | None] = [
            parse_serving_action(serving[c])[0] if c in serving else None for c in self.menu.beam_configs
        ]

    def route(self, questions: list[str], answers: list[str | None] | None = None, lambda_tokens: float = 0.0,
              lambda_seconds: float = 0.0) -> list[dict[str, Any]]:
        """One result dict per question, in order."""
        return list(self.route_iter(questions, answers, lambda_tokens, lambda_seconds))

    def route_iter(self, questions: list[str], answers: list[str | None] | None = None, lambda_tokens: float = 0.0,
                   lambda_seconds: float = 0.0) -> Iterator[dict[str, Any]]:
        """Route the questions one after another, yielding each result as it finishes."""
        from rollouts.grading import grade

        live = self.live
        prompted, feats = live.prompted(questions, answers)
        base = live.policy.observation(
            feats, [len(p.prompt_ids) for p in prompted], lambda_tokens, lambda_seconds
        )
        backend = live.backend  # started before the first round, so no round's seconds include the start
        gate = self.gate
        floor = None if gate is None or gate.is_open(lambda_tokens, lambda_seconds) else gate.floor(lambda_tokens, lambda_seconds)
        for i, q in enumerate(prompted):
            if floor is not None and floor.kind == "oneshot":
                yield self._oneshot_floor(q, feats[i : i + 1], lambda_tokens, lambda_seconds)
                continue
            if floor is not None and floor.kind == "static" and not floor.plan:  # a race: run as the one-shot action
                yield self._run_oneshot(q, floor.name, lambda_tokens, lambda_seconds, floor.name)
                continue
            decide = self._network if floor is None else floor_decider(floor, self.menu)
            out = self._one(backend, q, base[i], grade, lambda_tokens, lambda_seconds, decide)
            if gate is not None:
                out["floor"] = None if floor is None else floor.name
            yield out

    def _network(self, obs: np.ndarray, mask: np.ndarray, st: SeenState) -> int:
        """The ONNX step policy's action (where the gate is open, or the export has none)."""
        _, action = self.live.policy.session.run(["logits", "action"], {"obs": obs, "mask": mask})
        return int(action[0])

    def _oneshot_floor(self, q: Any, feats: np.ndarray, lt: float, ls: float) -> dict[str, Any]:
        """The one-shot floor: the embedded one-shot export (``floor_oneshot/``, behind its own gate)
        picks an action of the serving menu, run as route.py's one-shot mode runs it."""
        assert self.floor_policy is not None  # loaded with the export when a region's floor is one
        (a,) = self.floor_policy.act_index(feats, [len(q.prompt_ids)], lt, ls)
        return self._run_oneshot(q, self.floor_policy.menu[int(a)], lt, ls, "oneshot")

    def _run_oneshot(self, q: Any, action: str, lt: float, ls: float, floor: str) -> dict[str, Any]:
        """Serving action ``action`` run as route.py's one-shot mode runs it (a race streams and cancels)."""
        t0 = time.perf_counter()
        (o,) = self.live.run_action([q], action)
        return {
            "question": q.question, "mode": "sequential", "steps": [action], "final": action,
            "answer": o["answer"], **({"correct": bool(o["correct"])} if q.answer is not None else {}),
            "tokens": int(o["tokens"]), "generated_tokens": int(o["generated_tokens"]),
            **{k: o[k] for k in SAMPLE_COUNTS if k in o}, "seconds": round(time.perf_counter() - t0, 3),
            "lambda_tokens": lt, "lambda_seconds": ls, "floor": floor,
        }  # fmt: skip

    def _one(self, backend, q, base_obs, grade_fn, lt, ls, decide) -> dict[str, Any]:
        seed = int(self.live.serving.get("seed", 0))
        st = new_state(self.menu)
        drawn: list[dict[str, Any]] = []  # the finished samples, in the order SeenState recorded them
        obs = np.zeros((1, len(base_obs) + len(menu_seen_features(self.menu))), dtype=np.float32)
        obs[0, : len(base_obs)] = base_obs
        look = _Look(obs, len(base_obs), [r is not None for r in self.beam_runs], decide)
        predicted: list[float] = []
        modelled_tokens: list[float] = []  # the lockstep model's tokens per round (the env's charge)
        cancelled = 0
        act = self.actions[look.decide(self, st)]
        while act.kind == "draw":
            round_seed = seed + 7919 * (len(st.widths) + 1)
            if self.menu.watch == "finish":
                nxt, n_cancelled, modelled = self._watch_round(backend, q, act.k, st, grade_fn, round_seed, look, drawn)
                cancelled += n_cancelled
                modelled_tokens.append(modelled)
                predicted.append(self._predicted(q, act.k, st.step_now))
            else:
                drawn += self._draw(backend, q, act.k, st, grade_fn, round_seed, predicted)
                nxt = None
                modelled_tokens.append(st.round_tokens[-1])
            if getattr(decide, "stop_selector", None) == CONFIDENCE_VOTE and not st.has_confidence:
                from rollouts.errors import ConfigError

                raise ConfigError("the floor here is a confidence rule, which needs each sample's token "
                                  "log-probs, and the engine returned a sample without them")
            act = self.actions[look.decide(self, st) if nxt is None else nxt]
        if act.kind == "stop":  # a rule floor may answer with a selector that is no step action
            sel = getattr(decide, "stop_selector", None) or act.selector or "majority"
            pick = drawn[st.answer(sel)]
            st.tokens += st.stop_tokens(sel)
            answer, correct, beam = pick["answer"], pick["correct"], None
        else:
            answer, correct, beam = self._beam(backend, q, act.config_id, st, grade_fn, seed)
        return {
            "question": q.question, "mode": "sequential", "steps": look.steps, "final": act.id, "answer": answer,
            **({"correct": bool(correct)} if q.answer is not None else {}),
            "rounds": len(st.widths), "widths": list(st.widths),
            "round_tokens": [int(t) for t in st.round_tokens], "round_seconds": [round(s, 3) for s in st.round_seconds],
            "predicted_round_seconds": [round(s, 3) for s in predicted],
            "predicted_round_tokens": [int(t) for t in modelled_tokens], "beam": beam, "tokens": int(st.tokens),
            "generated_tokens": int(sum(st.round_tokens)) + (beam["generated_tokens"] if beam else 0),
            "samples_launched": st.launched, "samples_finished": st.drawn, "samples_cancelled": cancelled,
            "seconds": round(st.seconds, 3), "lambda_tokens": lt, "lambda_seconds": ls,
        }  # fmt: skip

    def _predicted(self, q: Any, width: int, gen: float) -> float:
        """The cache's latency model's seconds for a round of ``width`` samples and ``gen`` decode steps
        (nan when the export has no latency model)."""
        from rollouts.latency import Round

        return math.nan if self.latency is None else self.latency.round_seconds(Round(len(q.prompt_ids), width, int(gen)))

    def _draw(self, backend, q, k: int, st: SeenState, grade_fn, seed: int, predicted: list[float]) -> list[dict]:
        """One whole round of ``k`` more samples (a pool run), added to ``st``; its samples (round watch)."""
        live = self.live
        t0 = time.perf_counter()
        (res,) = PoolSpec(k).run(backend, [q], live.sampling, live.scorer, grade_fn, seed)
        secs = time.perf_counter() - t0
        ss = res.samples or []
        st.add_round(
            [answer_key(s["answer"]) for s in ss],
            [s["tokens"] for s in ss],
            [s["scorer_tokens"] for s in ss],
            [s["score"] for s in ss] if self.has_scores else None,
            secs,
            confidences=confidences(ss),
        )
        predicted.append(self._predicted(q, k, max((s["tokens"] for s in ss), default=0)))
        return ss

    def _watch_round(self, backend, q, k: int, st: SeenState, grade_fn, seed: int, look: _Look,
                     drawn: list[dict[str, Any]]) -> tuple[int | None, int, float]:
        """One round of ``k`` samples streamed and watched finish by finish (finish watch): each finisher
        goes into ``st`` (and ``drawn``), and the policy decides at each finish while samples still run.
        Returns the step action that ended the round early (a stop or a beam: the rest is cancelled on the
        engine) or None when every sample finished, how many samples were cancelled, and the tokens the
        lockstep model charged (every launched sample generating until the last finish seen). The round is
        then charged what the engine really generated for each launched sample and the measured seconds."""
        from dataclasses import replace

        live = self.live
        st.launch(k)
        ended: list[int] = []
        t0 = time.perf_counter()

        def on_finish(_prompt: int, _sample: int, comp: Any) -> bool:
            g = grade_fn(q.answer, comp.text)
            sb = live.scorer.score(q.question, [Trajectory([comp.text], list(comp.token_ids), comp.logprobs)])
            sample = pool_sample(q, comp, g, sb.scores[0], sb.scorer_tokens[0])
            drawn.append(sample)
            conf = confidences([sample])  # None without log-probs
            st.finish(answer_key(g.answer), comp.tokens, sample["scorer_tokens"],
                      sample["score"] if self.has_scores else None, time.perf_counter() - t0,
                      confidence=conf[0] if conf else None)
            if not st.running:  # the round is over: nothing to cancel, the next step is decided after it
                return False
            a = look.decide(self, st)
            if self.actions[a].kind == "wait":
                return False
            ended.append(a)
            return True  # closes the stream: the samples still running are cancelled on the engine

        spec = replace(live.sampling, n=k, seed=request_seed(seed, q.query_id, "pool"))
        (comps,) = backend.generate_watched([q.prompt_ids], [spec], on_finish)
        secs = time.perf_counter() - t0
        st.cancel()
        generated = float(sum(c.tokens for c in comps))  # the engine's count, cancelled samples' tokens included
        modelled = st.round_tokens[-1]
        st.tokens += generated - modelled
        st.seconds += secs - st.round_seconds[-1]
        st.round_tokens[-1], st.round_seconds[-1] = generated, secs
        return (ended[0] if ended else None), sum(1 for c in comps if c.finish_reason == "cancelled"), modelled

    def _beam(self, backend, q, config_id: str | None, st: SeenState, grade_fn, seed: int) -> tuple[Any, Any, dict]:
        """The final beam search ``config_id`` (a beam step's), charged to ``st``: its answer, correctness and summary."""
        assert config_id is not None  # a beam step always names its config
        beam = self.beam_runs[self.menu.beam_configs.index(config_id)]
        assert beam is not None  # the step mask offers only the beams the serving spec can run
        t0 = time.perf_counter()
        (out,) = beam.answer(backend, [q], self.live.sampling, self.live.scorer, grade_fn, seed)
        secs = time.perf_counter() - t0
        st.tokens += out["tokens"]
        st.seconds += secs
        summary = {"config": config_id, "tokens": out["tokens"], "generated_tokens": int(out["generated_tokens"]),
                   "seconds": round(secs, 3)}  # fmt: skip
        return out["answer"], out["correct"], summary
