"""Is a compiled guide any good?  Simulation-based calibration on the model's own draws.

Draw ``(latents, observation)`` pairs from the model's prior and infer each observation.  If
the inference is right, each true latent is one more draw from its posterior, so (Talts et
al. 2018, *Validating Bayesian inference algorithms with simulation-based calibration*):

* **ranks**: the rank of the true value among ``L`` posterior draws is uniform on ``0 .. L``
  (ties, for discrete values, broken at random); a chi-square test of the ranks binned into
  ``bins`` equal bins gives a p-value (small: the ranks are not uniform);
* **coverage**: the central credible interval at level ``l`` holds the true value in a share
  ``l`` of the draws (continuous values);
* **reliability**: where a read states probability ``p`` for its most probable value, that
  value is the truth a share ``p`` of the time; summarised by the expected calibration error
  (``ece``: the bins' gap between stated probability and accuracy, weighted by their size) and
  the Brier score of that value (discrete values, and discrete functions of the latents, such
  as a string spelled by several sites).

Every figure is given for two reads of the same particles: ``"q"``, the guide's own proposal
(its particles unweighted, what the network alone believes), and ``"posterior"``, the
importance-weighted posterior.  A site that exists in only some traces is checked on the draws
whose true trace has it, against its posterior given that it exists.  Vector sites are checked
element by element (``"z[0]"``, ``"z[1]"``, ...).

Each draw's posterior is inferred without :func:`~infcomp.infer`'s warning (one per draw would
bury the figures); instead :attr:`Calibration.weights`, a :class:`~infcomp.weights.WeightTally`, keeps every
draw's :class:`~infcomp.weights.WeightDiagnostics` and counts the draws whose weights are
unreliable: there the ``"posterior"`` read rests on a few particles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .infer import infer
from .posterior import Marginal, Posterior
from .rng import fork_rng
from .traces import PriorSampler
from .weights import WeightTally

__all__ = ["Check", "Calibration", "calibration"]

READS = ("q", "posterior")


@dataclass
class Check:
    """One quantity's calibration under one read (``"q"`` or ``"posterior"``)."""

    ranks: list = field(default_factory=list)  # the true value's rank among the L draws, per prior draw
    covered: dict = field(default_factory=dict)  # level -> [bool per prior draw]
    stated: list = field(default_factory=list)  # the most probable value's probability, per prior draw
    right: list = field(default_factory=list)  # whether that value was the truth

    def rank_p_value(self, num_ranks: int, bins: int) -> float | None:
        """Chi-square test of uniform ranks on ``0 .. num_ranks - 1`` in ``bins`` equal bins."""
        if len(self.ranks) < 2 * bins:
            return None
        r = torch.tensor(self.ranks, dtype=torch.float64)
        counts = torch.bincount((r * bins / num_ranks).long().clamp(max=bins - 1), minlength=bins).double()
        expected = len(r) / bins
        stat = float(((counts - expected) ** 2 / expected).sum())
        return float(torch.special.gammaincc(torch.tensor((bins - 1) / 2.0, dtype=torch.float64),
                                             torch.tensor(stat / 2, dtype=torch.float64)))

    def coverage(self) -> dict:
        return {level: sum(v) / len(v) for level, v in self.covered.items() if v}

    def reliability(self, bins: int = 10) -> dict:
        """``{"accuracy", "mean_probability", "ece", "brier"}`` of the most probable values, or {}."""
        if not self.stated:
            return {}
        p = torch.tensor(self.stated, dtype=torch.float64)
        ok = torch.tensor(self.right, dtype=torch.float64)
        which = (p * bins).long().clamp(max=bins - 1)
        ece = sum(float((ok[which == b].mean() - p[which == b].mean()).abs()) * int((which == b).sum()) / len(p)
                  for b in range(bins) if bool((which == b).any()))
        return {"accuracy": float(ok.mean()), "mean_probability": float(p.mean()), "ece": ece,
                "brier": float(((p - ok) ** 2).mean())}


