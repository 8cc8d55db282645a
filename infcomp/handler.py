"""The guide's one effect: swap each latent site's prior for the network's proposal.

:class:`ProposalMessenger` steps the inference network through the addresses
as the model reaches them.  At a latent site it reads the prior (for the
proposal's context and support), replaces ``msg["fn"]`` with the proposal and
keeps the prior in ``msg["infer"]["prior"]``; once the value is drawn (or
replayed) it feeds the value back to the network.  Under ``poutine.trace`` the
result is an ordinary Pyro guide trace.
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

    Holds the observation's embedding and, for the first address of a trace (whose
    LSTM input depends on nothing but the observation), the proposal itself.
    """

    def __init__(self, network, observation: dict):
        self.network = network
        self.observation = observation
        with torch.no_grad():
            self.start = network.start(observation)
        self._first = None  # (name, context, proposal, lstm state)

    def first_step(self, name, context):
        f = self._first
        if f is not None and f[0] == name and torch.equal(f[1], context):
            return f[2], f[3]
        with torch.no_grad():
            proposal, hc = self.network.propose(self.start, name, context)
        self._first = (name, context, proposal, hc)
        return proposal, hc


class ProposalMessenger(Messenger):
    def __init__(self, state: ObservationState, observe=(), warned=None):
        super().__init__()
        self.obs_state = state
        self.network = state.network
        self.observe = frozenset(observe)
        self.warned = warned if warned is not None else set()

    def __enter__(self):
        self.state = self.obs_state.start
        self.first = True
        self._pending = {}
        self._last = None  # the latest (lstm state, address, value, context), fed to the network lazily
        return super().__enter__()

    def _advance(self):
        if self._last is not None:
            hc, name, value, context = self._last
            self.state = self.network.feed(self.state, hc, name, value, context)
            self._last = None

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
        if type(base).__name__ != spec.dist or tuple(fn.shape()) != spec.value_shape:
            check_consistent(spec, site_spec(name, fn))
        context = self.network.families[spec.family].context(base)
        with torch.no_grad():
            if self.first:
                proposal, hc = self.obs_state.first_step(name, context)
            else:
                self._advance()
                proposal, hc = self.network.propose(self.state, name, context)
        self.first = False
        self._pending[name] = (hc, context)
        if proposal is not None:
            msg["infer"]["prior"] = fn
            msg["fn"] = proposal.to_event(event_dim) if event_dim else proposal

    def _pyro_post_sample(self, msg):
        pending = self._pending.pop(msg["name"], None)
        if pending is not None:
            hc, context = pending
            self._last = (hc, msg["name"], msg["value"], context)
