"""Recalibrate a stated probability on the model's own draws (Platt scaling).

A guide trained by ``E_p(x, y)[-log q(x | y)]`` covers the posterior's mass before it concentrates
on it, and its network fits some observations better than others: the probability it gives its
best answer (:func:`~infcomp.guide_marginal`'s top value) can be too low where it is sure and too
high where it is not.  Draws ``(x, y)`` from the model say how often that answer is right, so a
map from stated probability to frequency right can be fitted on them and applied to any new
observation: here ``logit p' = slope * logit p + intercept`` (Platt 1999), fitted by maximum
likelihood with a Gaussian prior of ``prior_strength`` pseudo-observations pulling it towards the
identity, so that a handful of draws, or draws all right or all wrong, still give a finite map.

The map is fitted on draws from the model alone, never on the data to be read; it holds for data
like the model's draws, which is what the model assumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Recalibration", "fit_recalibration"]

_EPS = 1e-6


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(_EPS, 1 - _EPS)
    return p.log() - (-p).log1p()


@dataclass(frozen=True)
class Recalibration:
    """``p -> sigmoid(slope * logit(p) + intercept)``; the identity is ``Recalibration(1.0, 0.0)``.
    ``num_draws``: how many (stated probability, right) pairs it was fitted on."""

    slope: float = 1.0
    intercept: float = 0.0
    num_draws: int = 0

    def __call__(self, p):
        """The recalibrated probability of a float or a tensor of them, in ``[0, 1]``."""
        t = torch.as_tensor(p, dtype=torch.float64)
        out = torch.sigmoid(self.slope * _logit(t) + self.intercept)
        return float(out) if out.dim() == 0 else out


def fit_recalibration(stated, right, prior_strength: float = 1.0, steps: int = 50) -> Recalibration:
    """The :class:`Recalibration` that best predicts ``right`` (bools) from ``stated`` (probabilities
    in ``[0, 1]``), by Newton's method on the penalised log likelihood.

    ValueError if the two differ in length, are empty, a stated probability is outside ``[0, 1]``
    (naming it), or the fit does not converge.
    """
    p = torch.as_tensor(stated, dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(right, dtype=torch.float64).reshape(-1)
    if len(p) != len(y) or not len(p):
        raise ValueError(f"need as many stated probabilities as outcomes, and at least one: got {len(p)} and {len(y)}")
    outside = (~((p >= 0) & (p <= 1))).nonzero().flatten().tolist()
    if outside:
        raise ValueError(f"stated probabilities must lie in [0, 1]: number {outside[0]} is {float(p[outside[0]])}")
    if not prior_strength > 0 or isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"need prior_strength > 0 and steps a positive int, got {prior_strength!r} and {steps!r}")
    x = torch.stack([_logit(p), torch.ones_like(p)], -1)  # [N, 2]
    prior = torch.tensor([1.0, 0.0], dtype=torch.float64)
    theta = prior.clone()
    for _ in range(steps):
        q = torch.sigmoid(x @ theta)
        grad = x.T @ (y - q) - prior_strength * (theta - prior)
        hess = -(x.T * (q * (1 - q))) @ x - prior_strength * torch.eye(2, dtype=torch.float64)
        step = torch.linalg.solve(hess, grad)
        theta = theta - step
        if float(step.abs().max()) < 1e-10:
            break
    else:
        raise ValueError(f"the recalibration did not converge in {steps} Newton steps")
    if not all(math.isfinite(v) for v in theta.tolist()):
        raise ValueError("the recalibration did not converge")
    return Recalibration(float(theta[0]), float(theta[1]), len(p))
