"""``ttc_alloc.cli.<name>`` is the checkout's top-level ``<name>.py`` (collect, train, evaluate, route, serve).

In the wheel, pyproject.toml's ``package-dir`` installs those files into this package's folder (and this
``__init__`` is not shipped: the installed ``ttc_alloc.cli`` is a namespace package). In a checkout or an
editable install the files stay at the root, so this package also searches the checkout root.
"""

from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
if (_ROOT / "pyproject.toml").is_file() and (_ROOT / "evaluate.py").is_file():
    __path__.append(str(_ROOT))
