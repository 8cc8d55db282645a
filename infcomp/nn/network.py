"""The inference network: an LSTM that steps through a trace's addresses.

At step ``t`` its input (:data:`InferenceNetwork.lstm_in`) is the observation's summary, an
embedding of the value sampled at step ``t-1``, and embeddings of address ``t`` and of its
proposal family.  Its output, beside the summary again (a skip connection that lets heads
extrapolate linearly in the observation, past the LSTM's saturating gates) and, where the
encoder gives a memory, what the address reads there by attention, feeds address ``t``'s
proposal head (:data:`InferenceNetwork.head_in`).  Every address owns a small
:class:`SiteModule` (address embedding, value embedding, head), made the first time the
address is met; :meth:`InferenceNetwork.add_site` returns the new parameters so the optimiser
takes them on without losing its state.  A family's embedding is made with the first address
of that family and belongs to it.  Addresses that differ only in their numbers and share a
signature (``x_0``, ``x_1``, ...: see :func:`head_key`) share one value embedding and one
head, as a sequence model shares its output layer across positions; each keeps its own
address embedding and attention query, so the head still knows where it is.

Training (:meth:`log_q`) runs a whole :class:`~infcomp.data.Batch` in one LSTM call: traces
of every structure are laid side by side, padded at the end (the LSTM is causal, so padding
never reaches a real step).  Per site group, each address's own weights apply in one batched
matmul over an ``[addresses, slots]`` layout.  Inference (:meth:`start`, :meth:`step`) runs
one address at a time for a batch of rows (the particles standing at that address, or one row
per observation of a batched read), with the parts of the LSTM and head inputs that do not change from
particle to particle folded into biases: :meth:`address_terms` (per address) and
:meth:`step_terms` (per address and observation).
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..traces import SiteSpec
from .balance import GradientBalancer
from .encoders import CNNConfig, ObservationEncoder
from .layout import Layout
from .proposals import make_families

__all__ = ["NetworkConfig", "SiteModule", "InferenceNetwork", "Rows", "head_key", "split_config"]


@dataclass
class NetworkConfig:
    """Sizes of the LSTM and the proposal heads (the observation encoder has its own settings)."""

    obs_dim: int = 128  # width of the default encoders' summary
    value_dim: int = 32
    address_dim: int = 32
    family_dim: int = 8
    hidden: int = 128
    layers: int = 1
    head_hidden: int = 64
    mixture_components: int = 3
    balance_gradients: bool = True  # see infcomp.nn.balance
    share_heads: bool = True  # addresses with equal head_key share value embedding and head
    column_rnn: int = 32  # if > 0, a bidirectional GRU this wide per direction runs along the memory, unless it is a
    # sequence's (SequenceEncoder rows carry their context already; see Attention)
    tokens: int = 128  # a vector observation's memory holds at most this many tokens; 0: a summary only (see encoders)

    def __post_init__(self):
        if self.column_rnn < 0:
            raise ValueError(f"column_rnn must be 0 (no GRU along the memory) or a positive width, got {self.column_rnn}")
        if type(self.tokens) is not int or self.tokens < 0:
            raise ValueError(f"tokens must be 0 (vectors get a summary only) or a positive count, got {self.tokens!r}")

    def to_dict(self):
        return asdict(self)

    def differences(self, config) -> list:
        """``[(field, this config's value, config's)]`` for each field that ``config`` (a NetworkConfig
        or dict of fields) sets to another value.  ValueError for a field NetworkConfig does not have."""
        have = asdict(self)
        wanted = config if isinstance(config, dict) else asdict(config)
        unknown = [key for key in wanted if key not in have]
        if unknown:
            raise ValueError(f"config: NetworkConfig has no field {unknown[0]!r}")
        return [(key, have[key], value) for key, value in wanted.items() if value != have[key]]


#: Fields that set the image encoder in files and ``config=`` dicts from before it had its own
#: settings: the NetworkConfig name -> the CNNConfig field.
LEGACY_CNN_FIELDS = {"conv_channels": "channels", "memory_columns": "columns", "column_pixels": "column_pixels",
                     "conv_refine": "refine", "conv_norm": "norm"}


def split_config(config: dict, warn=True) -> tuple[dict, dict]:
    """``config`` fields as ``(NetworkConfig fields, CNNConfig fields)``: the encoder's settings
    that older ``config=`` dicts and guide files carry move to the encoder (with a
    FutureWarning where ``warn``)."""
    network, cnn = {}, {}
    for key, value in config.items():
        if key in LEGACY_CNN_FIELDS:
            cnn[LEGACY_CNN_FIELDS[key]] = tuple(value) if isinstance(value, list) else value
        else:
            network[key] = value
    if cnn and warn:
        warnings.warn(
            f"config= fields {sorted(k for k in config if k in LEGACY_CNN_FIELDS)} set the image encoder: "
            f"pass encoder=infcomp.CNNConfig({', '.join(f'{k}=...' for k in cnn)}) instead",
            FutureWarning, stacklevel=2,
        )
    return network, cnn


def head_key(spec: SiteSpec) -> tuple:
    """Addresses with equal keys share a value embedding and a proposal head: names equal but for
    their numbers (``x_0``, ``x_1``; ``x[2]``, ``x[3]``) and equal signatures."""
    return re.sub(r"\d+", "#", spec.name), spec.signature


class SiteModule(nn.Module):
    """Everything the network keeps for one address; with ``like``, the value embedding and head
    are that module's (shared), and only the address embedding and query are this address's own."""

    def __init__(self, spec: SiteSpec, family, cfg: NetworkConfig, head_in: Layout, like=None):
        super().__init__()
        self.address = nn.Parameter(torch.randn(cfg.address_dim) * 0.1)
        if head_in.widths["context"]:  # where this address looks in the memory, before the LSTM state refines it
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
            self.head1 = nn.Linear(head_in.size, cfg.head_hidden)
            self.head2 = nn.Linear(cfg.head_hidden, n_out)
            family.init_head(self.head2, spec)


class Attention(nn.Module):
    """Each step reads the encoder's memory with a query from the LSTM state (dot-product attention).

    What an address depends on sits at different places in different observations; attention
    lets its head look there instead of decoding it from one global summary.  With
    ``column_rnn``, a bidirectional GRU runs along the memory's rows first and each row's key
    sees what lies before and after it (as in attention-based text recognisers: CNN, then a
    BiLSTM over columns, then attention), so a key can say "the third part from the left",
    not only "row 7"; what a step reads (the value) is still the row itself.
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
        """``h [R, H]`` and ``address_query [R, d]`` read ``keys [B, L, d]``, ``memory [B, L, M]``
        -> context ``[R, M]``.

        Row ``r`` reads observation ``trace[r]`` (without ``trace``, observation ``r``).  The rows
        are set on a ``[B, num_slots]`` grid at ``(trace, slot)`` (each cell at most once), so all
        of them take two batched matmuls and no observation's memory is copied per row.
        """
        q = self.query(h) + address_query
        if trace is None:
            grid = q.unsqueeze(1)
        else:
            grid = q.new_zeros(keys.shape[0], num_slots, q.shape[-1]).index_put((trace, slot), q)
        scores = torch.bmm(grid, keys.transpose(1, 2)) * self.scale
        context = torch.bmm(torch.softmax(scores, -1), memory)
        return context[:, 0] if trace is None else context[trace, slot]


