"""Query sources: the shared real sets (read from ../shared, never copied) and the arithmetic generator."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollouts.arithmetic import TIERS, generate
from rollouts.datasets import DatasetError, load_queries

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not present")


@needs_shared
@pytest.mark.parametrize(
    "rel, first_answer",
    [
        ("arith_word_problems/mawps/singleop.jsonl", None),
        ("arith_word_problems/svamp/test.jsonl", None),
        ("arith_word_problems/asdiv/test.jsonl", None),
        ("gsm8k/test.jsonl", "18"),
        ("math500/test.jsonl", None),
        ("aime/aime_2024.jsonl", None),
    ],
)
def test_shared_sets_load(rel, first_answer):
    path = SHARED / rel
    readme = next(p / "README.md" for p in [path.parent, path.parent.parent] if (p / "README.md").exists())
    text = readme.read_text()
    assert "icense" in text  # each set documents its source and license; we read it, never copy it
    qs = load_queries(f"jsonl:{path}", limit=5)
    assert len(qs) == 5
    assert all(q.question and q.answer for q in qs)
    assert len({q.query_id for q in qs}) == 5
    if first_answer is not None:
        assert qs[0].answer == first_answer


@needs_shared
def test_asdiv_answer_units_are_stripped():
    qs = load_queries(f"jsonl:{SHARED / 'arith_word_problems/asdiv/test.jsonl'}", limit=20)
    assert all("(" not in q.answer for q in qs)


def test_generator_is_seeded_and_graded():
    a, b = generate(seed=3, n=60), generate(seed=3, n=60)
    assert [q.question for q in a] == [q.question for q in b]
    assert generate(seed=4, n=60)[0].question != a[0].question or generate(seed=4, n=60)[1].question != a[1].question
    assert {q.extra["tier"] for q in a} == set(TIERS)
    assert len({q.question for q in a}) == 60
    for q in a:
        x, op, y = q.question.removeprefix("What is ").removesuffix("?").split(" ")
        expect = {"+": int(x) + int(y), "-": int(x) - int(y), "times": int(x) * int(y)}[op]
        assert q.answer == str(expect)


def test_unknown_source():
    with pytest.raises(DatasetError, match="unknown dataset source"):
        load_queries("ftp:somewhere")
