"""Balance what each site group teaches the shared observation embedding.

The loss is a sum over addresses, and Adam normalises the *summed* gradient of every
shared weight.  When some addresses send the observation embedding gradients ten times
larger than others (sharpening a continuous nuisance parameter, say, against choosing a
category), the small ones barely move it.  :class:`GradientBalancer` rescales, in the
backward pass only, the gradient each site group sends into the embedding so that every
group's contribution has the same running norm.  Heads and the LSTM get their gradients
unchanged, and the forward pass (so the loss, and the optimum of every head) is untouched:
it changes only how the shared features are shaped on the way there.
"""

from __future__ import annotations

import math

import torch


class _Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, balancer, key):
        ctx.balancer, ctx.key = balancer, key
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return ctx.balancer.rescale(ctx.key, grad), None, None


class GradientBalancer(torch.nn.Module):
    """The running norms are module state (``get_extra_state``), so they are saved with the
    guide and a resumed run rescales exactly as a continued one would."""

    def __init__(self, decay=0.95):
        super().__init__()
        self.decay = decay
        self.norms = {}  # group key (a site group's signature) -> running gradient norm

    def get_extra_state(self):
        return [[family, list(shape), k, norm] for (family, shape, k), norm in self.norms.items()]

    def set_extra_state(self, state):
        self.norms = {(family, tuple(shape), k): norm for family, shape, k, norm in state}

    def forward(self, x, key):
        """Identity on ``x``; in the backward pass, the gradient is rescaled for group ``key``."""
        if not torch.is_grad_enabled() or not x.requires_grad:
            return x
        return _Scale.apply(x, self, key)

    def rescale(self, key, grad):
        norm = float(grad.norm())
        old = self.norms.get(key)
        self.norms[key] = norm if old is None else self.decay * old + (1 - self.decay) * norm
        if len(self.norms) < 2 or self.norms[key] <= 0:
            return grad
        target = math.exp(sum(math.log(max(n, 1e-12)) for n in self.norms.values()) / len(self.norms))
        return grad * min(max(target / self.norms[key], 1e-2), 1e2)
