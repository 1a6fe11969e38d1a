"""Never below the best rule: the sequential policy's floor per λ region and the gate in front of it.

The one-shot policy falls back to the train + validation best static (:mod:`policies.gate`); the
sequential step policy falls back to its **floor**, per region of the evaluation grid the better,
on train + validation, of

- every tuned stopping rule (``rules.json``: each configuration's mean accuracy, tokens and seconds
  on train + val, :mod:`policies.rule_tuning`), i.e. the best tuned rule family at that point;
- every one-shot action the step menu plays as a first move (``draw@N, stop:<selector>``, a beam, a
  race with the finish watch): the best static;
- the shipped (gated) one-shot policy of ``warm_start_from`` (or ``floor_oneshot``), its choice per
  query played as a first move (``oneshot``).

The gate (:func:`fit_sequential_gate`): a region opens, i.e. ships the step policy's own decisions,
only if the step policy's paired utility gain over the floor on the validation queries (two sample
orders each) is positive with the run's ``gate_confidence`` (:func:`policies.gate.decide`); elsewhere
the run plays its floor. ``evaluate.py`` reports the gated policy as ``sequential`` (and the bare
network as ``sequential_ungated``); the export carries the gate, so live routing plays what was
evaluated. Written to ``<run>/sequential_gate.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from policies.gate import LambdaRegions, decide

GATE_FILE = "sequential_gate.json"
SEQ_GATE_FORMAT = "ttc-alloc/sequential-gate"
FLOOR_KINDS = ("rule", "static", "oneshot")
VAL_ORDERS = 2  # sample orders per validation query of the gate's evidence
ONESHOT_FLOOR_DIR = "floor_oneshot"  # in a sequential export: the one-shot floor's own export


@dataclass(frozen=True)
class Floor:
    """What a closed region plays: a tuned rule, a one-shot action as a first move, or the one-shot
    policy. ``plan``: the step action ids of a static (``draw@8``, ``stop:majority``) or a beam."""

    kind: str  # rule | static | oneshot
    name: str  # the rule's name, the one-shot action id, or "oneshot"
    utility: float  # mean utility on train + val at the region's centre
    rule: dict[str, Any] | None = None  # policies.stopping_rules.Rule fields (kind rule)
    plan: list[str] | None = None  # kind static, when the step menu plays it as a plan

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "name": self.name, "utility": self.utility}
        if self.rule is not None:
            d["rule"] = self.rule
        if self.plan is not None:
            d["plan"] = list(self.plan)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Floor:
        if d.get("kind") not in FLOOR_KINDS:
            raise ValueError(f"unknown floor kind {d.get('kind')!r}")
        return cls(str(d["kind"]), str(d["name"]), float(d["utility"]), d.get("rule"), d.get("plan"))

    def as_rule(self) -> Any:
        """The :class:`policies.stopping_rules.Rule` of a rule floor."""
        from policies.stopping_rules import Rule

        assert self.rule is not None
        return Rule(**{k: v for k, v in self.rule.items() if k != "name"})


@dataclass
class SequentialGate:
    """Per λ region (the cells of the evaluation grid): the floor, and open (the step policy plays) or
    closed (the floor plays)."""

    regions: LambdaRegions
    open: np.ndarray  # (len(lambda_tokens), len(lambda_seconds)) bool
    floors: list[list[Floor]]  # [i_tokens][i_seconds]
    confidence: float = 0.9
    oneshot_run: str | None = None  # the one-shot run whose shipped policy is a floor candidate
    evidence: list[dict[str, Any]] = field(default_factory=list)

    def is_open(self, lambda_tokens: float, lambda_seconds: float) -> bool:
        return bool(self.open[self.regions.index(lambda_tokens, lambda_seconds)])

    def floor(self, lambda_tokens: float, lambda_seconds: float) -> Floor:
        i, j = self.regions.index(lambda_tokens, lambda_seconds)
        return self.floors[i][j]

    @property
    def open_share(self) -> float:
        return float(np.mean(self.open)) if self.open.size else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SEQ_GATE_FORMAT,
            "confidence": self.confidence,
            "regions": self.regions.to_dict(),
            "open": [[bool(x) for x in row] for row in self.open],
            "open_share": self.open_share,
            "floors": [[f.to_dict() for f in row] for row in self.floors],
            "oneshot_run": self.oneshot_run,
            "evidence": self.evidence,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SequentialGate:
        if d.get("format") != SEQ_GATE_FORMAT:
            raise ValueError("not a ttc-alloc sequential gate")
        r = d["regions"]
        return cls(
            regions=LambdaRegions(list(r["lambda_tokens"]), list(r["lambda_seconds"])),
            open=np.array(d["open"], dtype=bool),
            floors=[[Floor.from_dict(f) for f in row] for row in d["floors"]],
            confidence=float(d["confidence"]),
            oneshot_run=d.get("oneshot_run"),
            evidence=list(d.get("evidence", [])),
        )


def load_sequential_gate(run_dir: Path) -> SequentialGate | None:
    """``<run_dir>/sequential_gate.json``, or None (a run trained without it, or with ``gate: false``)."""
    path = Path(run_dir) / GATE_FILE
    return SequentialGate.from_dict(json.loads(path.read_text())) if path.is_file() else None


# ----------------------------------------------------------------------------------------------
# Floor candidates and their outcomes


def oneshot_utilities(table: Any, rows: np.ndarray, choice: np.ndarray, lt: float, ls: float) -> np.ndarray:
    """Per row, the outcome table's expected utility of one-shot action ``choice[i]`` (the same for
    every sample order: what a one-shot choice is worth, whether or not the step menu plays it)."""
    rows = np.asarray(rows)
    u = table.correct[rows, choice] - lt * table.tokens[rows, choice] - ls * table.seconds[rows, choice]
    return np.asarray(u, dtype=np.float64)


def pick_floor(
    table: Any, menu: Any, tuned: Any, rows: np.ndarray, lt: float, ls: float, oneshot: Any | None
) -> Floor:
    """The floor at (λ_T, λ_L): the candidate with the best mean utility over ``rows`` (train + val)."""
    from policies.escalate_sim import oneshot_policy

    best: Floor | None = None
    for fam, rules in tuned.families.items():  # every tuned configuration of every family
        m = tuned.means[fam]
        u = m[:, 0] - lt * m[:, 1] - ls * m[:, 2]
        i = int(np.argmax(u))
        if best is None or u[i] > best.utility:
            best = Floor("rule", rules[i].name, float(u[i]), rule=rules[i].to_dict())
    mt, ms = table.mean_costs(rows)
    u_static = table.mean_correct(rows) - lt * mt - ls * ms
    for ai, a in enumerate(table.menu):
        if oneshot_policy(menu, a) is None or not np.isfinite(u_static[ai]):
            continue
        if best is None or u_static[ai] > best.utility:
            plan = menu.oneshot_plan(a)
            best = Floor("static", a.id, float(u_static[ai]), plan=None if plan is None else [menu.ids[p] for p in plan])
    if oneshot is not None:
        u = float(oneshot_utilities(table, rows, oneshot.choose(table, rows, lt, ls), lt, ls).mean())
        if best is None or u > best.utility:
            best = Floor("oneshot", "oneshot", u)
    assert best is not None
    return best


class FloorPlayer:
    """The floor's (query, order) utilities on a simulator's rows and orders at one λ point; rule and
    static results are simulated once and priced per point."""

    def __init__(self, sim: Any, oneshot: Any | None = None):
        self.sim, self.oneshot = sim, oneshot
        self._results: dict[str, Any] = {}

    def result(self, floor: Floor) -> Any:
        """A rule's or a static's :class:`policies.escalate_sim.SimResult` on the simulator's orders."""
        from policies.escalate_sim import oneshot_policy
        from policies.stopping_rules import rule_policy

        key = f"{floor.kind}:{floor.name}"
        if key not in self._results:
            if floor.kind == "rule":
                policy = rule_policy(floor.as_rule(), self.sim.menu)
            else:
                table = self.sim.table
                played = oneshot_policy(self.sim.menu, table.menu[table.action_ids.index(floor.name)])
                if played is None:
                    raise ValueError(f"the floor's static {floor.name!r} is not playable on this step menu")
                policy = played
            self._results[key] = self.sim.run(policy, 0.0, 0.0)
        return self._results[key]

    def utility(self, floor: Floor, lt: float, ls: float) -> np.ndarray:
        """(rows, orders) utilities of ``floor`` at (λ_T, λ_L)."""
        if floor.kind == "oneshot":
            if self.oneshot is None:
                raise ValueError("the floor is the one-shot policy, but none was given")
            sim = self.sim
            u = oneshot_utilities(sim.table, sim.rows, self.oneshot.choose(sim.table, sim.rows, lt, ls), lt, ls)
            return np.repeat(u[:, None], len(sim.orders[0]), axis=1)
        return self.result(floor).utility(lt, ls)


