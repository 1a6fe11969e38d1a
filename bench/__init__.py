"""Benchmarks of the project's parts (env speed, collection, featurisation, serving, latency under load).

Run from the checkout root as modules, e.g. ``python -m bench.env_speed``; they are not in the wheel.
"""
