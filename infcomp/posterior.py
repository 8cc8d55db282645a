"""The weighted posterior that importance sampling returns.

Keeps each sample's latent values and log weight, nothing else: no traces, no
copies of the observation.  Sites that appear in only some samples (variable
structure) keep the indices of the samples they appear in.  Every posterior says how far its
weights can be trusted (:attr:`Posterior.diagnostics`: ESS and Pareto k-hat, :mod:`~infcomp.weights`).
"""

from __future__ import annotations

import math
import numbers

import torch

from .weights import WeightDiagnostics, diagnose

__all__ = ["Posterior", "Marginal"]


def _probabilities(q) -> torch.Tensor:
    """``q`` (a number, or a list, tuple, tensor or array of them) as a float64 tensor, checked to lie in [0, 1]."""
    items = q if isinstance(q, (list, tuple)) else [q]
    numeric = all((isinstance(x, numbers.Real) and not isinstance(x, bool)) or hasattr(x, "__array__") or torch.is_tensor(x)
                  for x in items)
    try:
        t = torch.as_tensor(q, dtype=torch.float64) if numeric else None
    except (TypeError, ValueError, RuntimeError):
        t = None
    if t is None:
        raise TypeError(f"quantile's q must be a probability in [0, 1] or a sequence of them, got {q!r}")
    if bool((torch.isnan(t) | (t < 0) | (t > 1)).any()):
        raise ValueError(f"quantile's q must be in [0, 1], got {q!r}")
    return t


class Marginal:
    """A weighted sample of one site's value.

    ``values[i]`` has weight ``weights[i]`` (normalised over the samples where the
    site exists); ``presence`` is the posterior probability that the site exists.
    """

    def __init__(self, name, values, weights, presence=1.0):
        self.name = name
        self.values = values
        self.weights = weights
        self.presence = float(presence)

    def _w(self):
        return self.weights.reshape((-1,) + (1,) * (self.values.dim() - 1)).to(torch.float64)

    @property
    def mean(self):
        return (self._w() * self.values.to(torch.float64)).sum(0)

    @property
    def variance(self):
        d = self.values.to(torch.float64) - self.mean
        return (self._w() * d * d).sum(0)

    @property
    def std(self):
        return self.variance.sqrt()

    def sample(self, n, generator=None):
        idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return self.values[idx]

    def quantile(self, q):
        """Weighted quantile(s) of a scalar site: ``q`` a probability in [0, 1], or a sequence of them.

        TypeError if ``q`` is not a number or a sequence of numbers; ValueError if one is outside [0, 1] or NaN.
        """
        if self.values.dim() != 1:
            raise ValueError(f"quantile needs a scalar site; {self.name!r} has shape {tuple(self.values.shape[1:])}")
        q = _probabilities(q)
        v, order = torch.sort(self.values.to(torch.float64))
        cdf = torch.cumsum(self.weights.to(torch.float64)[order], 0)
        idx = torch.searchsorted(cdf, q * cdf[-1]).clamp(max=len(v) - 1)
        return v[idx]

    def histogram(self, bins=30, range=None):
        """``(density, edges)`` of a scalar site, weighted."""
        v = self.values.to(torch.float64).reshape(-1)
        lo, hi = range if range is not None else (float(v.min()), float(v.max()))
        if hi <= lo:
            hi = lo + 1.0
        density, edges = torch.histogram(v, bins=bins, range=(lo, hi), weight=self.weights.to(torch.float64), density=True)
        return density, edges

    def probs(self):
        """``{value: probability}`` of a discrete site (integer or boolean values, or whole-number floats such as
        a Bernoulli's); ValueError for a continuous one, whose values would each be their own entry."""
        if self.values.dtype.is_floating_point and not bool((self.values == self.values.round()).all()):
            raise ValueError(f"probs is for discrete sites; {self.name!r} takes continuous values: "
                             "use histogram() or quantile() for its distribution")
        out = {}
        for v, w in zip(self.values.tolist(), self.weights.tolist()):
            key = tuple(v) if isinstance(v, list) else v
            out[key] = out.get(key, 0.0) + w
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def plot(self, path=None, ax=None, bins=40, exact=None, label="posterior"):
        """Histogram of a scalar site; ``exact``: an optional ``callable(x) -> density`` drawn over it."""
        own = ax is None
        if own:  # a Figure without pyplot: no backend switched, no global figure list
            from matplotlib.figure import Figure

            fig = Figure(figsize=(5, 3.2))
            ax = fig.subplots()
        density, edges = self.histogram(bins)
        ax.stairs(density.numpy(), edges.numpy(), fill=True, alpha=0.5, label=label)
        if exact is not None:
            xs = torch.linspace(float(edges[0]), float(edges[-1]), 200)
            ax.plot(xs.numpy(), exact(xs).numpy(), "k-", lw=1.5, label="exact")
        ax.set_xlabel(self.name)
        ax.set_ylabel("density")
        ax.legend()
        if own:
            fig.tight_layout()
            if path is not None:
                fig.savefig(path, dpi=120)
        return ax

    def __repr__(self):
        return f"Marginal({self.name!r}, n={len(self.weights)}, presence={self.presence:.3g})"


