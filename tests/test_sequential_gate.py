"""The sequential policy's rule floor and gate (policies/sequential_gate.py): fitted by train.py,
played by evaluate.py where closed, shipped in the export and played the same way live."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import evaluate
import train
from tests.test_escalate_train_eval import ESC, SMALL


@pytest.fixture(scope="module")
def floor_run(tmp_path_factory, synthetic_cache, tiny_run):
    runs = tmp_path_factory.mktemp("runs")
    rc = train.main(
        ["--config", ESC, "--cache", str(synthetic_cache), "--runs-dir", str(runs), "--name", "floor",
         "--total-timesteps", "2048", "--no-progress", "--hyperparams", *SMALL, f"floor_oneshot={tiny_run}"]
    )  # fmt: skip
    assert rc == 0
    return runs / "floor"


def _setup(run: Path, cache: Path):
    """The run's table, step menu, encoder, units and train / val rows, as train.py built them."""
    from env.escalate_env import env_config_from
    from env.escalate_menu import EscalateMenu
    from env.outcomes import OutcomeTable
    from env.seen import SeenUnits
    from env.splits import split_rows
    from policies.observation import ObsEncoder
    from policies.ppo import read_meta

    meta = read_meta(run / "best_model.zip")
    cfg = env_config_from(meta["env"])
    table = OutcomeTable.for_env(str(cache), cfg)
    menu = EscalateMenu(table, cfg)
    splits = json.loads((run / "splits.json").read_text())
    rows = {s: split_rows(table, splits, s) for s in ("train", "val", "test")}
    enc, units = ObsEncoder.from_dict(meta["encoder"]), SeenUnits.from_dict(meta["escalate"]["units"])
    return table, menu, enc, units, rows


def test_gate_file_floors_and_export(floor_run, tiny_run):
    from policies.sequential_gate import GATE_FILE, ONESHOT_FLOOR_DIR, load_sequential_gate

    gate = load_sequential_gate(floor_run)
    assert gate is not None and gate.oneshot_run == str(tiny_run)
    assert gate.open.shape == (len(gate.regions.lambda_tokens), len(gate.regions.lambda_seconds))
    kinds = {f.kind for row in gate.floors for f in row}
    assert kinds <= {"rule", "static", "oneshot"} and kinds
    assert len(gate.evidence) == gate.open.size
    for e, is_open in zip(gate.evidence, gate.open.flatten(), strict=True):
        assert e["open"] == bool(is_open) and (e["lower"] > 1e-9) == bool(is_open)
    doc = json.loads((floor_run / "export" / "policy.json").read_text())
    assert doc["sequential_gate"] == json.loads((floor_run / GATE_FILE).read_text())
    assert (floor_run / "export" / ONESHOT_FLOOR_DIR / "policy.json").is_file() == ("oneshot" in kinds)
    (summary,) = json.loads((floor_run / "train_summary.json").read_text())
    assert summary["sequential_gate"]["open_share"] == gate.open_share


def test_the_floor_is_the_train_val_best_candidate(floor_run, synthetic_cache, tiny_run):
    """At each region centre the floor has the best train + val mean utility of every tuned rule,
    every static the step menu plays and the shipped one-shot policy."""
    from policies.escalate_sim import oneshot_policy, playable_rows
    from policies.rule_tuning import load_tuned_rules
    from policies.sequential_gate import load_sequential_gate, oneshot_utilities
    from policies.shipped_oneshot import compare_policy

    table, menu, _, _, rows = _setup(floor_run, synthetic_cache)
    gate = load_sequential_gate(floor_run)
    tuned = load_tuned_rules(floor_run, menu)
    assert gate is not None and tuned is not None
    one = compare_policy(str(tiny_run), table)
    assert one is not None
    both = playable_rows(table, menu, np.concatenate([rows["train"], rows["val"]]))
    mt, ms = table.mean_costs(both)
    for i, lt in enumerate(gate.regions.lambda_tokens):
        for j, ls in enumerate(gate.regions.lambda_seconds):
            cands = [float(np.max(m[:, 0] - lt * m[:, 1] - ls * m[:, 2])) for m in tuned.means.values()]
            u = table.mean_correct(both) - lt * mt - ls * ms
            cands += [float(u[ai]) for ai, a in enumerate(table.menu) if oneshot_policy(menu, a) is not None]
            cands.append(float(oneshot_utilities(table, both, one.shipped.choose(table, both, lt, ls), lt, ls).mean()))
            assert gate.floors[i][j].utility == pytest.approx(max(cands))


