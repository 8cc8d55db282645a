"""Importance sampling with a compiled guide (or the prior) as proposal.

For each particle the model runs once: latent sites draw from the proposal,
observed sites take the observation, and :class:`LogWeight` adds up
``log p(x, y) - log q(x | y)``, scaled and masked as Pyro's own traces are.

Two paths draw the particles.  The batched one (the default) runs a chunk of particles as
coroutines (:mod:`~infcomp.lockstep`) that pause at each latent site; the network steps once
for all particles standing at the same address, and one batched proposal draws their values
(:class:`~infcomp.handler.Proposer`).  The model's own code still runs once per particle.  The
sequential one (``batch=False``), the reference, runs the particles one after another under
the guide's :class:`~infcomp.handler.ProposalMessenger`; with the same seed it draws the same
values, and so the same weights, as ``pyro.infer.Importance(pyro.condition(model, data=obs),
guide.condition(obs))``.  The two paths draw different values; for the values a particle
holds, both weigh it the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import numbers

import pyro
import torch
import pyro.poutine as poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import NonlocalExit
from tqdm.auto import tqdm

from .handler import PausingProposal, Proposer
from .lockstep import lockstep
from .posterior import Posterior
from .refine import Refine, refined_copy
from .rng import fork_rng
from .threads import limited_threads
from .traces import check_full_plate, is_latent, normalize_observe, observation_fault, observed_tensor
from .weights import warn_unreliable

__all__ = ["infer", "greedy", "LogWeight"]


def _log_prob(fn, msg):
    lp = fn.log_prob(msg["value"], *msg["args"], **msg["kwargs"])
    return scale_and_mask(lp, msg["scale"], msg["mask"]).sum()


class LogWeight(Messenger):
    """Accumulates one run's log importance weight and records its latent values
    (only the values with ``weigh=False``: a greedy read needs no weight), the values of its
    ``pyro.deterministic`` sites (``deterministic``) and, with ``record_priors``, each latent
    site's prior (``priors``: what a refinement's trace records need).

    A plate that subsamples its data is a ValueError naming it (:func:`~infcomp.traces.check_full_plate`).
    At each site named in ``observe`` it checks the value against the site's distribution
    (:func:`~infcomp.traces.observation_fault`): a shape the site does not draw raises; a value
    outside its support gives the run weight 0 (``log_weight = -inf``, the reason in ``fault``),
    or raises where ``weigh=False``.  ``bad`` names the first site whose term was NaN or +inf.
    """

    def __init__(self, weigh=True, observe=(), record_priors=False):
        super().__init__()
        self.weigh = weigh
        self.observe = frozenset(observe)
        self.record_priors = record_priors

    def __enter__(self):
        self.log_weight = 0.0
        self.values, self.deterministic, self.priors = {}, {}, {}
        self.observed = set()
        self.fault = self.bad = None
        return super().__enter__()

    def _add(self, name, term):
        if self.fault:  # weight 0 already
            return
        term = float(term)  # summed in double precision, on both paths alike
        if self.bad is None and not term < math.inf:  # NaN or +inf
            self.bad = name
        self.log_weight += term

    def _pyro_post_sample(self, msg):
        check_full_plate(msg["name"], msg["fn"], msg["value"])  # a subsample's scaled likelihood is no posterior
        if msg["infer"].get("_deterministic"):
            self.deterministic[msg["name"]] = msg["value"]
        elif msg["is_observed"]:
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
            prior, log_q = msg["infer"].get("prior"), msg["infer"].get("log_q")
            if self.record_priors:
                self.priors[msg["name"]] = msg["fn"] if prior is None else prior
            if not self.weigh:
                return
            if log_q is not None:  # drawn from a batched proposal, fn the prior: w *= p(x) / q(x)
                log_p = msg["infer"].get("log_p")  # the stacked priors' density, or None: weigh the prior here
                if log_p is None:
                    log_p = msg["fn"].log_prob(msg["value"], *msg["args"], **msg["kwargs"])
                if isinstance(log_p, float) and isinstance(log_q, float) and msg["mask"] is None \
                        and not torch.is_tensor(msg["scale"]) and msg["scale"] == 1.0:
                    self._add(msg["name"], log_p - log_q)  # a scalar site: no tensor work per particle
                else:
                    self._add(msg["name"], scale_and_mask(torch.as_tensor(log_p) - log_q, msg["scale"], msg["mask"]).sum())
            elif prior is not None:  # proposed by the guide (fn the proposal): w *= p(x) / q(x)
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
    batch=True,
    chunk_size=1024,
    refine=False,
    warn=True,
) -> Posterior:
    """Weighted posterior of ``model`` given ``observation``.

    :param guide: a compiled :class:`~infcomp.Guide`, or ``None`` to propose from the prior.
    :param observation: a tensor (one observed site) or a dict site -> tensor.
    :param observe: with ``guide=None``, the observed site name(s) (taken from a dict observation if omitted).
    :param seed: draw as after ``pyro.set_rng_seed(seed)``, and leave the caller's random number
        generators as they were (:func:`~infcomp.rng.fork_rng`); without it the particles draw
        from, and advance, the caller's generators, as a Pyro model run does.
    :param num_samples: a positive int (TypeError for any other type, ``bool`` included).
    :param batch: advance the particles together, ``chunk_size`` at a time (memory grows with the
        chunk, not with ``num_samples``); ``False`` runs them one by one (the reference path,
        whose draws match ``pyro.infer.Importance`` with the guide).  Prior importance sampling
        (``guide=None``) has no network to batch and always runs one by one.

    :param refine: ``True`` or an :class:`~infcomp.Refine` (its budget): first adapt a copy of the guide
        to this observation (:mod:`~infcomp.refine`; ``posterior.refinement`` says how it went).
    :param warn: warn (:class:`~infcomp.UnreliableWeightsWarning`) where the weights are unreliable
        (:attr:`~infcomp.Posterior.diagnostics`, :mod:`~infcomp.weights`).

    Every path checks the observation the same way: finite (before any particle runs), of a shape
    its site draws, inside that site's support.  A particle whose observation falls outside the
    support, or has density 0, weighs 0; ValueError naming the observed sites if every particle
    does, and the particle and site if a log weight is NaN or +inf.  Pyro's argument checks
    (where validation is on) run on the first particle only.
    """
    _positive_int("num_samples", num_samples)
    _positive_int("chunk_size", chunk_size)
    model_kwargs = dict(model_kwargs or {})
    obs, encoded, names = _observed(model, guide, observation, observe, model_args, model_kwargs)
    settings = Refine.of(refine, guided=guide is not None)
    conditioned = functools.partial(poutine.condition(model, data=obs), *model_args, **model_kwargs)
    run, report = _batched if batch and guide is not None else _sequential, None
    # each particle's model code runs on small tensors: extra threads only contend
    with fork_rng(seed), limited_threads(), torch.no_grad():
        if settings is not None:
            draw = functools.partial(_particles, run, conditioned, encoded, names, chunk_size)
            guide, report = refined_copy(guide, draw, encoded, settings, progress)
        with tqdm(total=num_samples, disable=not progress, desc="importance sampling", unit="sample") as bar:
            run(conditioned, guide, encoded, draws := _Draws(num_samples, names), chunk_size, bar)
            post = draws.posterior()
    post.refinement = None if report is None else dataclasses.replace(report, after=post.diagnostics)
    if warn:
        warn_unreliable(post, stacklevel=2)
    return post


def _observed(model, guide, observation, observe, model_args, model_kwargs):
    """``(the checked observation {site: tensor}, what the guide's encoder reads: it and the guide's
    inputs, the observed site names)``; with a guide, the guide bound to the model."""
    if guide is not None:
        obs = guide.check_observation(observation)
        encoded = guide.encoded(obs, model_args, model_kwargs, model)
        guide.bind_model(model, model_args, model_kwargs)
        return obs, encoded, guide.observe
    if observe is None:
        if not isinstance(observation, dict):
            raise ValueError("with guide=None and a tensor observation, name the observed site: observe='y'")
        observe = list(observation)
    names = normalize_observe(observe)
    if not isinstance(observation, dict) and len(names) != 1:
        raise ValueError(f"observe names {list(names)}: pass the observation as a dict site -> tensor")
    obs = observation if isinstance(observation, dict) else {names[0]: observation}
    obs = {n: observed_tensor(n, v) for n, v in obs.items()}  # the guide's own check, as in Guide.check_observation
    return obs, obs, names


def _particles(run, conditioned, obs, names, chunk_size, guide, n):
    """``n`` particles drawn with ``guide`` by ``run``: ``(log weights [n], [(latent values, their
    priors)] per particle)``, what :func:`~infcomp.refine.refined_copy` updates on."""
    draws = _Draws(n, names, record_priors=True)
    run(conditioned, guide, obs, draws, chunk_size, _NoBar())
    draws.check()
    return draws.log_weights, draws.particles


class _NoBar:
    def update(self, n):
        pass


def _positive_int(arg, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{arg} must be a positive int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{arg} must be a positive int, got {value}")


class _Draws:
    """The particles' log weights and latent values as they are drawn, packed per chunk (so
    millions of particles keep no Python object each), and the checks on them."""

    def __init__(self, num_samples, names, record_priors=False):
        self.names = names
        self.log_weights = torch.empty(num_samples, dtype=torch.float64)
        self.chunks = {}  # site -> [(particle indices, values)]
        self.faults = {}
        self.record_priors = record_priors
        self.particles = []  # with record_priors: (latent values, their priors) per particle

    def add(self, start, weights):
        """The runs of particles ``start, start + 1, ...``: each's :class:`LogWeight`."""
        if start == 0:
            missing = [n for n in self.names if n not in weights[0].observed]
            if missing:
                raise ValueError(f"the model does not observe site {missing[0]!r}: it never samples a site of that name")
        values = {}
        for i, weight in enumerate(weights, start):
            if weight.bad is not None:
                raise ValueError(
                    f"particle {i}: its log weight is {float(weight.log_weight)} (the term of site {weight.bad!r} is "
                    "NaN or +inf): the model's density there cannot be weighed"
                )
            if weight.fault:
                self.faults.setdefault(weight.fault, i)
            self.log_weights[i] = float(weight.log_weight)
            if self.record_priors:
                self.particles.append((weight.values, weight.priors))
            for name, value in {**weight.values, **weight.deterministic}.items():
                values.setdefault(name, ([], []))
                values[name][0].append(i)
                values[name][1].append(value)
        for name, (idx, vals) in values.items():
            self.chunks.setdefault(name, []).append((torch.tensor(idx), torch.stack(vals)))

    def check(self):
        """ValueError naming the observed sites unless some particle weighs the observation."""
        if not bool(torch.isfinite(self.log_weights).any()):
            why = next(iter(self.faults), "the observation has zero density (log weight -inf) under every particle")
            raise ValueError(f"no particle of {len(self.log_weights)} can weigh the observation of {list(self.names)}: "
                             f"{why}" + (" under every particle" if self.faults else ""))

    def posterior(self) -> Posterior:
        self.check()
        packed = {n: (torch.cat([i for i, _ in c]), torch.cat([v for _, v in c])) for n, c in self.chunks.items()}
        return Posterior(self.log_weights, packed)


