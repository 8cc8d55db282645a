"""Importance sampling with a compiled guide (or the prior) as proposal.

For each particle the model runs once: latent sites draw from the proposal,
observed sites take the observation, and :class:`LogWeight` adds up
``log p(x, y) - log q(x | y)``, scaled and masked as Pyro's own traces are.
With the same seed this draws the same values, and so the same weights, as
``pyro.infer.Importance(pyro.condition(model, data=obs), guide.condition(obs))``.
"""

from __future__ import annotations

import contextlib

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
from .traces import is_latent, normalize_observe

__all__ = ["infer", "greedy", "LogWeight"]


def _log_prob(fn, msg):
    lp = fn.log_prob(msg["value"], *msg["args"], **msg["kwargs"])
    return scale_and_mask(lp, msg["scale"], msg["mask"]).sum()


class LogWeight(Messenger):
    """Accumulates one run's log importance weight and records its latent values
    (only the values with ``weigh=False``: a greedy read needs no weight)."""

    def __init__(self, weigh=True):
        super().__init__()
        self.weigh = weigh

    def __enter__(self):
        self.log_weight = 0.0
        self.values = {}
        self.observed = set()
        return super().__enter__()

    def _pyro_post_sample(self, msg):
        if msg["is_observed"]:
            self.observed.add(msg["name"])
            if self.weigh:
                self.log_weight = self.log_weight + _log_prob(msg["fn"], msg)
        elif is_latent(msg):
            self.values[msg["name"]] = msg["value"]
            prior = msg["infer"].get("prior")
            if prior is not None and self.weigh:  # proposed by the guide: w *= p(x) / q(x)
                self.log_weight = self.log_weight + _log_prob(prior, msg) - _log_prob(msg["fn"], msg)


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
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
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
        obs = observation if isinstance(observation, dict) else {names[0]: observation}
        for n, v in obs.items():
            if torch.is_tensor(v) and v.dtype.is_floating_point and bool(torch.isnan(v).any()):
                raise ValueError(f"observation for site {n!r} contains NaN")
    conditioned = poutine.condition(model, data=obs)
    # particles run one by one on small tensors: extra threads only contend
    with fork_rng(seed), limited_threads():
        return _importance(conditioned, guide, obs, names, num_samples, model_args, model_kwargs, progress)


def _importance(conditioned, guide, obs, names, num_samples, model_args, model_kwargs, progress):
    log_weights = torch.empty(num_samples, dtype=torch.float64)
    samples = {}
    weight = LogWeight()
    for i in tqdm(range(num_samples), disable=not progress, desc="importance sampling", unit="sample"):
        proposer = guide.messenger(obs) if guide is not None else contextlib.nullcontext()
        # Pyro's argument checks run on the first particle only: they would double the cost of cheap models
        with torch.no_grad(), pyro.validation_enabled(i == 0 and poutine.util.is_validation_enabled()), proposer, weight:
            conditioned(*model_args, **model_kwargs)
        if i == 0:
            missing = [n for n in names if n not in weight.observed]
            if missing:
                raise ValueError(f"the model does not observe site {missing[0]!r}: it never samples a site of that name")
        log_weights[i] = float(weight.log_weight)
        for name, value in weight.values.items():
            samples.setdefault(name, ([], []))
            samples[name][0].append(i)
            samples[name][1].append(value)
    packed = {n: (torch.tensor(idx), torch.stack(vals)) for n, (idx, vals) in samples.items()}
    return Posterior(log_weights, packed)


def greedy(model, guide, observation, *, model_args=(), model_kwargs=None, stop_before=()) -> dict:
    """One pass of the guide taking each proposal's most probable value: ``{site: value}``.

    The fast read: no sampling, no weights.  Discrete sites take their proposal's
    mode; continuous ones the centre of its leading mixture component.

    :param stop_before: a site name or names: the pass ends where the model reaches the first
        of them (``poutine.escape``), and returns the values drawn before it.  A read that needs
        only the early sites (the text drawn before the picture) skips the guide's steps and the model's work
        after them; each value drawn is the same as in the full pass.
    """
    model_kwargs = dict(model_kwargs or {})
    guide.bind_model(model, model_args, model_kwargs)
    obs = guide.check_observation(observation)
    names = (stop_before,) if isinstance(stop_before, str) else () if stop_before is None else stop_before
    if not isinstance(names, (list, tuple, set, frozenset)) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"stop_before must be a site name or a list of site names, got {stop_before!r}")
    stops = frozenset(names)
    run = poutine.condition(model, data=obs)
    if stops:
        run = poutine.escape(run, escape_fn=lambda msg: msg["name"] in stops)
    with limited_threads(), torch.no_grad(), pyro.validation_enabled(False), guide.messenger(obs, greedy=True), LogWeight(weigh=False) as lw:
        try:
            run(*model_args, **model_kwargs)
        except NonlocalExit:
            pass
    return lw.values
