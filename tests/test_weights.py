"""How far a posterior's weights can be trusted (ESS, Pareto k-hat), the warning where they cannot,
and refinement of the guide for one observation, against exact answers."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

import infcomp
from infcomp.refine import tempered_weights
from infcomp.weights import diagnose, khat_threshold, pareto_khat
from infcomp_models.examples import gaussian, gaussian_exact

TAIL = torch.tensor([40.0, 42.0])  # mu's prior is N(1, 5): 17 prior sds out


@pytest.fixture(scope="module")
def guide():
    return infcomp.compile(gaussian, observe="y", num_traces=5_000, seed=0, workers=0, progress=False)


@pytest.mark.parametrize("shape", [0.2, 0.5, 0.8, 1.2])
def test_khat_recovers_a_pareto_tail(shape):
    g = torch.Generator().manual_seed(3)
    estimates = [pareto_khat(-shape * torch.log(torch.rand(20_000, generator=g, dtype=torch.float64)))
                 for _ in range(8)]
    assert abs(sum(estimates) / len(estimates) - shape) < 0.08


def test_thresholds_and_ties():
    assert khat_threshold(100) == pytest.approx(0.5) and khat_threshold(10 ** 6) == 0.7
    equal = diagnose(torch.zeros(500))
    assert math.isnan(equal.khat) and equal.ess == pytest.approx(500) and equal.reliable
    one = diagnose(torch.tensor([0.0] + [-50.0] * 999))  # one particle holds it all, the rest tie
    assert one.ess < 1.01 and not one.reliable and "ESS" in one.problems()[0]
    light = diagnose(0.3 * torch.randn(2000, generator=torch.Generator().manual_seed(0)))
    assert light.reliable and light.khat < 0.3 and light.problems() == []


def test_prior_sampling_collapses_in_the_tail_and_says_so():
    with pytest.warns(infcomp.UnreliableWeightsWarning, match=r"k-hat .* > 0.70.*refine=True"):
        post = infcomp.infer(gaussian, None, TAIL, observe="y", num_samples=2000, seed=0)
    assert not post.diagnostics.reliable and post.khat > 0.7
    assert "reliable=False" in repr(post) and "UNRELIABLE" in post.summary()


def test_no_warning_where_the_weights_hold(guide):
    y = torch.tensor([2.0, 0.5])
    with warnings.catch_warnings():
        warnings.simplefilter("error", infcomp.UnreliableWeightsWarning)
        post = infcomp.infer(gaussian, guide, y, num_samples=2000, seed=0)
        prior = infcomp.infer(gaussian, None, y, observe="y", num_samples=2000, seed=0)
    for p in (post, prior):
        assert p.diagnostics.reliable and p.ess > 200 and p.khat < 0.7
    assert "reliable=True" in repr(post)


def test_refinement_reaches_the_tail(guide):
    mean, std = gaussian_exact(TAIL)
    with pytest.warns(infcomp.UnreliableWeightsWarning):
        plain = infcomp.infer(gaussian, guide, TAIL, num_samples=2000, seed=1)
    assert abs(float(plain.mean("mu")) - mean) > 1 * std  # the compiled guide alone is off, and was said to be
    before = [p.detach().clone() for p in guide.network.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error", infcomp.UnreliableWeightsWarning)
        post = infcomp.infer(gaussian, guide, TAIL, num_samples=2000, seed=1, refine=infcomp.Refine(steps=100))
    report = post.refinement
    assert not report.before.reliable and report.after.reliable and report.after is post.diagnostics
    assert 1 <= report.steps <= 100 and report.stopped == "reliable"
    assert post.ess / post.num_samples > 0.1
    assert abs(float(post.mean("mu")) - mean) < 0.3 * std and abs(float(post.std("mu")) / std - 1) < 0.15
    # the exact evidence: log N(y; [1, 1], 5 * 11^T + 2 I)
    exact = float(dist.MultivariateNormal(torch.ones(2), 5 * torch.ones(2, 2) + 2 * torch.eye(2)).log_prob(TAIL))
    assert abs(post.log_evidence - exact) < 0.1
    assert all(torch.equal(a, b) for a, b in zip(before, guide.network.parameters()))  # the caller's guide untouched


def test_refinement_on_the_sequential_path_and_its_budget(guide):
    post = infcomp.infer(gaussian, guide, TAIL, num_samples=500, seed=2, batch=False, warn=False,
                         refine=infcomp.Refine(steps=2, particles=64))
    assert post.refinement.steps == 2 and post.refinement.stopped == "steps"
    timed = infcomp.infer(gaussian, guide, TAIL, num_samples=200, seed=2, warn=False,
                          refine=infcomp.Refine(steps=10 ** 6, seconds=0.5))
    assert timed.refinement.stopped in ("seconds", "reliable") and timed.refinement.seconds < 5


def test_refine_settings_are_checked(guide):
    for bad in [dict(steps=0), dict(particles=8), dict(seconds=-1), dict(lr=0), dict(min_ess=1.5), dict(steps=2.0),
                dict(reuse=0)]:
        with pytest.raises((ValueError, TypeError), match=f"Refine.{next(iter(bad))}"):
            infcomp.Refine(**bad)
    with pytest.raises(TypeError, match="refine= takes"):
        infcomp.infer(gaussian, guide, TAIL, refine="yes")
    with pytest.raises(ValueError, match="nothing to refine"):
        infcomp.infer(gaussian, None, TAIL, observe="y", refine=True)


def test_tempered_weights_keep_their_ess():
    lw = torch.tensor([0.0, -1.0, -30.0, -math.inf] + [-60.0] * 60, dtype=torch.float64)
    w, beta = tempered_weights(lw, 0.5)
    assert 0 < beta < 1 and float(w[3]) == 0 and abs(float(w.sum()) - 1) < 1e-12
    assert 1 / float((w * w).sum()) == pytest.approx(0.5 * 63, rel=1e-3)
    w1, beta1 = tempered_weights(torch.zeros(10), 0.5)
    assert beta1 == 1.0 and torch.allclose(w1, torch.full((10,), 0.1, dtype=torch.float64))


def gamma_poisson(counts=None):
    rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
    pyro.deterministic("log_rate", rate.log())
    with pyro.plate("days", 5):
        pyro.sample("counts", dist.Poisson(rate), obs=counts)


def test_deterministic_sites_are_in_the_posterior():
    counts = torch.tensor([3.0, 1.0, 4.0, 2.0, 2.0])
    post = infcomp.infer(gamma_poisson, None, counts, observe="counts", num_samples=3000, seed=0)
    assert set(post.sites) == {"rate", "log_rate"}
    assert torch.allclose(post.marginal("log_rate").values, post.marginal("rate").values.log())
    assert float(post.mean("rate")) == pytest.approx((2 + 12) / (1 + 5), rel=0.05)  # Gamma(14, 6)
    assert "log_rate" in post.summary()
