"""Many-site models against their exact answers (small versions), and the pieces that serve them:
the exact answers themselves, the vector observation's memory, the trace record."""

import itertools
import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

import infcomp
from infcomp.nn.encoders import MLPEncoder, ObservationEncoder, SequenceEncoder
from infcomp.traces import ObservationSpec, PriorSampler
from infcomp_models import examples as ex


def prior_y(model, seed, **kwargs):
    with torch.random.fork_rng():
        pyro.set_rng_seed(seed)
        return poutine.trace(model).get_trace(**kwargs).nodes["y"]["value"]


def weighted_marginal(post, name, shape=(), k=3):
    m = post.marginal(name)
    onehot = torch.nn.functional.one_hot(m.values.long().reshape(len(m.weights), *shape), k).double()
    return torch.einsum("n,n...k->...k", m.weights, onehot)


# -- the exact answers -----------------------------------------------------------------------
def test_hmm_exact_is_enumeration():
    y = torch.tensor([0.3, -1.2, 2.0, 0.1])
    marginals, log_z = ex.hmm_exact(y)
    total, brute = 0.0, torch.zeros(4, 3, dtype=torch.float64)
    for zs in itertools.product(range(3), repeat=4):
        data = {**{f"z_{t}": torch.tensor(z) for t, z in enumerate(zs)}, "y": y}
        w = math.exp(float(poutine.trace(poutine.condition(ex.hmm, data=data)).get_trace(steps=4).log_prob_sum()))
        total += w
        for t, z in enumerate(zs):
            brute[t, z] += w
    assert abs(log_z - math.log(total)) < 1e-5
    assert torch.allclose(marginals, brute / total, atol=1e-5)


def test_mixture_exact_is_enumeration():
    y = torch.tensor([-2.5, 0.4, 1.9])
    post, log_z = ex.mixture_exact(y)
    joint = {}
    for zs in itertools.product(range(3), repeat=3):
        data = {"z": torch.tensor(zs), "y": y}
        joint[zs] = math.exp(float(poutine.trace(poutine.condition(ex.mixture, data=data)).get_trace(points=3).log_prob_sum()))
    total = sum(joint.values())
    assert abs(log_z - math.log(total)) < 1e-5
    for i in range(3):
        for k in range(3):
            assert abs(float(post[i, k]) - sum(w for zs, w in joint.items() if zs[i] == k) / total) < 1e-5


def test_walk_entropy_is_the_mean_of_minus_log_posterior():
    # E[-log p(x | y)] = E[log p(y) - log p(x, y)] over prior draws: a Monte-Carlo check of the closed form
    steps, walk_var = 6, 1.0
    pyro.set_rng_seed(4)
    values = []
    for _ in range(400):
        tr = poutine.trace(ex.random_walk).get_trace(steps=steps, walk_var=walk_var)
        values.append(ex.random_walk_exact(tr.nodes["y"]["value"], walk_var)[2] - float(tr.log_prob_sum()))
    values = torch.tensor(values)
    assert abs(float(values.mean()) - ex.random_walk_entropy(steps, walk_var)) < 4 * float(values.std()) / 20
    y = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.5, 3.0])
    joint = ex.random_walk_posterior(y, walk_var)  # the joint posterior's marginals are the smoother's
    means, sds, _ = ex.random_walk_exact(y, walk_var)
    assert torch.allclose(joint.mean, means) and torch.allclose(joint.variance.sqrt(), sds)


# -- the vector observation's memory --------------------------------------------------------
def test_a_vector_observation_is_a_memory_of_tokens_in_order():
    enc = SequenceEncoder((10,), dim=16, max_tokens=4)
    assert (enc.chunk, enc.memory_len) == (3, 4)  # chunks of 3 neighbouring elements, the last padded
    summary, memory = enc(torch.randn(5, 10))
    assert summary.shape == (5, 16) and memory.shape == (5, 4, enc.memory_dim)
    x = torch.arange(10.0).reshape(1, 10)
    own = enc(x)[1][0, :, :32]  # each row's embedding of its own token, before the LSTM's states
    tokens = torch.tensor([[0.0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 0, 0]])
    assert torch.allclose(own, enc.embed(tokens), atol=1e-6)
    y = x.clone()
    y[0, 9] += 1.0
    assert torch.allclose(enc(x)[1][0, :3, :32], enc(y)[1][0, :3, :32])  # the first rows' own tokens are unchanged
    assert not torch.allclose(enc(x)[1][0, 0], enc(y)[1][0, 0])  # but the first row hears of the last element


