"""infcomp.guide_marginal: the guide's exact marginal over the discrete sites drawn first."""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

import infcomp
import infcomp_models.examples as ex


def two_digits(y=None):
    a = pyro.sample("a", dist.Categorical(torch.ones(3) / 3))
    b = pyro.sample("b", dist.Categorical(torch.tensor([0.5, 0.3, 0.2])))
    z = pyro.sample("z", dist.Normal(0.0, 0.3))
    return pyro.sample("y", dist.Normal(a + 3.0 * b + z, 0.5), obs=y)


def digits_only(y=None):
    a = pyro.sample("a", dist.Categorical(torch.ones(3) / 3))
    b = pyro.sample("b", dist.Categorical(torch.tensor([0.5, 0.3, 0.2])))
    return pyro.sample("y", dist.Normal(a + 3.0 * b, 0.5), obs=y)


@pytest.fixture(scope="module")
def digits_guide():
    return infcomp.compile(two_digits, observe="y", num_traces=512, seed=0, workers=0, progress=False)


def _sequential_log_q(guide, y, sites):
    """``(values, log q of the sites)`` of one run of the Pyro guide (the sequential path)."""
    trace = poutine.trace(guide.condition(y)).get_trace()
    values = tuple((s, (int(trace.nodes[s]["value"]),)) for s in sites)
    return values, sum(float(trace.nodes[s]["fn"].log_prob(trace.nodes[s]["value"])) for s in sites)


def test_probabilities_are_the_guides_own_and_sum_to_one(digits_guide):
    y = torch.tensor(4.2)
    m = infcomp.guide_marginal(two_digits, digits_guide, y, stop_before="z", num_samples=400, seed=1)
    assert m.num_distinct == 9  # every (a, b) is found: the mass is all there
    assert abs(m.found - 1.0) < 1e-4 and abs(sum(m.probabilities.values()) - 1.0) < 1e-4
    assert list(m.probabilities.values()) == sorted(m.probabilities.values(), reverse=True)
    for _ in range(20):  # the sequential guide's own proposals give each value set the same probability
        values, log_q = _sequential_log_q(digits_guide, y, ("a", "b"))
        assert abs(m.probabilities[values] - math.exp(log_q)) < 1e-5


def test_observations_read_together_each_get_their_own_probabilities(digits_guide):
    ys = [torch.tensor(v) for v in (0.1, 4.2, 7.9)]
    alone = infcomp.guide_marginal(two_digits, digits_guide, ys, stop_before="z", num_samples=1, chunk_size=64)
    for y, m in zip(ys, alone):  # one run each: the greedy pass
        g = infcomp.greedy(two_digits, digits_guide, y, stop_before="z")
        assert list(m.probabilities) == [(("a", (int(g["a"]),)), ("b", (int(g["b"]),)))]
    together = infcomp.guide_marginal(two_digits, digits_guide, ys, stop_before="z", num_samples=40, seed=0,
                                      chunk_size=120)  # the three observations' runs in one chunk
    assert len(together) == 3
    for y, m in zip(ys, together):
        assert len(m.probabilities) >= 2
        for _ in range(10):  # each observation's probabilities are the sequential guide's for it
            values, log_q = _sequential_log_q(digits_guide, y, ("a", "b"))
            if values in m.probabilities:
                assert abs(m.probabilities[values] - math.exp(log_q)) < 1e-5


def test_a_function_sums_its_sets(digits_guide):
    y = torch.tensor(4.2)
    total = infcomp.guide_marginal(two_digits, digits_guide, y, stop_before="z", num_samples=400, seed=1,
                                   function=lambda v: int(v["a"]) + int(v["b"]))
    exact = infcomp.guide_marginal(two_digits, digits_guide, y, stop_before="z", num_samples=400, seed=1)
    assert abs(total.probabilities[4] - sum(p for k, p in exact.probabilities.items() if k[0][1][0] + k[1][1][0] == 4)) < 1e-9


def test_a_trained_guide_matches_the_enumerated_posterior():
    guide = infcomp.compile(ex.poisson_branching, observe="y", num_traces=4000, seed=0, workers=0, progress=False)
    for y in (0.5, 2.0):  # where the prior puts most of its observations (4000 traces cover them)
        exact = ex.poisson_branching_exact(y)
        m = infcomp.guide_marginal(ex.poisson_branching, guide, torch.tensor(y), stop_before=("x_0", "y"),
                                   num_samples=300, seed=0, function=lambda v: int(v["n"]))
        assert m.found > 0.99
        tv = 0.5 * sum(abs(m.probabilities.get(n, 0.0) - float(exact[n])) for n in range(len(exact)))
        assert tv < 0.08, (y, tv)


def test_bad_calls_are_refused_naming_the_site_or_argument(digits_guide):
    y = torch.tensor(1.0)
    with pytest.raises(ValueError, match="site 'z' is continuous"):
        infcomp.guide_marginal(two_digits, digits_guide, y, stop_before="y")
    with pytest.raises(ValueError, match="reached none of them"):
        infcomp.guide_marginal(digits_only, digits_guide, y, stop_before="nowhere")
    with pytest.raises(ValueError, match="names no site"):
        infcomp.guide_marginal(two_digits, digits_guide, y, stop_before=())
    with pytest.raises(TypeError, match="num_samples"):
        infcomp.guide_marginal(two_digits, digits_guide, y, stop_before="z", num_samples=2.5)
    with pytest.raises(ValueError, match="site .y. contains NaN"):
        infcomp.guide_marginal(two_digits, digits_guide, torch.tensor(float("nan")), stop_before="z")


def test_recalibration_recovers_a_known_map_and_stays_finite():
    g = torch.Generator().manual_seed(0)
    stated = torch.rand(4000, generator=g, dtype=torch.float64) * 0.98 + 0.01
    truth = infcomp.Recalibration(2.0, -0.5)
    right = torch.rand(4000, generator=g, dtype=torch.float64) < truth(stated)
    fit = infcomp.fit_recalibration(stated, right)
    assert abs(fit.slope - 2.0) < 0.2 and abs(fit.intercept + 0.5) < 0.15 and fit.num_draws == 4000
    assert infcomp.Recalibration()(0.3) == pytest.approx(0.3)
    never = infcomp.fit_recalibration([0.3] * 50, [False] * 50)  # all wrong: a finite map that says so
    assert math.isfinite(never.slope) and never(0.3) < 0.05
    with pytest.raises(ValueError, match="as many stated probabilities as outcomes"):
        infcomp.fit_recalibration([0.5, 0.5], [True])
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        infcomp.fit_recalibration([1.5], [True])
