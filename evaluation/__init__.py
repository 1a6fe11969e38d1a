"""What ``evaluate.py`` builds on: the pieces both the one-shot and the sequential evaluation share.

- :mod:`evaluation.options`: :class:`~evaluation.options.EvalOptions`, what to evaluate and where to write
  (one field per ``evaluate.py`` flag);
- :mod:`evaluation.oneshot`: every one-shot policy scored at every λ point, and the summary;
- :mod:`evaluation.bootstrap`: the paired bootstraps (over queries; over queries and sample orders);
- :mod:`evaluation.report`: the written results (``results.md``, ``results.csv``, the JSON);
- :mod:`evaluation.pareto`: the Pareto PNGs.

The sequential evaluation itself is :mod:`policies.escalate_eval` (it replays the step policy).
"""
