"""How far a set of importance weights can be trusted: effective sample size and Pareto k-hat.

Importance sampling is exact in the limit whatever the proposal, but with a proposal far from
the posterior the estimate rests on a few particles and is wrong by any amount, with nothing in
the numbers themselves to show it except the weights.  Two figures read the weights:

* **ESS**, Kish's effective sample size ``(sum w)^2 / sum w^2``: how many equally weighted
  particles the set is worth.  A handful out of thousands is a collapse.
* **Pareto k-hat** (Vehtari, Simpson, Gelman, Yao and Gabry, *Pareto smoothed importance
  sampling*, JMLR 2024): the shape of a generalized Pareto distribution fitted to the largest
  weights.  The weights' distribution has finite variance where ``k < 1/2`` and a finite mean
  where ``k < 1``; the paper shows the estimate's error falls at the usual rate only where
  ``k-hat < min(1 - 1 / log10(S), 0.7)`` for ``S`` particles, and that past it more particles
  barely help.  Unlike the ESS, which is computed from the same heavy-tailed weights it judges
  and so can look fine by luck, k-hat sees the tail: it is the primary figure.

:func:`diagnose` gives both, with the verdict :attr:`WeightDiagnostics.reliable`: k-hat at most
its threshold and an ESS of at least ``min(20, S / 10)`` (the floor catches a collapse where the
tail has too few distinct values to fit: a discrete posterior whose mass sits on a few particles).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["UnreliableWeightsWarning", "warn_unreliable", "WeightDiagnostics", "WeightTally", "figures", "diagnose", "effective_sample_size", "pareto_khat", "khat_threshold", "ess_floor"]


def effective_sample_size(log_weights) -> float:
    """Kish's ESS ``(sum w)^2 / sum w^2`` of unnormalised log weights (``-inf`` entries weigh 0)."""
    lw = torch.as_tensor(log_weights, dtype=torch.float64)
    return float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)))


def khat_threshold(num_samples: int) -> float:
    """The largest k-hat at which ``num_samples`` particles give a reliable estimate:
    ``min(1 - 1 / log10(S), 0.7)`` (Vehtari et al. 2024, section 3)."""
    if num_samples <= 10:
        return 0.0
    return min(1 - 1 / math.log10(num_samples), 0.7)


def ess_floor(num_samples: int) -> float:
    """The ESS below which a set of ``num_samples`` particles is called collapsed: ``min(20, S / 10)``."""
    return min(20.0, num_samples / 10)


def pareto_khat(log_weights) -> float:
    """The Pareto shape k-hat of the largest ``M = ceil(min(S / 5, 3 sqrt(S)))`` of ``S`` weights,
    fitted by Zhang and Stephens' (2009) empirical Bayes estimate with Vehtari et al.'s weak
    prior towards 0.5 (the estimate ``loo`` and ArviZ make).  ``-inf`` weights count as 0.

    NaN where it cannot be fitted: fewer than 5 of the tail's weights stand above its cutoff
    (too few particles, or ties: a discrete proposal, or a perfect one, where every weight is equal).
    """
    lw = torch.as_tensor(log_weights, dtype=torch.float64).flatten().numpy()
    lw = lw[np.isfinite(lw)]
    s = len(lw)
    m = int(math.ceil(min(0.2 * s, 3 * math.sqrt(s))))
    if s < 5 or m < 5:
        return math.nan
    x = lw - lw.max()
    cutoff = max(np.sort(x)[-m - 1], math.log(np.finfo(float).tiny))
    tail = np.sort(x[x > cutoff])
    if len(tail) < 5:
        return math.nan
    exceed = np.exp(tail) - math.exp(cutoff)
    if not exceed[-1] > 0 or exceed[int(len(exceed) / 4 + 0.5) - 1] <= 0:
        return math.nan
    return _gpd_shape(exceed)


def _gpd_shape(x: np.ndarray) -> float:
    """Zhang and Stephens' posterior-mean estimate of a generalized Pareto shape from the sorted,
    positive exceedances ``x``, shrunk towards 0.5 by a prior worth 10 observations."""
    n = len(x)
    m = 30 + int(n ** 0.5)
    b = 1 - np.sqrt(m / (np.arange(1, m + 1, dtype=float) - 0.5))
    b = b / (3 * x[int(n / 4 + 0.5) - 1]) + 1 / x[-1]
    k = np.log1p(-b[:, None] * x).mean(axis=1)
    profile = n * (np.log(-(b / k)) - k - 1)
    with np.errstate(over="ignore"):  # a far worse candidate's term overflows to inf: its weight is 0
        w = 1 / np.exp(profile - profile[:, None]).sum(axis=1)
    keep = w >= 10 * np.finfo(float).eps
    b, w = b[keep], w[keep] / w[keep].sum()
    k_post = float(np.log1p(-np.sum(b * w) * x).mean())
    return (n * k_post + 10 * 0.5) / (n + 10)


