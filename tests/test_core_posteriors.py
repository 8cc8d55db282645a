"""compile + infer against exact posteriors: conjugate models, enumeration, mixed site families."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import infcomp
from infcomp.nn.proposals import make_families, unwrap
from infcomp.nn.proposals.point import point_estimate
from infcomp.traces import site_spec
from infcomp_models.examples import (
    beta_bernoulli,
    beta_bernoulli_exact,
    gaussian,
    gaussian_exact,
    poisson_branching,
    poisson_branching_exact,
)

Y = torch.tensor([8.0, 9.0])


def gaussian_no_args():
    """The issue's contract model: the observed site is left unobserved in the model."""
    mu = pyro.sample("mu", dist.Normal(1.0, 5**0.5))
    pyro.sample("y", dist.Normal(mu, 2**0.5).expand([2]).to_event(1))


@pytest.fixture(scope="module")
def gauss_guide():
    return infcomp.compile(gaussian_no_args, observe="y", num_traces=20_000, seed=0, workers=0, progress=False)


def test_gaussian_unknown_mean(gauss_guide):
    mean, std = gaussian_exact(Y)
    assert (mean, round(std, 4)) == (7.25, 0.9129)
    post = infcomp.infer(gaussian_no_args, gauss_guide, Y, num_samples=1_000, seed=1)
    assert abs(float(post.mean("mu")) - mean) < 0.05
    assert abs(float(post.std("mu")) / std - 1) < 0.05
    prior = infcomp.infer(gaussian_no_args, None, Y, observe="y", num_samples=1_000, seed=1)
    assert post.ess >= 5 * prior.ess
    # both estimate the same evidence: log N(y; [1, 1], 5 * 11^T + 2 I)
    cov = 5 * torch.ones(2, 2) + 2 * torch.eye(2)
    exact_log_z = float(dist.MultivariateNormal(torch.ones(2), cov).log_prob(Y))
    assert abs(post.log_evidence - exact_log_z) < 0.05


def test_marginal_interface(gauss_guide):
    post = infcomp.infer(gaussian_no_args, gauss_guide, Y, num_samples=1_000, seed=2)
    m = post.marginal("mu")
    assert m.values.shape == (1_000,) and abs(float(m.weights.sum()) - 1) < 1e-9
    lo, med, hi = m.quantile([0.025, 0.5, 0.975]).tolist()
    assert lo < med < hi and abs(med - 7.25) < 0.1 and abs((hi - lo) / (2 * 1.96 * 0.9129) - 1) < 0.1
    draws = m.sample(20_000, generator=torch.Generator().manual_seed(0))
    assert abs(float(draws.mean()) - 7.25) < 0.06
    density, edges = m.histogram(bins=20)
    assert abs(float((density * edges.diff()).sum()) - 1) < 1e-6
    with pytest.raises(KeyError, match="no latent site 'nu'"):
        post.marginal("nu")


def test_model_taking_observation_as_argument():
    guide = infcomp.compile(gaussian, observe="y", num_traces=12_000, seed=3, workers=0, progress=False)
    post = infcomp.infer(gaussian, guide, torch.tensor([0.0, 2.0]), num_samples=1_000, seed=0)
    mean, std = gaussian_exact(torch.tensor([0.0, 2.0]))
    assert abs(float(post.mean("mu")) - mean) < 0.05
    assert abs(float(post.std("mu")) / std - 1) < 0.05
    assert post.ess > 800


def test_beta_bernoulli_conjugate():
    guide = infcomp.compile(beta_bernoulli, observe="y", num_traces=15_000, seed=4, workers=0, progress=False)
    y = torch.tensor([1.0, 1, 1, 0, 1, 1, 1, 1, 0, 1])
    mean, std = beta_bernoulli_exact(y)
    post = infcomp.infer(beta_bernoulli, guide, y, num_samples=2_000, seed=0)
    assert abs(float(post.mean("p")) - mean) < 0.01
    assert abs(float(post.std("p")) / std - 1) < 0.05
    assert post.ess > 1_000


def gamma_poisson(y=None):
    lam = pyro.sample("lam", dist.Gamma(3.0, 1.0))
    pyro.sample("y", dist.Poisson(lam).expand([5]).to_event(1), obs=y)


