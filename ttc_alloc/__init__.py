"""ttc-alloc's installed entry points.

The commands live at the top of a checkout (``python train.py``, ``python evaluate.py``, ...). The
wheel installs those same files as ``ttc_alloc.cli.<name>`` (the console scripts ``ttc-train``,
``ttc-evaluate``, ... point there), never as top-level modules: ``evaluate`` is also Hugging Face's
library, and both must install side by side.
"""
