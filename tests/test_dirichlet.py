"""Dirichlet latents (the simplex) get a proposal of their own: it fits Dirichlet priors of any
batch shape and nothing else, starts out at the prior, learns the exact posterior of a
Dirichlet-Categorical model, weighs as Pyro's importance sampling does, and saves and loads."""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
import torch.distributions as torch_dist
from pyro.poutine.messenger import Messenger

import infcomp
from infcomp.infer import LogWeight
from infcomp.nn.proposals import fit_family, make_families, unwrap
from infcomp.traces import site_spec

T = torch.tensor
ALPHA = T([1.0, 1.0, 1.0])
COUNTS = T([3, 5, 12])
Y = torch.cat([torch.full((int(c),), k) for k, c in enumerate(COUNTS)])  # 20 draws, sorted


def conjugate(y=None):
    w = pyro.sample("w", dist.Dirichlet(ALPHA))
    pyro.sample("y", dist.Categorical(w).expand([20]).to_event(1), obs=y)


def two_groups(y=None):
    """A batch of two simplices under one Independent wrapper, each with its own draws."""
    w = pyro.sample("w", dist.Dirichlet(0.5 * torch.ones(3)).expand([2]).to_event(1))
    pyro.sample("y", dist.Categorical(w).expand([8, 2]).to_event(2), obs=y)


@pytest.fixture(scope="module")
def guide():
    return infcomp.compile(conjugate, observe="y", num_traces=4_000, seed=0, progress=False, workers=0)


def _untrained(prior, num_components=3, rows=1):
    """The family, its context and its parameters as an untrained head gives them for ``prior``."""
    families = make_families(num_components=num_components)
    spec = site_spec("w", prior, families)
    family = families[spec.family]
    layer = torch.nn.Linear(4, math.prod(spec.value_shape) * family.num_params(spec))
    family.init_head(layer, spec)
    params = layer(torch.zeros(rows, 4)).detach().reshape((rows,) + spec.value_shape + (family.num_params(spec),))
    return family, family.context(unwrap(prior)[0]), params


# -- which priors it fits ---------------------------------------------------------------------
@pytest.mark.parametrize("prior", [
    dist.Dirichlet(ALPHA),
    dist.Dirichlet(0.5 * torch.ones(2, 4)),
    dist.Dirichlet(torch.ones(5)).expand([3, 2]),
    dist.Dirichlet(torch.ones(4)).expand([3]).to_event(1),
    torch_dist.Dirichlet(T([2.0, 0.3])),
], ids=["plain", "batch", "expanded", "independent", "torch"])
def test_the_family_fits_dirichlet_priors_of_any_batch_shape(prior):
    assert fit_family(prior, make_families()) == "dirichlet"
    if hasattr(prior, "shape"):  # a Pyro distribution (a model's site needs one)
        spec = site_spec("w", prior, make_families())
        assert spec.value_shape == tuple(prior.shape()) and spec.dist == "Dirichlet"


@pytest.mark.parametrize("prior", [
    dist.Beta(2.0, 2.0),
    dist.Normal(torch.zeros(3), 1.0).to_event(1),
    dist.Categorical(T([0.2, 0.3, 0.5])),
    dist.OneHotCategorical(T([0.2, 0.3, 0.5])),
    dist.MultivariateNormal(torch.zeros(2), torch.eye(2)),
    dist.Gamma(ALPHA, 1.0),
], ids=["beta", "normal", "categorical", "one_hot", "mvn", "gamma"])
def test_the_family_fits_nothing_else(prior):
    assert not make_families()["dirichlet"].fits(unwrap(prior)[0])
    assert fit_family(prior, make_families()) != "dirichlet"


# -- shapes and the untrained proposal --------------------------------------------------------
def test_a_batch_of_simplices_gets_one_proposal_per_simplex():
    prior = dist.Dirichlet(0.5 * torch.ones(2, 3, 4))
    spec = site_spec("w", prior, make_families())
    family, context, params = _untrained(prior, rows=5)
    assert context.shape == (2, 3, 4, 1) and params.shape == (5, 2, 3, 4, family.num_params(spec))
    q = family.proposal(params, context)
    assert q.batch_shape == (5, 2, 3) and q.event_shape == (4,)
    x = q.sample()
    assert x.shape == (5, 2, 3, 4) and q.log_prob(x).shape == (5, 2, 3)
    point = family.point(params, context)
    for v in (x, point):
        assert bool(prior.support.check(v).all()) and bool((v > 0).all())
    assert family.features(x, context, spec).shape == (5, family.feature_size(spec))


@pytest.mark.parametrize("alpha", [T([1.0, 1.0, 1.0]), T([0.1, 0.5, 4.0]), T([20.0, 3.0])])
def test_the_untrained_proposal_is_the_prior_or_close_to_it(alpha):
    prior = dist.Dirichlet(alpha)
    one, context, params = _untrained(prior, num_components=1)
    x = prior.sample((4000,))
    q = one.proposal(params, context)
    assert torch.allclose(q.log_prob(x), prior.log_prob(x), atol=1e-4)  # one component: the prior itself

    three, context, params = _untrained(prior, num_components=3)
    q = three.proposal(params, context)
    assert torch.allclose(three.point(params, context)[0], prior.mean, atol=1e-6)
    # components at the prior's mean, spread in total concentration: the weight p / q of any value stays
    # below the number of components, wherever it comes from
    for values in (x, q.sample((4000,)).squeeze(1)):
        assert float((prior.log_prob(values) - q.log_prob(values.unsqueeze(1)).squeeze(1)).max()) <= torch.log(T(3.0)) + 1e-4