def test_the_sequence_encoders_layout_is_pinned():
    # a guide file holds these tensors: a change here is a change of the saved layout
    enc = SequenceEncoder((30,), dim=16, max_tokens=128)
    rnn = {k: tuple(v.shape) for k, v in enc.state_dict().items() if k.startswith("rnn.")}
    assert isinstance(enc.rnn, torch.nn.LSTM) and enc.memory_dim == 96
    assert rnn["rnn.weight_ih_l0"] == (128, 32) and rnn["rnn.weight_hh_l0_reverse"] == (128, 32)


def test_scalars_and_tokens_zero_keep_a_summary_only():
    specs = {"y": ObservationSpec("y", (6,), "float32"), "s": ObservationSpec("s", (), "float32"),
             "pair": ObservationSpec("pair", (2,), "float32")}
    enc = ObservationEncoder(specs, 16, tokens=0)
    assert all(isinstance(e, MLPEncoder) for e in enc.per_site) and enc.memory_len == 0
    enc = ObservationEncoder(specs, 16, tokens=128)
    assert isinstance(enc.per_site[0], SequenceEncoder) and isinstance(enc.per_site[1], MLPEncoder)
    assert isinstance(enc.per_site[2], MLPEncoder)  # a pair is read whole by the summary
    assert enc.memory_len == 6


def test_several_sites_memories_are_laid_end_to_end_at_one_width():
    specs = {"img": ObservationSpec("img", (16, 24), "float32"), "v": ObservationSpec("v", (5,), "float32")}
    enc = ObservationEncoder(specs, 16, tokens=128)
    cnn_len = enc.per_site[0].memory_len
    assert enc.memory_len == cnn_len + 5 and enc.memory_dim == enc.per_site[0].memory_dim
    _, memory = enc({"img": torch.rand(3, 16, 24), "v": torch.randn(3, 5)})
    assert memory.shape == (3, cnn_len + 5, enc.memory_dim)


def test_a_guide_file_from_before_tokens_loads_as_it_was_built(tmp_path):
    guide = infcomp.compile(ex.gaussian, observe="y", num_traces=128, seed=0, workers=0, progress=False,
                            config={"tokens": 0})
    path = tmp_path / "g.pt"
    guide.save(path)
    data = torch.load(path, weights_only=True)
    del data["config"]["tokens"]  # as a file saved before the setting existed
    torch.save(data, path)
    loaded = infcomp.load(path, model=ex.gaussian)
    assert loaded.network.cfg.tokens == 0 and loaded.network.attention is None
    with pytest.raises(ValueError, match="tokens"):
        infcomp.compile(ex.gaussian, observe="y", num_traces=64, workers=0, progress=False, config={"tokens": -1})


# -- the trace record -----------------------------------------------------------------------
def plated(y=None):
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    pyro.deterministic("twice", 2 * a)
    with pyro.plate("points", 3):
        b = pyro.sample("b", dist.Normal(a, 1.0))
    pyro.factor("penalty", -b.sum())
    with poutine.block(hide=["hidden"]), poutine.scale(scale=2.0):
        pyro.sample("hidden", dist.Normal(0.0, 1.0))
        c = pyro.sample("c", dist.Normal(0.0, 1.0))
    pyro.sample("y", dist.Normal(a + c, 1.0), obs=y)


