"""The inference network: an LSTM that steps through a trace's addresses.

At step ``t`` its input is the observation embedding, an embedding of the value
sampled at step ``t-1``, and embeddings of address ``t`` and of its proposal
family; its output feeds address ``t``'s proposal head.  Every address owns a
small :class:`SiteModule` (address embedding, value embedding, head), created
the first time the address is met; :meth:`InferenceNetwork.add_site` returns the
new parameters so the optimiser can take them on without losing its state.

Training (:meth:`log_q`) runs a whole :class:`~infcomp.data.Batch`: one LSTM call
per structure, and per group of same-signature addresses one batched matmul for
their value embeddings and two for their heads (weights stacked on the fly).
Inference (:meth:`start`, :meth:`propose`, :meth:`feed`) runs one address at a time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..traces import SiteSpec
from .embeddings import ObservationEmbedding
from .proposals import FAMILY_NAMES, make_families

__all__ = ["NetworkConfig", "SiteModule", "InferenceNetwork"]


@dataclass
class NetworkConfig:
    obs_dim: int = 128
    value_dim: int = 32
    address_dim: int = 32
    family_dim: int = 8
    hidden: int = 128
    layers: int = 1
    head_hidden: int = 64
    mixture_components: int = 3

    def to_dict(self):
        return asdict(self)


class SiteModule(nn.Module):
    """Everything the network owns for one address."""

    def __init__(self, spec: SiteSpec, family, cfg: NetworkConfig):
        super().__init__()
        self.address = nn.Parameter(torch.randn(cfg.address_dim) * 0.1)
        self.value = nn.Linear(family.feature_size(spec), cfg.value_dim)
        self.has_head = family.has_head
        if family.has_head:
            n_out = max(1, math.prod(spec.value_shape)) * family.num_params(spec)
            self.head1 = nn.Linear(cfg.hidden, cfg.head_hidden)
            self.head2 = nn.Linear(cfg.head_hidden, n_out)
            family.init_head(self.head2, spec)


def stacked_linear(x, layers):
    """Apply ``layers[i]`` to ``x[i]`` for every ``i`` in one batched matmul: ``[g, B, in] -> [g, B, out]``."""
    if len(layers) == 1:
        return F.linear(x, layers[0].weight, layers[0].bias)
    w = torch.stack([l.weight for l in layers])
    b = torch.stack([l.bias for l in layers])
    return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))


class InferenceNetwork(nn.Module):
    def __init__(self, obs_specs: dict, cfg: NetworkConfig | None = None, embedding: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg or NetworkConfig()
        self.obs_specs = dict(obs_specs)
        self.families = make_families(self.cfg.mixture_components)
        self.embed = ObservationEmbedding(self.obs_specs, self.cfg.obs_dim, embedding)
        self.family_embedding = nn.Embedding(len(FAMILY_NAMES), self.cfg.family_dim)
        c = self.cfg
        self.lstm = nn.LSTM(self.embed.dim + c.value_dim + c.address_dim + c.family_dim, c.hidden, c.layers)
        self.sites = nn.ModuleDict()
        self.specs: dict[str, SiteSpec] = {}
        self._keys: dict[str, str] = {}
        self._plans = {}

    # -- the address table ------------------------------------------------------
    def add_site(self, spec: SiteSpec) -> list:
        """Give a new address its module; returns its parameters (for the optimiser)."""
        if spec.name in self.specs:
            raise ValueError(f"site {spec.name!r} already has a head")
        key = str(len(self.sites))
        module = SiteModule(spec, self.families[spec.family], self.cfg)
        module.to(self.family_embedding.weight.device)
        self.sites[key] = module
        self._keys[spec.name] = key
        self.specs[spec.name] = spec
        return list(module.parameters())

    def site(self, name) -> SiteModule:
        return self.sites[self._keys[name]]

    def _plan(self, addresses, groups):
        plan = self._plans.get(addresses)
        if plan is None:
            order = [p for g in groups for p in g.positions]
            inverse = torch.empty(len(order), dtype=torch.long)
            inverse[torch.tensor(order)] = torch.arange(len(order))
            fam = torch.tensor([FAMILY_NAMES.index(self.specs[a].family) for a in addresses])
            mods = [self.site(a) for a in addresses]
            plan = self._plans[addresses] = (inverse, fam, mods)
        return plan

    def _lstm_input(self, obs_e, prev, mods, fam):
        T, B = prev.shape[:2]
        addr = torch.stack([m.address for m in mods]).unsqueeze(1).expand(T, B, -1)
        fam_e = self.family_embedding(fam.to(obs_e.device)).unsqueeze(1).expand(T, B, -1)
        return torch.cat([obs_e.unsqueeze(0).expand(T, B, -1), prev, addr, fam_e], -1)

    # -- training ---------------------------------------------------------------
    def log_q(self, batch) -> torch.Tensor:
        """``log q(latents | observation)`` of every trace in the batch: ``[B]``."""
        obs_all = self.embed(batch.observation)
        out = obs_all.new_zeros(batch.size)
        for sb in batch.structures:
            if not sb.addresses:
                continue
            inverse, fam, mods = self._plan(sb.addresses, sb.groups)
            obs_e = obs_all[sb.index]
            B = obs_e.shape[0]
            embs, specs = [], []
            for g in sb.groups:
                spec = self.specs[sb.addresses[g.positions[0]]]
                feats = self.families[spec.family].features(g.values, g.contexts, spec)
                embs.append(stacked_linear(feats, [mods[p].value for p in g.positions]))
                specs.append(spec)
            emb = torch.cat(embs)[inverse.to(obs_e.device)]
            prev = torch.cat([emb.new_zeros((1,) + emb.shape[1:]), emb[:-1]])
            h, _ = self.lstm(self._lstm_input(obs_e, prev, mods, fam))
            total = obs_e.new_zeros(B)
            for g, spec in zip(sb.groups, specs):
                family = self.families[spec.family]
                if not family.has_head:
                    continue
                heads = [mods[p] for p in g.positions]
                hg = h[list(g.positions)]
                z = F.relu(stacked_linear(hg, [m.head1 for m in heads]))
                params = stacked_linear(z, [m.head2 for m in heads])
                params = params.reshape(params.shape[:2] + spec.value_shape + (family.num_params(spec),))
                lp = family.log_prob(params, g.contexts, g.values)
                total = total + lp.reshape(lp.shape[0], B, -1).sum((0, 2))
            out = out.index_add(0, sb.index, total)
        return out

    # -- inference, one address at a time ----------------------------------------
    def start(self, observation: dict):
        """The state before the first address: ``(observation embedding, lstm state, previous value embedding)``."""
        obs_e = self.embed({k: v.unsqueeze(0) for k, v in observation.items()})
        return obs_e, None, obs_e.new_zeros(1, 1, self.cfg.value_dim)

    def propose(self, state, name, context):
        """Step the LSTM at address ``name``; returns ``(proposal over the value, new lstm state)``."""
        obs_e, hc, prev = state
        spec = self.specs[name]
        module = self.site(name)
        fam = torch.tensor([FAMILY_NAMES.index(spec.family)], device=obs_e.device)
        x = self._lstm_input(obs_e, prev, [module], fam)
        h, hc = self.lstm(x, hc)
        family = self.families[spec.family]
        if not family.has_head:
            return None, hc
        params = module.head2(F.relu(module.head1(h[0, 0])))
        params = params.reshape(spec.value_shape + (family.num_params(spec),))
        return family.proposal(params, context), hc

    def feed(self, state, hc, name, value, context):
        """The state after address ``name`` took ``value``."""
        spec = self.specs[name]
        feats = self.families[spec.family].features(value, context, spec)
        prev = self.site(name).value(feats.reshape(1, 1, -1))
        return state[0], hc, prev