def _native_bf16(device) -> bool:
    """Whether ``device`` is a GPU that computes in bfloat16 natively (not emulated, which is slower)."""
    if device.type != "cuda":
        return False
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def grouped_linear(x, layers, address, slot, num_slots):
    """Row ``r`` of ``x`` through ``layers[address[r]]``: ``[R, in] -> [R, out]``, one batched matmul."""
    if all(l is layers[0] for l in layers):  # one address, or addresses sharing their head
        return F.linear(x, layers[0].weight, layers[0].bias)
    w = torch.stack([l.weight for l in layers])  # [U, out, in]
    b = torch.stack([l.bias for l in layers])  # [U, out]
    grid = x.new_zeros(len(layers), num_slots, x.shape[-1]).index_put((address, slot), x)
    out = torch.baddbmm(b.unsqueeze(1), grid, w.transpose(1, 2))
    return out[address, slot]


class AddressTerms(NamedTuple):
    """What address ``name`` computes the same way for every observation and particle."""

    gates: torch.Tensor  # its address and family embeddings' share of the first layer's input gates
    head_weight: torch.Tensor | None  # its head's first weight on [LSTM output, attention context]


class StepTerms(NamedTuple):
    """What a step at one address computes the same way for every particle of each of ``O`` observations."""

    gate_bias: torch.Tensor  # [O, 4H]: the observation's and the address's share of the input gates
    head_bias: torch.Tensor | None  # [O, head_hidden]: the observation summary's share of the head
    head_weight: torch.Tensor | None


