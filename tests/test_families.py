"""Each pyro.distributions family a user is likely to write gets a proposal fitted to what it
really is: the posterior matches a large prior importance-sampling reference within a few Monte
Carlo standard errors, and no proposal puts a draw outside the prior's real support.  Families
no head fits (event-shaped priors) fall back to the prior with one warning."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

import infcomp
from infcomp.nn.proposals import make_families
from infcomp.traces import site_spec

T = torch.tensor


def _in_support(prior, x):
    """Whether every draw ``x`` lies in the prior's real support (angles on [-pi, pi))."""
    if isinstance(prior, dist.VonMises):
        return bool(((x >= -math.pi) & (x < math.pi)).all())
    ok = prior.support.check(x)
    return bool(ok.all())


# name, prior, likelihood of y given z, observed y, the family that must fit ("prior": falls back)
CASES = [
    ("Normal", dist.Normal(0.0, 1.0), lambda z: dist.Normal(z, 0.5), 1.2, "normal_mixture"),
    ("LogNormal", dist.LogNormal(0.0, 0.5), lambda z: dist.Normal(z, 0.5), 2.0, "lognormal_mixture"),
    ("HalfNormal", dist.HalfNormal(1.0), lambda z: dist.Normal(z, 0.3), 1.0, "lognormal_mixture"),
    ("HalfCauchy", dist.HalfCauchy(1.0), lambda z: dist.Normal(z, 0.5), 2.0, "lognormal_mixture"),
    ("Gamma", dist.Gamma(2.0, 1.0), lambda z: dist.Poisson(z), 4.0, "lognormal_mixture"),
    ("Exponential", dist.Exponential(1.0), lambda z: dist.Normal(z, 0.5), 1.5, "lognormal_mixture"),
    ("Beta", dist.Beta(2.0, 2.0), lambda z: dist.Normal(z, 0.1), 0.7, "beta_interval"),
    ("Uniform", dist.Uniform(-1.0, 3.0), lambda z: dist.Normal(z, 0.5), 2.0, "beta_interval"),
    ("VonMises", dist.VonMises(0.5, 2.0), lambda z: dist.VonMises(z, 4.0), 2.0, "vonmises_mixture"),
    ("Dirichlet", dist.Dirichlet(torch.ones(3)), lambda z: dist.Normal(z[..., 0], 0.1), 0.6, "dirichlet"),
    ("MultivariateNormal", dist.MultivariateNormal(torch.zeros(2), T([[1.0, 0.5], [0.5, 1.0]])),
     lambda z: dist.Normal(z.sum(-1), 0.5), 1.5, "prior"),
    ("Categorical", dist.Categorical(T([0.2, 0.3, 0.5])), lambda z: dist.Normal(z.float(), 0.7), 0.3, "categorical"),
    ("OneHotCategorical", dist.OneHotCategorical(T([0.2, 0.3, 0.5])),
     lambda z: dist.Normal((z * T([0.0, 1.0, 2.0])).sum(-1), 0.7), 0.3, "prior"),
    ("Bernoulli", dist.Bernoulli(0.3), lambda z: dist.Normal(z, 0.5), 0.8, "bernoulli"),
    ("Binomial", dist.Binomial(10, 0.3), lambda z: dist.Normal(z, 1.0), 5.0, "binomial"),
    ("Poisson", dist.Poisson(3.0), lambda z: dist.Normal(z, 1.0), 6.0, "poisson_mixture"),
    ("Geometric", dist.Geometric(0.3), lambda z: dist.Normal(z, 1.0), 4.0, "poisson_mixture"),
    ("NegativeBinomial", dist.NegativeBinomial(3.0, 0.5), lambda z: dist.Normal(z, 1.0), 5.0, "poisson_mixture"),
    ("Delta", dist.Delta(T(2.0)), lambda z: dist.Normal(z, 1.0), 0.5, "prior"),
]


def _reference(prior, likelihood, y, n=200_000):
    """Posterior mean of z and its Monte Carlo standard error, by prior importance sampling."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        z = prior.sample((n,))
    return _weighted_mean(z, likelihood(z).log_prob(T(y)).double())


def _weighted_mean(z, log_w):
    w = torch.softmax(log_w, 0)
    w = w.reshape((-1,) + (1,) * (z.dim() - 1))
    x = z.double()
    m = (w * x).sum(0)
    se = ((w**2 * (x - m) ** 2).sum(0)).sqrt()
    return m, se


@pytest.mark.parametrize("name, prior, likelihood, y, family", CASES, ids=[c[0] for c in CASES])
def test_each_family_gives_the_right_posterior_and_stays_in_its_support(name, prior, likelihood, y, family):
    def model():
        z = pyro.sample("z", prior)
        pyro.sample("y", likelihood(z))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        guide = infcomp.compile(model, observe="y", num_traces=128, batch_size=32, workers=0, seed=0,
                                progress=False, validation_size=32)
    fallback = [w for w in caught if "no proposal family fits" in str(w.message)]
    assert guide.network.specs["z"].family == family
    # a prior no head fits warns once that it proposes from its prior; a Delta has nothing to propose
    assert len(fallback) == (1 if family == "prior" and name != "Delta" else 0), [str(w.message) for w in caught]

    post = infcomp.infer(model, guide, T(y), num_samples=600, seed=0)
    assert torch.isfinite(post.log_weights).all()
    values = post.marginal("z").values
    assert _in_support(prior, values), f"{name}: a particle outside the prior's support"
    mean, se = _weighted_mean(values, post.log_weights)
    ref, ref_se = _reference(prior, likelihood, y)
    tol = 4 * se + 4 * ref_se + 1e-6
    assert bool(((mean - ref).abs() <= tol).all()), f"{name}: {mean} against {ref} (tolerance {tol})"


HEADS = [c for c in CASES if c[4] != "prior"]


@pytest.mark.parametrize("name, prior, family", [(c[0], c[1], c[4]) for c in HEADS], ids=[c[0] for c in HEADS])
def test_no_proposal_puts_mass_outside_its_priors_support(name, prior, family):
    """Whatever its network outputs (here wild random ones), a head's draws and point estimates
    lie in the prior's real support and have finite density."""
    n = 4000
    fam = make_families()[family]
    wide = prior.expand([n])
    spec = site_spec("z", wide, make_families())
    torch.manual_seed(0)
    params = 4 * torch.randn(spec.value_shape + (fam.num_params(spec),))
    context = fam.context(wide)
    q = fam.proposal(params, context)
    x = q.sample()
    assert _in_support(prior, x) and _in_support(prior, fam.point(params, context))
    assert torch.isfinite(q.log_prob(x)).all()


def test_a_von_mises_is_not_proposed_for_as_a_line():
    assert infcomp.traces.site_spec("a", dist.VonMises(0.0, 1.0), make_families()).family == "vonmises_mixture"
    assert make_families()["normal_mixture"].fits(dist.VonMises(0.0, 1.0)) is False
