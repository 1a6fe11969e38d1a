import threading

from rollouts.grading import grade


def test_math_verify_equivalence():
    assert grade("30", "6 times 5 is 30.").correct
    assert not grade("30", "The answer is 30.5").correct
    assert grade("\\frac{1}{2}", "so the answer is \\boxed{0.5}").correct
    g = grade("7", "I don't know")
    assert g.answer is None and not g.correct


def test_grading_works_outside_the_main_thread():
    out = []
    t = threading.Thread(target=lambda: out.append(grade("12", "so it is 12")))
    t.start()
    t.join(60)
    assert out and out[0].correct and not out[0].timed_out
