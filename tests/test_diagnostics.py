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
