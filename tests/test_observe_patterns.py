"""Observed sites named by a pattern or a callable (traces.resolve_observe), and subsampled plates refused."""

import re
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

import infcomp
from infcomp.traces import PriorSampler, resolve_observe

DATA = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0])  # 8 heads of 10
NAMES = tuple(f"obs_{i}" for i in range(10))
FAST = dict(model_args=(DATA,), workers=0, progress=False, seed=0, validation_size=64)


def coin(data):
    """Pyro's coin-flip tutorial: one observed site per flip."""
    f = pyro.sample("f", dist.Beta(10.0, 10.0))
    for i in range(len(data)):
        pyro.sample(f"obs_{i}", dist.Bernoulli(f), obs=data[i])


def test_a_pattern_picks_the_models_sites_and_inference_finds_the_exact_posterior():
    guide = infcomp.compile(coin, re.compile(r"obs_\d+"), num_traces=640, **FAST)
    assert guide.observe == NAMES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a short compile's weights may be uneven: the particles' count covers it
        post = infcomp.infer(coin, guide, dict(zip(NAMES, DATA)), num_samples=1000, model_args=(DATA,), seed=1)
    exact = (10 + DATA.sum()) / (20 + len(DATA))  # Beta(18, 12): mean 0.6, sd 0.088
    # the estimate's error is about sd / sqrt(ESS): 0.006 at ESS 200, so the bound is 4 of those
    assert post.ess > 200 and abs(post.mean("f") - exact) < 0.025, (post.ess, post.mean("f"))


def test_a_callable_picks_the_same_sites_for_compile_and_save_traces(tmp_path):
    guide = infcomp.compile(coin, lambda name: name.startswith("obs_"), num_traces=64, **FAST)
    assert guide.observe == NAMES
    shards = infcomp.save_traces(coin, tmp_path / "coin", 32, observe=re.compile(r"obs_\d+"), model_args=(DATA,),
                                 shard_size=32, workers=0, progress=False)
    assert shards.observe == NAMES


def test_only_sample_sites_with_a_distribution_are_picked_in_the_models_order():
    # not a plate's subsample, a deterministic or a factor: nothing the model could observe
    def model():
        with pyro.plate("obs_plate", 3):
            pyro.sample("obs_b", dist.Normal(0.0, 1.0))
        pyro.deterministic("obs_det", torch.tensor(1.0))
        pyro.factor("obs_factor", torch.tensor(-1.0))
        pyro.sample("obs_a", dist.Normal(0.0, 1.0), obs=torch.tensor(0.5))

    state = torch.get_rng_state()
    assert resolve_observe(model, re.compile("obs_.*")) == ("obs_b", "obs_a")
    assert torch.equal(torch.get_rng_state(), state)  # the run that resolved them left the caller's draws as they were
    assert resolve_observe(model, "obs_.*") == ("obs_.*",)  # a string is one site's exact name, never a pattern
    assert resolve_observe(model, ["obs_a", "obs_b"]) == ("obs_a", "obs_b")


def test_a_pattern_that_picks_no_site_names_the_models_sites():
    sites = re.escape(f"the model's sample sites {['f', *NAMES]}")
    with pytest.raises(ValueError, match=r"observe: the pattern 'data_\\d\+' picks none of " + sites):
        infcomp.compile(coin, re.compile(r"data_\d+"), num_traces=64, **FAST)
    with pytest.raises(ValueError, match=r"observe: the callable .*<lambda> picks none"):
        infcomp.save_traces(coin, "unused", 32, observe=lambda name: False, model_args=(DATA,), progress=False)


# -- subsampled plates ---------------------------------------------------------------------------------
def subsampled(data, subsample_size=10, subsample=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(data), subsample_size=subsample_size, subsample=subsample) as idx:
        pyro.sample("y", dist.Normal(mu, 1.0), obs=data[idx])


@pytest.mark.parametrize("kwargs", [dict(), dict(subsample_size=None, subsample=torch.arange(5))])
def test_a_subsampled_plate_is_refused_naming_it(kwargs):
    data = torch.zeros(1000)
    with pytest.raises(ValueError, match=r"plate 'data' subsamples (10|5) of its 1000 items: inference compilation "
                                         r"needs the full data at every observed site; drop subsample_size"):
        infcomp.compile(subsampled, "y", num_traces=64, **{**FAST, "model_args": (data,), "model_kwargs": kwargs})


def test_a_plate_subsampled_to_its_full_size_is_a_plain_plate():
    record = PriorSampler(subsampled, "y", model_args=(torch.zeros(10),)).sample()
    assert record.structure == ("mu",) and record.observation["y"].shape == (10,)


def test_prior_sampling_refuses_a_subsampled_plate_too():
    with pytest.raises(ValueError, match=r"plate 'data' subsamples 10 of its 1000 items"):
        infcomp.infer(subsampled, None, torch.zeros(10), observe="y", num_samples=10, model_args=(torch.zeros(1000),))