def _chunks(num_samples, chunk_size):
    """``(start, size)`` of each chunk: the first particle alone (it runs with Pyro's argument checks), then ``chunk_size`` at a time."""
    start = 0
    while start < num_samples:
        size = 1 if start == 0 else min(chunk_size, num_samples - start)
        yield start, size
        start += size


def _validating(first):
    return pyro.validation_enabled(first and poutine.util.is_validation_enabled())


def _sequential(conditioned, guide, obs, draws, chunk_size, bar):
    for start, size in _chunks(len(draws.log_weights), chunk_size):
        weights = [LogWeight(observe=draws.names, record_priors=draws.record_priors) for _ in range(size)]
        for weight in weights:
            proposer = guide.messenger(obs) if guide is not None else contextlib.nullcontext()
            with _validating(start == 0), proposer, weight:
                conditioned()
        draws.add(start, weights)
        bar.update(size)


def _batched(conditioned, guide, obs, draws, chunk_size, bar):
    state = guide.state_for(obs)

    def particle(weight):
        with PausingProposal(guide.network, guide.observe, guide._warned), weight:
            conditioned()

    for start, size in _chunks(len(draws.log_weights), chunk_size):
        weights = [LogWeight(observe=draws.names, record_priors=draws.record_priors) for _ in range(size)]
        with _validating(start == 0):
            lockstep([functools.partial(particle, w) for w in weights], Proposer(state, size).answer)
        draws.add(start, weights)
        bar.update(size)