class Posterior:
    """A weighted sample of the latent sites (and of ``pyro.deterministic`` sites, as Pyro's
    ``Predictive`` reports them).  ``refinement``: where :func:`~infcomp.infer` refined the proposal
    for this observation first, its :class:`~infcomp.refine.RefinementReport` (None otherwise)."""

    def __init__(self, log_weights: torch.Tensor, samples: dict, refinement=None):
        """``samples``: site -> ``(indices, values)``, ``values[j]`` from sample ``indices[j]``."""
        self.log_weights = log_weights
        self._samples = samples
        self.refinement = refinement
        self._diagnostics = None

    @property
    def num_samples(self):
        return len(self.log_weights)

    @property
    def sites(self):
        return list(self._samples)

    @property
    def weights(self):
        """Normalised importance weights."""
        return torch.softmax(self.log_weights.to(torch.float64), 0)

    @property
    def diagnostics(self) -> WeightDiagnostics:
        """How far the weights can be trusted: ESS, Pareto k-hat and the verdict ``.reliable``
        (:func:`~infcomp.weights.diagnose`)."""
        if self._diagnostics is None:
            self._diagnostics = diagnose(self.log_weights)
        return self._diagnostics

    @property
    def ess(self) -> float:
        """Effective sample size ``(sum w)^2 / sum w^2``."""
        return self.diagnostics.ess

    @property
    def khat(self) -> float:
        """The Pareto k-hat of the weights (:func:`~infcomp.weights.pareto_khat`)."""
        return self.diagnostics.khat

    @property
    def log_evidence(self) -> float:
        """``log p(observation)`` estimate: log of the mean unnormalised weight."""
        return float(torch.logsumexp(self.log_weights.to(torch.float64), 0) - math.log(self.num_samples))

    def marginal(self, name) -> Marginal:
        if name not in self._samples:
            raise KeyError(f"no latent site {name!r} in this posterior; its sites: {self.sites}")
        idx, values = self._samples[name]
        lw = self.log_weights.to(torch.float64)
        w = torch.softmax(lw[idx], 0) if len(idx) else torch.zeros(0, dtype=torch.float64)
        presence = float(torch.exp(torch.logsumexp(lw[idx], 0) - torch.logsumexp(lw, 0))) if len(idx) else 0.0
        return Marginal(name, values, w, presence)

    def values(self, i) -> dict:
        """Sample ``i``'s latent values, ``{site: value}``: ``i`` an integer in ``-num_samples .. num_samples - 1``
        (negative counts from the end); TypeError for a non-integer, IndexError outside that range."""
        if isinstance(i, bool) or not isinstance(i, (numbers.Integral, torch.Tensor)) or (torch.is_tensor(i) and (
                i.numel() != 1 or i.dtype.is_floating_point)):
            raise TypeError(f"sample index i must be an integer, got {i!r}")
        i = int(i)
        if not -self.num_samples <= i < self.num_samples:
            raise IndexError(f"sample index i={i} is out of range: this posterior has {self.num_samples} samples, "
                             f"indices 0 .. {self.num_samples - 1} (or -{self.num_samples} .. -1 from the end)")
        i %= self.num_samples
        return {n: vals[j] for n, (idx, vals) in self._by_sample().items() for j in [idx.get(i)] if j is not None}

    def _by_sample(self):
        if getattr(self, "_index", None) is None:
            self._index = {n: ({int(i): j for j, i in enumerate(idx.tolist())}, vals) for n, (idx, vals) in self._samples.items()}
        return self._index

    def probabilities(self, fn) -> dict:
        """Posterior probability of each value of ``fn(values)`` (a discrete summary), most probable first.

        For example ``post.probabilities(lambda v: int(v["n"] > 2))`` gives the posterior of an event.
        """
        totals = {}
        for i, w in enumerate(self.weights.tolist()):
            key = fn(self.values(i))
            totals[key] = totals.get(key, 0.0) + w
        return dict(sorted(totals.items(), key=lambda kv: -kv[1]))

    def mean(self, name):
        return self.marginal(name).mean

    def std(self, name):
        return self.marginal(name).std

    def summary(self, prob: float = 0.9) -> str:
        """A table of each site's weighted mean, standard deviation and central ``prob`` interval
        (vector sites element by element, at most 8 shown), under a line on the weights'
        reliability; a string to print."""
        lo, hi = (1 - prob) / 2, (1 + prob) / 2
        head = f"{'site':<16}{'mean':>11}{'std':>11}{f'{100 * lo:.3g}%':>11}{f'{100 * hi:.3g}%':>11}{'presence':>10}"
        rows = [f"weights: {self.diagnostics.describe()}", head]
        for name in self.sites:
            m = self.marginal(name)
            if not len(m.weights):
                rows.append(f"{name:<16}{'(never drawn)':>44}")
                continue
            flat = m.values.reshape(len(m.values), -1).to(torch.float64)
            for j in range(min(flat.shape[1], 8)):
                e = Marginal(name, flat[:, j], m.weights)
                label = name if flat.shape[1] == 1 and m.values.dim() == 1 else f"{name}[{j}]"
                q = e.quantile([lo, hi])
                rows.append(f"{label:<16}{float(e.mean):>11.4g}{float(e.std):>11.4g}{float(q[0]):>11.4g}"
                            f"{float(q[1]):>11.4g}{m.presence:>10.3g}")
            if flat.shape[1] > 8:
                rows.append(f"{'':<16}... {flat.shape[1] - 8} more elements")
        return "\n".join(rows)

    def __repr__(self):
        d = self.diagnostics
        return (f"Posterior(num_samples={self.num_samples}, ess={d.ess:.1f}, khat={d.khat:.2f}, "
                f"reliable={d.reliable}, log_evidence={self.log_evidence:.4g}, sites={self.sites})")
