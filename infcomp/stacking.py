"""The priors of many particles at one address as one batched distribution.

At an address, each particle's prior is a distribution of the same class and shape whose
parameters differ (a walk's step is centred on the particle's last position).  Stacked, they
give each particle's proposal context and prior log density in one call instead of one per
particle.  Only classes whose constructor takes exactly the listed parameters, and whose
density depends on nothing else, are stacked; any other prior (a user's subclass, a masked or
transformed distribution) gives None, and the caller goes on particle by particle.
"""

from __future__ import annotations

import pyro.distributions as pyro_dist
import torch
import torch.distributions as torch_dist

__all__ = ["stack_priors"]

_PARAMETERS = {
    "Normal": ("loc", "scale"),
    "LogNormal": ("loc", "scale"),
    "Uniform": ("low", "high"),
    "Beta": ("concentration1", "concentration0"),
    "Gamma": ("concentration", "rate"),
    "Exponential": ("rate",),
    "Poisson": ("rate",),
    "Categorical": ("logits",),
    "Bernoulli": ("logits",),
    "Binomial": ("total_count", "logits"),
    "VonMises": ("loc", "concentration"),
    "Dirichlet": ("concentration",),
}
#: class -> its parameters, for torch's classes and Pyro's wrappers of them (exact classes only)
PARAMETERS = {getattr(module, name): params for name, params in _PARAMETERS.items()
              for module in (torch_dist, pyro_dist)}


def stack_priors(priors: list):
    """One distribution of batch shape ``[len(priors), *batch]`` whose row ``i`` is ``priors[i]``,
    or None where they are not all of one stackable class and batch shape."""
    first = priors[0]
    cls = type(first)
    names = PARAMETERS.get(cls)
    if names is None or any(type(p) is not cls or p.batch_shape != first.batch_shape
                            or p.event_shape != first.event_shape for p in priors):
        return None
    return cls(**{n: torch.stack([getattr(p, n) for p in priors]) for n in names}, validate_args=False)
