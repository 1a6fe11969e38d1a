"""What ``evaluate.py`` runs: the one-shot and the sequential evaluation and the pieces they share.

- :mod:`evaluation.options`: :class:`~evaluation.options.EvalOptions`, what to evaluate and where to write
  (one field per ``evaluate.py`` flag);
- :mod:`evaluation.source`: which model, from which run (``--run``, ``--checkpoint``, ``--export``);
- :mod:`evaluation.oneshot`: a one-shot run's policies scored at every λ point, and the summary;
- :mod:`evaluation.sequential`: a sequential (``env.kind: escalate``) run's evaluation: its step policy,
  the one-shot actions and the stopping rules replayed on the same sample orders;
- :mod:`evaluation.bootstrap`: the paired bootstraps (over queries; over queries and sample orders);
- :mod:`evaluation.report`: the written results (``results.md``, ``results.csv``, the JSON);
- :mod:`evaluation.pareto`: the Pareto PNGs.
"""
