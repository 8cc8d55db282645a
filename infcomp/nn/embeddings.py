"""Observation embeddings: an MLP for scalars and vectors, a CNN for images, or the user's module.

Each observed site gets its own embedding, chosen from its value's shape; with
several observed sites their embeddings are concatenated and mixed by a linear
layer.  Inputs are standardised with a mean and scale measured on the validation
traces (stored as buffers, so they travel with saved guides).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["MLPEmbedding", "CNNEmbedding", "ObservationEmbedding", "default_embedding"]


class MLPEmbedding(nn.Module):
    def __init__(self, shape, dim, hidden=128):
        super().__init__()
        n = max(1, math.prod(shape))
        self.net = nn.Sequential(nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, dim), nn.ReLU())

    def forward(self, x):
        return self.net(x.reshape(x.shape[0], -1))


class CNNEmbedding(nn.Module):
    """Strided convolutions (cheap on a CPU), pooled to a grid that keeps the left-to-right layout.

    ``NetworkConfig(memory_columns=0)``, the default since session 13, keeps the convolutions' own
    width: a column per 8 pixels (23 for a 180-pixel CAPTCHA), where a fixed 16 had blurred long
    lines and repeated columns of short ones.  Ten-minute compiles from scratch: wikipedia 48.3%
    of characters against 32.6%, baidu2011 61.7% of strings against 54.6%; after an hour wikipedia
    read 52.6% of strings against 32.4% (``benchmarks/README.md``).  ``column_pixels=4`` makes the
    third convolution stride 2 down and 1 across: a column per 4 pixels, for about 1.5x the CNN's cost.
    ``refine=False`` (``NetworkConfig(conv_refine=False)``) drops the fourth convolution, about a fifth
    of the CNN's cost; in ten-minute probes it read worse on baidu2011 and on one of recaptcha's two
    seeds (better on the other), so it stays by default.

    With ``norm`` (the default) each convolution is followed by a GroupNorm: per image, so a
    batch of one reads exactly as in training.  It speeds up early learning: on baidu2011 the
    validation loss after five minutes of compiling fell from 31.8 to 27.3 nats at about the
    same traces/s; after an hour the two are level (16.7 nats at 1.35M traces; see
    ``benchmarks/README.md``).
    """

    GROUPS = 8
    CHANNELS = (16, 32, 64)
    STRIDE = 8  # three stride-2 convolutions: a feature column per 8 pixels
    COLUMN_PIXELS = (STRIDE, STRIDE // 2)  # the column widths on offer: 8, or 4 (the last convolution keeps the width)
    ROWS = 4  # the features are pooled to this many rows ...
    COLUMNS = 0  # ... and this many columns; 0 keeps the convolutions' own width

    def __init__(self, shape, dim, channels=CHANNELS, columns=COLUMNS, norm=True, column_pixels=STRIDE, refine=True):
        super().__init__()
        channels = tuple(channels)
        if len(channels) != 3 or min(channels) < 1:
            raise ValueError(f"conv_channels must be three positive channel counts, got {channels}")
        if norm and any(c % self.GROUPS for c in channels):
            raise ValueError(
                f"conv_channels {channels}: with conv_norm each must be a multiple of {self.GROUPS} (the GroupNorm's groups)"
            )
        in_ch = 1 if len(shape) == 2 else shape[0]
        self.add_channel = len(shape) == 2
        c1, c2, c3 = channels

        def block(c_in, c_out, kernel, stride):
            conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2)
            return [conv, nn.GroupNorm(self.GROUPS, c_out), nn.ReLU()] if norm else [conv, nn.ReLU()]

        if columns < 0:
            raise ValueError(
                f"memory_columns must be 0 (the convolutions' own width) or a positive count, got {columns}"
            )
        if column_pixels not in self.COLUMN_PIXELS:
            raise ValueError(f"column_pixels must be one of {self.COLUMN_PIXELS}, got {column_pixels}")
        grid = (self.ROWS, columns or -(-shape[-1] // column_pixels))
        last = (2, 2 * column_pixels // self.STRIDE)  # (2, 1): the last convolution keeps the width
        self.features = nn.Sequential(
            *block(in_ch, c1, 5, 2), *block(c1, c2, 3, 2), *block(c2, c3, 3, last),
            *(block(c3, c3, 3, 1) if refine else ()),  # a fourth convolution at the columns' resolution
            nn.AdaptiveAvgPool2d(grid),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c3 * grid[0] * grid[1], dim), nn.ReLU())

        self.memory_dim = c3 * grid[0]
        self.memory_len = grid[1]

    def forward(self, x):
        """``(summary [B, dim], columns [B, grid width, channels x grid height])``: the columns are what
        proposal heads attend over, left to right."""
        if self.add_channel:
            x = x.unsqueeze(1)
        f = self.features(x)
        return self.head(f), f.permute(0, 3, 1, 2).flatten(2)


def default_embedding(shape, dim, **cnn):
    """An MLP for scalars and vectors, a :class:`CNNEmbedding` for images; ``cnn`` holds the CNN's
    keywords (``channels``, ``columns``, ``norm``, ``column_pixels``, ``refine``)."""
    if len(shape) <= 1:
        return MLPEmbedding(shape, dim)
    if len(shape) in (2, 3):
        return CNNEmbedding(shape, dim, **cnn)
    raise ValueError(
        f"no default embedding for an observation of shape {tuple(shape)}: "
        "pass your own torch.nn.Module as embedding="
    )


class ObservationEmbedding(nn.Module):
    """``{site: [B, *shape]}`` -> ``[B, dim]``; ``cnn``: :class:`CNNEmbedding`'s keywords for image sites."""

    def __init__(self, obs_specs: dict, dim: int, custom: nn.Module | None = None, cnn: dict | None = None):
        super().__init__()
        self.names = list(obs_specs)
        self.custom = custom
        self.register_buffer("loc", torch.zeros(len(self.names)))
        self.register_buffer("scale", torch.ones(len(self.names)))
        if custom is not None:
            example = {n: torch.zeros((2,) + tuple(obs_specs[n].shape)) for n in self.names}
            with torch.no_grad():
                out = custom(example[self.names[0]] if len(self.names) == 1 else example)
            if not torch.is_tensor(out) or out.dim() != 2 or out.shape[0] != 2:
                shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
                raise ValueError(f"embedding= must map a batch [B, *shape] to [B, dim]; it gave {shape}")
            self.dim = int(out.shape[1])
            self.mix = None
            self.memory_dim = self.memory_len = 0
        else:
            self.dim = dim
            self.embeds = nn.ModuleList(
                default_embedding(obs_specs[n].shape, dim, **(cnn or {}))
                for n in self.names
            )
            self.mix = nn.Sequential(nn.Linear(dim * len(self.names), dim), nn.ReLU()) if len(self.names) > 1 else None
        cnns = [e for e in getattr(self, "embeds", []) if isinstance(e, CNNEmbedding)]
        self.memory_dim = cnns[0].memory_dim if cnns else 0
        self.memory_len = sum(e.memory_len for e in cnns)

    @torch.no_grad()
    def set_normalization(self, observation: dict):
        """Standardise each site by the mean and scale of a sample of its observations."""
        for i, n in enumerate(self.names):
            x = observation[n].float()
            self.loc[i] = x.mean()
            self.scale[i] = x.std().clamp(min=1e-6) if x.numel() > 1 else 1.0

    def forward(self, observation: dict):
        """``(embedding [B, dim], memory [B, L, memory_dim] or None)``: the memory holds the image columns."""
        xs = [(observation[n].float() - self.loc[i]) / self.scale[i] for i, n in enumerate(self.names)]
        if self.custom is not None:
            return self.custom(xs[0] if len(xs) == 1 else dict(zip(self.names, xs))), None
        out = [e(x) for e, x in zip(self.embeds, xs)]
        summaries = [o[0] if isinstance(o, tuple) else o for o in out]
        memories = [o[1] for o in out if isinstance(o, tuple)]
        memory = None if not memories else memories[0] if len(memories) == 1 else torch.cat(memories, 1)
        summary = summaries[0] if self.mix is None else self.mix(torch.cat(summaries, -1))
        return summary, memory
