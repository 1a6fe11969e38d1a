"""A seeded generator of bare arithmetic questions of graded difficulty (the project's own data).

Measured on SmolLM2-135M-Instruct (shared/notes/cpu-feasibility.md): one-digit sums are mostly
right, small subtraction and 2-digit + 1-digit are mostly wrong, and voting helps the middle tiers,
so the right budget depends on the query. The tiers below span that range.
"""

from __future__ import annotations

import random

from rollouts.query import Query

# name -> (operator word, sampler returning (a, b))
TIERS = {
    "sum_le_10": ("+", lambda r: (lambda a: (a, r.randint(0, 10 - a)))(r.randint(0, 10))),
    "add_1d": ("+", lambda r: (r.randint(1, 9), r.randint(1, 9))),
    "mul_1d": ("times", lambda r: (r.randint(2, 9), r.randint(2, 9))),
    "sub_small": ("-", lambda r: (lambda b: (r.randint(b, 18), b))(r.randint(1, 9))),
    "add_2d_1d": ("+", lambda r: (r.randint(10, 99), r.randint(1, 9))),
    "add_2d_2d": ("+", lambda r: (r.randint(10, 99), r.randint(10, 99))),
}


def _value(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def generate(seed: int, n: int) -> list[Query]:
    """``n`` questions cycling through the tiers, reproducible from ``seed``; no duplicates."""
    rng = random.Random(seed)
    names = list(TIERS)
    out: list[Query] = []
    seen: set[str] = set()
    i = 0
    while len(out) < n:
        tier = names[i % len(names)]
        i += 1
        op, sampler = TIERS[tier]
        a, b = sampler(rng)
        question = f"What is {a} {op} {b}?"
        if question in seen:
            continue
        seen.add(question)
        idx = len(out)
        out.append(Query(query_id=f"arith{seed}:{idx}", question=question, answer=str(_value(op, a, b)),
                         dataset=f"arith:{seed}", index=idx, extra={"tier": tier}))
    return out
