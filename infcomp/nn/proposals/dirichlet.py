"""Simplex addresses (Dirichlet): a mixture of Dirichlets whose concentrations scale the prior's.

Shapes.  A Dirichlet prior of batch shape ``B`` draws values of shape ``S = B + (k,)`` (its
event dim is the last of ``S``), so the network hands this family ``P`` parameters per
*element* of each simplex: ``[..., *B, k, P]``.  Component ``m`` of a simplex takes, from its
``k`` elements, the log-factors that multiply the prior's concentrations (one per element),
and the mean of their ``k`` logit shares as its mixture logit.  :meth:`proposal` returns a
distribution of batch shape ``[..., *B]`` and event shape ``[k]``: its ``log_prob`` consumes
the simplex dim itself, as the prior's does, so callers sum only the dims that ``Independent``
wrappers add (``event_dim``) and the network sums everything that is left.

The context is the prior's concentration, ``[*B, k, 1]``, so a proposal is read relative to
the prior at every trace (a concentration that is itself a latent is followed).  Factors are
bounded (``exp`` of at most ``_LOG_FACTOR`` either way, softly, so no gradient dies at the
bound) so wild network outputs still give finite concentrations.  Values are clamped at the
dtype's smallest normal number before a density is taken: the Dirichlet's density at an exact
zero is infinite or zero, while torch's own sampler never goes below that number, so the
clamp changes no draw of the proposal and its densities stay exact.
"""

import math

import pyro.distributions as dist
import torch

from .base import ProposalFamily, flat, mixture_init

#: log-factors on the prior's concentrations are kept within +-_LOG_FACTOR (tanh-squashed).
_LOG_FACTOR = 15.0
#: the network sees ``log(value)`` floored here and scaled to [-1, 0]: smaller weights all read "absent".
_LOG_FEATURE_FLOOR = 1e-12


def _interior(value):
    """``value`` with each element at least the dtype's smallest normal number (finite densities)."""
    return value.clamp(min=torch.finfo(value.dtype).tiny)


class _InteriorDirichlet(dist.Dirichlet):
    """Dirichlet whose log density clamps values off the simplex's faces (see :func:`_interior`)."""

    def log_prob(self, value):
        return super().log_prob(_interior(value))

    def sample(self, sample_shape=torch.Size()):
        return _interior(super().sample(sample_shape))


class DirichletProposal(ProposalFamily):
    name = "dirichlet"

    def fits(self, prior):
        return isinstance(prior, torch.distributions.Dirichlet)

    def num_params(self, spec):
        return 2 * self.K  # per element and component: a logit share and a log-factor

    def context(self, prior):
        conc = prior.concentration.expand(prior.batch_shape + prior.event_shape)
        return conc.to(torch.get_default_dtype()).unsqueeze(-1)

    def feature_size(self, spec):
        return 2 * super().feature_size(spec)

    def features(self, value, context, spec):
        """``[..., *B, k]`` simplex values -> ``[..., 2 * prod(S)]``: each element and its scaled log."""
        value = value.to(context.dtype)
        log = torch.log(value.clamp(min=_LOG_FEATURE_FLOOR)) / -math.log(_LOG_FEATURE_FLOOR)
        return torch.cat([flat(2 * value - 1, spec), flat(log, spec)], -1)

    def _components(self, params, context):
        """Mixture logits ``[..., *B, M]`` and component concentrations ``[..., *B, M, k]``."""
        p = params.unflatten(-1, (self.K, 2))  # [..., *B, k, M, 2]
        log_factor = _LOG_FACTOR * torch.tanh(p[..., 1] / _LOG_FACTOR)
        concentration = (context * torch.exp(log_factor)).transpose(-1, -2)  # [*B, k, 1] * [..., *B, k, M]
        return p[..., 0].mean(-2), concentration

    def proposal(self, params, context):
        logits, concentration = self._components(params, context)
        return dist.MixtureSameFamily(
            dist.Categorical(logits=logits, validate_args=False),
            _InteriorDirichlet(concentration, validate_args=False),
            validate_args=False,
        )

    def point(self, params, context):
        """The leading component's mean: ``[..., *B, k]``, strictly inside the simplex."""
        logits, concentration = self._components(params, context)
        which = logits.argmax(-1, keepdim=True).unsqueeze(-1)  # [..., *B, 1, 1]
        leading = concentration.gather(-2, which.expand(which.shape[:-1] + concentration.shape[-1:])).squeeze(-2)
        return leading / leading.sum(-1, keepdim=True)

    def init_head(self, layer, spec):
        # every component at the prior's mean; their total concentrations spread from e^-1 to e
        # times the prior's (so weights against the prior stay below the number of components)
        mixture_init(layer, self.K, layer.out_features // (2 * self.K), 2, spread_index=1, spread=1.0)
