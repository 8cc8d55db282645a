"""Proposal families: one per file, in a registry keyed by stable names.

A family says which priors it fits (:meth:`ProposalFamily.fits`) and how its network
outputs become a proposal relative to the prior.  :func:`fit_family` asks the families in
order (the guide's own first, then those added with :func:`register_family`, then the
built-in ones) and takes the first that fits; a prior none fits proposes from itself
(``"prior"``), and the caller warns once.  A saved guide names each address's family, so
the names are stable; a family's parameters live with the addresses that use it, so adding
one changes no saved tensor.
"""

from __future__ import annotations

from torch.distributions import Independent

from .base import ProposalFamily
from .bernoulli import BernoulliProposal
from .beta_interval import BetaIntervalProposal
from .binomial import BinomialProposal
from .categorical import CategoricalProposal
from .dirichlet import DirichletProposal
from .lognormal_mixture import LogNormalMixtureProposal
from .normal_mixture import NormalMixtureProposal
from .poisson_mixture import PoissonMixtureProposal
from .prior import PriorProposal
from .vonmises_mixture import VonMisesMixtureProposal

__all__ = ["ProposalFamily", "fit_family", "unwrap", "make_families", "register_family", "family_class", "is_builtin"]

#: The built-in families in the order they are tried.
BUILTIN = (
    CategoricalProposal,
    BernoulliProposal,
    BinomialProposal,
    PoissonMixtureProposal,
    NormalMixtureProposal,
    LogNormalMixtureProposal,
    BetaIntervalProposal,
    VonMisesMixtureProposal,
    DirichletProposal,
)
_REGISTERED: dict[str, type] = {}  # families added with register_family, in the order added


def _check_family(cls) -> type:
    if not (isinstance(cls, type) and issubclass(cls, ProposalFamily)):
        raise TypeError(f"a proposal family is a subclass of infcomp.ProposalFamily, got {cls!r}")
    if not isinstance(cls.name, str) or cls.name in ("", "abstract") or not cls.name.isidentifier():
        raise ValueError(
            f"proposal family {cls.__name__} needs a name of its own, a Python identifier "
            f"(a class attribute `name`), got {cls.name!r}"
        )
    builtin = next((b for b in (*BUILTIN, PriorProposal) if b.name == cls.name), None)
    if builtin is not None and builtin is not cls:
        raise ValueError(f"proposal family {cls.__name__}: the name {cls.name!r} is a built-in family's")
    return cls


def register_family(cls):
    """Add a proposal family for every guide compiled from now on (usable as a class decorator).
    ValueError if another family already has its name."""
    _check_family(cls)
    taken = family_class(cls.name, ())
    if taken is not None and taken is not cls:
        raise ValueError(f"a proposal family named {cls.name!r} exists already ({taken.__name__})")
    _REGISTERED[cls.name] = cls
    return cls


def family_class(name: str, extra=()):
    """The family class called ``name`` among ``extra``, the registered and the built-in ones, or None."""
    for cls in (*extra, *_REGISTERED.values(), *BUILTIN, PriorProposal):
        if cls.name == name:
            return cls
    return None


def make_families(extra=(), num_components: int = 3) -> dict[str, ProposalFamily]:
    """``name -> family``, in the order :func:`fit_family` tries them; ``"prior"`` last."""
    out = {}
    for cls in (*map(_check_family, extra), *_REGISTERED.values(), *BUILTIN, PriorProposal):
        out.setdefault(cls.name, cls(num_components))
    return out


def unwrap(fn):
    """``(base, event_dim)``: the distribution under any ``Independent`` wrappers."""
    event_dim = 0
    while isinstance(fn, Independent):
        event_dim += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    return fn, event_dim


def is_builtin(name: str) -> bool:
    return any(cls.name == name for cls in (*BUILTIN, PriorProposal))


def fit_family(fn, families: dict) -> str:
    """The name of the first family in ``families`` that fits prior ``fn`` (``"prior"`` if none)."""
    base, _ = unwrap(fn)
    for family in families.values():
        if family.has_head and family.fits(base):
            return family.name
    return PriorProposal.name