def test_gamma_poisson_conjugate():
    guide = infcomp.compile(gamma_poisson, observe="y", num_traces=15_000, seed=5, workers=0, progress=False)
    y = torch.tensor([4.0, 7.0, 3.0, 6.0, 5.0])
    a, b = 3.0 + float(y.sum()), 1.0 + 5
    post = infcomp.infer(gamma_poisson, guide, y, num_samples=2_000, seed=0)
    assert abs(float(post.mean("lam")) - a / b) < 0.05
    assert abs(float(post.std("lam")) / (math.sqrt(a) / b) - 1) < 0.05
    assert post.ess > 1_000


def tv(p, q):
    n = max(len(p), len(q))
    p = torch.nn.functional.pad(p, (0, n - len(p)))
    q = torch.nn.functional.pad(q, (0, n - len(q)))
    return 0.5 * float((p - q).abs().sum())


def test_variable_structure_against_enumeration():
    guide = infcomp.compile(poisson_branching, observe="y", num_traces=30_000, seed=6, workers=0, progress=False)
    assert {"n", "x_0", "x_1", "x_5"} <= set(guide.addresses)
    for y in (4.0, -1.0):
        exact = poisson_branching_exact(y)
        post = infcomp.infer(poisson_branching, guide, torch.tensor(y), num_samples=4_000, seed=0)
        probs = post.marginal("n").probs()
        estimate = torch.zeros(len(exact), dtype=torch.float64)
        for n, p in probs.items():
            estimate[int(n)] += p
        assert tv(estimate, exact) < 0.05, (y, probs)
        # the same marginal through the per-sample view
        by_sample = post.probabilities(lambda v: int(v["n"]))
        assert all(abs(by_sample[int(n)] - p) < 1e-9 for n, p in probs.items())
        assert all(("x_0" in post.values(i)) == (int(post.values(i)["n"]) >= 1) for i in range(50))
        # x_0 exists exactly when n >= 1
        assert abs(post.marginal("x_0").presence - float(exact[1:].sum())) < 0.03


def mixed(y=None):
    c = pyro.sample("c", dist.Categorical(torch.tensor([0.2, 0.3, 0.5])))
    b = pyro.sample("b", dist.Bernoulli(0.3))
    u = pyro.sample("u", dist.Uniform(0.0, 1.0))
    pyro.sample("y", dist.Normal(c + 2 * b + u, 0.5), obs=y)


def mixed_exact(y):
    """p(c, b | y) by enumerating (c, b) and integrating u over (0, 1) in closed form."""
    normal = torch.distributions.Normal(0.0, 1.0)
    table = torch.zeros(3, 2, dtype=torch.float64)
    for c, pc in enumerate([0.2, 0.3, 0.5]):
        for b, pb in enumerate([0.7, 0.3]):
            m = c + 2 * b
            like = normal.cdf(torch.tensor((y - m) / 0.5)) - normal.cdf(torch.tensor((y - m - 1) / 0.5))
            table[c, b] = pc * pb * float(like)
    return table / table.sum()


def test_categorical_uniform_bernoulli_together():
    guide = infcomp.compile(mixed, observe="y", num_traces=25_000, seed=7, workers=0, progress=False)
    fams = {n: guide.network.specs[n].family for n in ("c", "b", "u")}
    assert fams == {"c": "categorical", "b": "bernoulli", "u": "beta_interval"}
    for y in (2.4, 0.7):
        exact = mixed_exact(y)
        post = infcomp.infer(mixed, guide, torch.tensor(y), num_samples=4_000, seed=0)
        c = post.marginal("c").values.long()
        b = post.marginal("b").values.long()
        est = torch.zeros(3, 2, dtype=torch.float64).index_put_((c, b), post.weights, accumulate=True)
        assert 0.5 * float((est - exact).abs().sum()) < 0.05, (y, est, exact)
        u = post.marginal("u").values
        assert float(u.min()) > 0 and float(u.max()) < 1
        # flattened discrete proposals: different particles, the same exact posterior
        with infcomp.temper(3.0):
            hot = infcomp.infer(mixed, guide, torch.tensor(y), num_samples=4_000, seed=0)
        c, b = hot.marginal("c").values.long(), hot.marginal("b").values.long()
        est = torch.zeros(3, 2, dtype=torch.float64).index_put_((c, b), hot.weights, accumulate=True)
        assert 0.5 * float((est - exact).abs().sum()) < 0.05, (y, est, exact)
        assert not torch.equal(hot.marginal("c").values, post.marginal("c").values)
        assert torch.equal(hot.marginal("u").values > 0, torch.ones(4_000, dtype=torch.bool))