def floor_follower(table: Any, menu: Any, tuned: Any, rows: np.ndarray, oneshot: Any | None, sim: Any) -> Any:
    """``follow_at(λ_T, λ_L)``: the floor at that λ (:func:`pick_floor` over ``rows``, train + val) as
    a step policy on ``sim``'s queries, with its name; None where the step menu cannot play it (a
    one-shot floor that picks a race on the round watch or another pool). Behaviour cloning follows it."""
    from policies.escalate_sim import oneshot_follower, oneshot_policy
    from policies.stopping_rules import rule_policy

    oneshot_at = None if oneshot is None else oneshot_follower(oneshot, table, sim)

    def follow_at(lt: float, ls: float) -> Any:
        floor = pick_floor(table, menu, tuned, rows, lt, ls, oneshot)
        if floor.kind == "rule":
            return rule_policy(floor.as_rule(), menu), floor.name
        if floor.kind == "static":
            return oneshot_policy(menu, table.menu[table.action_ids.index(floor.name)]), floor.name
        policy = oneshot_at(lt, ls) if oneshot_at is not None else None
        return None if policy is None else (policy, "oneshot")

    return follow_at


def floor_decider(floor: Floor, menu: Any) -> Any:
    """``decide(obs, mask, state) -> step action index`` of a rule or static floor on a
    :class:`env.seen.SeenState` (live routing, :mod:`policies.sequential_router`): the same decisions
    as :func:`policies.stopping_rules.rule_policy` / the static's plan make in the simulator (with the
    finish watch, a rule checks at each finish and waits while it does not stop; a plan waits each round
    out); a rule whose answer is no step action names it as ``stop_selector``, as the rule policy does.
    A static without a plan (a race) is run as its one-shot action instead."""
    from policies.stopping_rules import answer_selector, next_draw, should_stop, stop_step

    wait = menu.wait_index  # only the finish watch has rounds running
    if floor.kind == "rule":
        rule = floor.as_rule()
        stop = stop_step(rule, menu)

        def by_rule(obs: Any, mask: Any, st: Any) -> int:
            if should_stop(rule, st):
                return int(stop)
            return int(wait) if st.running else int(next_draw(rule, menu, st))

        by_rule.stop_selector = answer_selector(rule, menu)  # type: ignore[attr-defined]
        return by_rule
    if floor.kind != "static" or not floor.plan:
        raise ValueError(f"floor {floor.name!r} ({floor.kind}) has no step decisions to play")
    plan = [menu.ids.index(a) for a in floor.plan]
    return lambda obs, mask, st: int(wait) if st.running else plan[len(st.widths)]


