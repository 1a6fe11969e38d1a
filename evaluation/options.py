"""What to evaluate and where to write it: :class:`EvalOptions`, one field per ``evaluate.py`` flag.

``evaluate.evaluate(EvalOptions(run="runs/x", grid_n=3))`` is ``python evaluate.py --run runs/x --grid 3``;
the defaults are the CLI's (except ``progress``: off from Python, on from the CLI).
"""

from __future__ import annotations

from dataclasses import dataclass

from env.outcomes import validate_lambda
from policies.budget import BUDGET_SPLITS
from rollouts.errors import ConfigError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class EvalOptions:
    """The options of one evaluation (``evaluate.py --help`` says what each flag does)."""

    # -- the model: a run folder's best/final model, a checkpoint zip, or an ONNX export
    run: str | None = None
    checkpoint: str | None = None  # --checkpoint
    which_model: str = "best"  # --model: best | final (of --run)
    export: str | None = None  # --export DIR
    trust_checkpoint: bool = False  # load zips this user's train.py did not write (policies/trust.py)
    cache: str | None = None  # default: the run's
    # -- where: the evaluated split and the λ grid (explicit axes replace the grid's)
    split: str = "test"
    grid_n: int = 5  # --grid
    lambda_tokens: list[float] | None = None
    lambda_seconds: list[float] | None = None
    # -- statistics
    seed: int = 0  # the router probe, the random policy and the bootstrap
    n_boot: int = 1000  # --bootstrap (0: none)
    # -- budgets instead of prices (one-shot runs)
    target_tokens: list[float] | None = None
    target_seconds: list[float] | None = None
    budget_split: str = "train+val"
    latency_load: int | None = None  # default: the run's env.latency_load
    # -- sequential runs
    compare_run: str | None = None  # a one-shot run played on the same orders
    n_orders: int = 16  # --orders: sample orders per query
    # -- outputs
    out: str | None = None  # default: <run>/eval
    json_path: str | None = None  # --json PATH
    plots: bool = True
    progress: bool = False

    def lambda_axes(self) -> tuple[list[float] | None, list[float] | None]:
        """The explicit (λ_T, λ_L) axes as floats (None: the grid's); ConfigError names a bad value."""
        lt_axis = [validate_lambda("--lambda-tokens", v) for v in self.lambda_tokens] if self.lambda_tokens else None
        ls_axis = (
            [validate_lambda("--lambda-seconds", v) for v in self.lambda_seconds] if self.lambda_seconds else None
        )
        return lt_axis, ls_axis

    def validate(self) -> None:
        """Raise ConfigError naming the flag of the first bad option (before anything is loaded)."""
        self.lambda_axes()
        if self.n_boot < 0:
            raise ConfigError(f"--bootstrap must be >= 0, got {self.n_boot}")
        if self.grid_n < 2:
            raise ConfigError(f"--grid must be >= 2, got {self.grid_n}")
        if self.split not in SPLITS:
            raise ConfigError(f"--split must be train, val or test, got {self.split!r}")
        if self.budget_split not in BUDGET_SPLITS:
            raise ConfigError(
                f"--budget-split must be one of {', '.join(BUDGET_SPLITS)}, got {self.budget_split!r}"
            )
