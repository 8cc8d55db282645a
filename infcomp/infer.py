"""Importance sampling with a compiled guide (or the prior) as proposal.

For each particle the model runs once: latent sites draw from the proposal,
observed sites take the observation, and :class:`LogWeight` adds up
``log p(x, y) - log q(x | y)``, scaled and masked as Pyro's own traces are.
With the same seed this draws the same values, and so the same weights, as
``pyro.infer.Importance(pyro.condition(model, data=obs), guide.condition(obs))``.
"""

from __future__ import annotations

import contextlib
import math
import numbers

import pyro
import torch
import pyro.poutine as poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import NonlocalExit
from tqdm.auto import tqdm

from .posterior import Posterior
from .rng import fork_rng
from .threads import limited_threads
from .traces import is_latent, normalize_observe, observation_fault, observed_tensor

__all__ = ["infer", "greedy", "LogWeight"]


def _log_prob(fn, msg):
    lp = fn.log_prob(msg["value"], *msg["args"], **msg["kwargs"])
    return scale_and_mask(lp, msg["scale"], msg["mask"]).sum()


class LogWeight(Messenger):
    """Accumulates one run's log importance weight and records its latent values
    (only the values with ``weigh=False``: a greedy read needs no weight).

    At each site named in ``observe`` it checks the value against the site's distribution
    (:func:`~infcomp.traces.observation_fault`): a shape the site does not draw raises; a value
    outside its support gives the run weight 0 (``log_weight = -inf``, the reason in ``fault``),
    or raises where ``weigh=False``.  ``bad`` names the first site whose term was NaN or +inf.
    """

    def __init__(self, weigh=True, observe=()):
        super().__init__()
        self.weigh = weigh
        self.observe = frozenset(observe)

    def __enter__(self):
        self.log_weight = 0.0
        self.values = {}
        self.observed = set()
        self.fault = self.bad = None
        return super().__enter__()

    def _add(self, name, term):
        if self.fault:  # weight 0 already
            return
        if self.bad is None and not bool(term < math.inf):  # NaN or +inf
            self.bad = name
        self.log_weight = self.log_weight + term

    def _pyro_post_sample(self, msg):
        if msg["is_observed"]:
            self.observed.add(msg["name"])
            fault = observation_fault(msg["name"], msg["value"], msg["fn"]) if msg["name"] in self.observe else ""
            if fault and not self.weigh:
                raise ValueError(fault)
            if fault:
                self.fault = self.fault or fault
                self.log_weight = -math.inf
            elif self.weigh:
                self._add(msg["name"], _log_prob(msg["fn"], msg))
        elif is_latent(msg):
            self.values[msg["name"]] = msg["value"]
            prior = msg["infer"].get("prior")
            if prior is not None and self.weigh:  # proposed by the guide: w *= p(x) / q(x)
                self._add(msg["name"], _log_prob(prior, msg) - _log_prob(msg["fn"], msg))