@pytest.mark.parametrize("scale", [30.0, 1e4])
def test_wild_parameters_give_finite_densities_on_the_simplex(scale):
    """Network outputs far past the bound on the factors, either way, still give draws on the
    simplex whose densities under the proposal and under the prior are finite."""
    prior = dist.Dirichlet(T([0.05, 1.0, 50.0])).expand([500])
    family, context, params = _untrained(prior)
    torch.manual_seed(0)
    q = family.proposal(scale * torch.randn_like(params[0]), context)
    x = q.sample()
    assert bool(prior.support.check(x).all()) and torch.isfinite(q.log_prob(x)).all()
    assert torch.isfinite(prior.log_prob(x)).all()
    assert torch.isfinite(family.features(x, context, site_spec("w", prior, make_families()))).all()


# -- a compile with an exact answer -----------------------------------------------------------
def _posterior_mean(post):
    """The weighted mean of ``w`` and its Monte Carlo standard error."""
    w = torch.softmax(post.log_weights, 0).unsqueeze(-1)
    x = post.marginal("w").values.double()
    m = (w * x).sum(0)
    return m, (w**2 * (x - m) ** 2).sum(0).sqrt()


def test_the_guide_learns_the_conjugate_posterior(guide):
    assert guide.network.specs["w"].family == "dirichlet"
    post = infcomp.infer(conjugate, guide, Y, num_samples=2000, seed=0)
    exact = (ALPHA + COUNTS) / (ALPHA + COUNTS).sum()
    mean, se = _posterior_mean(post)
    assert bool(((mean - exact).abs() <= 5 * se + 1e-3).all()), f"{mean} against {exact} (se {se})"
    prior_is = infcomp.infer(conjugate, None, Y, observe="y", num_samples=2000, seed=0)
    assert post.ess / 2000 > 0.3 and post.ess > 2 * prior_is.ess, (post.ess, prior_is.ess)


UNRELIABLE = "ignore:the importance weights are unreliable"  # few particles, or a short compile: weights only compared


@pytest.mark.filterwarnings(UNRELIABLE)
def test_the_sequential_path_weighs_as_pyro_importance(guide):
    post = infcomp.infer(conjugate, guide, Y, num_samples=50, seed=11, batch=False)
    pyro.set_rng_seed(11)
    imp = pyro.infer.Importance(pyro.condition(conjugate, data={"y": Y}), guide=guide.condition(Y), num_samples=50).run()
    pyro_lw = torch.stack([torch.as_tensor(w) for w in imp.log_weights]).double()
    assert torch.allclose(pyro_lw, post.log_weights, atol=1e-4)


class Replay(Messenger):
    """Gives latent site ``w`` the value ``value`` (drawn by the guide elsewhere: weighed, not observed)."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def _pyro_sample(self, msg):
        if msg["name"] == "w":
            msg["value"] = self.value


@pytest.mark.filterwarnings(UNRELIABLE)
def test_batched_and_sequential_reads_agree_on_a_batch_of_simplices():
    g = infcomp.compile(two_groups, observe="y", num_traces=512, seed=0, progress=False, workers=0)
    spec = g.network.specs["w"]
    assert (spec.family, spec.value_shape, spec.event_dim) == ("dirichlet", (2, 3), 1)
    y = T([[0, 0, 0, 1, 0, 0, 2, 0], [2, 2, 1, 2, 2, 2, 2, 2]]).T
    post = infcomp.infer(two_groups, g, y, num_samples=30, seed=0)
    values = post.marginal("w").values
    assert values.shape == (30, 2, 3) and torch.allclose(values.sum(-1), torch.ones(30, 2), atol=1e-5)
    obs = g.check_observation(y)
    for i in range(30):  # the sequential path, replaying a batched particle's value, weighs it alike
        with torch.no_grad(), Replay(values[i]), g.messenger(obs), LogWeight(observe=g.observe) as lw:
            poutine.condition(two_groups, data=obs)()
        assert math.isfinite(lw.log_weight) and abs(float(lw.log_weight) - float(post.log_weights[i])) < 1e-4
    point = infcomp.greedy(two_groups, g, y)["w"]
    assert torch.equal(point, infcomp.greedy(two_groups, g, y, batch=False)["w"])
    assert point.shape == (2, 3) and bool((point > 0).all())


def test_the_guide_saves_and_loads(guide, tmp_path):
    path = tmp_path / "dirichlet.pt"
    guide.save(path)
    loaded = infcomp.load(path)
    assert loaded.network.specs["w"].family == "dirichlet"
    a = infcomp.infer(conjugate, guide, Y, num_samples=300, seed=3)
    b = infcomp.infer(conjugate, loaded, Y, num_samples=300, seed=3)
    assert torch.equal(a.log_weights, b.log_weights)
    assert torch.equal(a.marginal("w").values, b.marginal("w").values)


def test_dirichlet_priors_stack_row_by_row():
    from infcomp.stacking import stack_priors

    priors = [dist.Dirichlet(torch.tensor([0.5, 1.0, 2.0]) * (i + 1)) for i in range(4)]
    stacked = stack_priors(priors)
    assert stacked.batch_shape == (4,) and stacked.event_shape == (3,)
    value = torch.tensor([0.2, 0.3, 0.5])
    assert torch.allclose(stacked.log_prob(value.expand(4, 3)), torch.stack([p.log_prob(value) for p in priors]))
    assert stack_priors([dist.Dirichlet(torch.ones(3)), dist.Dirichlet(torch.ones(4))]) is None  # other simplexes
