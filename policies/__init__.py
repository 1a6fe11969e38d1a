"""Allocation policies behind one call (``choose``): PPO, the seed paper's probe router, static configs,
random and the hindsight oracle; plus the ONNX export and its SB3-free loader."""
