"""Observation encoders: a batch of observations in, a summary ``[B, E]`` and a memory out.

The seam: an encoder is any ``torch.nn.Module`` that maps the standardised observation
(``[B, *shape]`` for one observed site, ``{site: [B, *shape]}`` for several) to either a
summary ``[B, E]`` or a pair ``(summary [B, E], memory [B, L, M])``.  The LSTM reads the
summary at every address; with a memory, each proposal head also attends over its ``L``
rows (:class:`~infcomp.nn.network.Attention`), so an address can look where in the
observation its answer lies.  ``L`` and ``M`` must be the same for every batch.

Without a user encoder each observed site gets a default one chosen by its shape: an MLP
for scalars, an MLP summary and a memory of tokens for vectors (:class:`SequenceEncoder`: its
elements, or chunks of neighbouring elements, in order), a CNN over image columns
(:class:`CNNEncoder`, set up by a :class:`CNNConfig`) for images; several sites' summaries are
concatenated and mixed by a linear layer, and their memories' rows are laid end to end, those
of a narrower memory first brought to the widest's width by a linear map.  Inputs are
standardised with a mean and scale measured on the validation traces (buffers, so they travel
with saved guides).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CNNConfig", "MLPEncoder", "SequenceEncoder", "CNNEncoder", "ObservationEncoder", "default_encoder"]


@dataclasses.dataclass(frozen=True)
class CNNConfig:
    """How the default image encoder is built; saved with the guide.

    :param channels: the three strided convolutions' channels, first to last.
    :param columns: image columns the memory holds (the features pooled to this width);
        0 keeps the convolutions' own width, the image's over ``column_pixels``.
    :param column_pixels: pixels per memory column: 8, or 4 (the last stride-2 convolution
        then keeps the width, for narrow or overlapping parts).
    :param refine: a fourth convolution (the last channels, stride 1) before pooling.
    :param norm: a GroupNorm after each convolution: per image, so a batch of one reads
        exactly as in training.
    """

    channels: tuple = (16, 32, 64)
    columns: int = 0
    column_pixels: int = 8
    refine: bool = True
    norm: bool = True

    GROUPS = 8  # the GroupNorm's groups: with norm, every channel count is a multiple of it
    COLUMN_PIXELS = (8, 4)  # the column widths on offer
    ROWS = 4  # the features are pooled to this many rows

    def __post_init__(self):
        channels = tuple(self.channels)
        object.__setattr__(self, "channels", channels)
        if len(channels) != 3 or not all(isinstance(c, int) and c >= 1 for c in channels):
            raise ValueError(f"CNNConfig: channels must be three positive channel counts, got {channels}")
        if self.norm and any(c % self.GROUPS for c in channels):
            raise ValueError(
                f"CNNConfig: channels {channels}: with norm each must be a multiple of {self.GROUPS} "
                "(the GroupNorm's groups)"
            )
        if not isinstance(self.columns, int) or self.columns < 0:
            raise ValueError(
                f"CNNConfig: columns must be 0 (the convolutions' own width) or a positive count, got {self.columns}"
            )
        if self.column_pixels not in self.COLUMN_PIXELS:
            raise ValueError(f"CNNConfig: column_pixels must be one of {self.COLUMN_PIXELS}, got {self.column_pixels}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **fields) -> "CNNConfig":
        return dataclasses.replace(self, **fields)

    def differences(self, other: "CNNConfig") -> list:
        """``[(field, this config's value, other's)]`` for each field on which the two differ."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [(k, mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]]


class MLPEncoder(nn.Module):
    """``[B, *shape]`` -> summary ``[B, dim]``."""

    def __init__(self, shape, dim, hidden=128):
        super().__init__()
        n = max(1, math.prod(shape))
        self.net = nn.Sequential(nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, dim), nn.ReLU())

    def forward(self, x):
        return self.net(x.reshape(x.shape[0], -1))


