import pytest

from rollouts.strategies.selectors import answer_key, select


def test_majority_ties_go_to_earliest():
    assert select("majority", ["3", "4", "4", "3"]) == 0
    assert select("majority", ["3", "4", "4"]) == 1


def test_none_never_wins_unless_alone():
    assert select("majority", [None, None, "5"]) == 2
    assert select("majority", [None, None]) == 0


def test_normalisation():
    assert answer_key(" $12$. ") == "12"
    assert select("majority", ["12", "$12$", "7"]) == 0


def test_scored_selectors():
    answers, scores = ["1", "2", "2"], [0.9, 0.5, 0.5]
    assert select("best_score", answers, scores) == 0
    assert select("weighted", answers, scores) == 1  # 1.0 for "2" beats 0.9 for "1"
    with pytest.raises(ValueError, match="needs a score"):
        select("weighted", answers, [0.1, None, 0.2])
    with pytest.raises(ValueError, match="unknown selector"):
        select("median", answers)
