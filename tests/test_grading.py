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



def test_an_overrunning_grade_never_takes_other_callers_grades_with_it():
    """A server grades many requests' samples at once, in threads. One pathological completion overruns
    its timeout: its grader process is killed and it comes back timed out, while every other caller's
    grade, before, during and after, is answered (once, the overrun reset the one shared process and the
    other callers waiting on it got CancelledError or BrokenProcessPool: a 500 from serve.py)."""
    import concurrent.futures as cf
    import time

    hang = "so the answer is \\boxed{9^{9^{9^{9}}} - 9^{9^{9^{9}}} + 2}"  # sympy never finishes this
    with cf.ThreadPoolExecutor(9) as ex:
        slow = ex.submit(grade, "2", hang, 2)
        time.sleep(0.5)
        outs = []
        while not slow.done() or len(outs) < 40:
            outs += list(ex.map(lambda i: grade(str(i), f"so the answer is {i}", timeout_s=30), range(8)))
    assert slow.result().timed_out and not slow.result().correct
    assert all(g.correct and not g.timed_out for g in outs), [g for g in outs if not g.correct][:3]
