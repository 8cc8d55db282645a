"""The guide's own marginal over the sites a model draws first: ``q(x_1 .. x_k | y)``.

A guide proposes the sites in the order the model draws them, so the probability it gives the
values of the sites drawn before some site (``stop_before``) is exact: the product of its
proposals' probabilities at those sites along the run, whatever it would propose after them.
Where those sites are discrete and the quantity of interest is a function of them alone (a
quantity the model draws before its nuisance sites), this is the guide's posterior over that
quantity with every later site marginalised, computed exactly, with no importance weights and
without running the rest of the model.

Why trust it: the guide is trained to minimise ``E_p(x, y)[-log q(x | y)]``, whose terms at these
sites are the cross-entropy of ``q(x_1..k | y)`` against the model's posterior ``p(x_1..k | y)``,
a strictly proper scoring rule.  To the extent training converged, the probabilities are
calibrated on observations drawn from the model (:mod:`~infcomp.diagnostics` checks it).  What
it assumes: the observation comes from the model, and the guide's network fits it as it fits the
model's own draws.  The importance-weighted posterior (:func:`~infcomp.infer`) needs no trained
network to be right in the limit, but where the likelihood is sharp and later sites cannot be
inferred from the observation, its weights rest on one particle and the probabilities it states
are over-confident at any affordable number of particles.

Which values are found: per observation, the guide's greedy pass and ``num_samples - 1`` draws
from it; each distinct set of values gets its exact probability.  A function's probability sums
its sets found, a lower bound on its marginal under the guide that is exact once every set that
maps to it is found (always, where the function is one to one).  ``found``, the mass of every set
found, bounds what any value not listed can have: at most ``1 - found``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import pyro
import torch
from pyro.poutine.messenger import Messenger

from .handler import PausingProposal, Proposer
from .infer import _positive_int, bound_reads, never_reached, run_to_stop
from .lockstep import lockstep
from .rng import fork_rng
from .threads import limited_threads
from .traces import is_latent

__all__ = ["guide_marginal", "GuideMarginal"]


@dataclass
class GuideMarginal:
    """The guide's probabilities of the values found for one observation.

    ``probabilities``: ``{value: probability}``, most probable first (``value`` is the
    function's, or the tuple of the sites' values); ``found``: their total, in ``[0, 1]``;
    ``num_distinct``: how many distinct sets of site values were found.
    """

    probabilities: dict
    found: float
    num_distinct: int

    @property
    def top(self):
        """``(value, probability)`` of the most probable value found."""
        return next(iter(self.probabilities.items()))


class _LogProposal(Messenger):
    """Records a run's latent values up to the stop and adds up ``log q`` of each (the proposal's,
    or the prior's where the prior drew), unscaled: a probability; ValueError naming a continuous
    or masked site (a masked element has no probability to give)."""

    def __enter__(self):
        self.values, self.log_q = {}, 0.0
        return super().__enter__()

    def _pyro_post_sample(self, msg):
        if not is_latent(msg):
            return
        if not msg["fn"].support.is_discrete:
            raise ValueError(
                f"site {msg['name']!r} is continuous ({type(msg['fn']).__name__}), and the guide's marginal is over "
                "discrete sites only: stop before it (stop_before=) or read it with infer"
            )
        if msg["mask"] is not None and not bool(torch.as_tensor(msg["mask"]).all()):
            raise ValueError(f"site {msg['name']!r} is masked: the guide's marginal needs every element's probability")
        log_q = msg["infer"].get("log_q")
        if log_q is None:  # no head: the prior drew
            log_q = msg["fn"].log_prob(msg["value"], *msg["args"], **msg["kwargs"])
        self.log_q += float(torch.as_tensor(log_q).sum())
        self.values[msg["name"]] = msg["value"]


def _key(values: dict) -> tuple:
    return tuple((name, tuple(v.reshape(-1).tolist()) if torch.is_tensor(v) else v) for name, v in values.items())


def guide_marginal(model, guide, observation, *, stop_before, function=None, num_samples=64, seed=None,
                   model_args=(), model_kwargs=None, chunk_size=4096):
    """The guide's marginal over the discrete sites ``model`` draws before ``stop_before`` (see the
    module's docstring): a :class:`GuideMarginal`, or for a list of observations a list of them.

    :param stop_before: a site name or names, as :func:`~infcomp.greedy` takes: the runs end there.
    :param function: ``function({site: value}) -> hashable``, e.g. the text the sites spell;
        without it the values are tuples ``((site, value), ...)``.
    :param num_samples: runs per observation (the first is the greedy pass), a positive int.
    :param chunk_size: runs advanced together; an observation's runs are never split across chunks,
        so a chunk holds ``num_samples`` runs where that is more.
    :param seed: as :func:`~infcomp.infer`'s.

    Observations are checked as :func:`~infcomp.infer` checks them before any run (finite, of the
    shape the guide was trained on); the runs end before the model weighs them.  ValueError
    naming the site if a continuous or masked site comes before the stop, and naming the stop if
    the model never reaches it.
    """
    model_kwargs, many, observations, stops = bound_reads(model, guide, observation, model_args, model_kwargs,
                                                          stop_before)
    if not stops:
        raise ValueError("stop_before names no site: the guide's marginal is over the sites drawn before it")
    _positive_int("num_samples", num_samples)
    _positive_int("chunk_size", chunk_size)
    run = functools.partial(_prefix_run, model, stops, guide, model_args, model_kwargs)
    per_chunk = max(1, chunk_size // num_samples)
    out = []
    with fork_rng(seed), torch.no_grad(), pyro.validation_enabled(False):
        for start in range(0, len(observations), per_chunk):
            chunk = observations[start:start + per_chunk]
            state = guide.states_for(chunk, start if many else None)
            proposer = Proposer(state, len(chunk) * num_samples, per_observation=num_samples, greedy_first=True)
            calls = [functools.partial(run, o) for o in chunk for _ in range(num_samples)]
            with limited_threads():
                runs = lockstep(calls, proposer.answer)
            out.extend(_marginal(runs[i:i + num_samples], function) for i in range(0, len(runs), num_samples))
    return out if many else out[0]


def _prefix_run(model, stops, guide, model_args, model_kwargs, obs):
    """One run of ``model`` on ``obs`` up to the first of ``stops``: its :class:`_LogProposal`."""
    record = _LogProposal()
    handlers = (PausingProposal(guide.network, guide.observe, guide._warned), record)
    if not run_to_stop(model, obs, stops, handlers, model_args, model_kwargs):
        raise never_reached(stops, record.values)
    return record


def _marginal(records, function) -> GuideMarginal:
    distinct = {}
    for r in records:
        distinct.setdefault(_key(r.values), r)
    probabilities = {}
    for key, r in distinct.items():
        value = key if function is None else function(r.values)
        probabilities[value] = probabilities.get(value, 0.0) + math.exp(r.log_q)
    ranked = dict(sorted(probabilities.items(), key=lambda kv: -kv[1]))
    return GuideMarginal(ranked, min(1.0, sum(ranked.values())), len(distinct))  # min: the sum's rounding alone
