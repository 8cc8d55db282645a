"""A proposal's most probable value (for discrete families) or its leading component's centre."""

import pyro.distributions as dist
import torch
from torch.distributions import Independent, MixtureSameFamily, TransformedDistribution

from .normal_mixture import NormalMixture


def point_estimate(d) -> torch.Tensor:
    """The value a greedy read takes from distribution ``d``."""
    if isinstance(d, Independent):
        return point_estimate(d.base_dist)
    if isinstance(d, dist.Categorical):
        return d.logits.argmax(-1)
    if isinstance(d, dist.Bernoulli):
        return (d.logits > 0).to(d.logits.dtype)
    if isinstance(d, NormalMixture):
        k = d.logits.argmax(-1, keepdim=True)
        return d.loc.gather(-1, k).squeeze(-1)
    if isinstance(d, TransformedDistribution):
        x = point_estimate(d.base_dist)
        for t in d.transforms:
            x = t(x)
        return x
    if isinstance(d, MixtureSameFamily):
        k = d.mixture_distribution.logits.argmax(-1, keepdim=True)
        centre = d.component_distribution.mean.gather(-1, k).squeeze(-1)
        return centre.floor() if d.support.is_discrete else centre
    if isinstance(d, dist.Binomial):
        return d.mode
    return d.mean
