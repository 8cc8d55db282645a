"""Training on widened priors: the draws' spread, their support, and a guide that reaches data in a
vague prior's tail, its weights still exact."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import infcomp
from infcomp.widen import check_widen, widened_value


def test_a_widened_draw_keeps_the_priors_shape_and_support():
    torch.manual_seed(0)
    normal = torch.stack([widened_value(dist.Normal(2.0, 1.5), 3.0) for _ in range(20_000)])
    assert abs(float(normal.mean()) - 2.0) < 0.1 and abs(float(normal.std()) / 4.5 - 1) < 0.05
    positive = torch.stack([widened_value(dist.HalfCauchy(5.0), 3.0) for _ in range(2000)])
    assert bool((positive > 0).all())
    unit = torch.stack([widened_value(dist.Beta(20.0, 20.0), 3.0) for _ in range(2000)])
    assert bool(((unit > 0) & (unit < 1)).all()) and float(unit.std()) > 2 * float(dist.Beta(20.0, 20.0).stddev)
    simplex = widened_value(dist.Dirichlet(torch.ones(4)), 3.0)
    assert simplex.shape == (4,) and abs(float(simplex.sum()) - 1) < 1e-5
    logits = torch.tensor([3.0, 0.0, -3.0])
    flat = torch.stack([widened_value(dist.Categorical(logits=logits), 3.0) for _ in range(6000)])
    assert float((flat == 0).float().mean()) < float(dist.Categorical(logits=logits).probs[0]) - 0.2
    vector = widened_value(dist.Normal(torch.zeros(3), 1.0).to_event(1), 2.0)
    assert vector.shape == (3,)
    assert widened_value(dist.Poisson(3.0), 3.0).shape == ()  # other discrete sites: the prior as it is


@pytest.mark.parametrize("bad", [0.5, -1, float("nan"), float("inf"), True, "2"])
def test_widen_is_checked(bad):
    with pytest.raises(ValueError, match="widen must be a number at least 1"):
        check_widen(bad)
    assert check_widen(None) is None and check_widen(1) is None and check_widen(2) == 2.0


def vague(y=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("points", 5):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def test_a_widened_guide_reaches_a_vague_priors_tail():
    y = torch.tensor([44.1, 45.3, 46.0, 44.7, 45.5])  # 4.5 prior sds out
    precision = 1 / 100 + 5
    mean, sd = float(y.sum()) / precision, precision ** -0.5
    kw = dict(observe="y", num_traces=8000, seed=0, workers=0, progress=False)
    plain = infcomp.compile(vague, **kw)
    wide = infcomp.compile(vague, widen=2.0, **kw)
    assert wide.metadata["widen"] == 2.0 and plain.metadata["widen"] == 1.0
    narrow = infcomp.infer(vague, plain, y, num_samples=2000, seed=1, warn=False)
    post = infcomp.infer(vague, wide, y, num_samples=2000, seed=1, warn=False)
    assert not narrow.diagnostics.reliable  # the prior's draws barely reach 4.5 sds out
    assert post.diagnostics.reliable and post.ess > 10 * narrow.ess
    assert abs(float(post.mean("mu")) - mean) < 0.1 * sd and abs(float(post.std("mu")) / sd - 1) < 0.1
