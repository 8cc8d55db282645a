"""Training on a wider spread than the prior: widened priors during compile only.

A guide learns ``q(latents | observation)`` from the model's joint draws, so it is good where
the prior predictive puts observations.  A user's data often sit in the tail of a vague prior,
where training saw few draws.  With ``compile(..., widen=k)`` every latent site draws its training
value from a widened prior while the rest of the model (its likelihood, later sites) runs as
written: the guide learns the posterior under the widened prior, whose predictive covers a wider
range of observations, and whose posteriors are a little wider than the true ones (heavier tails
than the target, which importance sampling tolerates; the reverse it does not).

The proposal is still built relative to the site's *true* prior (its context: location, scale,
bounds), exactly as at inference, and inference weighs every particle under the true model, so
the posterior stays exact; only the proposal's reach changes.  This is the amortised counterpart
of the truncated or broadened proposal priors of sequential neural posterior estimation (sbi) and
swyft, without rounds: one compile covers every observation.

How a prior is widened:

* a continuous site, any support with a bijection to the reals (``biject_to``): two prior draws
  ``x0, x1`` mapped to unconstrained values ``u0, u1``, and the value ``T(u0 + l (u0 - u1))`` with
  ``l`` such that the spread grows ``k`` times (``(1 + l)^2 + l^2 = k^2``): the prior's own
  shape, ``k`` times wider around where it lies, staying inside its support;
* a ``Categorical`` or ``Bernoulli`` site: its logits divided by ``k`` (flatter);
* any other discrete site: its prior as it is.

:class:`~infcomp.traces.Widen` is the messenger that draws so during compile's prior draws.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import biject_to

from .nn.proposals import unwrap

__all__ = ["check_widen", "widened_value"]


def check_widen(widen) -> float | None:
    """``compile``'s ``widen=``: None (or 1: the prior as it is) or a number at least 1; ValueError else."""
    if widen is None:
        return None
    if isinstance(widen, bool) or not isinstance(widen, (int, float)) or not math.isfinite(widen) or widen < 1:
        raise ValueError(f"widen must be a number at least 1 (how many times wider the training priors are), got {widen!r}")
    return None if widen == 1 else float(widen)


def _spread(k: float) -> float:
    """``l`` with ``(1 + l)^2 + l^2 = k^2``: ``u0 + l (u0 - u1)`` is ``k`` times as spread as ``u0``."""
    return (-1 + math.sqrt(2 * k * k - 1)) / 2


def widened_value(fn, k: float):
    """One draw from ``fn`` widened ``k`` times (see the module's doc)."""
    base, event_dim = unwrap(fn)
    if isinstance(base, (torch.distributions.Categorical, torch.distributions.Bernoulli)):
        flat = type(base)(logits=base.logits / k, validate_args=False)
        return (flat.to_event(event_dim) if event_dim else flat).sample()
    if base.support.is_discrete:
        return fn.sample()
    x0, x1 = fn.sample(), fn.sample()
    try:
        t = biject_to(fn.support)
    except NotImplementedError:
        return x0
    u0, u1 = t.inv(x0), t.inv(x1)
    x = t(u0 + _spread(k) * (u0 - u1))
    ok = torch.isfinite(x).all() and bool(fn.support.check(x).all())
    return x if ok else x0
