"""The pieces of ``serve.py``: the request protocol, the featurizer micro-batcher and the cancellable
upstream calls (``serve.py`` itself holds the app, the budgets, the metrics and the command line)."""
