"""Particles advanced together (the default) against the sequential reference path (``batch=False``).

For the values a batched particle holds, the sequential path, replaying them, must give the
same log weight; the batched greedy read must equal the sequential one; the runs must not see
each other's Pyro handlers or plate dimensions.
"""

import math
import warnings

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.poutine.messenger import Messenger

import infcomp
from infcomp.infer import LogWeight
from infcomp.lockstep import lockstep, pause
from infcomp_models import examples as ex
from infcomp_models.captcha import get_style
from infcomp_models.captcha.breaker import compile_breaker


def masked_plate(y=None):
    with pyro.plate("pair", 2):
        with poutine.mask(mask=torch.tensor([True, False])):
            x = pyro.sample("x", dist.Normal(0.0, 1.0))
    with poutine.scale(scale=0.5):
        z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    with pyro.plate("data", 3):
        pyro.sample("y", dist.Normal(z + x.sum(), 0.5), obs=y)


def simplex_then_count(y=None):
    p = pyro.sample("p", dist.Dirichlet(torch.ones(3)))  # the dirichlet family: a simplex site
    k = pyro.sample("k", dist.Poisson(2.0))
    pyro.sample("y", dist.Normal(p[0] * 3 + k, 1.0), obs=y)


def angle(y=None):
    a = pyro.sample("a", dist.VonMises(0.5, 2.0))
    pyro.sample("y", dist.Normal(torch.stack([a.cos(), a.sin()]), 0.3).to_event(1), obs=y)


def sometimes_extra(y=None, extra=False):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    if extra:  # never seen in training: it proposes from its prior
        mu = mu + pyro.sample("extra", dist.Normal(0.0, 0.1))
    pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def observed_argument(y):
    mu = pyro.sample("mu", dist.Normal(1.0, 2.0))
    pyro.sample("y", dist.Normal(mu, 1.0).expand([2]).to_event(1), obs=y)


# id -> (model, observation, model_kwargs at inference, compile kwargs)
MODELS = {
    "gaussian": (ex.gaussian, torch.tensor([8.0, 9.0]), {}, {}),
    "branching": (ex.poisson_branching, torch.tensor(4.0), {}, {}),
    "beta_bernoulli": (ex.beta_bernoulli, torch.tensor([1.0, 0, 1, 1, 0, 1, 1, 1, 0, 1]), {}, {}),
    "walk": (ex.random_walk, torch.linspace(-1, 2, 6), {"steps": 6}, {"model_kwargs": {"steps": 6}}),
    "masked_plate": (masked_plate, torch.tensor([1.0, -0.5, 2.0]), {}, {}),
    "simplex_then_count": (simplex_then_count, torch.tensor(3.0), {}, {}),
    "angle": (angle, torch.tensor([0.6, 0.8]), {}, {}),
    "unseen_site": (sometimes_extra, torch.tensor(1.5), {"extra": True}, {}),
    "two_layers": (ex.poisson_branching, torch.tensor(-2.0), {}, {"config": {"layers": 2}}),
}


class Replay(Messenger):
    """Sets each latent site named in ``values`` to its value (under the guide: weighed, not observed)."""

    def __init__(self, values):
        super().__init__()
        self.values = values

    def _pyro_sample(self, msg):
        if not msg["is_observed"] and msg["name"] in self.values:
            msg["value"] = self.values[msg["name"]]


def sequential_log_weight(model, guide, observation, values, model_kwargs):
    obs = guide.check_observation(observation)
    with torch.no_grad(), Replay(values), guide.messenger(obs), LogWeight(observe=guide.observe) as lw:
        poutine.condition(model, data=obs)(**model_kwargs)
    return float(lw.log_weight)


def assert_same_weights(model, guide, observation, model_kwargs, n=40, **infer_kwargs):
    post = infcomp.infer(model, guide, observation, num_samples=n, seed=1, model_kwargs=model_kwargs, **infer_kwargs)
    for i in range(n):
        expected = sequential_log_weight(model, guide, observation, post.values(i), model_kwargs)
        got = float(post.log_weights[i])
        assert abs(got - expected) <= 1e-5 * max(1.0, abs(expected)), (i, got, expected)
    return post


