"""Real-valued addresses: a mixture of Normals in the prior's standardised coordinates.

Component ``k`` is ``Normal(m + s * mu_k, s * sigma_k)`` with ``m, s`` the prior's mean and
standard deviation (or loc and scale where those are not finite), so one network
serves priors of any location and scale.
"""

import pyro.distributions as dist
import torch
import torch.nn.functional as F

from .base import Mixture, ProposalFamily, broadcast_context, finite_or, flat, mixture_init


class NormalMixtureProposal(ProposalFamily):
    name = "normal_mixture"

    def __init__(self, num_components=3):
        self.K = num_components

    def num_params(self, spec):
        return 3 * self.K

    def context_size(self, spec):
        return 2

    def context(self, prior):
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
        comp = dist.Normal(loc + scale * p[..., 1], scale * (F.softplus(p[..., 2] + 0.55) + 1e-3), validate_args=False)
        return Mixture(p[..., 0], comp)

    def init_head(self, layer, spec):
        mixture_init(layer, self.K, layer.out_features // (3 * self.K), 3, spread_index=1)
