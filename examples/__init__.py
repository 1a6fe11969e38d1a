"""Worked examples of using the project's envs and policies from other libraries (``python -m examples.rllib_ppo``).

Run from the checkout root as modules; they are not in the wheel.
"""