@dataclass
class Calibration:
    """:func:`calibration`'s result: ``checks[name][read]`` is a :class:`Check`."""

    checks: dict
    kinds: dict  # name -> "continuous" or "discrete"
    num_draws: int
    num_ranks: int  # L + 1: the ranks lie in 0 .. L
    bins: int
    weights: WeightTally = field(default_factory=WeightTally)  # each draw's posterior weights, in draw order

    def failures(self, read="posterior", alpha=0.01, sds=3.0) -> list:
        """What fails under ``read``, one line each (empty: the check passes): a rank test with
        p-value below ``alpha``, or a coverage more than ``sds`` binomial standard errors from its level."""
        out = []
        for name, reads in self.checks.items():
            c = reads[read]
            p = c.rank_p_value(self.num_ranks, self.bins)
            if p is not None and p < alpha:
                out.append(f"{name}: ranks not uniform (chi-square p = {p:.2g})")
            for level, share in c.coverage().items():
                n = len(c.covered[level])
                if abs(share - level) > sds * (level * (1 - level) / n) ** 0.5:
                    out.append(f"{name}: the {level:.0%} interval covers {share:.1%} of {n} draws")
        return out

    def plot(self, path, names=None, max_rows=8):
        """Save a PNG at ``path``: per quantity (``names``, default the first ``max_rows``), the rank
        histogram of both reads against the uniform band (99% of bin counts fall inside it when the
        ranks are uniform), and the coverage curve (continuous) or the reliability diagram (discrete)."""
        from matplotlib.figure import Figure  # a Figure without pyplot: no backend switched

        names = list(self.checks)[:max_rows] if names is None else list(names)
        fig = Figure(figsize=(9, 2.6 * len(names)))
        axes = fig.subplots(len(names), 2, squeeze=False)
        for (rank_ax, other_ax), name in zip(axes, names):
            self._plot_ranks(rank_ax, name)
            if self.kinds[name] == "continuous":
                self._plot_coverage(other_ax, name)
            else:
                self._plot_reliability(other_ax, name)
        fig.tight_layout()
        fig.savefig(path, dpi=110)

    def _plot_ranks(self, ax, name):
        for read, style in zip(READS, ("C1", "C0")):
            ranks = self.checks[name][read].ranks
            if ranks:
                ax.hist(ranks, bins=self.bins, range=(0, self.num_ranks), histtype="step", color=style, label=read)
        n = len(self.checks[name]["posterior"].ranks)
        if n:
            mean, sd = n / self.bins, (n / self.bins * (1 - 1 / self.bins)) ** 0.5
            ax.axhspan(max(mean - 2.58 * sd, 0), mean + 2.58 * sd, color="0.85", zorder=0)
        ax.set_title(f"{name}: ranks of the truth", size=9)
        ax.legend(prop={"size": 7})

    def _plot_coverage(self, ax, name):
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        for read, style in zip(READS, ("C1", "C0")):
            cov = self.checks[name][read].coverage()
            ax.plot(list(cov), list(cov.values()), "o-", color=style, label=read)
        ax.set_xlabel("interval level", size=8)
        ax.set_ylabel("share covering the truth", size=8)
        ax.set_title(f"{name}: coverage", size=9)
        ax.legend(prop={"size": 7})

    def _plot_reliability(self, ax, name, bins=10):
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        for read, style in zip(READS, ("C1", "C0")):
            c = self.checks[name][read]
            p, ok = torch.tensor(c.stated, dtype=torch.float64), torch.tensor(c.right, dtype=torch.float64)
            which = (p * bins).long().clamp(max=bins - 1)
            pts = [(float(p[which == b].mean()), float(ok[which == b].mean())) for b in range(bins) if bool((which == b).any())]
            if pts:
                ax.plot(*zip(*pts), "o-", color=style, label=f"{read} (ECE {c.reliability(bins)['ece']:.3f})")
        ax.set_xlabel("stated probability", size=8)
        ax.set_ylabel("share right", size=8)
        ax.set_title(f"{name}: reliability", size=9)
        ax.legend(prop={"size": 7})

    def summary(self) -> dict:
        """A JSON-ready ``{name: {"kind", read: {"rank_p_value", "coverage", reliability...}}}``."""
        out = {}
        for name, reads in self.checks.items():
            out[name] = {"kind": self.kinds[name], "draws": len(reads["posterior"].ranks or reads["posterior"].stated)}
            for read, c in reads.items():
                out[name][read] = {"rank_p_value": c.rank_p_value(self.num_ranks, self.bins),
                                   "coverage": c.coverage(), **c.reliability()}
        return out