def test_temper_flattens_discrete_proposals_exactly():
    guide = infcomp.compile(mixed, observe="y", num_traces=3_000, seed=7, workers=0, progress=False)
    y = torch.tensor(2.4)
    cold = pyro.poutine.trace(guide.condition(y)).get_trace().nodes["c"]["fn"]
    with infcomp.temper(2.0):
        hot = pyro.poutine.trace(guide.condition(y)).get_trace().nodes["c"]["fn"]
    expected = cold.probs.sqrt() / cold.probs.sqrt().sum()
    assert torch.allclose(hot.probs, expected, atol=1e-6)
    with infcomp.temper(2.0, sites=["b"]):  # c, the first site, is not named: its proposal is untouched
        assert torch.equal(pyro.poutine.trace(guide.condition(y)).get_trace().nodes["c"]["fn"].probs, cold.probs)
    with pytest.raises(ValueError, match="site 'u' proposes from"):
        with infcomp.temper(2.0, sites=["u"]):
            infcomp.infer(mixed, guide, y, num_samples=2)
    with pytest.raises(ValueError, match="at least 1"):
        infcomp.temper(0.5)
    # the mode does not move: greedy reads are the same
    mode = infcomp.greedy(mixed, guide, y)
    with infcomp.temper(5.0):
        assert infcomp.greedy(mixed, guide, y) == mode


def test_greedy_stops_before_the_named_site():
    guide = infcomp.compile(mixed, observe="y", num_traces=512, seed=7, workers=0, progress=False)
    y = torch.tensor(2.4)
    full = infcomp.greedy(mixed, guide, y)
    assert set(full) == {"c", "b", "u"}
    assert infcomp.greedy(mixed, guide, y, stop_before="u") == {"c": full["c"], "b": full["b"]}
    assert infcomp.greedy(mixed, guide, y, stop_before=["u", "b"]) == {"c": full["c"]}  # the first one reached
    with pytest.raises(ValueError, match=r"stop_before names \['never'\], but the model reached none of them"):
        infcomp.greedy(mixed, guide, y, stop_before="never")  # a typo is not a full pass
    assert not pyro.poutine.runtime._PYRO_STACK  # the early exit leaves no handler behind
    assert infcomp.greedy(mixed, guide, y, stop_before=None) == full
    for bad in ([3], 3):
        with pytest.raises(TypeError, match="stop_before must be a site name"):
            infcomp.greedy(mixed, guide, y, stop_before=bad)


@pytest.mark.parametrize(
    "prior",
    [
        dist.Categorical(torch.tensor([0.1, 0.0, 0.6, 0.3])),
        dist.Bernoulli(0.3),
        dist.Uniform(-1.0, 3.0),
        dist.Beta(2.0, 5.0),
        dist.Normal(0.0, 2.0),
        dist.LogNormal(0.0, 1.0),
        dist.Poisson(4.0),
        dist.Binomial(10, 0.3),
        dist.Normal(torch.zeros(3), 1.0).to_event(1),
    ],
    ids=lambda d: type(d).__name__,
)
def test_a_familys_greedy_point_is_its_proposals_point_estimate(prior):
    families = make_families()
    spec = site_spec("z", prior, families)
    family = families[spec.family]
    torch.manual_seed(0)
    context = family.context(unwrap(prior)[0])
    for _ in range(5):
        params = torch.randn(spec.value_shape + (family.num_params(spec),)) * 2
        assert torch.allclose(family.point(params, context), point_estimate(family.proposal(params, context)))


def test_vector_valued_sites_and_plates():
    def model(y=None):
        z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        with pyro.plate("data", 3):
            pyro.sample("y", dist.Normal(z, 0.5), obs=y)

    guide = infcomp.compile(model, observe="y", num_traces=15_000, seed=8, workers=0, progress=False)
    assert guide.network.specs["z"].value_shape == (3,)
    y = torch.tensor([1.0, -0.5, 2.0])
    post = infcomp.infer(model, guide, y, num_samples=2_000, seed=0)
    exact_mean = y * (1 / 0.25) / (1 + 1 / 0.25)
    assert torch.allclose(post.mean("z").float(), exact_mean, atol=0.06)
    assert post.ess > 600
