import numpy as np
import pytest

from rollouts.latency import LatencyModel, Round


def test_fit_recovers_a_known_cost_model():
    """Synthetic timings (a labelled fixture) from known coefficients: the NNLS fit finds them."""
    rng = np.random.default_rng(0)
    true = [0.05, 1e-4, 0.01, 0.002]
    samples = []
    for _ in range(40):
        r = Round(int(rng.integers(20, 80)), int(rng.choice([1, 2, 4, 8, 16])), int(rng.integers(5, 96)))
        t = true[0] + true[1] * r.prompt_tokens * r.width + r.max_gen_tokens * (true[2] + true[3] * r.width)
        samples.append(([r], t * (1 + rng.normal(0, 0.01))))
    m = LatencyModel.fit_measurements(samples)
    assert m.fit["mape"] < 0.03
    assert np.allclose(m.coef, true, rtol=0.2, atol=2e-4)
    again = LatencyModel.from_dict(m.to_dict())
    assert again.predict([Round(40, 4, 30)]) == pytest.approx(m.predict([Round(40, 4, 30)]))


def test_too_few_measurements():
    with pytest.raises(ValueError, match="at least 4"):
        LatencyModel.fit_measurements([([Round(1, 1, 1)], 0.1)])