@dataclass(frozen=True)
class WeightDiagnostics:
    """The figures of one set of importance weights and what they say.

    ``num_samples`` counts every particle (weight 0 included), ``ess`` is Kish's effective sample
    size, ``khat`` the Pareto shape of the tail (NaN where it cannot be fitted: see
    :func:`pareto_khat`), ``khat_threshold`` and ``ess_floor`` the limits for this many particles.
    """

    num_samples: int
    ess: float
    khat: float
    khat_threshold: float
    ess_floor: float

    @property
    def ess_fraction(self) -> float:
        return self.ess / self.num_samples

    @property
    def reliable(self) -> bool:
        """k-hat at most its threshold (or not fittable) and the ESS at least its floor."""
        return not self.khat > self.khat_threshold and self.ess >= self.ess_floor

    def problems(self) -> list:
        """What makes the weights unreliable, each a phrase naming the figure and its limit ([] where none)."""
        out = []
        if self.khat > self.khat_threshold:
            out.append(f"Pareto k-hat {self.khat:.2f} > {self.khat_threshold:.2f}"
                       + (" (the weights have no finite mean)" if self.khat >= 1 else ""))
        if self.ess < self.ess_floor:
            out.append(f"ESS {self.ess:.1f} of {self.num_samples} < {self.ess_floor:.3g}")
        return out

    def describe(self) -> str:
        """One line: ``ESS 812.3/2000 (41%), k-hat 0.31: reliable``."""
        verdict = "reliable" if self.reliable else "UNRELIABLE"
        return (f"ESS {self.ess:.1f}/{self.num_samples} ({100 * self.ess_fraction:.2g}%), "
                f"k-hat {self.khat:.2f}: {verdict}")

    def to_dict(self) -> dict:
        return {"num_samples": self.num_samples, "ess": self.ess, "ess_fraction": self.ess_fraction, "khat": self.khat,
                "khat_threshold": self.khat_threshold, "ess_floor": self.ess_floor, "reliable": self.reliable}


def diagnose(log_weights) -> WeightDiagnostics:
    """:class:`WeightDiagnostics` of unnormalised log importance weights ``[S]``."""
    lw = torch.as_tensor(log_weights, dtype=torch.float64).flatten()
    s = len(lw)
    return WeightDiagnostics(s, effective_sample_size(lw), pareto_khat(lw), khat_threshold(s), ess_floor(s))


@dataclass(frozen=True)
class WeightTally:
    """The importance weights of many posteriors, one per observation: ``diagnostics``, each
    one's :class:`WeightDiagnostics` in order, and how many are unreliable."""

    diagnostics: tuple = ()

    @property
    def unreliable(self) -> int:
        return sum(not d.reliable for d in self.diagnostics)

    def limits(self) -> tuple:
        """``(k-hat threshold, ESS floor)`` shared by every posterior (they share a particle count),
        else ``(None, None)``."""
        limits = {(d.khat_threshold, d.ess_floor) for d in self.diagnostics}
        return limits.pop() if len(limits) == 1 else (None, None)

    def describe(self, unit="observations") -> str:
        """One line: ``weights unreliable on 3 of 500 images (k-hat > 0.70 or ESS < 20)``."""
        khat, ess = self.limits()
        why = "k-hat or ESS past its limit" if khat is None else f"k-hat > {khat:.2f} or ESS < {ess:.3g}"
        return f"weights unreliable on {self.unreliable} of {len(self.diagnostics)} {unit} ({why})"

    def to_dict(self) -> dict:
        """``{"weighted", "unreliable", "khat_threshold", "ess_floor"}`` (the limits as :meth:`limits`)."""
        khat, ess = self.limits()
        return {"weighted": len(self.diagnostics), "unreliable": self.unreliable, "khat_threshold": khat,
                "ess_floor": ess}


def figures(obj) -> dict:
    """A :class:`WeightDiagnostics` or :class:`WeightTally` as its ``to_dict()``
    ready for JSON, a k-hat that could not be fitted (NaN) as None: ``json.dumps``' ``default``.
    TypeError for anything else."""
    if not isinstance(obj, (WeightDiagnostics, WeightTally)):
        raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in obj.to_dict().items()}


class UnreliableWeightsWarning(UserWarning):
    """An importance-sampling posterior whose weights are unreliable (:attr:`WeightDiagnostics.reliable`)."""


def warn_unreliable(posterior, stacklevel: int = 1) -> bool:
    """Warn, naming the figures and what to do next, where ``posterior``'s weights are unreliable;
    returns whether it warned."""
    d = posterior.diagnostics
    if d.reliable:
        return False
    refined = getattr(posterior, "refinement", None)
    if refined is None:
        advice = ("refine the proposal for this observation (infer(..., refine=True), or infcomp.Refine(steps=..., "
                  "seconds=...) for a larger budget), or compile the guide longer or on data more like this "
                  "observation; more particles help little while k-hat is over 0.7")
    else:
        advice = (f"the refinement ({refined.steps} updates, stopped: {refined.stopped}) did not reach reliable "
                  "weights: give it a larger budget (infer(..., refine=infcomp.Refine(steps=..., seconds=...)))")
    warnings.warn(
        f"the importance weights are unreliable ({'; '.join(d.problems())}): the posterior rests on a few particles, "
        f"so its means, intervals and log evidence may be far off. To do: {advice}.",
        UnreliableWeightsWarning, stacklevel=stacklevel + 1)
    return True