class Rows(NamedTuple):
    """Which of several observations each row of a step reads: ``obs [R]``, and ``slot [R]``, the
    row's rank among the rows of its observation (below ``num_slots``), for attention's grid."""

    obs: torch.Tensor
    slot: torch.Tensor
    num_slots: int


class InferenceNetwork(nn.Module):
    """The encoder, the LSTM, attention and the per-address modules of one guide.

    :param obs_specs: ``{site: ObservationSpec}`` of the observed sites.
    :param encoder: the user's encoder module (see :mod:`~infcomp.nn.encoders`), or None for the defaults.
    :param cnn: the default image encoder's settings.
    :param families: extra proposal family classes, tried before the registered and built-in ones.
    """

    def __init__(self, obs_specs: dict, cfg: NetworkConfig | None = None, encoder: nn.Module | None = None,
                 cnn: CNNConfig | None = None, families=()):
        super().__init__()
        self.cfg = c = cfg or NetworkConfig()
        self.obs_specs = dict(obs_specs)
        self.extra_families = tuple(families)
        self.families = make_families(self.extra_families, c.mixture_components)
        self.encoder = ObservationEncoder(self.obs_specs, c.obs_dim, encoder, cnn, c.tokens)
        e = self.encoder
        self.family_embedding = nn.ParameterDict()  # family name -> [family_dim], made with its first address
        self.lstm_in = Layout(obs=e.dim, value=c.value_dim, address=c.address_dim, family=c.family_dim)
        self.head_in = Layout(hidden=c.hidden, obs=e.dim, context=e.memory_dim)
        self.lstm = nn.LSTM(self.lstm_in.size, c.hidden, c.layers)
        column_rnn = 0 if e.contextual else c.column_rnn  # a sequence's rows carry their context already
        self.attention = Attention(c.hidden, e.memory_dim, e.memory_len, column_rnn=column_rnn) if e.memory_dim else None
        self.sites = nn.ModuleDict()
        self.balancer = GradientBalancer() if c.balance_gradients else None
        self.amp: bool | None = None  # bfloat16 autocast of the encoder (see encode); a setting, not saved
        self.specs: dict[str, SiteSpec] = {}
        self._keys: dict[str, str] = {}
        self._first: dict[tuple, str] = {}  # head_key -> the address whose head the others share

    # -- the address table ------------------------------------------------------
    def add_site(self, spec: SiteSpec) -> list:
        """Give a new address its module; returns its parameters (for the optimiser)."""
        if spec.name in self.specs:
            raise ValueError(f"site {spec.name!r} already has a head")
        if spec.family not in self.families:
            raise ValueError(f"site {spec.name!r}: no proposal family called {spec.family!r} is known "
                             "(pass its class as families=, or register_family it)")
        device = self.lstm.weight_hh_l0.device
        if spec.family not in self.family_embedding:
            self.family_embedding[spec.family] = nn.Parameter(torch.randn(self.cfg.family_dim, device=device))
        key = str(len(self.sites))
        module = SiteModule(spec, self.families[spec.family], self.cfg, self.head_in, self._shares_with(spec))
        self.sites[key] = module.to(device)
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
        """The parameters address ``name`` brought: its family's embedding if it is the family's
        first address, and what of its module it does not share with an address met before it."""
        spec = self.specs[name]
        like = self._shares_with(spec)
        shared = set() if like is None else {id(p) for p in like.parameters()}
        first_of_family = next(n for n, s in self.specs.items() if s.family == spec.family) == name
        own = [self.family_embedding[spec.family]] if first_of_family else []
        return own + [p for p in self.site(name).parameters() if id(p) not in shared]

    def core_parameters(self) -> list:
        """The parameters no address owns: the encoder's, the LSTM's and attention's."""
        return [p for n, p in self.named_parameters() if not n.startswith(("sites.", "family_embedding."))]

    # -- the observation ----------------------------------------------------------
    def encode(self, observations: dict):
        """The encoder's ``(summary [B, E], memory [B, L, M] or None)``, in float32.  Under
        :attr:`amp` (None: on a CUDA device with native bfloat16, off elsewhere) the encoder runs
        in bfloat16 autocast, where a CNN is several times faster; the LSTM, heads and densities
        stay float32, so ``log q`` keeps its precision."""
        device = self.lstm.weight_hh_l0.device
        if not (self.amp if self.amp is not None else _native_bf16(device)):
            return self.encoder(observations)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            obs_e, memory = self.encoder(observations)
        return obs_e.float(), None if memory is None else memory.float()

    # -- training ---------------------------------------------------------------
    def log_q(self, batch) -> torch.Tensor:
        """``log q(latents | observation)`` of every trace in the batch: ``[B]``."""
        obs_e, memory = self.encode(batch.observation)
        B = batch.size
        T = int(batch.lengths.max()) if B else 0
        if T == 0:
            return obs_e.new_zeros(B)
        h = self._lstm_outputs(batch, obs_e, T)
        keys = None if self.attention is None else self.attention.keys(memory)
        out = obs_e.new_zeros(B)
        for g in batch.groups:
            spec = self.specs[g.names[0]]
            family = self.families[spec.family]
            if not family.has_head:
                continue
            mods = [self.site(n) for n in g.names]
            hg = h[g.step, g.trace]
            z = self.head_in.cat(hidden=hg, **self._seen(obs_e[g.trace], hg, mods, g, keys, memory, T))
            z = F.relu(grouped_linear(z, [m.head1 for m in mods], g.address, g.slot, g.num_slots))
            params = grouped_linear(z, [m.head2 for m in mods], g.address, g.slot, g.num_slots)
            params = params.reshape((len(params),) + spec.value_shape + (family.num_params(spec),))
            lp = family.log_prob(params, g.contexts, g.values)
            out = out.index_add(0, g.trace, lp.reshape(len(lp), -1).sum(-1))
        return out

    def _seen(self, obs, hg, mods, g, keys, memory, T) -> dict:
        """What group ``g``'s heads see beside the LSTM output: the summary and, with a memory, what
        each row reads there; the balancer rescales the two's gradient together (see :mod:`.balance`)."""
        if keys is None:
            return {"obs": obs if self.balancer is None else self.balancer(obs, g.signature)}
        query = torch.stack([m.query for m in mods])[g.address]
        seen = torch.cat([obs, self.attention.read(hg, query, keys, memory, g.trace, g.step, T)], -1)
        if self.balancer is not None:
            seen = self.balancer(seen, g.signature)
        obs, context = seen.split([self.head_in.widths["obs"], self.head_in.widths["context"]], -1)
        return {"obs": obs, "context": context}

    def _lstm_outputs(self, batch, obs_e, T) -> torch.Tensor:
        """The LSTM's outputs ``[T, B, hidden]`` over the batch's traces laid side by side."""
        B = batch.size
        address, family, prev, steps, traces, keep = [], [], [], [], [], []
        for g in batch.groups:
            spec = self.specs[g.names[0]]
            mods = [self.site(n) for n in g.names]
            feats = self.families[spec.family].features(g.values, g.contexts, spec)
            prev.append(grouped_linear(feats, [m.value for m in mods], g.address, g.slot, g.num_slots))
            address.append(torch.stack([m.address for m in mods])[g.address])
            family.append(self.family_embedding[spec.family].expand(len(g.address), -1))
            steps.append(g.step)
            traces.append(g.trace)
            keep.append(g.step + 1 < T)
        step, trace, keep = torch.cat(steps), torch.cat(traces), torch.cat(keep)

        def grid(rows, s, t):  # rows [R, d] placed at (s[r], t[r]) of a [T, B, d] grid of zeros
            return rows.new_zeros(T, B, rows.shape[-1]).index_put((s, t), rows)

        x = self.lstm_in.cat(
            obs=obs_e.unsqueeze(0).expand(T, B, -1),
            value=grid(torch.cat(prev)[keep], step[keep] + 1, trace[keep]),  # the value drawn at t feeds step t + 1
            address=grid(torch.cat(address), step, trace),
            family=grid(torch.cat(family), step, trace),
        )
        return self.lstm(x)[0]

    # -- inference: rows of particles or observations, one address at a time ---
    def start(self, observations: dict):
        """Summaries ``[O, E]`` of ``{site: [O, *shape]}`` and what attention reads: ``(keys, memory)`` or None."""
        obs_e, memory = self.encode(observations)
        attend = None if self.attention is None else (self.attention.keys(memory), memory)
        return obs_e, attend

    def initial_state(self, obs_e, rows=1):
        """LSTM state ``[(h, c)] * layers`` of ``rows`` rows and their previous-value input before the first address."""
        zeros = obs_e.new_zeros(rows, self.cfg.hidden)
        return [(zeros, zeros)] * self.cfg.layers, obs_e.new_zeros(rows, self.cfg.value_dim)

    def observation_gates(self, obs_e):
        """The observations' share ``[O, 4H]`` of the first LSTM layer's input gates (the same at every address)."""
        return F.linear(obs_e, self.lstm_in.columns(self.lstm.weight_ih_l0, "obs"), self.lstm.bias_ih_l0)

    def address_terms(self, name) -> AddressTerms:
        spec, m = self.specs[name], self.site(name)
        w_ih = self.lstm.weight_ih_l0
        gates = self.lstm_in.columns(w_ih, "address", "family") @ torch.cat([m.address, self.family_embedding[spec.family]])
        head_w = self.head_in.columns(m.head1.weight, "hidden", "context") if m.has_head else None
        return AddressTerms(gates, head_w)

    def step_terms(self, obs_e, obs_gates, terms: AddressTerms, name) -> StepTerms:
        head_bias = None
        if terms.head_weight is not None:
            m = self.site(name)
            head_bias = F.linear(obs_e, self.head_in.columns(m.head1.weight, "obs"), m.head1.bias)
        return StepTerms(obs_gates + terms.gates, head_bias, terms.head_weight)

    def prev_weight(self):
        """The first LSTM layer's input weight on the previous value's embedding."""
        return self.lstm_in.columns(self.lstm.weight_ih_l0, "value").contiguous()

    def step(self, hc, prev, name, terms: StepTerms, w_prev, attend=None, rows: Rows | None = None):
        """One LSTM step at ``name`` for ``R`` rows: ``(proposal parameters [R, *S, P] or None, new LSTM state)``.

        ``hc`` is ``[(h [R, H], c [R, H])] * layers`` and ``prev [R, V]`` the rows' previous-value
        input.  Without ``rows`` every row belongs to the one observation the terms were made
        for; with it, row ``r`` reads observation ``rows.obs[r]`` of several.
        """
        lstm = self.lstm
        gate_bias, head_bias = terms.gate_bias, terms.head_bias
        if rows is not None:
            gate_bias = gate_bias[rows.obs]
            head_bias = None if head_bias is None else head_bias[rows.obs]
        new = [torch.lstm_cell(prev, hc[0], w_prev, lstm.weight_hh_l0, gate_bias, lstm.bias_hh_l0)]
        for l in range(1, self.cfg.layers):
            w_ih, w_hh = getattr(lstm, f"weight_ih_l{l}"), getattr(lstm, f"weight_hh_l{l}")
            b_ih, b_hh = getattr(lstm, f"bias_ih_l{l}"), getattr(lstm, f"bias_hh_l{l}")
            new.append(torch.lstm_cell(new[-1][0], hc[l], w_ih, w_hh, b_ih, b_hh))
        if terms.head_weight is None:
            return None, new
        m, spec = self.site(name), self.specs[name]
        h = new[-1][0]
        R = h.shape[0]
        if attend is not None:
            if rows is None and R > 1:
                rows = Rows(h.new_zeros(R, dtype=torch.long), torch.arange(R, device=h.device), R)
            where = () if rows is None else (rows.obs, rows.slot, rows.num_slots)
            h = torch.cat([h, self.attention.read(h, m.query.unsqueeze(0), *attend, *where)], -1)
        z = torch.relu(F.linear(h, terms.head_weight, head_bias))
        params = F.linear(z, m.head2.weight, m.head2.bias)
        return params.reshape((R,) + spec.value_shape + (self.families[spec.family].num_params(spec),)), new

    def embed_value(self, name, value, context):
        """The previous-value input ``[R, V]`` after ``name`` took ``value [R, *S]`` (or ``[*S]``: one row)."""
        spec = self.specs[name]
        family = self.families[spec.family]
        device = self.lstm.weight_hh_l0.device  # a value drawn on the model's device crosses here
        feats = family.features(value.to(device), context.to(device), spec)
        return self.site(name).value(feats.reshape(-1, family.feature_size(spec)))
