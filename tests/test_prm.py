"""PRMScorer on a real vLLM pooling engine (CPU), with a tiny randomly initialised PRM built here.

This is a WIRING test, not a quality claim: the checkpoint is random, so its scores mean nothing.
It checks that a ``Qwen2ForProcessRewardModel`` checkpoint with a tokenizer carrying the step tag
loads in vLLM's pooling runner, that the PRMScorer formats trajectories, reads one score row per step
tag, returns scores in [0, 1] and charges the tokens it processed, that vLLM's step rows match a plain
transformers forward pass of the same weights, and that a tokenizer without the step tag is refused.
Slow: one engine start (~30 s on 2 cores).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rollouts.scorers import Trajectory

pytestmark = pytest.mark.slow
STEP_TAG = "<extra_0>"
QUESTION = "What is 12 + 30?"
HIDDEN = 128


def build_tiny_prm(out: Path) -> Path:
    """A random Qwen2ForProcessRewardModel checkpoint (hidden 128, 2 layers, head dim 64) + SmolLM2 tokenizer.

    Weight names follow vLLM's ``Qwen2RewardBaseModel``: ``model.*`` (a Qwen2Model) and the reward head
    ``score.0`` (hidden -> hidden, bias) and ``score.2`` (hidden -> 2 labels, bias), as in the
    Qwen2.5-Math-PRM checkpoints.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, Qwen2Config, Qwen2Model

    from rollouts.models import resolve_model

    smol = Path(resolve_model("smollm2-135m-instruct"))
    tok = AutoTokenizer.from_pretrained(smol)
    tok.add_tokens([STEP_TAG], special_tokens=True)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out)
    if (smol / "chat_template.jinja").exists() and not (out / "chat_template.jinja").exists():
        shutil.copy(smol / "chat_template.jinja", out / "chat_template.jinja")

    vocab = -(-len(tok) // 64) * 64  # room for the added tag, padded
    cfg = Qwen2Config(
        vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
        tie_word_embeddings=False, num_labels=2, architectures=["Qwen2ForProcessRewardModel"],
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    body = Qwen2Model(cfg).float()
    state = {f"model.{k}": v.detach().contiguous() for k, v in body.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    # A wide head so the random scores spread over (0, 1) instead of sitting at 0.5.
    state["score.0.weight"] = torch.randn(HIDDEN, HIDDEN, generator=gen) / HIDDEN**0.5
    state["score.0.bias"] = torch.zeros(HIDDEN)
    state["score.2.weight"] = torch.randn(2, HIDDEN, generator=gen) * 0.15
    state["score.2.bias"] = torch.zeros(2)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg.save_pretrained(out)
    return out


def reference_step_probs(model_dir: Path, ids: list[int], tag_id: int) -> list[float]:
    """The same weights run by plain transformers: P(positive) at each step tag."""
    import torch
    from safetensors.torch import load_file
    from transformers import Qwen2Config, Qwen2Model

    state = load_file(str(model_dir / "model.safetensors"))
    body = Qwen2Model(Qwen2Config.from_pretrained(model_dir)).float().eval()
    body.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
    with torch.no_grad():
        h = body(input_ids=torch.tensor([ids])).last_hidden_state[0]
        h = torch.relu(h @ state["score.0.weight"].T + state["score.0.bias"])
        logits = h @ state["score.2.weight"].T + state["score.2.bias"]
    rows = [i for i, t in enumerate(ids) if t == tag_id]
    return [float(p) for p in logits[rows].softmax(-1)[:, 1]]


@pytest.fixture(scope="module")
def tiny_prm(tmp_path_factory) -> Path:
    return build_tiny_prm(tmp_path_factory.mktemp("tiny_prm"))


@pytest.fixture(scope="module")
def scorer(tiny_prm):
    import time

    from rollouts.scorers import make_scorer

    t0 = time.perf_counter()
    s = make_scorer("prm", model=str(tiny_prm), max_model_len=512)
    print(f"\nPRM engine start: {time.perf_counter() - t0:.1f} s")
    yield s
    del s.llm


def test_prm_scores_steps_and_counts_tokens(scorer, tiny_prm):
    from transformers import AutoTokenizer

    trajs = [
        Trajectory(steps=["12 + 30 = 42.\n\n"]),
        Trajectory(steps=["First add the tens: 10 + 30 = 40.\n\n", "Then the units: 40 + 2 = 42.\n\n",
                          "The answer is \\boxed{42}."]),
        Trajectory(steps=["12 + 30 = 52.  ", "So \\boxed{52}"]),
    ]
    sb = scorer.score(QUESTION, trajs)

    assert len(sb.scores) == len(trajs) == len(sb.scorer_tokens) == len(sb.step_scores)
    assert all(0.0 <= s <= 1.0 for s in sb.scores)
    assert sb.seconds > 0
    assert [len(s) for s in sb.step_scores] == [1, 3, 2]
    assert all(0.0 <= p <= 1.0 for row in sb.step_scores for p in row)
    assert sb.scores == [row[-1] for row in sb.step_scores]  # aggregation "last"
    with pytest.raises(ValueError, match="no steps"):
        scorer.score(QUESTION, [Trajectory()])

    # scorer_tokens = the tokenized length of the formatted conversation, built here independently.
    tok = AutoTokenizer.from_pretrained(tiny_prm)
    tag_id = tok.convert_tokens_to_ids(STEP_TAG)
    for t, n, row in zip(trajs, sb.scorer_tokens, sb.step_scores, strict=True):
        answer = STEP_TAG.join(s.rstrip() for s in t.steps) + STEP_TAG
        msgs = [{"role": "system", "content": scorer.system}, {"role": "user", "content": QUESTION},
                {"role": "assistant", "content": answer}]
        ids = tok.encode(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)
        assert n == len(ids) > 0
        assert ids.count(tag_id) == len(t.steps)
        # vLLM's step rows are the head's output at the tag positions (same weights in transformers).
        assert row == pytest.approx(reference_step_probs(tiny_prm, ids, tag_id), abs=2e-3)

    d = scorer.describe()
    assert d["kind"] == "prm" and d["model"] == str(tiny_prm) and d["step_tag"] == STEP_TAG
    assert d["aggregation"] == "last"


def test_prm_refuses_tokenizer_without_step_tag(tiny_prm):
    from rollouts.models import resolve_model
    from rollouts.scorers.prm import PRMScorer

    # SmolLM2's own tokenizer lacks <extra_0>; the check runs before any engine starts.
    smol = resolve_model("smollm2-135m-instruct")
    with pytest.raises(ValueError, match="step tag"):
        PRMScorer(model=smol)
    with pytest.raises(ValueError, match="tiny_prm"):
        PRMScorer(model=str(tiny_prm), step_tag="<extra_99>")
