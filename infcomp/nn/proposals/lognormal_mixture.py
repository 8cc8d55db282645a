"""Addresses on ``(lower, inf)`` (Gamma, Exponential, LogNormal, HalfNormal, ...):
a mixture of log-Normals over ``x - lower``, located by moment-matching the prior."""

import pyro.distributions as dist
import torch
from torch.distributions.transforms import AffineTransform, ExpTransform

from pyro.distributions import constraints

from .base import ProposalFamily, broadcast_context, finite_or, flat, mixture_init, scalar_prior
from .normal_mixture import normal_components


def lower_bound(support):
    return getattr(support, "lower_bound", 0.0)


class LogNormalMixtureProposal(ProposalFamily):
    name = "lognormal_mixture"

    def fits(self, prior):
        s = getattr(prior.support, "base_constraint", prior.support)
        half_line = s in (constraints.positive, constraints.nonnegative) or isinstance(
            s, (constraints.greater_than, constraints.greater_than_eq))
        return scalar_prior(prior, discrete=False) and half_line

    def num_params(self, spec):
        return 3 * self.K

    def context(self, prior):
        lb = torch.as_tensor(lower_bound(prior.support), dtype=torch.get_default_dtype())
        mean = finite_or(prior.mean - lb, float("nan"))
        var = finite_or(prior.variance, float("nan"))
        ok = (mean > 0) & torch.isfinite(mean) & torch.isfinite(var)
        sigma2 = torch.log1p(var / mean.clamp(min=1e-12) ** 2)
        mu = torch.log(mean.clamp(min=1e-12)) - sigma2 / 2
        # no finite moments (HalfCauchy, ...): centre on the prior's scale where it has one
        fallback = finite_or(torch.log(torch.as_tensor(getattr(prior, "scale", 1.0), dtype=mu.dtype)), 0.0)
        mu = torch.where(ok, mu, fallback.expand_as(mu))
        sigma = torch.where(ok & (sigma2 > 0), sigma2.clamp(min=1e-12).sqrt(), torch.ones_like(sigma2))
        return broadcast_context(prior, lb, mu, sigma)

    def features(self, value, context, spec):
        z = (torch.log((value - context[..., 0]).clamp(min=1e-30)) - context[..., 1]) / context[..., 2]
        return flat(z, spec)

    def proposal(self, params, context):
        p = params.unflatten(-1, (self.K, 3))
        lb, mu, sigma = context[..., 0], context[..., 1:2], context[..., 2:3]
        base = normal_components(p, mu, sigma)
        return dist.TransformedDistribution(base, [ExpTransform(), AffineTransform(lb, 1.0)], validate_args=False)

    def init_head(self, layer, spec):
        mixture_init(layer, self.K, layer.out_features // (3 * self.K), 3, spread_index=1)