@pytest.mark.parametrize("name", list(MODELS))
def test_batched_weights_equal_the_sequential_replay(name):
    model, y, kwargs, compile_kwargs = MODELS[name]
    guide = infcomp.compile(model, observe="y", num_traces=256, seed=0, workers=0, progress=False, **compile_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unseen site's warning
        post = assert_same_weights(model, guide, y, kwargs)
    assert torch.isfinite(post.log_weights).all()


def test_observation_passed_as_a_model_argument():
    y = torch.tensor([2.0, 3.0])
    guide = infcomp.compile(observed_argument, observe="y", num_traces=256, seed=0, workers=0, progress=False,
                            model_args=(y,))
    post = infcomp.infer(observed_argument, guide, y, num_samples=30, seed=1, model_args=(y,))
    for i in range(30):
        obs = guide.check_observation(y)
        with torch.no_grad(), Replay(post.values(i)), guide.messenger(obs), LogWeight(observe=("y",)) as lw:
            poutine.condition(observed_argument, data=obs)(y)
        assert abs(float(lw.log_weight) - float(post.log_weights[i])) < 1e-5


@pytest.fixture(scope="module")
def captcha_guide():
    return compile_breaker("really_simple_captcha", num_traces=64, workers=0, progress=False, seed=0)


def test_batched_weights_on_a_captcha_model(captcha_guide):
    style = get_style("really_simple_captcha")
    image, _ = style.sample(7)
    assert_same_weights(style.model, captcha_guide, image, {}, n=12, chunk_size=5)


def test_batched_greedy_reads_equal_sequential_ones(captcha_guide):
    style = get_style("really_simple_captcha")
    images = [style.sample(i)[0] for i in range(6)]
    stop = style.after_text
    batched = infcomp.greedy(style.model, captcha_guide, images, stop_before=stop, chunk_size=4)
    one_by_one = [infcomp.greedy(style.model, captcha_guide, im, stop_before=stop, batch=False) for im in images]
    assert len(batched) == 6
    for a, b in zip(batched, one_by_one):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) if not a[k].is_floating_point() else torch.allclose(a[k], b[k], atol=1e-5)
                   for k in a)


def test_batched_greedy_over_variable_structure():
    guide = infcomp.compile(ex.poisson_branching, observe="y", num_traces=512, seed=0, workers=0, progress=False)
    ys = [torch.tensor(v) for v in (4.0, 0.0, -3.0, 9.0, 1.5)]
    batched = infcomp.greedy(ex.poisson_branching, guide, ys)
    for y, read in zip(ys, batched):
        ref = infcomp.greedy(ex.poisson_branching, guide, y, batch=False)
        assert read.keys() == ref.keys() and all(torch.allclose(read[k], ref[k], atol=1e-5) for k in read)
    assert infcomp.greedy(ex.poisson_branching, guide, ys[0]).keys() == batched[0].keys()  # one observation: a dict


def test_walk_posterior_against_the_kalman_smoother():
    steps = 8
    guide = infcomp.compile(ex.random_walk, observe="y", num_traces=12_000, seed=3, workers=0, progress=False,
                            model_kwargs={"steps": steps})
    with poutine.trace() as tr, torch.random.fork_rng():
        torch.manual_seed(11)
        ex.random_walk(steps=steps)
    y = tr.trace.nodes["y"]["value"]
    means, sds, log_z = ex.random_walk_exact(y)
    post = infcomp.infer(ex.random_walk, guide, y, num_samples=4_000, seed=0, model_kwargs={"steps": steps})
    assert post.ess > 400
    got = torch.stack([post.mean(f"x_{t}") for t in range(steps)])
    got_sd = torch.stack([post.std(f"x_{t}") for t in range(steps)])
    # the weighted mean's error is about sd / sqrt(ESS): 5 of those
    assert torch.all((got - means).abs() < 5 * sds / math.sqrt(post.ess)), (got, means)
    assert torch.all((got_sd / sds - 1).abs() < 0.15), (got_sd, sds)
    assert abs(post.log_evidence - log_z) < 0.1


def test_chunks_cover_every_particle_and_the_first_runs_alone():
    guide = infcomp.compile(ex.poisson_branching, observe="y", num_traces=256, seed=0, workers=0, progress=False)
    post = infcomp.infer(ex.poisson_branching, guide, torch.tensor(4.0), num_samples=23, seed=2, chunk_size=5)
    assert post.num_samples == 23 and torch.isfinite(post.log_weights).all()
    assert post.marginal("n").values.shape == (23,)
    with pytest.raises(TypeError, match="chunk_size"):
        infcomp.infer(ex.poisson_branching, guide, torch.tensor(4.0), num_samples=3, chunk_size=2.5)
    with pytest.raises(ValueError, match="chunk_size"):
        infcomp.infer(ex.poisson_branching, guide, torch.tensor(4.0), num_samples=3, chunk_size=0)


# -- the mechanism --------------------------------------------------------------------------
class Tag(Messenger):
    """Records which tags' handlers a run's sites pass through."""

    def __init__(self, tag, seen):
        super().__init__()
        self.tag, self.seen = tag, seen

    def _pyro_sample(self, msg):
        if msg["name"] == "x":
            self.seen.append((self.tag, tuple(msg["fn"].batch_shape)))


