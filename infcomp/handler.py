"""The guide's one effect: swap each latent site's prior for the network's proposal.

The network steps through the addresses as the model reaches them.  At a latent site it reads
the prior (for the proposal's context and support) and proposes the value; once the value is
drawn it is fed back to the network.  Two messengers do this:

* :class:`ProposalMessenger`, for one run of the model (a Pyro guide run, the sequential
  reference path of :func:`~infcomp.infer`): it replaces ``msg["fn"]`` with the proposal and
  keeps the prior in ``msg["infer"]["prior"]``.  Under ``poutine.trace`` the result is an
  ordinary Pyro guide trace.
* :class:`PausingProposal`, for many runs advanced together (:mod:`~infcomp.lockstep`): at a
  site it pauses its run, and a :class:`Proposer` steps the network once for all the runs
  paused at that address, draws their values from one batched proposal and hands each run its
  value and ``log q`` (``msg["infer"]["log_q"]``, the site's ``fn`` stays the prior).

The network may live on another device than the model (a guide on CUDA, a model on the CPU):
its parameters cross to the prior's device before a proposal is built from them, so that
proposals, values and densities stay where the model's tensors are, and what is fed back (a
value and its prior context) crosses to the network's.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from pyro.poutine import runtime
from pyro.poutine.messenger import Messenger

from .lockstep import pause
from .nn.network import Rows
from .nn.proposals import unwrap
from .stacking import stack_priors
from .traces import check_consistent, is_latent, site_spec

__all__ = ["ProposalMessenger", "PausingProposal", "Proposer", "ObservationState"]


class ObservationState:
    """Per-observation work the network does once, not once per particle, for ``O`` observations
    read together (``{site: [O, *shape]}``; one for an importance-sampling run).

    Holds the observations' summaries, each address's :class:`~infcomp.nn.network.StepTerms`,
    and, for one observation, the first address's proposal (its LSTM input depends on nothing
    but the observation).
    """

    def __init__(self, network, observations: dict, address_terms: dict, first_index=None):
        self.network = network
        self.observations = observations
        self.first_index = first_index  # the number of observation 0 in the caller's list, for errors (None: one observation)
        self.address_terms = address_terms  # address -> its AddressTerms, shared by all observations (the guide keeps it)
        with torch.no_grad():
            self.obs_e, self.attend = network.start(observations)
            self.obs_gates = network.observation_gates(self.obs_e)
            self.w_prev = network.prev_weight()
        bad = (~torch.isfinite(self.obs_e).all(-1)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"{self._which(bad[0])} for site(s) {list(observations)} is too far from what the guide was trained on: "
                f"its encoding overflows (largest magnitude {_largest(observations, bad[0]):.3g}); "
                "it cannot be weighed with this guide"
            )
        self._step_terms = {}
        self._first = None  # (name, context, proposal or point, lstm state, greedy)

    def step_terms(self, name):
        terms = self._step_terms.get(name)
        if terms is None:
            with torch.no_grad():
                a = self.address_terms.get(name)
                if a is None:
                    a = self.address_terms[name] = self.network.address_terms(name)
                terms = self._step_terms[name] = self.network.step_terms(self.obs_e, self.obs_gates, a, name)
        return terms

    def params(self, hc, prev, name, rows=None):
        """:meth:`~infcomp.nn.network.InferenceNetwork.step` for the rows ``hc``, ``prev``: ``(params
        [R, *S, P] or None, new state)``; ValueError naming the site if a parameter is not finite."""
        params, hc = self.network.step(hc, prev, name, self.step_terms(name), self.w_prev, self.attend, rows)
        if params is not None and not bool(torch.isfinite(params).all()):
            row = int((~torch.isfinite(params.reshape(len(params), -1))).any(-1).nonzero()[0])
            o = 0 if rows is None else int(rows.obs[row])
            raise ValueError(
                f"site {name!r}: the guide's proposal parameters are not finite for {self._which(o)} of site(s) "
                f"{list(self.observations)} (largest magnitude {_largest(self.observations, o):.3g}): "
                "it cannot be weighed with this guide"
            )
        return params, hc

    def _which(self, o):
        return "the observation" if self.first_index is None else f"observation {self.first_index + o}"

    def step(self, hc, prev, name, context, first, greedy=False):
        """One run's step: ``(proposal or None, new LSTM state)`` at address ``name``; with
        ``greedy``, the proposal's point estimate in its place (taken from its parameters, never built)."""
        if first:
            f = self._first
            if f is not None and f[0] == name and f[4] == greedy and torch.equal(f[1], context):
                return f[2], f[3]
        params, hc = self.params(hc, prev, name)
        out = None
        if params is not None:
            family = self.network.families[self.network.specs[name].family]
            params = params[0].to(context.device)  # the proposal lives where the model's values do
            out = family.point(params, context) if greedy else family.proposal(params, context)
        if first:
            self._first = (name, context, out, hc, greedy)
        return out, hc


