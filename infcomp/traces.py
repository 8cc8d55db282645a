"""Run a model forward and read its trace: the address table and a trace's latent values.

An *address* is a Pyro sample-site name.  For every latent site the address table
records a :class:`SiteSpec`: the proposal family fitted to its prior, the shape of
its value and how many of those dimensions are event dimensions.  A trace becomes
a :class:`TraceRecord`: its *structure* (the sequence of latent addresses, in the
order the model sampled them), each latent's value and the prior context its
proposal needs, and the values at the observed sites.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from dataclasses import asdict, dataclass, field

import pyro
import pyro.distributions
from torch.distributions import constraints
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample

from .nn.proposals import fit_family, make_families, unwrap
from .rng import fork_rng
from .widen import widened_value

__all__ = [
    "SiteSpec",
    "ObservationSpec",
    "TraceRecord",
    "Unobserve",
    "Widen",
    "RecordSites",
    "PriorSampler",
    "site_spec",
    "is_latent",
    "normalize_observe",
    "check_full_plate",
    "resolve_observe",
    "observed_tensor",
    "observation_fault",
]


@dataclass(frozen=True)
class SiteSpec:
    """What the guide knows about one address."""

    name: str
    family: str  # proposal family (see infcomp.nn.proposals)
    dist: str  # the prior's class name, for messages
    value_shape: tuple
    event_dim: int
    num_categories: int = 0

    @property
    def signature(self):
        """Sites with equal signatures share shapes, so the network batches them together."""
        return (self.family, self.value_shape, self.num_categories)

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        d["value_shape"] = tuple(d["value_shape"])
        return cls(**d)

    def describe(self):
        return f"{self.dist}{list(self.value_shape)}"


@dataclass(frozen=True)
class ObservationSpec:
    name: str
    shape: tuple
    dtype: str

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(d["name"], tuple(d["shape"]), d["dtype"])


@dataclass
class TraceRecord:
    structure: tuple  # latent addresses, in sampling order
    values: tuple  # one tensor per address, shape SiteSpec.value_shape
    contexts: tuple  # one tensor per address, shape value_shape + (context size,)
    observation: dict = field(default_factory=dict)  # observed site -> value


def normalize_observe(observe) -> tuple:
    if isinstance(observe, str):
        return (observe,)
    try:
        names = tuple(observe)
    except TypeError:
        raise TypeError(f"observe must be a site name or a list of site names, got {observe!r}") from None
    if not names or not all(isinstance(n, str) for n in names):
        raise TypeError(f"observe must be a site name or a non-empty list of site names, got {observe!r}")
    twice = [n for i, n in enumerate(names) if n in names[:i]]
    if twice:
        raise ValueError(f"observe names site {twice[0]!r} twice ({list(names)}): name each observed site once")
    return names


def resolve_observe(model, observe, model_args=(), model_kwargs=None) -> tuple:
    """The observed sites' names.  A name or a list of names is read as :func:`normalize_observe`
    reads it (a string is one site's exact name, never a pattern).  A compiled regular expression
    (``re.compile(r"obs_\\d+")``, matched in full against each name) or a callable ``(name) -> bool``
    picks among the model's sample sites, in the order the model samples them: the sites of one
    run of the model forward that draw from a distribution, observed there or not (not a plate's
    subsample, a ``pyro.deterministic`` or an auxiliary site).  That run is seeded, the caller's
    generators left as they were, so every rank of a distributed run reads the same sites; a
    model whose observed sites vary from run to run needs them named.  ValueError listing the
    model's sample sites where the pattern picks none."""
    if isinstance(observe, str) or not (isinstance(observe, re.Pattern) or callable(observe)):
        return normalize_observe(observe)
    recorder = RecordSites(())
    with fork_rng(0), recorder:
        model(*tuple(model_args), **dict(model_kwargs or {}))
    sites = [name for name, fn, _, _, infer in recorder.sites if latent_site(fn, False, infer)]
    pick = observe.fullmatch if isinstance(observe, re.Pattern) else observe
    names = tuple(n for n in sites if pick(n))
    if not names:
        what = f"the pattern '{observe.pattern}'" if isinstance(observe, re.Pattern) else \
            f"the callable {getattr(observe, '__qualname__', repr(observe))}"
        raise ValueError(f"observe: {what} picks none of the model's sample sites {sites}")
    return names


def observed_tensor(name: str, value):
    """``value`` as a tensor, checked finite: the one check every inference path makes on an
    observation before it runs.  TypeError if it is no tensor and none can be made of it;
    ValueError naming the site if it holds NaN or an infinity."""
    if not torch.is_tensor(value):
        try:
            value = torch.as_tensor(value)
        except Exception:
            raise TypeError(f"observation for site {name!r} must be a tensor, got {type(value).__name__}") from None
    if value.dtype.is_floating_point or value.dtype.is_complex:
        if bool(torch.isnan(value).any()):
            raise ValueError(f"observation for site {name!r} contains NaN")
        if bool(torch.isinf(value).any()):
            raise ValueError(f"observation for site {name!r} contains an infinity: it cannot be weighed")
    return value


def observation_fault(name: str, value, fn) -> str:
    """Why the model's distribution ``fn`` at observed site ``name`` gives ``value`` zero density
    (a value outside its support), or ''.  ValueError naming the site if ``fn`` does not draw
    values of ``value``'s shape."""
    shape, want = tuple(value.shape), tuple(fn.shape())
    if shape != want:
        try:
            fits = tuple(torch.broadcast_shapes(shape, want)) == want
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"observation for site {name!r} has shape {shape}, but the model draws that site with shape {want}")
    support = fn.support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    if support is constraints.real:  # every finite value (observations are checked finite before any run)
        return ""
    try:
        inside = bool(fn.support.check(value).all())
    except (NotImplementedError, RuntimeError, TypeError, ValueError):
        return ""  # a support that cannot be checked (dependent): the density decides
    if not inside:
        return f"observation for site {name!r} lies outside the support {fn.support} of its {type(unwrap(fn)[0]).__name__}"
    return ""


