"""Angles (``VonMises``): a mixture of von Mises distributions around the prior's location.

``VonMises`` declares a real support, but its draws lie on ``[-pi, pi)``: a line family
would put mass where the prior has none.  Component ``k`` is ``VonMises(loc + pi * m_k,
kappa * c_k)`` with ``loc, kappa`` the prior's and ``m_k, c_k`` from the network, so every
draw is an angle on ``[-pi, pi)`` and an untrained head starts near the prior.
"""

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F

from .base import SOFTPLUS_INV_ONE_4, Mixture, ProposalFamily, broadcast_context, mixture_init


def wrap(angle):
    """``angle`` mapped onto ``[-pi, pi)``."""
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


class VonMisesMixtureProposal(ProposalFamily):
    name = "vonmises_mixture"

    def fits(self, prior):
        return prior.event_shape == () and isinstance(prior, dist.VonMises)

    def num_params(self, spec):
        return 3 * self.K

    def feature_size(self, spec):
        return 2 * super().feature_size(spec)

    def context(self, prior):
        return broadcast_context(prior, prior.loc, prior.concentration)

    def features(self, value, context, spec):
        d = value - context[..., 0]
        f = torch.stack([torch.cos(d), torch.sin(d)], -1)
        return f.reshape(f.shape[: f.dim() - len(spec.value_shape) - 1] + (-1,))

    def _components(self, params, context):
        """Mixture logits, component locations and concentrations: each ``[..., K]``."""
        p = params.unflatten(-1, (self.K, 3))
        loc = wrap(context[..., :1] + math.pi * torch.tanh(p[..., 1]))
        kappa = context[..., 1:2] * F.softplus(p[..., 2] + SOFTPLUS_INV_ONE_4) + 1e-3
        return p[..., 0], loc, kappa

    def proposal(self, params, context):
        logits, loc, kappa = self._components(params, context)
        return Mixture(logits, dist.VonMises(loc, kappa, validate_args=False))

    def point(self, params, context):
        """The leading component's location, on ``[-pi, pi)``."""
        logits, loc, _ = self._components(params, context)
        return loc.gather(-1, logits.argmax(-1, keepdim=True)).squeeze(-1)

    def init_head(self, layer, spec):
        mixture_init(layer, self.K, layer.out_features // (3 * self.K), 3, spread_index=1, spread=0.3)