def test_evaluate_plays_the_floor_where_the_gate_is_closed(floor_run, tiny_run, tmp_path):
    rc = evaluate.main(
        ["--run", str(floor_run), "--compare-run", str(tiny_run), "--json", str(tmp_path / "r.json"),
         "--out", str(tmp_path), "--orders", "2", "--bootstrap", "50", "--no-plots"]
    )  # fmt: skip
    assert rc == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["sequential_gate"]["oneshot_run"] == str(tiny_run)
    for p in r["points"]:
        pols = p["policies"]
        shipped = pols["sequential_ungated"] if p["sequential_gate_open"] else pols["floor"]
        assert pols["sequential"]["utility"] == pytest.approx(shipped["utility"])
        if pols["floor"]["floor"]["kind"] == "oneshot" and not p["sequential_gate_open"]:
            # the one-shot floor is the compare run here: the shipped policy plays exactly its choices
            assert pols["sequential"]["utility"] == pytest.approx(pols["oneshot_ppo"]["utility"])
    assert "sequential_ungated_mean_utility" in r["summary"]


def test_live_floor_decisions_equal_the_simulated_rule(floor_run, synthetic_cache):
    """floor_decider (what live routing plays where the gate is closed) makes the rule's decisions:
    the same outcomes as the simulator's rule policy on the same orders, for every tuned family."""
    from policies.escalate_sim import Simulator, make_orders
    from policies.rule_tuning import load_tuned_rules
    from policies.sequential_gate import Floor, floor_decider
    from policies.stopping_rules import rule_policy

    table, menu, enc, units, rows = _setup(floor_run, synthetic_cache)
    tuned = load_tuned_rules(floor_run, menu)
    assert tuned is not None
    test = rows["test"][:40]
    orders, picks = make_orders(table, menu, test, 2, seed=3)
    sim = Simulator(table, menu, enc, units, test, orders, picks)
    for fam, rules in tuned.families.items():
        rule = rules[len(rules) // 2]
        decide = floor_decider(Floor("rule", rule.name, 0.0, rule=rule.to_dict()), menu)

        def act(obs, masks, episodes, decide=decide):
            return np.array([decide(None, None, ep.state) for ep in episodes], dtype=np.int64)

        act.needs_obs = False  # type: ignore[attr-defined]
        a, b = sim.run(act, 0.0, 0.0), sim.run(rule_policy(rule, menu), 0.0, 0.0)
        assert np.array_equal(a.correct, b.correct) and np.array_equal(a.tokens, b.tokens), fam


def test_floor_clone_and_no_beam_collapse_on_a_small_untimed_cache(tmp_path):
    """On a small cache without seconds whose beams are one-step episodes (an import-like subset of the
    bundled cache, ~196 train queries), PPO from a random start settled on a beam for nearly every
    query at every λ_T, 3x the tokens of sample@1 where that is the best static. Cloned from its floor
    (the default), the step policy starts at the floor's decisions: at the highest λ_T it must not
    spend more tokens than the train+val floor's, and it must not end on a beam everywhere."""
    from tests.fixtures.small_import_cache import make_small_import_cache

    root = Path(__file__).resolve().parents[1]
    cache = make_small_import_cache(root / "data" / "default_cache", tmp_path / "cache")
    rc = train.main(
        ["--config", ESC, "--cache", str(cache), "--runs-dir", str(tmp_path), "--name", "small",
         "--total-timesteps", "4096", "--no-progress", "--hyperparams", *SMALL]
    )  # fmt: skip
    assert rc == 0
    (summary,) = json.loads((tmp_path / "small" / "train_summary.json").read_text())
    clone = summary["clone_of_floor"]
    assert clone["agreement"] > 0.8 and clone["samples"] > 0 and clone["floors"]
    rc = evaluate.main(["--run", str(tmp_path / "small"), "--json", str(tmp_path / "r.json"), "--out",
                        str(tmp_path / "e"), "--orders", "2", "--bootstrap", "200", "--no-plots"])  # fmt: skip
    assert rc == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["grid"]["lambda_seconds"] == [0.0] and len(r["points"]) == 5
    top = r["points"][-1]["policies"]  # the highest token price
    assert top["sequential_ungated"]["beam_share"] < 0.5
    assert top["sequential_ungated"]["mean_tokens"] <= 1.5 * top["floor"]["mean_tokens"]
    for p in r["points"]:  # the shipped policy: never below the best rule family with 90 % confidence
        assert not p[f"sequential_vs_rule:{r['summary']['best_rule']}"]["below_90"]
