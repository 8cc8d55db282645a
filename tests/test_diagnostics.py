"""Simulation-based calibration: well-trained guides pass, over-confident and under-trained ones fail."""

import pytest
import torch
from pyro.poutine.messenger import Messenger

import infcomp
from infcomp.diagnostics import calibration
from infcomp.nn.proposals.normal_mixture import NormalMixture
from infcomp_models import examples as ex


class Sharpen(Messenger):
    """The guide's continuous proposals raised to ``1 / t`` (about: each component's scale times sqrt(t))."""

    def __init__(self, t):
        super().__init__()
        self.t = t

    def transform_proposal(self, name, proposal):
        return NormalMixture(proposal.logits / self.t, proposal.loc, proposal.scale * self.t**0.5)


@pytest.fixture(scope="module")
def gauss_guide():
    return infcomp.compile(ex.gaussian, observe="y", num_traces=4_000, seed=0, workers=0, progress=False)


def test_a_well_trained_guide_passes(gauss_guide):
    cal = calibration(ex.gaussian, gauss_guide, num_draws=200, num_samples=100, seed=1)
    assert cal.failures("q") == [] and cal.failures("posterior") == []
    summary = cal.summary()["mu"]
    assert summary["kind"] == "continuous" and summary["draws"] == 200
    assert abs(summary["posterior"]["coverage"][0.8] - 0.8) < 0.1


def test_an_over_confident_guide_fails(gauss_guide):
    with Sharpen(0.3):
        cal = calibration(ex.gaussian, gauss_guide, num_draws=200, num_samples=100, seed=1)
    failures = cal.failures("q")
    assert any("ranks not uniform" in f for f in failures) and any("interval covers" in f for f in failures)


def test_an_under_trained_guide_fails():
    guide = infcomp.compile(ex.gaussian, observe="y", num_traces=64, seed=0, workers=0, progress=False)
    assert calibration(ex.gaussian, guide, num_draws=300, num_samples=100, seed=1).failures("q")


def test_discrete_sites_and_functions_report_reliability(tmp_path):
    guide = infcomp.compile(ex.poisson_branching, observe="y", num_traces=3_000, seed=0, workers=0, progress=False)
    cal = calibration(ex.poisson_branching, guide, num_draws=150, num_samples=100, seed=2,
                      functions={"many": lambda v: int(v["n"]) > 2})
    s = cal.summary()
    assert s["n"]["kind"] == "discrete" and s["many"]["kind"] == "discrete"
    for name in ("n", "many"):
        r = s[name]["posterior"]
        assert 0 <= r["ece"] < 0.15 and 0 <= r["brier"] <= 1 and 0 < r["mean_probability"] <= 1
    assert 0 < s["x_0"]["draws"] < 150  # x_0 exists in the draws with n >= 1 only
    # sites the particles rarely hold (x_4: n >= 5) are estimated from few of them; the common ones pass
    assert [f for f in cal.failures("posterior") if f.startswith(("n:", "many:", "x_0:"))] == []
    cal.plot(tmp_path / "calibration.png", names=["n", "many", "x_0"])
    assert (tmp_path / "calibration.png").stat().st_size > 10_000


def test_the_callers_random_state_is_left_alone(gauss_guide):
    before = torch.random.get_rng_state()
    calibration(ex.gaussian, gauss_guide, num_draws=3, num_samples=10, seed=4)
    assert torch.equal(before, torch.random.get_rng_state())


def test_calibration_keeps_each_draws_weight_diagnostics_and_warns_for_none(gauss_guide):
    import warnings

    from infcomp.weights import UnreliableWeightsWarning, WeightDiagnostics

    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreliableWeightsWarning)
        with Sharpen(0.1):  # over-confident proposals: weights that rest on a few particles
            cal = calibration(ex.gaussian, gauss_guide, num_draws=4, num_samples=100, seed=4)
    diags = cal.weights.diagnostics
    assert len(diags) == 4 and all(isinstance(d, WeightDiagnostics) and d.num_samples == 100 for d in diags)
    assert cal.weights.unreliable == sum(not d.reliable for d in diags) >= 1
    assert cal.weights.to_dict() == {"weighted": 4, "unreliable": cal.weights.unreliable,
                                     "khat_threshold": diags[0].khat_threshold, "ess_floor": 10.0}
    assert cal.weights.describe("draws") == f"weights unreliable on {cal.weights.unreliable} of 4 draws (k-hat > 0.50 or ESS < 10)"


def test_a_weight_tally_in_json():
    import json
    import math

    from infcomp.weights import WeightTally, figures
    from infcomp.weights import diagnose

    flat, mixed = diagnose(torch.zeros(8)), diagnose(torch.zeros(200))  # equal weights: no k-hat to fit
    assert math.isnan(flat.khat)
    assert json.loads(json.dumps({"d": flat}, default=figures))["d"] == {**flat.to_dict(), "khat": None}
    tally = WeightTally((flat, mixed))
    assert figures(tally) == {"weighted": 2, "unreliable": 0, "khat_threshold": None, "ess_floor": None}
    assert tally.describe("images") == "weights unreliable on 0 of 2 images (k-hat or ESS past its limit)"
    with pytest.raises(TypeError, match="not JSON serializable"):
        json.dumps({"x": object()}, default=figures)
