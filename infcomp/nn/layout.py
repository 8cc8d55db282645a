"""Named parts of a concatenated input vector: the one statement of the network's input layouts.

The LSTM's input at an address is ``[observation summary, previous value, address, family]``;
a proposal head's is ``[LSTM output, observation summary, attention context]``.  The batched
training pass concatenates the parts; the step-by-step inference pass folds some of them into
biases by slicing the weight columns that read them.  Both ask a :class:`Layout` for where a
part lies, so the two paths cannot disagree.
"""

from __future__ import annotations

import torch

__all__ = ["Layout"]


class Layout:
    """Parts ``name -> width`` in order; a part of width 0 is absent."""

    def __init__(self, **widths: int):
        self.widths = dict(widths)
        self.offsets, start = {}, 0
        for name, width in self.widths.items():
            self.offsets[name] = start
            start += width
        self.size = start

    def span(self, name: str) -> slice:
        return slice(self.offsets[name], self.offsets[name] + self.widths[name])

    def cat(self, **parts: torch.Tensor) -> torch.Tensor:
        """The parts concatenated along the last dim, in the layout's order; every part of
        nonzero width must be given, with that width."""
        missing = [n for n, w in self.widths.items() if w and n not in parts]
        if missing:
            raise ValueError(f"layout part {missing[0]!r} is missing")
        return torch.cat([parts[n] for n, w in self.widths.items() if w], -1)

    def columns(self, weight: torch.Tensor, *names: str) -> torch.Tensor:
        """The columns of ``weight [out, size]`` that read the named parts, in the layout's order."""
        spans = [self.span(n) for n in self.widths if n in names and self.widths[n]]
        if len(spans) == 1:
            return weight[:, spans[0]]
        return torch.cat([weight[:, s] for s in spans], 1)

    def __repr__(self):
        return f"Layout({', '.join(f'{n}={w}' for n, w in self.widths.items())})"