class Ask:
    def __init__(self, name):
        self.key = name


def test_runs_see_only_their_own_handlers_and_plates():
    seen = []

    def run(tag, size):
        with Tag(tag, seen), pyro.plate("data", size) as idx:
            got = pause(Ask("a"))
            x = pyro.sample("x", dist.Normal(torch.zeros(size), 1.0))
            assert x.shape == (size,) and pyro.poutine.runtime._DIM_ALLOCATOR._stack == ["data"]
            return tag, got, len(idx)

    calls = [lambda t=t: run(t, t + 1) for t in range(4)]
    out = lockstep(calls, lambda key, ids, reqs: [f"{key}{i}" for i in ids])
    assert out == [(t, f"a{t}", t + 1) for t in range(4)]
    assert sorted(seen) == [(t, (t + 1,)) for t in range(4)]  # each run's site met its own handler alone
    assert not pyro.poutine.runtime._PYRO_STACK and not pyro.poutine.runtime._DIM_ALLOCATOR._stack


def test_a_failing_run_closes_the_others_and_leaves_no_handler_behind():
    closed = []

    def run(i):
        try:
            with Tag(i, []):
                pause(Ask("a"))
                if i == 2:
                    raise RuntimeError("the third call fails")
                pause(Ask("b"))
        finally:
            closed.append(i)

    with pytest.raises(RuntimeError, match="the third call fails"):
        lockstep([lambda i=i: run(i) for i in range(4)], lambda key, ids, reqs: [None] * len(ids))
    assert sorted(closed) == [0, 1, 2, 3]
    assert not pyro.poutine.runtime._PYRO_STACK


def test_pause_outside_a_run_is_refused():
    with pytest.raises(RuntimeError, match="lockstep"):
        pause(Ask("a"))


def test_no_more_particles_are_in_flight_than_a_chunk():
    live, most = [0], [0]

    def counted(y=None):
        live[0] += 1
        most[0] = max(most[0], live[0])
        try:
            ex.gaussian(y)
        finally:
            live[0] -= 1

    guide = infcomp.compile(counted, observe="y", num_traces=128, seed=0, workers=0, progress=False)
    most[0] = 0
    post = infcomp.infer(counted, guide, torch.tensor([8.0, 9.0]), num_samples=500, chunk_size=40, seed=0)
    assert post.num_samples == 500 and most[0] == 40 and live[0] == 0


class Exp(torch.nn.Module):
    def forward(self, x):
        return x.exp()


def test_a_batched_greedy_read_names_the_observation_at_fault():
    encoder = torch.nn.Sequential(torch.nn.Linear(2, 8), Exp())  # overflows far from the training data
    guide = infcomp.compile(ex.gaussian, observe="y", num_traces=128, seed=0, workers=0, progress=False, encoder=encoder)
    ys = [torch.tensor([8.0, 9.0])] * 300
    ys[290] = torch.tensor([1e30, -1e30])
    with pytest.raises(ValueError, match=r"observation 290 for site\(s\) \['y'\] is too far .*cannot be weighed"):
        infcomp.greedy(ex.gaussian, guide, ys, chunk_size=256)


def test_a_value_set_inside_the_model_is_refused_by_the_batched_path():
    def preset(y=None):
        with poutine.condition(data={}), Replay({"mu": torch.tensor(7.0)}):
            ex.gaussian(y)

    guide = infcomp.compile(ex.gaussian, observe="y", num_traces=128, seed=0, workers=0, progress=False)
    with pytest.raises(ValueError, match=r"site 'mu' already has a value.*batch=False"):
        infcomp.infer(preset, guide, torch.tensor([8.0, 9.0]), num_samples=5)
    assert infcomp.infer(preset, guide, torch.tensor([8.0, 9.0]), num_samples=5, batch=False).num_samples == 5
    assert not pyro.poutine.runtime._PYRO_STACK


def test_a_run_that_pauses_while_closing_is_still_closed():
    done = []

    def stubborn(i):
        try:
            pause(Ask("a"))
            if i == 0:
                raise RuntimeError("the first call fails")
            pause(Ask("b"))
        finally:
            if i == 1:
                done.append("pausing")
                pause(Ask("c"))  # paused again by its own clean-up: ended there
            done.append(i)

    with pytest.raises(RuntimeError, match="the first call fails"):
        lockstep([lambda i=i: stubborn(i) for i in range(3)], lambda key, ids, reqs: [None] * len(ids))
    assert done == [0, "pausing", 2] and not pyro.poutine.runtime._PYRO_STACK
