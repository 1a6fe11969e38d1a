"""One-off analyses on caches and runs (``python -m scripts.headroom_tier_policy``) beside the shell scripts.

Run from the checkout root as modules; they are not in the wheel.
"""