def _largest(observations: dict, row: int = 0) -> float:
    return max((float(v[row].double().abs().max()) if v[row].numel() else 0.0) for v in observations.values())


def guided_site(msg, network, observe, warned):
    """``(prior, event_dim)`` of a latent site the guide proposes for (the prior under its
    ``Independent`` wrappers), or None (an observed or
    not latent site, or one never seen in training: it proposes from its prior, with a warning
    once).  ValueError where the site is no longer the address the guide was trained on."""
    name = msg["name"]
    if name in observe or not is_latent(msg):
        return None
    spec = network.specs.get(name)
    fn = msg["fn"]
    if spec is None:
        if name not in warned:
            warned.add(name)
            warnings.warn(f"site {name!r} was never seen in training: it proposes from its prior", stacklevel=3)
        return None
    base, event_dim = unwrap(fn)
    if (type(base).__name__ != spec.dist or tuple(fn.shape()) != spec.value_shape
            or (spec.num_categories and base.logits.shape[-1] != spec.num_categories)):
        check_consistent(spec, site_spec(name, fn, network.families))
    return base, event_dim


class ProposalMessenger(Messenger):
    def __init__(self, state: ObservationState, observe=(), warned=None, greedy=False):
        super().__init__()
        self.greedy = greedy  # take each proposal's point estimate instead of sampling it
        self.obs_state = state
        self.network = state.network
        self.observe = frozenset(observe)
        self.warned = warned if warned is not None else set()

    def __enter__(self):
        self.hc, self.prev = self.network.initial_state(self.obs_state.obs_e)
        self.first = True
        self._pending = {}
        self._last = None  # (address, value, context) not yet fed to the network
        return super().__enter__()

    def _pyro_sample(self, msg):
        site = guided_site(msg, self.network, self.observe, self.warned)
        if site is None:
            return
        name, (base, event_dim) = msg["name"], site
        context = self.network.families[self.network.specs[name].family].context(base)
        with torch.no_grad():
            if self._last is not None:
                self.prev = self.network.embed_value(*self._last)
                self._last = None
            out, self.hc = self.obs_state.step(self.hc, self.prev, name, context, self.first, self.greedy)
        self.first = False
        self._pending[name] = context
        if out is None:
            return
        if self.greedy:  # out is the point estimate; fn stays the prior, and nothing here is weighed
            msg["value"] = out
            return
        msg["infer"]["prior"] = msg["fn"]
        msg["fn"] = out.to_event(event_dim) if event_dim else out

    def _pyro_post_sample(self, msg):
        context = self._pending.pop(msg["name"], None)
        if context is not None:
            self._last = (msg["name"], msg["value"], context)


class Propose(NamedTuple):
    """A run paused at latent site ``name`` (its prior under the ``Independent`` wrappers) for its value."""

    name: str
    prior: object
    event_dim: int

    @property
    def key(self):
        return ("propose", self.name)


class Feed(NamedTuple):
    """A run paused after site ``name`` (an address without a head: the prior drew ``value``) to feed the value back."""

    name: str
    value: torch.Tensor
    prior: object

    @property
    def key(self):
        return ("feed", self.name)


class PausingProposal(Messenger):
    """One of many runs advanced together: pauses at each site the guide proposes for (a
    :class:`Propose` request) and takes the reply ``(value, log q, log p)`` (``log q`` None in a
    greedy read, ``log p`` None where the prior is weighed here, particle by particle), or None
    where the address has no head: the prior draws, and a :class:`Feed` request hands the value back."""

    def __init__(self, network, observe=(), warned=None):
        super().__init__()
        self.network = network
        self.observe = frozenset(observe)
        self.warned = warned if warned is not None else set()
        self._feed = {}

    def _pyro_sample(self, msg):
        site = guided_site(msg, self.network, self.observe, self.warned)
        if site is None:
            return
        if msg["value"] is not None:
            raise ValueError(
                f"site {msg['name']!r} already has a value, set by a handler inside the model: batched inference "
                "draws every latent site the guide knows (run infer with batch=False to weigh a value set there)"
            )
        reply = pause(Propose(msg["name"], *site))
        if reply is None:
            self._feed[msg["name"]] = site[0]
            return
        msg["value"], log_q, log_p = reply
        if log_q is not None:
            msg["infer"]["log_q"] = log_q
            if log_p is not None:
                msg["infer"]["log_p"] = log_p

    def _pyro_post_sample(self, msg):
        prior = self._feed.pop(msg["name"], None)
        if prior is not None:
            pause(Feed(msg["name"], msg["value"], prior))