def greedy(model, guide, observation, *, model_args=(), model_kwargs=None, stop_before=(), batch=True,
           chunk_size=256):
    """One pass of the guide taking each proposal's most probable value: ``{site: value}``, or
    for a list of observations, a list of them (one pass each, all advanced together).

    The fast read: no sampling, no weights.  Discrete sites take their proposal's
    mode; continuous ones the centre of its leading mixture component.

    :param observation: a tensor or dict site -> tensor, as :func:`infer` takes; or a list or
        tuple of them, read ``chunk_size`` at a time (one encoder call and one network step per
        address for each chunk).
    :param stop_before: a site name or names: the pass ends where the model reaches the first
        of them (``poutine.escape``), and returns the values drawn before it.  A read that needs
        only the early sites (the text drawn before the picture) skips the guide's steps and the model's work
        after them; each value drawn is the same as in the full pass.  ValueError naming them, and
        the sites the model did sample, if the pass ends without reaching any of them.
    :param batch: ``False`` reads one observation after another (the reference path).

    Every observation is checked as :func:`infer` checks it before any is read; one outside its
    site's support under the pass's values is a ValueError naming the site.
    """
    model_kwargs, many, observations, stops = bound_reads(model, guide, observation, model_args, model_kwargs,
                                                          stop_before)
    _positive_int("chunk_size", chunk_size)
    read = functools.partial(_greedy_pass, model, stops, guide.observe, model_args, model_kwargs)
    reads = []
    with torch.no_grad(), pyro.validation_enabled(False):
        for start in range(0, len(observations), chunk_size if batch else 1):
            chunk = observations[start:start + chunk_size] if batch else observations[start:start + 1]
            if not batch:
                with limited_threads():
                    reads.append(read(chunk[0], guide.messenger(chunk[0], greedy=True)))
                continue
            state = guide.states_for(chunk, start if many else None)  # one encoder call for the chunk, on torch's threads
            proposer = Proposer(state, len(chunk), per_observation=True, greedy=True)
            calls = [functools.partial(read, o, PausingProposal(guide.network, guide.observe, guide._warned))
                     for o in chunk]
            with limited_threads():  # the runs' small steps: extra threads only contend
                reads.extend(lockstep(calls, proposer.answer))
    return reads if many else reads[0]