# ----------------------------------------------------------------------------------------------
# Fitting


def fit_sequential_gate(
    model: Any, table: Any, menu: Any, encoder: Any, units: Any, tuned: Any,
    train_rows: np.ndarray, val_rows: np.ndarray, *, oneshot: Any | None = None, oneshot_run: str | None = None,
    grid_n: int = 5, confidence: float = 0.9, n_boot: int = 1000, seed: int = 0,
) -> SequentialGate:  # fmt: skip
    """Floors on train + val per region centre, and the gate from the step policy's paired gains over
    its floor on the validation queries (:data:`VAL_ORDERS` orders each, seeded by ``seed``)."""
    from policies.base import lambda_grid
    from policies.escalate_sim import Simulator, make_orders, model_policy, playable_rows

    grid = lambda_grid(table, np.asarray(train_rows), grid_n)
    regions = LambdaRegions(grid["lambda_tokens"], grid["lambda_seconds"])
    both = playable_rows(table, menu, np.concatenate([train_rows, val_rows]))
    val = playable_rows(table, menu, np.asarray(val_rows))
    orders, picks = make_orders(table, menu, val, VAL_ORDERS, seed=seed)
    sim = Simulator(table, menu, encoder, units, val, orders, picks)
    player, step_policy = FloorPlayer(sim, oneshot), model_policy(model)
    shape = (len(regions.lambda_tokens), len(regions.lambda_seconds))
    open_ = np.zeros(shape, dtype=bool)
    floors: list[list[Floor]] = [[] for _ in range(shape[0])]
    evidence = []
    for i, lt in enumerate(regions.lambda_tokens):
        for j, ls in enumerate(regions.lambda_seconds):
            floor = pick_floor(table, menu, tuned, both, lt, ls, oneshot)
            gains = (sim.run(step_policy, lt, ls).utility(lt, ls) - player.utility(floor, lt, ls)).mean(axis=1)
            d = decide(gains, confidence, n_boot, seed)
            open_[i, j] = d["open"]
            floors[i].append(floor)
            evidence.append({"lambda_tokens": lt, "lambda_seconds": ls, "floor": floor.name, **d})
    return SequentialGate(regions, open_, floors, confidence, oneshot_run, evidence)


