"""Model arguments as the guide's inputs, the arguments a guide was compiled for, and pyro.factor."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

import infcomp


def regression(x, y=None):
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(b * x, 0.5), obs=y)


def exact(x, y):
    """The conjugate posterior of ``b``: prior N(0, 1), noise sd 0.5."""
    precision = 1 + float((x * x).sum()) / 0.25
    return float((x * y).sum()) / 0.25 / precision, precision ** -0.5


def covariates():
    return {"x": torch.randn(6) * 2}


@pytest.fixture(scope="module")
def amortised():
    return infcomp.compile(regression, observe="y", num_traces=6_000, inputs=covariates, seed=0, workers=0,
                           progress=False)


def test_a_guide_amortised_over_its_inputs(amortised, tmp_path):
    assert amortised.inputs == ("x",) and amortised.observe == ("y",)
    g = torch.Generator().manual_seed(5)
    for _ in range(3):  # covariates never seen in training
        x = torch.randn(6, generator=g) * 2
        y = 0.7 * x + 0.5 * torch.randn(6, generator=g)
        post = infcomp.infer(regression, amortised, y, model_args=(x,), num_samples=1000, seed=0)
        mean, sd = exact(x, y)
        assert post.diagnostics.reliable and abs(float(post.mean("b")) - mean) < 0.3 * sd
    path = tmp_path / "g.pt"
    amortised.save(path)
    loaded = infcomp.load(path, model=regression, model_args=(x,))
    assert loaded.inputs == ("x",)
    again = infcomp.infer(regression, loaded, y, model_kwargs={"x": x}, num_samples=1000, seed=0)
    assert torch.equal(again.log_weights, post.log_weights)
    importance = pyro.infer.Importance(pyro.condition(regression, data={"y": y}), loaded.condition(y), num_samples=50)
    importance.run(x)  # the Pyro guide reads its input from the call's own arguments
    assert len(importance.log_weights) == 50


def test_inputs_are_checked(amortised):
    y = torch.zeros(6)
    with pytest.raises(ValueError, match="encodes the model's argument 'x'"):
        infcomp.infer(regression, amortised, y)
    with pytest.raises(ValueError, match=r"input 'x' has shape \(7,\).*compiled for shape \(6,\)"):
        infcomp.infer(regression, amortised, torch.zeros(6), model_args=(torch.zeros(7),))
    with pytest.raises(TypeError, match="inputs= takes a callable"):
        infcomp.compile(regression, observe="y", inputs={"x": torch.zeros(6)}, num_traces=64)
    with pytest.raises(ValueError, match="'z', which is no parameter"):
        infcomp.compile(regression, observe="y", inputs=lambda: {"z": torch.zeros(6)}, num_traces=64)
    with pytest.raises(ValueError, match="'x' is also given"):
        infcomp.compile(regression, observe="y", inputs=covariates, model_args=(torch.zeros(6),), num_traces=64)


def test_a_changed_argument_the_guide_does_not_see_is_named():
    x = torch.linspace(-2, 2, 6)
    fixed = infcomp.compile(regression, observe="y", model_args=(x,), num_traces=256, seed=0, workers=0,
                            progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        infcomp.infer(regression, fixed, torch.zeros(6), model_args=(x.clone(),), num_samples=50, seed=0, warn=False)
    with pytest.warns(UserWarning, match="argument 'x' differs from the one the guide was compiled with"):
        infcomp.infer(regression, fixed, torch.zeros(6), model_args=(x + 1,), num_samples=50, seed=0, warn=False)


def factor_model(y=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.factor("likelihood", dist.Normal(mu, 1.0).log_prob(torch.tensor(0.5)))
    pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def test_a_factor_is_refused_as_an_observation_and_weighed_at_inference():
    with pytest.raises(ValueError, match="'likelihood', a pyro.factor"):
        infcomp.compile(factor_model, observe="likelihood", num_traces=64, workers=0, progress=False)
    post = infcomp.infer(factor_model, None, torch.tensor(1.5), observe="y", num_samples=4000, seed=0)
    # the factor is a second unit-noise observation at 0.5: mu | . ~ N((0.5 + 1.5) / 3, 1 / 3)
    assert abs(float(post.mean("mu")) - 2 / 3) < 0.05