def site_spec(name: str, fn, families: dict) -> SiteSpec:
    """The address table's entry for site ``name`` with prior ``fn``, its family fitted from ``families``."""
    family = fit_family(fn, families)
    base, event_dim = unwrap(fn)
    k = int(base.logits.shape[-1]) if isinstance(base, pyro.distributions.Categorical) else 0
    return SiteSpec(name, family, type(base).__name__, tuple(fn.shape()), event_dim, k)


def is_latent(site) -> bool:
    """A sample site the guide proposes for: not observed, deterministic, auxiliary or a plate's subsample."""
    return site["type"] == "sample" and latent_site(site["fn"], site["is_observed"], site["infer"])


def latent_site(fn, is_observed, infer) -> bool:
    """:func:`is_latent` of a sample site from its distribution, observed flag and ``infer`` dict."""
    return not (is_observed or isinstance(fn, _Subsample) or infer.get("_deterministic", False)
                or infer.get("is_auxiliary", False))


class Unobserve(Messenger):
    """Sample the named sites from the model even where it passes ``obs=``: prior draws of the data."""

    def __init__(self, names):
        super().__init__()
        self.names = frozenset(names)

    def _pyro_sample(self, msg):
        if msg["name"] in self.names and msg["is_observed"]:
            msg["is_observed"] = False
            msg["value"] = None
            msg["infer"]["was_observed"] = True


class RecordSites(Unobserve):
    """:class:`Unobserve` that also records each sample site as it completes: ``sites`` holds
    ``(name, fn, value, is_observed, infer)`` in the order the model sampled them (sites Pyro
    marks ``_do_not_trace`` left out, as a trace leaves them).

    One messenger, not a trace: a prior draw is made for its latent values, and a trace's
    graph, node copies and a second messenger cost a model of many small sites a share of its
    own draws.  Like a trace, it refuses a name met twice in one run: a ValueError (a model's
    fault, not a chance failure).  A plate that subsamples its data is a ValueError too: the
    guide would be trained on the subsample, and inference would weigh the particles under the
    likelihood scaled up from it, not the full data's.  One instance records one run at a time.
    """

    def __init__(self, names):
        super().__init__(names)
        self.sites, self._seen = [], set()

    def _pyro_post_sample(self, msg):
        if msg["infer"].get("_do_not_trace"):
            return
        name = msg["name"]
        if name in self._seen:
            what = "plates" if isinstance(msg["fn"], _Subsample) else "sample sites"
            raise ValueError(f"the model has two {what} named {name!r} in one run: each needs its own name")
        self._seen.add(name)
        check_full_plate(name, msg["fn"], msg["value"])
        self.sites.append((name, msg["fn"], msg["value"], msg["is_observed"], msg["infer"]))


def check_full_plate(name, fn, value):
    """ValueError naming plate ``name`` where its subsample ``value`` (drawn from ``fn``, a
    ``_Subsample``) is smaller than the plate; any other site passes."""
    if isinstance(fn, _Subsample) and fn.size is not None and value.numel() < fn.size:
        raise ValueError(
            f"plate {name!r} subsamples {value.numel()} of its {fn.size} items: inference compilation needs the "
            "full data at every observed site; drop subsample_size (or subsample=): the guide is trained and "
            "inferred on all of the plate's data"
        )


class Widen(Messenger):
    """Draw every latent site's value from its prior widened ``k`` times (:mod:`~infcomp.widen`),
    leaving its distribution the true prior (what a trace record reads its context from), and
    the ``observe`` sites, observed or drawn, as the model draws them."""

    def __init__(self, k: float, observe=()):
        super().__init__()
        self.k, self.observe = k, frozenset(observe)

    def _pyro_sample(self, msg):
        if msg["value"] is None and msg["name"] not in self.observe and latent_site(msg["fn"], msg["is_observed"],
                                                                                   msg["infer"]):
            msg["value"] = widened_value(msg["fn"], self.k)


