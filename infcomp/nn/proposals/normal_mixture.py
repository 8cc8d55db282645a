"""Real-valued addresses: a mixture of Normals in the prior's standardised coordinates.

Component ``k`` is ``Normal(m + s * mu_k, s * sigma_k)`` with ``m, s`` the prior's mean and
standard deviation (or loc and scale where those are not finite), so one network
serves priors of any location and scale.
"""

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints

from .base import SOFTPLUS_INV_ONE_2, ProposalFamily, broadcast_context, finite_or, flat, gumbel_max, mixture_init, scalar_prior

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class NormalMixture(TorchDistribution):
    """A mixture of ``K`` univariate Normals per batch element, in a handful of tensor ops.

    ``logits``, ``loc`` and ``scale`` have shape ``batch_shape + (K,)``.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    has_rsample = False

    def __init__(self, logits, loc, scale, validate_args=False):
        self.logits = logits - logits.logsumexp(-1, keepdim=True)
        self.loc, self.scale = loc, scale
        super().__init__(loc.shape[:-1], torch.Size(), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + self.loc.shape[-1:]
        return NormalMixture(self.logits.expand(shape), self.loc.expand(shape), self.scale.expand(shape))

    @property
    def mean(self):
        return (self.logits.exp() * self.loc).sum(-1)

    @property
    def variance(self):
        w = self.logits.exp()
        m = (w * self.loc).sum(-1, keepdim=True)
        return (w * (self.scale**2 + (self.loc - m) ** 2)).sum(-1)

    def log_prob(self, value):
        z = (value.unsqueeze(-1) - self.loc) / self.scale
        return torch.logsumexp(self.logits - 0.5 * z * z - self.scale.log(), -1) - _HALF_LOG_2PI

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            shape = torch.Size(sample_shape) + self.loc.shape
            k = gumbel_max(self.logits, sample_shape)
            loc = self.loc.expand(shape).gather(-1, k).squeeze(-1)
            scale = self.scale.expand(shape).gather(-1, k).squeeze(-1)
            return loc + scale * torch.randn(loc.shape, dtype=loc.dtype, device=loc.device)


def normal_components(p, loc, scale) -> NormalMixture:
    """Network outputs ``p [..., K, 3]`` (logit, standardised location, raw scale) as a mixture
    around ``loc`` and ``scale`` (each ``[..., 1]``)."""
    return NormalMixture(p[..., 0], loc + scale * p[..., 1], scale * (F.softplus(p[..., 2] + SOFTPLUS_INV_ONE_2) + 1e-3))


class NormalMixtureProposal(ProposalFamily):
    name = "normal_mixture"

    def fits(self, prior):
        # VonMises declares a real support, but its values are angles on [-pi, pi)
        real = prior.support is constraints.real and not isinstance(prior, dist.VonMises)
        return scalar_prior(prior, discrete=False) and real

    def num_params(self, spec):
        return 3 * self.K

    def context(self, prior):
        if type(prior) is dist.Normal:
            return torch.stack([prior.loc, prior.scale], -1)
        ctx = torch.stack(torch.broadcast_tensors(prior.mean, prior.stddev), -1)
        if bool(torch.isfinite(ctx).all()) and bool((ctx[..., 1] > 0).all()):
            return ctx
        loc = finite_or(prior.mean, getattr(prior, "loc", 0.0))  # Cauchy, StudentT(df <= 2), ...
        scale = finite_or(prior.stddev, getattr(prior, "scale", 1.0))
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return broadcast_context(prior, loc, scale)

    def features(self, value, context, spec):
        return flat((value - context[..., 0]) / context[..., 1], spec)

    def proposal(self, params, context):
        p = params.unflatten(-1, (self.K, 3))
        loc, scale = context[..., :1], context[..., 1:2]
        return normal_components(p, loc, scale)

    def init_head(self, layer, spec):
        mixture_init(layer, self.K, layer.out_features // (3 * self.K), 3, spread_index=1)
