"""Addresses on an interval (Uniform, Beta, ...): a mixture of Betas stretched onto the prior's bounds.

Bounds are read from the prior at each trace, so ``Uniform(0, x)`` with ``x`` an
earlier latent gets a proposal on ``(0, x)``.  Concentrations are kept above 0.2 and
values are clamped a hair inside the interval so densities stay finite.
"""

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch.distributions.transforms import AffineTransform

from pyro.distributions import constraints

from .base import SOFTPLUS_INV_ONE_4, Mixture, ProposalFamily, broadcast_context, flat, mixture_init, scalar_prior

_EPS = 1e-6


class _InteriorBeta(dist.Beta):
    """Beta whose log density clamps values a hair inside (0, 1)."""

    def log_prob(self, value):
        return super().log_prob(value.clamp(_EPS, 1 - _EPS))

    def sample(self, sample_shape=torch.Size()):
        return super().sample(sample_shape).clamp(_EPS, 1 - _EPS)

    def expand(self, batch_shape, _instance=None):
        return _InteriorBeta(
            self.concentration1.expand(batch_shape), self.concentration0.expand(batch_shape), validate_args=False
        )


class BetaIntervalProposal(ProposalFamily):
    name = "beta_interval"

    def fits(self, prior):
        s = getattr(prior.support, "base_constraint", prior.support)
        bounded = s is constraints.unit_interval or isinstance(s, (constraints.interval, constraints.half_open_interval))
        return scalar_prior(prior, discrete=False) and bounded

    def num_params(self, spec):
        return 3 * self.K

    def context(self, prior):
        return broadcast_context(prior, prior.support.lower_bound, prior.support.upper_bound)

    def features(self, value, context, spec):
        lb, ub = context[..., 0], context[..., 1]
        return flat(2 * (value - lb) / (ub - lb) - 1, spec)

    def _components(self, params):
        """Mixture logits and Beta concentrations ``a``, ``b``: each ``[..., K]``."""
        p = params.unflatten(-1, (self.K, 3))
        a = 0.2 + F.softplus(p[..., 1] + SOFTPLUS_INV_ONE_4)
        b = 0.2 + F.softplus(p[..., 2] + SOFTPLUS_INV_ONE_4)
        return p[..., 0], a, b

    def proposal(self, params, context):
        logits, a, b = self._components(params)
        lb, ub = context[..., 0], context[..., 1]
        base = Mixture(logits, _InteriorBeta(a, b, validate_args=False))
        return dist.TransformedDistribution(base, [AffineTransform(lb, ub - lb)], validate_args=False)

    def point(self, params, context):
        """The leading component's mean, on the prior's interval."""
        logits, a, b = self._components(params)
        k = logits.argmax(-1, keepdim=True)
        centre = (a / (a + b)).gather(-1, k).squeeze(-1)
        lb, ub = context[..., 0], context[..., 1]
        return lb + (ub - lb) * centre

    def init_head(self, layer, spec):
        # spread components: a skewed to the left, one flat, one skewed right
        mixture_init(layer, self.K, layer.out_features // (3 * self.K), 3, spread_index=1, spread=1.0)