def calibration(model, guide, num_draws=200, num_samples=100, *, functions=None, levels=(0.5, 0.8, 0.95),
                rank_draws=49, bins=10, model_args=(), model_kwargs=None, seed=0) -> Calibration:
    """Simulation-based calibration of ``guide`` on ``num_draws`` prior draws of ``model``, each
    inferred with ``num_samples`` particles (see the module's doc for what is checked), without a
    warning per draw: the result's ``weights`` keeps each draw's weight diagnostics instead.

    :param functions: ``{name: fn}``, each ``fn(values) -> hashable`` a discrete summary of a
        particle's ``{site: value}`` (checked for reliability and ranks by its value's order).
    :param rank_draws: ``L``, the posterior draws each rank is taken among (resampled by weight).
    The draws, particles and tie-breaks are seeded by ``seed``; the caller's RNG is left as it was.
    """
    model_kwargs = dict(model_kwargs or {})
    functions = dict(functions or {})
    checks, kinds, weights = {}, {}, []
    with fork_rng(seed):
        sampler = PriorSampler(model, guide.observe, model_args, model_kwargs, guide.network.families,
                               specs=guide.network.specs)
        gen = torch.Generator().manual_seed(seed)
        for i in range(num_draws):
            record = sampler.sample()
            post = infer(model, guide, record.observation, num_samples, model_args=model_args,
                         model_kwargs=model_kwargs, seed=seed * 1_000_003 + i, warn=False)
            weights.append(post.diagnostics)
            reads = {"q": Posterior(torch.zeros_like(post.log_weights), post._samples), "posterior": post}
            truth = dict(zip(record.structure, record.values))
            for name, value in truth.items():
                for label, true, pick in _elements(name, value):
                    kinds[label] = "discrete" if not true.is_floating_point() or _integral(guide, name) else "continuous"
                    for read, p in reads.items():
                        if name in p.sites:
                            _check(checks, label, read, p.marginal(name), pick, true, kinds[label], levels,
                                   rank_draws, gen)
            for label, fn in functions.items():
                kinds[label] = "discrete"
                for read, p in reads.items():
                    _check_function(checks, label, read, p.probabilities(fn), fn(truth), rank_draws, gen)
    return Calibration(checks, kinds, num_draws, rank_draws + 1, bins, WeightTally(tuple(weights)))


def _integral(guide, name) -> bool:
    spec = guide.network.specs.get(name)
    return spec is not None and spec.family in ("categorical", "bernoulli", "binomial", "poisson_mixture")


def _elements(name, value):
    """``(label, true scalar, index into a sample's values)`` for each element of a site's value."""
    if value.dim() == 0:
        return [(name, value, ())]
    flat = value.reshape(-1)
    return [(f"{name}[{j}]", flat[j], j) for j in range(len(flat))]


def _check(checks, label, read, marginal, pick, true, kind, levels, rank_draws, gen):
    c = checks.setdefault(label, {r: Check() for r in READS})[read]
    values = marginal.values if pick == () else marginal.values.reshape(len(marginal.values), -1)[:, pick]
    element = Marginal(label, values, marginal.weights)
    t = float(true)
    c.ranks.append(_rank(element.sample(rank_draws, gen).double(), t, gen))
    if kind == "continuous":
        for level in levels:
            lo, hi = element.quantile([(1 - level) / 2, (1 + level) / 2]).tolist()
            c.covered.setdefault(level, []).append(lo <= t <= hi)
    else:
        best, p = next(iter(element.probs().items()))
        c.stated.append(p)
        c.right.append(best == t)


def _check_function(checks, label, read, probs: dict, truth, rank_draws, gen):
    c = checks.setdefault(label, {r: Check() for r in READS})[read]
    best = next(iter(probs))
    c.stated.append(probs[best])
    c.right.append(best == truth)
    values = list(probs)  # ranks by the values' order where they have one; else the reliability alone
    try:
        ordered = sorted(set(values) | {truth})
    except TypeError:
        return
    index = {v: k for k, v in enumerate(ordered)}
    w = torch.tensor([probs[v] for v in values], dtype=torch.float64)
    draws = torch.tensor([index[values[k]] for k in torch.multinomial(w, rank_draws, replacement=True,
                                                                       generator=gen).tolist()])
    c.ranks.append(_rank(draws, index[truth], gen))


def _rank(draws, t, gen) -> int:
    """The rank of ``t`` among ``draws``, ties broken at random."""
    ties = int((draws == t).sum())
    return int((draws < t).sum()) + int(torch.randint(ties + 1, (), generator=gen))