class PriorSampler:
    """Draws prior traces of a model and turns them into :class:`TraceRecord` s.

    Keeps the address table of every site it has met, and raises if a site comes
    back with another distribution or shape (an address must mean one thing).  ``specs``:
    an address table to start from (a trained guide's), whose entries stand as they are: a
    family registered since is not fitted to them again.
    """

    def __init__(self, model, observe, model_args=(), model_kwargs=None, families=None, validate=True, specs=None,
                 inputs=None, widen=None):
        self.model = model
        self.observe = normalize_observe(observe)
        self.args = tuple(model_args)
        self.kwargs = dict(model_kwargs or {})
        self.inputs = inputs  # () -> {argument name: tensor}: drawn afresh for each trace, recorded beside the observation
        self.widen = widen  # draw the latents from priors this many times wider (infcomp.widen); None: as written
        self.families = families if families is not None else make_families()
        self.validate = validate  # Pyro's argument checks; training workers turn them off for speed
        self.specs: dict[str, SiteSpec] = dict(specs or {})
        self._known = {}  # name -> (prior class, shape): a cheap identity check per trace
        self._warned = set()

    def spec_for(self, name, fn) -> SiteSpec:
        key = (type(fn), fn.batch_shape, fn.event_shape)
        known = self._known.get(name)
        if known is not None and known == key:
            return self.specs[name]
        spec = site_spec(name, fn, self.families)
        old = self.specs.get(name)
        if old is not None:
            check_consistent(old, spec, refit=True)
            if not self.families[old.family].fits(unwrap(fn)[0]):
                raise ValueError(
                    f"site {name!r}: the guide proposes for it with the family {old.family!r}, which does not "
                    f"fit its prior now ({spec.describe()}, support {unwrap(fn)[0].support})"
                )
            spec = old
        else:
            self.specs[name] = spec
            if not self.families[spec.family].has_head and spec.dist != "Delta" and name not in self._warned:
                self._warned.add(name)
                warnings.warn(
                    f"site {name!r}: no proposal family fits {spec.describe()}; "
                    "it proposes from its prior",
                    stacklevel=3,
                )
        self._known[name] = key
        return spec

    def sample(self) -> TraceRecord:
        recorder = RecordSites(self.observe)  # one per run: a model that draws inside a draw records apart
        drawn = self.inputs() if self.inputs is not None else {}
        widened = Widen(self.widen, self.observe) if self.widen else contextlib.nullcontext()
        with pyro.validation_enabled(self.validate), recorder, widened:
            self.model(*self.args, **self.kwargs, **drawn)
        structure, values, contexts, observation = [], [], [], {}
        for name, fn, value, is_observed, infer in recorder.sites:
            if name in self.observe:
                if isinstance(unwrap(fn)[0], pyro.distributions.Unit):
                    raise ValueError(
                        f"observe names site {name!r}, a pyro.factor: it has no value to observe. Inference "
                        "compilation trains on joint draws of latents and data: write the likelihood as a sample "
                        "site with obs= and observe that site (covariates can be inputs= of the guide)")
                observation[name] = value.detach()
                continue
            if not latent_site(fn, is_observed, infer):
                continue
            spec = self.spec_for(name, fn)
            structure.append(name)
            values.append(value.detach())
            contexts.append(self.families[spec.family].context(unwrap(fn)[0]).detach())
        missing = [n for n in self.observe if n not in observation]
        if missing:
            raise ValueError(
                f"observe names site {missing[0]!r}, but the model never samples it "
                f"(its sample sites: {[n for n, *_ in recorder.sites]})"
            )
        observation.update((n, torch.as_tensor(v).detach()) for n, v in drawn.items())
        return TraceRecord(tuple(structure), tuple(values), tuple(contexts), observation)


def check_consistent(old: SiteSpec, new: SiteSpec, refit=False):
    """ValueError naming the difference if ``new`` (the site as the model samples it now) is not
    the address ``old``.  With ``refit``, a family fitted anew may differ: ``old``'s stands."""
    if old.dist != new.dist:
        raise ValueError(
            f"site {old.name!r} was sampled from {old.dist} before and from {new.dist} now: "
            "an address must keep one distribution family (give the two sites different names)"
        )
    if old.family != new.family and not refit:
        raise ValueError(
            f"site {old.name!r} ({old.dist}) has the proposal family {old.family!r} in the guide, "
            f"but {new.family!r} fits it now"
        )
    if old.value_shape != new.value_shape:
        raise ValueError(
            f"site {old.name!r} changed shape between runs: {old.describe()} before, {new.describe()} now"
        )
    if old.num_categories != new.num_categories:
        raise ValueError(
            f"site {old.name!r} changed shape between runs: {old.describe()} with {old.num_categories} "
            f"categories before, {new.num_categories} categories now"
        )


def observation_specs(record: TraceRecord) -> dict:
    return {
        n: ObservationSpec(n, tuple(v.shape), str(v.dtype).replace("torch.", ""))
        for n, v in record.observation.items()
    }