def infer(
    model,
    guide,
    observation,
    num_samples=1000,
    *,
    observe=None,
    model_args=(),
    model_kwargs=None,
    seed=None,
    progress=False,
) -> Posterior:
    """Weighted posterior of ``model`` given ``observation``.

    :param guide: a compiled :class:`~infcomp.Guide`, or ``None`` to propose from the prior.
    :param observation: a tensor (one observed site) or a dict site -> tensor.
    :param observe: with ``guide=None``, the observed site name(s) (taken from a dict observation if omitted).
    :param seed: draw as after ``pyro.set_rng_seed(seed)``, and leave the caller's random number
        generators as they were (:func:`~infcomp.rng.fork_rng`); without it the particles draw
        from, and advance, the caller's generators, as a Pyro model run does.
    :param num_samples: a positive int (TypeError for any other type, ``bool`` included).

    Every path checks the observation the same way: finite (before any particle runs), of a
    shape its site draws, inside that site's support.  A particle whose observation falls
    outside the support, or has density 0, weighs 0; ValueError naming the observed sites if
    every particle does, and naming the particle and site if a log weight is NaN or +inf.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral):
        raise TypeError(f"num_samples must be a positive int, got {num_samples!r} ({type(num_samples).__name__})")
    if num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples}")
    model_kwargs = dict(model_kwargs or {})
    if guide is not None:
        guide.bind_model(model, model_args, model_kwargs)
        obs = guide.check_observation(observation)
        names = guide.observe
    else:
        if observe is None:
            if not isinstance(observation, dict):
                raise ValueError("with guide=None and a tensor observation, name the observed site: observe='y'")
            observe = list(observation)
        names = normalize_observe(observe)
        if not isinstance(observation, dict) and len(names) != 1:
            raise ValueError(f"observe names {list(names)}: pass the observation as a dict site -> tensor")
        obs = observation if isinstance(observation, dict) else {names[0]: observation}
        obs = {n: observed_tensor(n, v) for n, v in obs.items()}  # the guide's own check, as in Guide.check_observation
    conditioned = poutine.condition(model, data=obs)
    # particles run one by one on small tensors: extra threads only contend
    with fork_rng(seed), limited_threads():
        return _importance(conditioned, guide, obs, names, num_samples, model_args, model_kwargs, progress)


def _importance(conditioned, guide, obs, names, num_samples, model_args, model_kwargs, progress):
    log_weights = torch.empty(num_samples, dtype=torch.float64)
    samples = {}
    weight = LogWeight(observe=names)
    faults = {}
    for i in tqdm(range(num_samples), disable=not progress, desc="importance sampling", unit="sample"):
        proposer = guide.messenger(obs) if guide is not None else contextlib.nullcontext()
        # Pyro's argument checks run on the first particle only: they would double the cost of cheap models
        with torch.no_grad(), pyro.validation_enabled(i == 0 and poutine.util.is_validation_enabled()), proposer, weight:
            conditioned(*model_args, **model_kwargs)
        if i == 0:
            missing = [n for n in names if n not in weight.observed]
            if missing:
                raise ValueError(f"the model does not observe site {missing[0]!r}: it never samples a site of that name")
        if weight.bad is not None:
            raise ValueError(
                f"particle {i}: its log weight is {float(weight.log_weight)} (the term of site {weight.bad!r} is "
                "NaN or +inf): the model's density there cannot be weighed"
            )
        if weight.fault:
            faults.setdefault(weight.fault, i)
        log_weights[i] = float(weight.log_weight)
        for name, value in weight.values.items():
            samples.setdefault(name, ([], []))
            samples[name][0].append(i)
            samples[name][1].append(value)
    if not bool(torch.isfinite(log_weights).any()):
        why = next(iter(faults), "the observation has zero density (log weight -inf) under every particle")
        raise ValueError(f"no particle of {num_samples} can weigh the observation of {list(names)}: {why}"
                         + (" under every particle" if faults else ""))
    packed = {n: (torch.tensor(idx), torch.stack(vals)) for n, (idx, vals) in samples.items()}
    return Posterior(log_weights, packed)


def greedy(model, guide, observation, *, model_args=(), model_kwargs=None, stop_before=()) -> dict:
    """One pass of the guide taking each proposal's most probable value: ``{site: value}``.

    The fast read: no sampling, no weights.  Discrete sites take their proposal's
    mode; continuous ones the centre of its leading mixture component.

    :param stop_before: a site name or names: the pass ends where the model reaches the first
        of them (``poutine.escape``), and returns the values drawn before it.  A read that needs
        only the early sites (the text drawn before the picture) skips the guide's steps and the model's work
        after them; each value drawn is the same as in the full pass.  ValueError naming them, and
        the sites the model did sample, if the pass ends without reaching any of them.

    The observation is checked as :func:`infer` checks it; one outside its site's support under
    the pass's values is a ValueError naming the site.
    """
    model_kwargs = dict(model_kwargs or {})
    guide.bind_model(model, model_args, model_kwargs)
    obs = guide.check_observation(observation)  # finite, as on every path; the support is checked as the pass meets it
    names = (stop_before,) if isinstance(stop_before, str) else () if stop_before is None else stop_before
    if not isinstance(names, (list, tuple, set, frozenset)) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"stop_before must be a site name or a list of site names, got {stop_before!r}")
    stops = frozenset(names)
    run = poutine.condition(model, data=obs)
    if stops:
        run = poutine.escape(run, escape_fn=lambda msg: msg["name"] in stops)
    with limited_threads(), torch.no_grad(), pyro.validation_enabled(False), guide.messenger(obs, greedy=True), \
            LogWeight(weigh=False, observe=guide.observe) as lw:
        try:
            run(*model_args, **model_kwargs)
        except NonlocalExit:
            return lw.values
    if stops:
        raise ValueError(
            f"stop_before names {sorted(stops)}, but the model reached none of them: "
            f"it sampled {[*lw.values, *sorted(lw.observed)]}"
        )
    return lw.values
