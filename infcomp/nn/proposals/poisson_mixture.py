"""Unbounded counts (Poisson, Geometric, NegativeBinomial): a mixture of Poissons whose rates
are the prior's mean scaled by the network."""

import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from .base import Mixture, ProposalFamily, broadcast_context, finite_or, flat, mixture_init


class PoissonMixtureProposal(ProposalFamily):
    name = "poisson_mixture"

    def fits(self, prior):
        counts = prior.support is constraints.nonnegative_integer or isinstance(
            prior, (dist.Poisson, dist.Geometric, dist.NegativeBinomial))
        return prior.event_shape == () and counts

    def num_params(self, spec):
        return 2 * self.K

    def context(self, prior):
        return broadcast_context(prior, finite_or(prior.mean, 1.0).clamp(min=0.1))

    def features(self, value, context, spec):
        return flat(torch.log1p(value.float()) - torch.log1p(context[..., 0]), spec)

    def proposal(self, params, context):
        p = params.unflatten(-1, (self.K, 2))
        rate = context[..., :1] * torch.exp(p[..., 1].clamp(max=20.0))
        return Mixture(p[..., 0], dist.Poisson(rate, validate_args=False))

    def init_head(self, layer, spec):
        mixture_init(layer, self.K, layer.out_features // (2 * self.K), 2, spread_index=1, spread=0.5)
