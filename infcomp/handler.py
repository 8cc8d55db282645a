"""The guide's one effect: swap each latent site's prior for the network's proposal.

:class:`ProposalMessenger` steps the inference network through the addresses as
the model reaches them.  At a latent site it reads the prior (for the proposal's
context and support), replaces ``msg["fn"]`` with the proposal and keeps the
prior in ``msg["infer"]["prior"]``; once the value is drawn (or replayed) it is
fed back to the network.  Under ``poutine.trace`` the result is an ordinary Pyro
guide trace.
"""

from __future__ import annotations

import warnings

import torch
from pyro.poutine.messenger import Messenger

from .nn.proposals import unwrap
from .traces import check_consistent, is_latent, site_spec

__all__ = ["ProposalMessenger", "ObservationState"]


class ObservationState:
    """Per-observation work the network does once, not once per particle.

    Holds the observation's summary, each address's :class:`~infcomp.nn.network.StepTerms`,
    and the first address's proposal (its LSTM input depends on nothing but the observation).
    """

    def __init__(self, network, observation: dict, address_terms: dict):
        self.network = network
        self.observation = observation
        self.address_terms = address_terms  # address -> its AddressTerms, shared by all observations (the guide keeps it)
        with torch.no_grad():
            self.obs_e, self.attend = network.start(observation)
            self.obs_gates = network.observation_gates(self.obs_e)
            self.initial = network.initial_state(self.obs_e)
            self.w_prev = network.prev_weight()
        if not bool(torch.isfinite(self.obs_e).all()):
            raise ValueError(
                f"observation for site(s) {list(observation)} is too far from what the guide was trained on: "
                f"its encoding overflows (largest magnitude {_largest(observation):.3g}); it cannot be weighed with this guide"
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

    def step(self, hc, prev, name, context, first, greedy=False):
        """``(proposal or None, new LSTM state)`` at address ``name``; with ``greedy``, the
        proposal's point estimate in its place (taken from its parameters, never built)."""
        if first:
            f = self._first
            if f is not None and f[0] == name and f[4] == greedy and torch.equal(f[1], context):
                return f[2], f[3]
        params, hc = self.network.step(hc, prev, name, self.step_terms(name), self.w_prev, self.attend)
        out = None
        if params is not None and not bool(torch.isfinite(params).all()):
            raise ValueError(
                f"site {name!r}: the guide's proposal parameters are not finite for observation site(s) "
                f"{list(self.observation)} (largest magnitude {_largest(self.observation):.3g}): it cannot be weighed with this guide"
            )
        if params is not None:
            family = self.network.families[self.network.specs[name].family]
            out = family.point(params, context) if greedy else family.proposal(params, context)
        if first:
            self._first = (name, context, out, hc, greedy)
        return out, hc


def _largest(observation: dict) -> float:
    return max((float(v.double().abs().max()) if v.numel() else 0.0) for v in observation.values())


class ProposalMessenger(Messenger):
    def __init__(self, state: ObservationState, observe=(), warned=None, greedy=False):
        super().__init__()
        self.greedy = greedy  # take each proposal's point estimate instead of sampling it
        self.obs_state = state
        self.network = state.network
        self.observe = frozenset(observe)
        self.warned = warned if warned is not None else set()

    def __enter__(self):
        self.hc, self.prev = self.obs_state.initial
        self.first = True
        self._pending = {}
        self._last = None  # (address, value, context) not yet fed to the network
        return super().__enter__()

    def _pyro_sample(self, msg):
        name = msg["name"]
        if name in self.observe or not is_latent(msg):
            return
        spec = self.network.specs.get(name)
        fn = msg["fn"]
        if spec is None:
            if name not in self.warned:
                self.warned.add(name)
                warnings.warn(f"site {name!r} was never seen in training: it proposes from its prior", stacklevel=2)
            return
        base, event_dim = unwrap(fn)
        if (type(base).__name__ != spec.dist or tuple(fn.shape()) != spec.value_shape
                or (spec.num_categories and base.logits.shape[-1] != spec.num_categories)):
            check_consistent(spec, site_spec(name, fn, self.network.families))
        context = self.network.families[spec.family].context(base)
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
        msg["infer"]["prior"] = fn
        msg["fn"] = out.to_event(event_dim) if event_dim else out

    def _pyro_post_sample(self, msg):
        context = self._pending.pop(msg["name"], None)
        if context is not None:
            self._last = (msg["name"], msg["value"], context)
