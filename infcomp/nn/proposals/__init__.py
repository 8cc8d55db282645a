"""One place decides how a prior's family becomes a proposal head.

:func:`fit_family` peels ``Independent`` wrappers off a site's distribution and
picks a proposal family by the prior's class (discrete) or support (continuous).
Whatever it cannot fit proposes from the prior, and the caller warns once.
"""

from __future__ import annotations

import pyro.distributions as dist
from pyro.distributions import constraints
from torch.distributions import Independent

from .base import ProposalFamily
from .bernoulli import BernoulliProposal
from .beta_interval import BetaIntervalProposal
from .binomial import BinomialProposal
from .categorical import CategoricalProposal
from .lognormal_mixture import LogNormalMixtureProposal
from .normal_mixture import NormalMixtureProposal
from .poisson_mixture import PoissonMixtureProposal
from .prior import PriorProposal

__all__ = ["ProposalFamily", "FAMILIES", "fit_family", "unwrap", "make_families"]


def make_families(num_components: int = 3) -> dict[str, ProposalFamily]:
    fams = [
        CategoricalProposal(),
        BernoulliProposal(),
        NormalMixtureProposal(num_components),
        LogNormalMixtureProposal(num_components),
        BetaIntervalProposal(num_components),
        PoissonMixtureProposal(num_components),
        BinomialProposal(),
        PriorProposal(),
    ]
    return {f.name: f for f in fams}


FAMILIES = make_families()
FAMILY_NAMES = tuple(FAMILIES)


def unwrap(fn):
    """``(base, event_dim)``: the distribution under any ``Independent`` wrappers."""
    event_dim = 0
    while isinstance(fn, Independent):
        event_dim += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    return fn, event_dim


def _is(support, *kinds):
    support = getattr(support, "base_constraint", support)
    return any(isinstance(support, k) for k in kinds)


def fit_family(fn) -> str:
    """The name of the proposal family for a prior ``fn`` (``"prior"`` if none fits)."""
    base, _ = unwrap(fn)
    if base.event_shape != ():
        return "prior"
    if isinstance(base, dist.Categorical):
        return "categorical"
    if isinstance(base, dist.Bernoulli):
        return "bernoulli"
    if isinstance(base, dist.Binomial):
        return "binomial"
    support = base.support
    if support is constraints.nonnegative_integer or isinstance(base, (dist.Poisson, dist.Geometric, dist.NegativeBinomial)):
        return "poisson_mixture"
    if support.is_discrete:
        return "prior"
    if support is constraints.real:
        return "normal_mixture"
    if support in (constraints.positive, constraints.nonnegative) or _is(support, constraints.greater_than, constraints.greater_than_eq):
        return "lognormal_mixture"
    if support is constraints.unit_interval or _is(support, constraints.interval, constraints.half_open_interval):
        return "beta_interval"
    return "prior"