def fit_and_record_sequential_gate(job: Any, model: Any, best: Any, summary: dict[str, Any]) -> SequentialGate | None:
    """A sequential training job's (``policies.training.TrainingJob``) gate for best_model.zip over
    its floors: ``sequential_gate.json``, its ttc/gate/ scalars and its train_summary entry. None
    (with a note) when the run has no tuned rules (``rule_orders: 0``)."""
    import time

    from env.escalate_menu import EscalateMenu
    from policies.callbacks import write_tb_scalars
    from policies.rule_tuning import load_tuned_rules
    from policies.shipped_oneshot import compare_policy
    from rollouts.atomic import write_text_atomic
    from rollouts.console import note, phase

    cfg = job.cfg
    menu = EscalateMenu(job.table, job.env_cfg)
    tuned = load_tuned_rules(job.run_dir, menu)
    if tuned is None:
        note("no sequential gate: the run has no tuned stopping rules (rule_orders: 0)")
        return None
    oneshot_run = cfg.floor_oneshot or cfg.warm_start_from
    oneshot = compare_policy(oneshot_run, job.table, job.trust_checkpoint)
    t0 = time.time()
    with phase("fitting the sequential gate: floors on train + val, the step policy's gains on val"):
        gate = fit_sequential_gate(
            best, job.table, menu, job.encoder, job.env_kwargs["units"], tuned, job.train_rows, job.val_rows,
            oneshot=None if oneshot is None else oneshot.shipped, oneshot_run=oneshot_run,
            confidence=cfg.gate_confidence, seed=cfg.seed,
        )  # fmt: skip
    write_text_atomic(job.run_dir / GATE_FILE, json.dumps(gate.to_dict(), indent=1) + "\n")
    write_tb_scalars(model.logger, {"ttc/gate/open_share": gate.open_share}, model.num_timesteps)
    kinds = sorted({f.kind for row in gate.floors for f in row})
    summary["sequential_gate"] = {
        "open_share": gate.open_share, "floor_kinds": kinds, "oneshot_run": oneshot_run,
        "seconds": round(time.time() - t0, 2),
    }  # fmt: skip
    print(f"sequential gate: the step policy plays in {gate.open_share:.0%} of the λ regions, its floor "
          f"({'/'.join(kinds)}) elsewhere")
    return gate


def embed_oneshot_floor(gate: SequentialGate, export_dir: Path) -> Path | None:
    """Copy the one-shot floor's export (``<oneshot_run>/export``: policy.json and policy.onnx, its
    gate included) into ``<export_dir>/floor_oneshot`` so live routing plays it; None when no region's
    floor is the one-shot policy."""
    import shutil

    from rollouts.errors import ConfigError

    if not any(f.kind == "oneshot" for row in gate.floors for f in row):
        return None
    src = Path(str(gate.oneshot_run)) / "export"
    if not (src / "policy.json").is_file():
        raise ConfigError(f"{src}: the one-shot floor has no export (train it with export: true) to ship with this one")
    ours = json.loads((Path(export_dir) / "policy.json").read_text()).get("serving") or {}
    theirs = json.loads((src / "policy.json").read_text()).get("serving") or {}
    if ours.get("featurizer") != theirs.get("featurizer") or ours.get("model") != theirs.get("model"):
        raise ConfigError(f"{src}: the one-shot floor was trained on another model or featurizer than this run")
    dst = Path(export_dir) / ONESHOT_FLOOR_DIR
    dst.mkdir(parents=True, exist_ok=True)
    doc = json.loads((src / "policy.json").read_text())
    shutil.copyfile(src / doc["onnx"], dst / doc["onnx"])
    shutil.copyfile(src / "policy.json", dst / "policy.json")
    return dst