def bound_reads(model, guide, observation, model_args, model_kwargs, stop_before):
    """What a read up to ``stop_before`` starts with: the guide bound to the model, and ``(model_kwargs as a
    dict, many: a list was given, the checked observations, the stop names)``."""
    model_kwargs = dict(model_kwargs or {})
    guide.bind_model(model, model_args, model_kwargs)
    many = isinstance(observation, (list, tuple))
    inputs = guide.encoded({}, model_args, model_kwargs, model)  # the guide's inputs from the call, if it has any
    observations = [{**guide.check_observation(o), **inputs} for o in (observation if many else [observation])]
    return model_kwargs, many, observations, _stop_names(stop_before)


def _stop_names(stop_before) -> frozenset:
    """``stop_before`` (a site name, names, or None) as a set of names; TypeError for anything else."""
    names = (stop_before,) if isinstance(stop_before, str) else () if stop_before is None else stop_before
    if not isinstance(names, (list, tuple, set, frozenset)) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"stop_before must be a site name or a list of site names, got {stop_before!r}")
    return frozenset(names)


def _greedy_pass(model, stops, observe, model_args, model_kwargs, obs, proposer) -> dict:
    """One greedy pass of ``model`` on observation ``obs`` under ``proposer``: ``{site: value}``."""
    lw = LogWeight(weigh=False, observe=observe)
    if not run_to_stop(model, obs, stops, (proposer, lw), model_args, model_kwargs) and stops:
        raise never_reached(stops, [*lw.values, *sorted(lw.observed)])
    return lw.values


def run_to_stop(model, obs, stops, handlers, model_args, model_kwargs) -> bool:
    """Run ``model`` conditioned on ``obs`` under ``handlers`` (entered in order, the first outermost) until it
    reaches a site named in ``stops`` (``poutine.escape``): True if it stopped there, False if it ran to its end."""
    run = poutine.condition(model, data=obs)
    if stops:
        run = poutine.escape(run, escape_fn=lambda msg: msg["name"] in stops)
    with contextlib.ExitStack() as stack:
        for handler in handlers:
            stack.enter_context(handler)
        try:
            run(*model_args, **model_kwargs)
        except NonlocalExit:
            return True
    return False


def never_reached(stops, sampled) -> ValueError:
    return ValueError(f"stop_before names {sorted(stops)}, but the model reached none of them: it sampled {list(sampled)}")
