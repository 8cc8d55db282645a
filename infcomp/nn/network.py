"""The inference network: an LSTM that steps through a trace's addresses.

At step ``t`` its input is the observation embedding, an embedding of the value
sampled at step ``t-1``, and embeddings of address ``t`` and of its proposal
family.  Its output, beside the observation embedding again (a skip connection
that lets heads extrapolate linearly in the observation, past the LSTM's
saturating gates), feeds address ``t``'s proposal head.  Every address owns a
small :class:`SiteModule` (address embedding, value embedding, head), made the
first time the address is met; :meth:`InferenceNetwork.add_site` returns the new
parameters so the optimiser takes them on without losing its state.  Addresses
that differ only in their numbers and share a signature (``letter_0``,
``letter_1``, ...: see :func:`head_key`) share one value embedding and one head,
as a sequence model shares its output layer across positions; each keeps its own
address embedding and attention query, so the head still knows where it is.

Training (:meth:`log_q`) runs a whole :class:`~infcomp.data.Batch` in one LSTM
call: traces of every structure are laid side by side, padded at the end (the
LSTM is causal, so padding never reaches a real step).  Per site group, each
address's own weights apply in one batched matmul over an ``[addresses, slots]``
layout.  Inference (:meth:`start`, :meth:`constants`, :meth:`step`) runs one
address at a time, with the parts of the LSTM input that depend only on the
observation and the address folded into per-address constants.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..traces import SiteSpec
from .balance import GradientBalancer
from .embeddings import CNNEmbedding, ObservationEmbedding
from .proposals import FAMILY_NAMES, make_families

__all__ = ["NetworkConfig", "SiteModule", "InferenceNetwork", "head_key"]


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
    balance_gradients: bool = True  # see infcomp.nn.balance
    conv_norm: bool = True  # GroupNorm after each convolution of the image embedding
    conv_channels: tuple = CNNEmbedding.CHANNELS  # the image embedding's channels, first convolution to last
    share_heads: bool = True  # addresses with equal head_key share value embedding and head
    memory_columns: int = CNNEmbedding.COLUMNS  # image columns attention reads (0: the CNN's own, width / 8)
    column_pixels: int = CNNEmbedding.STRIDE  # pixels per image column: 8, or 4 (the last stride-2 convolution keeps the width)
    conv_refine: bool = True  # a fourth convolution (last channels, stride 1) before the image columns are pooled
    column_rnn: int = 32  # if > 0, a bidirectional GRU this wide per direction runs along the columns (see Attention)

    def to_dict(self):
        return asdict(self)

    def differences(self, config) -> list:
        """``[(field, this config's value, config's)]`` for each field that ``config`` (a NetworkConfig
        or dict of fields) sets to another value; a list and a tuple of the same items are equal.
        ValueError for a field NetworkConfig does not have."""
        have = asdict(self)
        wanted = config if isinstance(config, dict) else asdict(config)

        def plain(v):
            return tuple(v) if isinstance(v, list) else v

        unknown = [key for key in wanted if key not in have]
        if unknown:
            raise ValueError(f"config: NetworkConfig has no field {unknown[0]!r}")
        return [(key, have[key], value) for key, value in wanted.items() if plain(value) != plain(have[key])]


def head_key(spec: SiteSpec) -> tuple:
    """Addresses with equal keys share a value embedding and a proposal head: names equal but for
    their numbers (``letter_0``, ``letter_1``; ``x[2]``, ``x[3]``) and equal signatures."""
    return re.sub(r"\d+", "#", spec.name), spec.signature


class SiteModule(nn.Module):
    """Everything the network keeps for one address; with ``like``, the value embedding and head
    are that module's (shared), and only the address embedding and query are this address's own."""

    def __init__(self, spec: SiteSpec, family, cfg: NetworkConfig, obs_dim: int, memory_dim: int = 0, like=None):
        super().__init__()
        self.address = nn.Parameter(torch.randn(cfg.address_dim) * 0.1)
        if memory_dim:  # where this address looks in the image, before the LSTM state refines it
            self.query = nn.Parameter(torch.randn(Attention.DIM) * 0.1)
        self.has_head = family.has_head
        if like is not None:
            self.value = like.value
            if family.has_head:
                self.head1, self.head2 = like.head1, like.head2
            return
        self.value = nn.Linear(family.feature_size(spec), cfg.value_dim)
        if family.has_head:
            n_out = max(1, math.prod(spec.value_shape)) * family.num_params(spec)
            self.head1 = nn.Linear(cfg.hidden + obs_dim + memory_dim, cfg.head_hidden)
            self.head2 = nn.Linear(cfg.head_hidden, n_out)
            family.init_head(self.head2, spec)


class Attention(nn.Module):
    """Each step reads the image's columns with a query from the LSTM state (dot-product attention).

    What an address depends on sits at different places in different images; attention lets
    its head look there instead of decoding it from one global summary of the image.

    With ``column_rnn``, a bidirectional GRU runs along the columns first and each column's key
    sees what lies left and right of it (as in attention-based text recognisers: CNN, then a
    BiLSTM over columns, then attention), so a key can say "the third glyph from the left",
    not only "column 7"; what a step reads (the value) is still the column itself.  Ten-minute
    compiles from scratch, 32 per direction against none at the same step counts: wikipedia
    validation loss 21.4 against 24.2 nats, characters read 32.6% against 23.9%; baidu2011 greedy
    54.6% against 50.3%, its middle letters gaining most.  After an hour wikipedia's two are level
    (73.5% against 73.2% of characters; ``benchmarks/README.md``): it speeds up early learning.
    """

    DIM = 64

    def __init__(self, hidden, memory_dim, memory_len, dim=DIM, column_rnn=0):
        super().__init__()
        self.columns = nn.GRU(memory_dim, column_rnn, batch_first=True, bidirectional=True) if column_rnn else None
        self.key = nn.Linear(memory_dim + 2 * column_rnn, dim)
        self.position = nn.Parameter(torch.randn(memory_len, dim) * 0.1)
        self.query = nn.Linear(hidden, dim)
        self.scale = dim**-0.5

    def keys(self, memory):
        if self.columns is not None:
            memory = torch.cat([memory, self.columns(memory)[0]], -1)
        return self.key(memory) + self.position

    def read(self, h, address_query, keys, memory, trace=None, slot=None, num_slots=1):
        """``h [R, H]`` and ``address_query [R, d]`` read image columns ``keys [B, L, d]``,
        ``memory [B, L, M]`` -> context ``[R, M]``.

        Row ``r`` reads image ``trace[r]`` (without ``trace``, image ``r``).  The rows are set on a
        ``[B, num_slots]`` grid at ``(trace, slot)`` (each cell at most once), so all of them take
        two batched matmuls and no image's columns are copied per row.
        """
        q = self.query(h) + address_query
        if trace is None:
            grid = q.unsqueeze(1)
        else:
            grid = q.new_zeros(keys.shape[0], num_slots, q.shape[-1]).index_put((trace, slot), q)
        scores = torch.bmm(grid, keys.transpose(1, 2)) * self.scale
        context = torch.bmm(torch.softmax(scores, -1), memory)
        return context[:, 0] if trace is None else context[trace, slot]


def grouped_linear(x, layers, address, slot, num_slots):
    """Row ``r`` of ``x`` through ``layers[address[r]]``: ``[R, in] -> [R, out]``, one batched matmul."""
    if all(l is layers[0] for l in layers):  # one address, or addresses sharing their head
        return F.linear(x, layers[0].weight, layers[0].bias)
    w = torch.stack([l.weight for l in layers])  # [U, out, in]
    b = torch.stack([l.bias for l in layers])  # [U, out]
    grid = x.new_zeros(len(layers), num_slots, x.shape[-1]).index_put((address, slot), x)
    out = torch.baddbmm(b.unsqueeze(1), grid, w.transpose(1, 2))
    return out[address, slot]


class InferenceNetwork(nn.Module):
    def __init__(self, obs_specs: dict, cfg: NetworkConfig | None = None, embedding: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg or NetworkConfig()
        self.obs_specs = dict(obs_specs)
        self.families = make_families(self.cfg.mixture_components)
        c = self.cfg
        cnn = dict(channels=c.conv_channels, columns=c.memory_columns, norm=c.conv_norm, column_pixels=c.column_pixels,
                   refine=c.conv_refine)
        self.embed = ObservationEmbedding(self.obs_specs, c.obs_dim, embedding, cnn)
        self.family_embedding = nn.Embedding(len(FAMILY_NAMES), c.family_dim)
        self.lstm = nn.LSTM(self.embed.dim + c.value_dim + c.address_dim + c.family_dim, c.hidden, c.layers)
        m = self.embed.memory_dim
        if c.column_rnn < 0:
            raise ValueError(f"column_rnn must be 0 (no GRU along the columns) or a positive width, got {c.column_rnn}")
        self.attention = Attention(c.hidden, m, self.embed.memory_len, column_rnn=c.column_rnn) if m else None
        self.sites = nn.ModuleDict()
        self.balancer = GradientBalancer() if c.balance_gradients else None
        self.specs: dict[str, SiteSpec] = {}
        self._keys: dict[str, str] = {}
        self._first: dict[tuple, str] = {}  # head_key -> the address whose head the others share

    # -- the address table ------------------------------------------------------
    def add_site(self, spec: SiteSpec) -> list:
        """Give a new address its module; returns its parameters (for the optimiser)."""
        if spec.name in self.specs:
            raise ValueError(f"site {spec.name!r} already has a head")
        key = str(len(self.sites))
        like = self._shares_with(spec)
        module = SiteModule(spec, self.families[spec.family], self.cfg, self.embed.dim, self.embed.memory_dim, like)
        module.to(self.family_embedding.weight.device)
        self.sites[key] = module
        self._keys[spec.name] = key
        self.specs[spec.name] = spec
        self._first.setdefault(head_key(spec), spec.name)
        return self.own_parameters(spec.name)

    def site(self, name) -> SiteModule:
        return self.sites[self._keys[name]]

    def _shares_with(self, spec: SiteSpec):
        """The module of an earlier address whose value embedding and head ``spec``'s address shares, or None."""
        first = self._first.get(head_key(spec)) if self.cfg.share_heads else None
        return None if first is None or first == spec.name else self.site(first)

    def own_parameters(self, name) -> list:
        """The parameters address ``name`` brought; what it shares belongs to the address met first."""
        like = self._shares_with(self.specs[name])
        shared = set() if like is None else {id(p) for p in like.parameters()}
        return [p for p in self.site(name).parameters() if id(p) not in shared]

    # -- training ---------------------------------------------------------------
    def log_q(self, batch) -> torch.Tensor:
        """``log q(latents | observation)`` of every trace in the batch: ``[B]``."""
        obs_e, memory = self.embed(batch.observation)
        B = batch.size
        T = int(batch.lengths.max()) if B else 0
        if T == 0:
            return obs_e.new_zeros(B)
        cur, prev, where, after = [], [], [], []
        for g in batch.groups:
            spec = self.specs[g.names[0]]
            mods = [self.site(n) for n in g.names]
            feats = self.families[spec.family].features(g.values, g.contexts, spec)
            prev.append(grouped_linear(feats, [m.value for m in mods], g.address, g.slot, g.num_slots))
            fam = self.family_embedding.weight[FAMILY_NAMES.index(spec.family)]
            addr = torch.stack([m.address for m in mods])[g.address]
            cur.append(torch.cat([addr, fam.expand(len(g.address), -1)], -1))
            where.append((g.step, g.trace))
            after.append(g.step + 1 < T)
        step = torch.cat([w[0] for w in where])
        trace = torch.cat([w[1] for w in where])
        keep = torch.cat(after)
        cur, prev = torch.cat(cur), torch.cat(prev)
        x_cur = cur.new_zeros(T, B, cur.shape[-1]).index_put((step, trace), cur)
        x_prev = prev.new_zeros(T, B, prev.shape[-1]).index_put((step[keep] + 1, trace[keep]), prev[keep])
        x = torch.cat([obs_e.unsqueeze(0).expand(T, B, -1), x_prev, x_cur], -1)
        h, _ = self.lstm(x)
        keys = None if self.attention is None else self.attention.keys(memory)
        out = obs_e.new_zeros(B)
        for g in batch.groups:
            spec = self.specs[g.names[0]]
            family = self.families[spec.family]
            if not family.has_head:
                continue
            mods = [self.site(n) for n in g.names]
            hg = h[g.step, g.trace]
            seen = obs_e[g.trace]
            if keys is not None:
                query = torch.stack([m.query for m in mods])[g.address]
                seen = torch.cat([seen, self.attention.read(hg, query, keys, memory, g.trace, g.step, T)], -1)
            if self.balancer is not None:
                seen = self.balancer(seen, g.signature)
            z = torch.cat([hg, seen], -1)
            z = F.relu(grouped_linear(z, [m.head1 for m in mods], g.address, g.slot, g.num_slots))
            params = grouped_linear(z, [m.head2 for m in mods], g.address, g.slot, g.num_slots)
            params = params.reshape((len(params),) + spec.value_shape + (family.num_params(spec),))
            lp = family.log_prob(params, g.contexts, g.values)
            out = out.index_add(0, g.trace, lp.reshape(len(lp), -1).sum(-1))
        return out

    # -- inference, one address at a time ----------------------------------------
    def start(self, observation: dict):
        """The observation's embedding ``[E]`` and what attention reads: ``(keys, memory)`` or None."""
        obs_e, memory = self.embed({k: v.unsqueeze(0) for k, v in observation.items()})
        attend = None if self.attention is None else (self.attention.keys(memory), memory)
        return obs_e[0], attend

    def initial_state(self, obs_e):
        """LSTM state ``[(h, c)] * layers`` and previous-value embedding before the first address."""
        zeros = obs_e.new_zeros(1, self.cfg.hidden)
        return [(zeros, zeros)] * self.cfg.layers, obs_e.new_zeros(1, self.cfg.value_dim)

    def observation_gates(self, obs_e):
        """The observation's share of the first LSTM layer's input gates (the same at every address)."""
        return self.lstm.weight_ih_l0[:, : self.embed.dim] @ obs_e + self.lstm.bias_ih_l0

    def address_constants(self, name):
        """What address ``name`` computes the same way for every observation: its share of the
        input gates (address and family embeddings) and its head's weight on ``[h, attention context]``."""
        spec, m = self.specs[name], self.site(name)
        fam = self.family_embedding.weight[FAMILY_NAMES.index(spec.family)]
        offset = self.embed.dim + self.cfg.value_dim
        gates = self.lstm.weight_ih_l0[:, offset:] @ torch.cat([m.address, fam])
        head_w = None
        if m.has_head:
            H, E = self.cfg.hidden, self.embed.dim
            w = m.head1.weight
            head_w = torch.cat([w[:, :H], w[:, H + E :]], 1)
        return gates, head_w

    def constants(self, obs_e, obs_gates, address_constants, name):
        """What step ``name`` computes the same way for every particle: folded input-gate and head biases."""
        gates, head_w = address_constants
        gate_bias = (obs_gates + gates).unsqueeze(0)
        head_bias = None
        if head_w is not None:
            H, E = self.cfg.hidden, self.embed.dim
            m = self.site(name)
            head_bias = F.linear(obs_e, m.head1.weight[:, H : H + E], m.head1.bias).unsqueeze(0)
        return gate_bias, head_bias, head_w

    def prev_weight(self):
        E, V = self.embed.dim, self.cfg.value_dim
        return self.lstm.weight_ih_l0[:, E : E + V].contiguous()

    def step(self, hc, prev, name, consts, w_prev, attend=None):
        """One LSTM step at ``name``: ``(proposal parameters [*S, P] or None, new LSTM state)``."""
        gate_bias, head_bias, head_w = consts
        lstm = self.lstm
        new = [torch.lstm_cell(prev, hc[0], w_prev, lstm.weight_hh_l0, gate_bias, lstm.bias_hh_l0)]
        for l in range(1, self.cfg.layers):
            w_ih, w_hh = getattr(lstm, f"weight_ih_l{l}"), getattr(lstm, f"weight_hh_l{l}")
            b_ih, b_hh = getattr(lstm, f"bias_ih_l{l}"), getattr(lstm, f"bias_hh_l{l}")
            new.append(torch.lstm_cell(new[-1][0], hc[l], w_ih, w_hh, b_ih, b_hh))
        if head_w is None:
            return None, new
        m, spec = self.site(name), self.specs[name]
        h = new[-1][0]
        if attend is not None:
            h = torch.cat([h, self.attention.read(h, m.query.unsqueeze(0), *attend)], -1)
        z = torch.relu(F.linear(h, head_w, head_bias))
        params = F.linear(z[0], m.head2.weight, m.head2.bias)
        return params.reshape(spec.value_shape + (self.families[spec.family].num_params(spec),)), new

    def embed_value(self, name, value, context):
        """The previous-value input ``[1, V]`` after ``name`` took ``value``."""
        spec = self.specs[name]
        feats = self.families[spec.family].features(value, context, spec)
        return self.site(name).value(feats.reshape(1, -1))