class Proposer:
    """Answers the requests of ``num_rows`` runs with one network step per group (the ``answer``
    of :func:`~infcomp.lockstep.lockstep`); it keeps each run's LSTM state as a row.

    :param per_observation: ``k``: runs ``k i .. k i + k - 1`` read observation ``i`` of the state
        (``True``: one run each, a batched read of many observations); ``0`` or ``False``: every run
        reads the state's one observation.
    :param greedy: reply with the proposals' point estimates (and no ``log q``).
    :param greedy_first: with ``per_observation``, the first run of each observation takes the point
        estimates and the others sample; every reply has its ``log q`` (the proposal's density at
        the value, the point estimate's included).

    ValueError unless ``per_observation`` is a non-negative int (or bool) whose rows cover the
    state's observations exactly, and where ``greedy`` and ``greedy_first`` are both asked for.
    """

    def __init__(self, state: ObservationState, num_rows: int, *, per_observation=False, greedy=False,
                 greedy_first=False):
        self.state = state
        self.network = state.network
        self.greedy = greedy
        k = per_observation
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"per_observation must be a non-negative int, got {k!r}")
        if k and num_rows != int(k) * len(state.obs_e):
            raise ValueError(f"{num_rows} rows are not {int(k)} for each of the state's {len(state.obs_e)} observations")
        if greedy_first and (not k or greedy):
            raise ValueError("greedy_first needs per_observation, and not greedy: the first run of each observation is greedy")
        self.per_observation = int(k)
        self.greedy_first = greedy_first
        hc, self.prev = self.network.initial_state(state.obs_e, num_rows)
        self.hc = [(h.clone(), c.clone()) for h, c in hc]

    def answer(self, key, ids, requests) -> list:
        with torch.no_grad():
            kind, name = key
            idx = torch.tensor(ids, device=self.prev.device)
            family = self.network.families[self.network.specs[name].family]
            priors = [r.prior for r in requests]
            stacked = stack_priors(priors)
            context = family.context(stacked) if stacked is not None else torch.stack([family.context(p) for p in priors])
            if kind == "feed":
                self.prev[idx] = self.network.embed_value(name, torch.stack([r.value for r in requests]), context)
                return [None] * len(ids)
            return self._propose(name, family, idx, context, stacked, requests[0].event_dim)

    def _propose(self, name, family, idx, context, stacked, event_dim):
        k = self.per_observation
        rows = Rows(idx // k, idx % k, k) if k else None
        params, new = self.state.params([(h[idx], c[idx]) for h, c in self.hc], self.prev[idx], name, rows)
        for (h, c), (h_new, c_new) in zip(self.hc, new):
            h[idx], c[idx] = h_new, c_new
        if params is None:  # no head: the runs' priors draw
            return [None] * len(idx)
        params = params.to(context.device)  # the proposal lives where the model's values do
        none = [None] * len(idx)
        if self.greedy:
            values, log_q, log_p = family.point(params, context), none, none
        else:
            proposal = _transformed(name, family.proposal(params, context))
            values = proposal.sample()
            if self.greedy_first:
                first = (rows.slot == 0).to(values.device)
                if bool(first.any()):
                    point = family.point(params, context).to(values.dtype)
                    values = torch.where(first.reshape((-1,) + (1,) * (values.dim() - 1)), point, values)
            log_q = _rows(_sum_events(proposal.log_prob(values), event_dim))
            log_p = none if stacked is None else _rows(_sum_events(stacked.log_prob(values), event_dim))
        self.prev[idx] = self.network.embed_value(name, values, context)
        return list(zip(values.unbind(0), log_q, log_p))


def _rows(log_prob):
    """Each row of ``[R, *batch]``: a float where the site has no batch dims (nothing left to sum or mask), else a tensor."""
    return log_prob.tolist() if log_prob.dim() == 1 else log_prob.unbind(0)


def _transformed(name, proposal):
    """``proposal`` passed through each handler on the Pyro stack that transforms proposals
    (``transform_proposal(name, proposal)``: :class:`~infcomp.temper.TemperMessenger`), in the
    order a site passes through them."""
    for handler in reversed(runtime._PYRO_STACK):
        transform = getattr(handler, "transform_proposal", None)
        if transform is not None:
            proposal = transform(name, proposal)
    return proposal


def _sum_events(log_prob, event_dim):
    """``[R, *batch, *event]`` -> ``[R, *batch]``: the site's event dims summed, as ``Independent`` does."""
    return log_prob.reshape(log_prob.shape[: log_prob.dim() - event_dim] + (-1,)).sum(-1) if event_dim else log_prob
