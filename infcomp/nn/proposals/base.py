"""What every proposal family provides: prior context in, network parameters in, a distribution out.

A family is stateless.  For one address it says how many network outputs each
element of the value needs (``num_params``), what it reads from the prior at that
address (``context``: the prior's location, scale, bounds or logits, so proposals
are built *relative to the prior* and cover its support), how a sampled value is
fed back to the network (``features``), and how parameters become a
``pyro.distributions`` object (``proposal``).

Shapes: ``S`` is the value shape at the address (the base distribution's batch
shape once ``Independent`` wrappers are peeled off).  Every method accepts any
number of leading dimensions ``...`` before ``S``.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch


class ProposalFamily:
    name: str = "abstract"
    has_head: bool = True

    def __init__(self, num_components: int = 3):
        self.K = num_components  # mixture components, for the families that mix

    def fits(self, prior) -> bool:
        """Whether this family proposes for ``prior`` (a distribution with its ``Independent``
        wrappers peeled off).  Judge by what the prior really is, its class and support."""
        raise NotImplementedError

    # -- per address ---------------------------------------------------------
    def num_params(self, spec) -> int:
        """Network outputs per element of the value."""
        raise NotImplementedError

    def feature_size(self, spec) -> int:
        """Width of the value's features, flattened over ``S``."""
        return max(1, math.prod(spec.value_shape))

    # -- per trace -----------------------------------------------------------
    def context(self, prior) -> torch.Tensor:
        """``[*S, c]`` tensor read from the prior distribution (batch shape ``S``)."""
        raise NotImplementedError

    def features(self, value, context, spec) -> torch.Tensor:
        """``[..., *S]`` values -> ``[..., d]`` float features."""
        raise NotImplementedError

    def proposal(self, params, context):
        """``[..., *S, P]`` params and ``[..., *S, c]`` context -> distribution of batch ``[..., *S]``."""
        raise NotImplementedError

    def point(self, params, context):
        """The value a greedy read takes: the proposal's point estimate (:mod:`.point`).  Families
        override it where building the distribution costs more than the answer."""
        from .point import point_estimate  # point.py imports the families

        return point_estimate(self.proposal(params, context))

    def log_prob(self, params, context, value):
        return self.proposal(params, context).log_prob(value)

    def init_head(self, layer: torch.nn.Linear, spec) -> None:
        """Initialise the head's last layer so that the untrained proposal is close to the prior."""
        torch.nn.init.normal_(layer.weight, std=1e-3)
        torch.nn.init.zeros_(layer.bias)


def flat(x, spec):
    """Flatten the value dims ``S`` of ``[..., *S]`` into one."""
    n = len(spec.value_shape)
    return x.reshape(x.shape[: x.dim() - n] + (-1,))


def broadcast_context(prior, *columns):
    """Stack per-element prior quantities into a ``[*S, c]`` float context."""
    shape = prior.batch_shape
    cols = [torch.as_tensor(c, dtype=torch.get_default_dtype()).expand(shape) for c in columns]
    return torch.stack(cols, -1)


def finite_or(x, default):
    x = torch.as_tensor(x, dtype=torch.get_default_dtype())
    return torch.where(torch.isfinite(x), x, torch.as_tensor(default, dtype=x.dtype))


#: softplus(x + offset) is about 1 at x = 0: untrained heads start at the prior's scale.  The
#: Normal-based mixtures use two places, the Beta one four; saved heads were trained with each.
SOFTPLUS_INV_ONE_2 = 0.55
SOFTPLUS_INV_ONE_4 = 0.5413


def scalar_prior(prior, *, discrete: bool) -> bool:
    """A prior with no event dims whose support is discrete (or continuous) as asked."""
    return prior.event_shape == () and bool(prior.support.is_discrete) == discrete


def gumbel_max(logits, sample_shape=torch.Size()) -> torch.Tensor:
    """One categorical draw per row of ``logits [..., K]`` by the Gumbel-max trick:
    ``[*sample_shape, ..., 1]`` indices."""
    shape = torch.Size(sample_shape) + logits.shape
    u = torch.rand(shape, dtype=logits.dtype, device=logits.device).clamp(min=1e-20)
    return (logits - torch.log(-torch.log(u))).argmax(-1, keepdim=True)


def mixture_init(layer, num_components, num_elems, params_per_component, spread_index, spread=1.0):
    """Small random weights; component locations spread over [-spread, spread] to break symmetry."""
    torch.nn.init.normal_(layer.weight, std=1e-3)
    bias = torch.zeros(num_elems, num_components, params_per_component)
    if num_components > 1:
        bias[..., spread_index] = torch.linspace(-spread, spread, num_components)
    with torch.no_grad():
        layer.bias.copy_(bias.reshape(-1))


class Mixture(dist.MixtureSameFamily):
    """``MixtureSameFamily`` that picks components by the Gumbel-max trick (one draw, no multinomial)."""

    def __init__(self, logits, component, validate_args=False):
        super().__init__(dist.Categorical(logits=logits, validate_args=False), component, validate_args=validate_args)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            idx = gumbel_max(self.mixture_distribution.logits, sample_shape)  # [*sample, *batch, 1]
            comp = self.component_distribution.sample(sample_shape)  # [*sample, *batch, K]
            return comp.gather(-1, idx).squeeze(-1)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        k = self.mixture_distribution.logits.shape[-1]
        return Mixture(
            self.mixture_distribution.logits.expand(batch_shape + (k,)),
            self.component_distribution.expand(batch_shape + (k,)),
        )
