"""The strategy registry: menu items parse once into specs that own their config id (the cache schema),
their charged-tokens rule and their run; a fake engine checks the live answers charge what the table charges."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from rollouts.backends.base import Backend, Completion, SamplingSpec
from rollouts.grading import Grade
from rollouts.scorers import ScoreBatch, StepScorer, Trajectory
from rollouts.strategies import (
    BEAM,
    POOL,
    STRATEGIES,
    BeamSpec,
    PoolSpec,
    PromptedQuery,
    parse_serving_action,
    parse_strategy,
)


def test_config_ids_are_the_cache_schema():
    assert parse_strategy({"strategy": "sample_pool", "n": 16}).config_id == "pool:n=16"
    beam = parse_strategy({"strategy": "beam_search", "n": 8, "m": 2, "max_iterations": 4})
    assert beam == BeamSpec(8, 2, 4) and beam.config_id == "beam:N=8,M=2,K=4"
    assert set(STRATEGIES) == {POOL, BEAM} == {"sample_pool", "beam_search"}


def test_items_round_trip_and_serving_actions():
    for item in ({"strategy": "sample_pool", "n": 4}, {"strategy": "beam_search", "n": 4, "m": 2, "max_iterations": 3}):
        assert parse_strategy(item).to_item() == item
        assert list(parse_strategy(item).to_item()) == list(item)  # key order: policy.json is written from it
    pool = PoolSpec(4).serving_action("best_score")
    assert pool == {"strategy": "sample_pool", "n": 4, "selector": "best_score"}
    assert parse_serving_action(pool) == (PoolSpec(4), "best_score")
    beam = BeamSpec(8, 2, 4).serving_action("best_score")  # a beam has no selector
    assert beam == {"strategy": "beam_search", "n": 8, "m": 2, "max_iterations": 4}
    assert parse_serving_action(beam) == (BeamSpec(8, 2, 4), None)


def test_bad_items():
    with pytest.raises(ValueError, match="unknown strategy 'tree'"):
        parse_strategy({"strategy": "tree", "n": 2})
    with pytest.raises(ValueError, match="divisible"):
        parse_strategy({"strategy": "beam_search", "n": 3, "m": 2, "max_iterations": 4})


def test_calibration_runs():
    assert PoolSpec(16).calibration_runs([1, 4, 16]) == [PoolSpec(1), PoolSpec(4), PoolSpec(16)]
    assert BeamSpec(4, 2, 4).calibration_runs([1, 4, 16]) == [BeamSpec(4, 2, 4)]


def test_charged_tokens_rules():
    assert PoolSpec.charged_tokens(10, 3, None) == 10
    assert PoolSpec.charged_tokens(10, 3, "majority") == 10
    assert PoolSpec.charged_tokens(10, 3, "best_score") == 13
    assert PoolSpec.charged_tokens(10, 3, "weighted") == 13
    got = PoolSpec.charged_tokens(np.array([1.0, 2.0]), np.array([0.5, 0.5]), "weighted")
    assert got.tolist() == [1.5, 2.5]
    assert BeamSpec.charged_tokens(10, 3) == 13


class _Engine(Backend):
    """Answers "A<i>" with i + 1 tokens for the i-th sample of a request (beam steps end at once)."""

    def __init__(self) -> None:
        super().__init__(model="fake")

    def generate(self, prompts: list[list[int]], specs: list[SamplingSpec]) -> list[list[Completion]]:
        return [[Completion(f"A{i}", [7] * (i + 1), "stop", [-0.1] * (i + 1)) for i in range(s.n)] for s in specs]

    @property
    def tokenizer(self) -> Any:
        return None


class _Scorer(StepScorer):
    """Scores a sample by its length and charges 2 scorer tokens per trajectory."""

    name = "fake"

    def score(self, question: str, trajectories: list[Trajectory]) -> ScoreBatch:
        return ScoreBatch([len(t.token_ids) / 10 for t in trajectories], [2] * len(trajectories))


def _grade(gold: str | None, text: str) -> Grade:
    return Grade(text, text == gold)


def test_live_answers_charge_as_the_table():
    queries = [PromptedQuery("q0", "?", "A2", [1, 2, 3])]
    sampling = SamplingSpec(max_tokens=8)
    (best,) = PoolSpec(3).answer(_Engine(), queries, sampling, _Scorer(), _grade, 0, "best_score")
    assert best["answer"] == "A2" and best["correct"]  # the longest sample scores highest
    assert best["generated_tokens"] == 1 + 2 + 3 and best["tokens"] == 6 + 3 * 2
    (maj,) = PoolSpec(3).answer(_Engine(), queries, sampling, _Scorer(), _grade, 0, "majority")
    assert maj["tokens"] == 6 and len(maj["rounds"]) == 1
    (beam,) = BeamSpec(2, 2, 2).answer(_Engine(), queries, sampling, _Scorer(), _grade, 0)
    (res,) = BeamSpec(2, 2, 2).run(_Engine(), queries, sampling, _Scorer(), _grade, 0)
    assert res.config_id == "beam:N=2,M=2,K=2" and res.strategy == BEAM
    assert beam["generated_tokens"] == res.tokens and beam["tokens"] == res.tokens + res.scorer_tokens
    assert beam["answer"] == res.result["answer"]
