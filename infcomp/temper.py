"""Flatten the guide's discrete proposals: ``q(z) -> q(z)^(1/T) / Z``.

A guide compiled on a model's prior draws can be overconfident on an observation
unlike those draws (real data read by a guide trained on simulated data): the right
value of a discrete site gets proposal probability 1e-3 and no particle ever tries it, though
the model's likelihood would prefer it by hundreds of nats.  Tempering a discrete
proposal at ``T > 1`` gives such second choices a real share of the particles;
importance weights stay exact (``p / q_T``, with ``q_T`` the tempered proposal), so
the estimate is still consistent and only its variance changes.

:class:`TemperMessenger` is an effect handler.  It acts on sites the guide proposed
(those with ``msg["infer"]["prior"]``, set by
:class:`~infcomp.handler.ProposalMessenger`, and, in batched inference, each address's
batched proposal: :meth:`TemperMessenger.transform_proposal`), so it wraps inference from outside::

    with infcomp.temper(3.0, sites=["k_0", "k_1"]):
        posterior = infcomp.infer(model, guide, observation, num_samples=100)

Categorical and Bernoulli proposals are tempered exactly (their logits divided by
``T``).  Continuous proposals are left as they are (a tempered mixture has no closed
form, and the learned widths are the guide's own statement of uncertainty); naming
one in ``sites`` is an error.  Greedy reads are unchanged: tempering keeps the mode.
"""

from __future__ import annotations

import pyro.distributions as dist
from pyro.poutine.messenger import Messenger

from .nn.proposals import unwrap
from .traces import is_latent

__all__ = ["TemperMessenger", "temper", "tempered"]


def tempered(proposal, temperature: float, name: str = "?"):
    """``proposal`` raised to ``1 / temperature`` and renormalised (Categorical, Bernoulli)."""
    base, event_dim = unwrap(proposal)
    if isinstance(base, dist.Categorical):
        flat = dist.Categorical(logits=base.logits / temperature, validate_args=False)
    elif isinstance(base, dist.Bernoulli):
        flat = dist.Bernoulli(logits=base.logits / temperature, validate_args=False)
    else:
        raise ValueError(
            f"temper: site {name!r} proposes from {type(base).__name__}; only Categorical and "
            f"Bernoulli proposals can be tempered exactly (leave it out of sites=)"
        )
    return flat.to_event(event_dim) if event_dim else flat


class TemperMessenger(Messenger):
    """Replaces each guide proposal at the chosen discrete sites by its tempered version.

    :param temperature: ``T >= 1`` (1 changes nothing).
    :param sites: site names to temper; ``None``: every site whose proposal is
        Categorical or Bernoulli (continuous ones are skipped).
    """

    def __init__(self, temperature: float, sites=None):
        super().__init__()
        temperature = float(temperature)
        if not temperature >= 1.0:
            raise ValueError(f"temper: temperature must be at least 1, got {temperature}")
        self.temperature = temperature
        self.sites = None if sites is None else frozenset([sites] if isinstance(sites, str) else sites)

    def _pyro_sample(self, msg):
        if is_latent(msg) and msg["infer"].get("prior") is not None:
            msg["fn"] = self.transform_proposal(msg["name"], msg["fn"])

    def transform_proposal(self, name, proposal):
        """``proposal``, the guide's at site ``name``, tempered where this handler tempers that site.
        Batched inference (:class:`~infcomp.handler.Proposer`) asks every handler on the stack
        that has this method, as the sequential path's sites pass through :meth:`_pyro_sample`."""
        if self.temperature == 1.0:
            return proposal
        if self.sites is None:
            if not isinstance(unwrap(proposal)[0], (dist.Categorical, dist.Bernoulli)):
                return proposal
        elif name not in self.sites:
            return proposal
        return tempered(proposal, self.temperature, name)


def temper(temperature: float, sites=None) -> TemperMessenger:
    """Effect handler: sample the guide's discrete proposals at ``temperature`` (see module doc)."""
    return TemperMessenger(temperature, sites)