class SequenceEncoder(nn.Module):
    """A vector as a sequence: ``[B, *shape]`` (``n`` elements in all) -> ``(summary [B, dim],
    memory [B, L, 3 * width])``.

    The tokens are the elements in order, or, past ``max_tokens`` of them, chunks of
    ``ceil(n / max_tokens)`` neighbouring elements (the last padded with zeros); ``L`` is their
    count.  Row ``i`` of the memory is a linear embedding of token ``i`` beside the states of a
    bidirectional LSTM along the tokens at ``i``: what lies before it and what lies after it.  A
    latent tied to element ``i`` (a state-space model's ``x_i`` to its ``y_i``) reads there
    both its own datum and a summary of the data that bear on it from either side, which is
    what a smoother computes.  The summary is an :class:`MLPEncoder`'s over the whole vector.
    """

    MIN_ELEMENTS = 3  # a pair is read whole by the summary: a memory of two rows costs its reads more than it tells

    def __init__(self, shape, dim, max_tokens, width=32):
        super().__init__()
        if max_tokens < 1:
            raise ValueError(f"SequenceEncoder: max_tokens must be at least 1, got {max_tokens}")
        n = max(1, math.prod(shape))
        self.chunk = -(-n // max_tokens)
        self.memory_len = -(-n // self.chunk)
        self.pad = self.memory_len * self.chunk - n
        self.summary = MLPEncoder(shape, dim)
        self.embed = nn.Linear(self.chunk, width)
        self.rnn = nn.LSTM(width, width, batch_first=True, bidirectional=True)
        self.memory_dim = 3 * width

    def forward(self, x):
        flat = x.reshape(x.shape[0], -1)
        tokens = F.pad(flat, (0, self.pad)).reshape(x.shape[0], self.memory_len, self.chunk)
        e = self.embed(tokens)
        return self.summary(x), torch.cat([e, self.rnn(e)[0]], -1)


class CNNEncoder(nn.Module):
    """Strided convolutions (cheap on a CPU), pooled to a grid that keeps the left-to-right layout.

    ``[B, H, W]`` or ``[B, C, H, W]`` -> ``(summary [B, dim], memory [B, L, M])``: the memory's
    rows are the image's columns, left to right (``L`` of them, ``M = last channels x ROWS``).
    """

    def __init__(self, shape, dim, config: CNNConfig | None = None):
        super().__init__()
        self.config = config = config or CNNConfig()
        self.add_channel = len(shape) == 2
        in_ch = 1 if self.add_channel else shape[0]
        c1, c2, c3 = config.channels

        def block(c_in, c_out, kernel, stride):
            conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2)
            return [conv, nn.GroupNorm(config.GROUPS, c_out), nn.ReLU()] if config.norm else [conv, nn.ReLU()]

        grid = (config.ROWS, config.columns or -(-shape[-1] // config.column_pixels))
        last = (2, 2 * config.column_pixels // config.COLUMN_PIXELS[0])  # (2, 1): the last convolution keeps the width
        self.features = nn.Sequential(
            *block(in_ch, c1, 5, 2), *block(c1, c2, 3, 2), *block(c2, c3, 3, last),
            *(block(c3, c3, 3, 1) if config.refine else ()),  # a fourth convolution at the columns' resolution
            nn.AdaptiveAvgPool2d(grid),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c3 * grid[0] * grid[1], dim), nn.ReLU())
        self.memory_dim = c3 * grid[0]
        self.memory_len = grid[1]

    def forward(self, x):
        if self.add_channel:
            x = x.unsqueeze(1)
        f = self.features(x)
        return self.head(f), f.permute(0, 3, 1, 2).flatten(2)


def default_encoder(shape, dim, cnn: CNNConfig | None = None, tokens: int = 0) -> nn.Module:
    """An :class:`MLPEncoder` for scalars and short vectors (and, with ``tokens=0``, every vector),
    a :class:`SequenceEncoder` of at most ``tokens`` tokens for vectors of
    ``SequenceEncoder.MIN_ELEMENTS`` or more elements, a :class:`CNNEncoder` for images."""
    if len(shape) <= 1:
        if tokens and math.prod(shape) >= SequenceEncoder.MIN_ELEMENTS:
            return SequenceEncoder(shape, dim, tokens)
        return MLPEncoder(shape, dim)
    if len(shape) in (2, 3):
        return CNNEncoder(shape, dim, cnn)
    raise ValueError(
        f"no default encoder for an observation of shape {tuple(shape)}: pass your own torch.nn.Module as encoder="
    )


def _split(out):
    """An encoder's output as ``(summary, memory or None)``."""
    if isinstance(out, (tuple, list)):
        if len(out) != 2:
            raise ValueError(f"an encoder returns a summary or (summary, memory); it gave {len(out)} items")
        return out[0], out[1]
    return out, None


def _widen(widths: list):
    """Maps that bring the memories of several sites (``widths``: each default encoder's memory
    width, 0 for none) to the widest's width, a linear one for each narrower memory, or None
    where the widths already agree."""
    widths = [w for w in widths if w]
    if len(set(widths)) <= 1:
        return None
    return nn.ModuleList(nn.Identity() if w == max(widths) else nn.Linear(w, max(widths)) for w in widths)


class ObservationEncoder(nn.Module):
    """``{site: [B, *shape]}`` -> ``(summary [B, dim], memory [B, memory_len, memory_dim] or None)``.

    ``custom``: the user's encoder (see the module's docstring); otherwise the default encoders,
    images built by ``cnn``, vectors' memories of at most ``tokens`` tokens (0, the default here:
    vectors get a summary only; a network passes its ``NetworkConfig.tokens``).  ValueError,
    raised here, if ``custom`` gives the wrong shapes.
    """

    def __init__(self, obs_specs: dict, dim: int, custom: nn.Module | None = None, cnn: CNNConfig | None = None,
                 tokens: int = 0):
        super().__init__()
        self.names = list(obs_specs)
        self.custom = custom
        self.cnn = cnn or CNNConfig()
        self.register_buffer("loc", torch.zeros(len(self.names)))
        self.register_buffer("scale", torch.ones(len(self.names)))
        self.mix = None
        self.widen = None
        if custom is None:
            self.per_site = nn.ModuleList(default_encoder(obs_specs[n].shape, dim, self.cnn, tokens) for n in self.names)
            if len(self.names) > 1:
                self.mix = nn.Sequential(nn.Linear(dim * len(self.names), dim), nn.ReLU())
            self.widen = _widen([getattr(e, "memory_dim", 0) for e in self.per_site])
        example = {n: torch.zeros((2,) + tuple(obs_specs[n].shape)) for n in self.names}
        with torch.no_grad():
            summary, memory = self(example)
        self._check(summary, memory)
        self.dim = int(summary.shape[1])
        self.memory_len, self.memory_dim = (0, 0) if memory is None else (int(memory.shape[1]), int(memory.shape[2]))

    @staticmethod
    def _check(summary, memory):
        if not torch.is_tensor(summary) or summary.dim() != 2 or summary.shape[0] != 2:
            shape = tuple(summary.shape) if torch.is_tensor(summary) else type(summary).__name__
            raise ValueError(f"encoder= must map a batch [B, *shape] to a summary [B, dim]; it gave {shape}")
        if memory is not None and (not torch.is_tensor(memory) or memory.dim() != 3 or memory.shape[0] != 2):
            shape = tuple(memory.shape) if torch.is_tensor(memory) else type(memory).__name__
            raise ValueError(f"encoder= must give a memory [B, L, M] beside its summary; it gave {shape}")

    @property
    def contextual(self) -> bool:
        """Whether every memory row already carries its context along the memory (every default
        encoder that gives a memory is a :class:`SequenceEncoder`): attention then needs no
        recurrent network of its own along the rows to find its place."""
        with_memory = [e for e in getattr(self, "per_site", ()) if hasattr(e, "memory_dim")]
        return bool(with_memory) and all(isinstance(e, SequenceEncoder) for e in with_memory)

    @property
    def uses_cnn(self) -> bool:
        return any(isinstance(e, CNNEncoder) for e in getattr(self, "per_site", ()))

    @torch.no_grad()
    def set_normalization(self, observation: dict):
        """Standardise each site by the mean and scale of a sample of its observations."""
        for i, n in enumerate(self.names):
            x = observation[n].float()
            self.loc[i] = x.mean()
            self.scale[i] = x.std().clamp(min=1e-6) if x.numel() > 1 else 1.0

    def forward(self, observation: dict):
        xs = [(observation[n].float() - self.loc[i]) / self.scale[i] for i, n in enumerate(self.names)]
        if self.custom is not None:
            return _split(self.custom(xs[0] if len(xs) == 1 else dict(zip(self.names, xs))))
        out = [_split(e(x)) for e, x in zip(self.per_site, xs)]
        memories = [m for _, m in out if m is not None]
        if self.widen is not None:
            memories = [w(m) for w, m in zip(self.widen, memories)]
        memory = None if not memories else memories[0] if len(memories) == 1 else torch.cat(memories, 1)
        summaries = [s for s, _ in out]
        summary = summaries[0] if self.mix is None else self.mix(torch.cat(summaries, -1))
        return summary, memory
