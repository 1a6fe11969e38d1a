"""A user-supplied API latency model: a + b·prompt + c·max_generated, parallel samples one round."""

from __future__ import annotations

import pytest

from rollouts.latency import FORM_API, LatencyModel, Round
from rollouts.latency_fit import load_latency_model


def test_api_model_ignores_width_and_round_trips():
    m = load_latency_model("api:a=0.5,b=1e-3,c=0.02")
    assert m.form == FORM_API and m.fit["label"] == "user:api(a=0.5,b=0.001,c=0.02)"
    one, eight = m.predict([Round(100, 1, 50)]), m.predict([Round(100, 8, 50)])
    assert one == eight == pytest.approx(0.5 + 0.1 + 1.0)
    assert LatencyModel.from_dict(m.to_dict()).to_dict() == m.to_dict()


@pytest.mark.parametrize("spec, msg", [("api:a=1,z=2", "expected api:"), ("api:a=x", "not a number"),
                                       ("api:a=-1", ">= 0")])
def test_api_model_bad_spec(spec, msg):
    with pytest.raises(ValueError, match=msg):
        LatencyModel.parse_api(spec)


def test_wrong_number_of_coefficients():
    with pytest.raises(ValueError, match="needs 3 coefficients"):
        LatencyModel.from_dict({"form": FORM_API, "coef": [1, 2, 3, 4]})