@pytest.mark.parametrize("given", [False, True])
def test_the_record_holds_what_a_trace_holds(given):
    # y given as obs= is drawn all the same: the record holds prior draws of the data
    y = torch.tensor(100.0) if given else None
    pyro.set_rng_seed(0)
    record = PriorSampler(plated, "y", model_args=(y,)).sample()
    pyro.set_rng_seed(0)
    trace = poutine.trace(plated).get_trace()
    # not the deterministic, the plate's subsample, the factor or the site a block hides
    assert record.structure == ("a", "b", "c")
    for name, value in zip(record.structure, record.values):
        assert torch.equal(value, trace.nodes[name]["value"])
    assert torch.equal(record.observation["y"], trace.nodes["y"]["value"]) and abs(float(record.observation["y"])) < 50


def test_a_model_that_fails_midway_leaves_pyros_stack_clean():
    from pyro.poutine.runtime import _PYRO_STACK

    calls = []

    def flaky(y=None):
        pyro.sample("a", dist.Normal(0.0, 1.0))
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a chance failure")
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=y)

    sampler = PriorSampler(flaky, "y")
    with pytest.raises(RuntimeError, match="chance"):
        sampler.sample()
    assert not _PYRO_STACK
    assert sampler.sample().structure == ("a",)


def test_a_site_name_met_twice_in_one_run_is_refused():
    def twice(y=None):
        pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=y)

    with pytest.raises(ValueError, match="two sample sites named 'x'"):
        infcomp.compile(twice, observe="y", num_traces=8, workers=0, progress=False)


# -- small many-site models against their exact answers -------------------------------------
def test_walk_of_ten_steps_against_the_kalman_smoother():
    kwargs = {"steps": 10, "walk_var": 1.0}
    guide = infcomp.compile(ex.random_walk, observe="y", num_traces=12_000, seed=0, workers=0, progress=False,
                            model_kwargs=kwargs)
    y = prior_y(ex.random_walk, 5, **kwargs)
    means, sds, log_z = ex.random_walk_exact(y, 1.0)
    post = infcomp.infer(ex.random_walk, guide, y, num_samples=2_000, seed=0, model_kwargs=kwargs)
    assert post.ess > 0.3 * 2_000, post.ess  # the guide has learnt the smoother, not only the prior
    got = torch.stack([post.mean(f"x_{t}") for t in range(10)]).double()
    got_sd = torch.stack([post.std(f"x_{t}") for t in range(10)]).double()
    assert torch.all((got - means).abs() < 5 * sds / math.sqrt(post.ess)), (got, means)
    assert torch.all((got_sd / sds - 1).abs() < 0.15), (got_sd, sds)
    assert abs(post.log_evidence - log_z) < 0.1


DISCRETE = {  # model, its kwargs, training traces, the observation's seed, exact, the weighted marginals
    "hmm": (ex.hmm, {"steps": 8}, 6_000, 3, ex.hmm_exact,
            lambda post: torch.stack([weighted_marginal(post, f"z_{t}") for t in range(8)])),
    "mixture": (ex.mixture, {"points": 6}, 4_000, 7, ex.mixture_exact, lambda post: weighted_marginal(post, "z", (6,))),
}


@pytest.mark.parametrize("name", DISCRETE)
def test_discrete_marginals_against_the_exact_ones(name):
    # the HMM against forward-backward, the mixture's assignments against the exact per-point posteriors
    model, kwargs, traces, seed, exact_fn, marginals = DISCRETE[name]
    guide = infcomp.compile(model, observe="y", num_traces=traces, seed=0, workers=0, progress=False, model_kwargs=kwargs)
    y = prior_y(model, seed, **kwargs)
    exact, log_z = exact_fn(y)
    post = infcomp.infer(model, guide, y, num_samples=2_000, seed=0, model_kwargs=kwargs)
    assert post.ess > 0.2 * 2_000, post.ess
    # each probability's error is at most about 0.5 / sqrt(ESS); the total variation sums three of them
    assert float(0.5 * (marginals(post) - exact).abs().sum(-1).max()) < 3 / math.sqrt(post.ess)
    assert abs(post.log_evidence - log_z) < 0.1
