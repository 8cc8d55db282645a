"""Refining a compiled guide for one observation: adaptive importance sampling by wake-phase updates.

A guide compiled on prior draws proposes well where the observation looks like those draws.  Data
in the tail of a vague prior does not, and the importance weights collapse onto a few particles.
Refinement adapts a copy of the guide to this one observation before the final importance
sampling run, as reweighted wake-sleep's wake phase (Bornschein and Bengio 2015; Le et al.
2019, *Revisiting reweighted wake-sleep*) does during training, and as adaptive importance
sampling (Cappé et al. 2004, population Monte Carlo) does for a parametric proposal:

1. draw ``particles`` particles from the current proposal and weigh them, ``w_i = p(x_i, y) / q(x_i | y)``;
2. temper the weights, ``w_i^beta`` with the largest ``beta <= 1`` whose effective sample size
   is at least ``min_ess`` of the particles: where the proposal is far off and one particle holds
   all the weight, the update moves towards a tempered posterior that the particles can still
   represent, instead of collapsing the proposal onto that particle (the tempering of
   sequential Monte Carlo samplers, Del Moral, Doucet and Jasra 2006);
3. take ``reuse`` Adam steps on ``-sum_i wbar_i log q(x_i | y)`` with ``wbar`` the normalised
   tempered weights (fixed as drawn): the inclusive KL divergence from the (tempered) posterior
   to ``q``, which keeps the proposal's mass wide, as importance sampling needs.

The copy is trained; the caller's guide is not touched.  The final run weighs its particles
under the model with the refined proposal, so the weights stay exact: refinement changes how
good the estimate is, never what it estimates.  It runs within a budget of updates and seconds,
and stops early once an update's own particles are reliable at the target ESS
(:class:`Refine`).  Why not sbi's sequential rounds or swyft's truncation: both retrain a network
on fresh simulations from a prior narrowed around the observation, round after round; here the
network is already trained, and the particles of one observation move it the rest of the way.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .data import collate
from .nn.proposals import unwrap
from .traces import TraceRecord, site_spec
from .weights import WeightDiagnostics, diagnose

__all__ = ["Refine", "RefinementReport", "refined_copy", "tempered_weights"]


@dataclass(frozen=True)
class Refine:
    """The budget and settings of a refinement (:func:`~infcomp.infer`'s ``refine=``).

    :param steps: at most this many updates (a positive int).
    :param seconds: and at most this long (None: no time limit).
    :param particles: particles drawn for each update (at least 16).
    :param lr: Adam's learning rate on the copy's parameters.
    :param reuse: Adam steps taken on each update's particles (their weights as drawn): drawing
        costs a run of the model per particle, a step on the drawn records far less.
    :param min_ess: the tempered weights' ESS, as a share of ``particles``, each update keeps.
    :param target_ess: stop once an update's untempered weights reach this ESS share with a k-hat
        under its threshold.

    ValueError or TypeError naming the field for a value that cannot be right, when made.
    """

    steps: int = 200
    seconds: float | None = None
    particles: int = 256
    lr: float = 1e-3
    reuse: int = 4
    min_ess: float = 0.5
    target_ess: float = 0.5

    def __post_init__(self):
        for name in ("steps", "particles", "reuse"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise TypeError(f"Refine.{name} must be a positive int, got {v!r}")
        if self.particles < 16:
            raise ValueError(f"Refine.particles must be at least 16 (the weights of fewer say nothing), got {self.particles}")
        if self.seconds is not None and (isinstance(self.seconds, bool) or not isinstance(self.seconds, (int, float))
                                         or not self.seconds > 0):
            raise ValueError(f"Refine.seconds must be a positive number or None, got {self.seconds!r}")
        for name in ("lr", "min_ess", "target_ess"):
            v = getattr(self, name)
            rate = name.endswith("lr")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or (not rate and v > 1):
                raise ValueError(f"Refine.{name} must be a number in (0, {'inf' if rate else 1}], got {v!r}")

    @classmethod
    def of(cls, refine, guided=True) -> Refine | None:
        """``infer``'s ``refine=``: False or None (no refinement), True (the defaults) or a :class:`Refine`;
        ValueError for a refinement without a guide (``guided`` false: the prior proposes)."""
        if refine is None or refine is False:
            return None
        if not guided:
            raise ValueError("refine= adapts a compiled guide to the observation: with guide=None (the prior) there "
                             "is nothing to refine")
        if refine is True:
            return cls()
        if isinstance(refine, cls):
            return refine
        raise TypeError(f"refine= takes True, False or an infcomp.Refine, got {refine!r}")


@dataclass(frozen=True)
class RefinementReport:
    """What a refinement did: the weights' diagnostics of the compiled guide's first update
    (``before``) and of the final run (``after``, set by :func:`~infcomp.infer`), the updates taken,
    the seconds spent, and why it stopped (``"reliable"``, ``"steps"`` or ``"seconds"``)."""

    before: WeightDiagnostics
    after: WeightDiagnostics | None
    steps: int
    seconds: float
    stopped: str

    def describe(self) -> str:
        after = self.after.describe() if self.after is not None else "?"
        return (f"refined in {self.steps} updates ({self.seconds:.1f} s, stopped: {self.stopped}); "
                f"before: {self.before.describe()}; after: {after}")


def tempered_weights(log_weights: torch.Tensor, min_ess: float) -> tuple[torch.Tensor, float]:
    """``(normalised weights, beta)``: ``softmax(beta * log_weights)`` with the largest ``beta`` in
    (0, 1] whose ESS is at least ``min_ess`` of the particles (bisection; the ESS falls as beta
    grows).  ``-inf`` entries weigh 0 at every beta."""
    lw = log_weights.to(torch.float64)
    finite = torch.isfinite(lw)
    n = int(finite.sum())

    def ess(beta):
        w = torch.softmax(torch.where(finite, beta * lw, -math.inf), 0)
        return float(1 / (w * w).sum())

    if ess(1.0) >= min_ess * n:
        beta = 1.0
    else:
        lo, hi = 0.0, 1.0
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if ess(mid) >= min_ess * n else (lo, mid)
        beta = lo
    return torch.softmax(torch.where(finite, beta * lw, -math.inf), 0), beta


def refined_copy(guide, draw, obs: dict, settings: Refine, progress=False):
    """``(refined copy of guide, RefinementReport without after)``, with a bar of the updates where ``progress``.

    ``draw(guide, n)`` draws ``n`` particles with ``guide`` for the observation ``obs`` (the encoder's
    input: observed sites and inputs) and returns ``(log weights [n], [(latent values {site: value},
    priors {site: fn})] per particle)``.
    """
    with tqdm(total=settings.steps, disable=not progress, desc="refining", unit="update") as bar:
        return _refine(guide, draw, obs, settings, bar)


def _refine(guide, draw, obs, settings, bar):
    """:func:`refined_copy`'s loop: at least one draw (so ``before`` is always known), then updates
    until the draw is reliable or the budget is spent."""
    own = guide.copy()
    net = own.network
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    start, before, steps, stopped = time.perf_counter(), None, 0, "steps"
    while steps < settings.steps:
        if steps and settings.seconds is not None and time.perf_counter() - start >= settings.seconds:
            stopped = "seconds"
            break
        with torch.no_grad():
            log_weights, particles = draw(own, settings.particles)
        now = diagnose(log_weights)
        before = before or now
        if now.reliable and now.ess_fraction >= settings.target_ess:
            stopped = "reliable"
            break
        weights, _ = tempered_weights(log_weights, settings.min_ess)
        keep = weights > 0
        kept = [p for p, k in zip(particles, keep.tolist()) if k]
        for spec in _new_specs(net, kept):
            optimizer.add_param_group({"params": net.add_site(spec)})
        records = [_record(net, values, priors, obs) for values, priors in kept]
        batch = collate(records, net.specs).to(own.device)
        with torch.enable_grad():
            for _ in range(settings.reuse):
                log_q = net.log_q(batch)
                loss = -(weights[keep].to(log_q) * log_q).sum()
                if not loss.requires_grad:
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 100.0)
                optimizer.step()
        own.invalidate()
        steps += 1
        bar.set_postfix_str(now.describe(), refresh=False)
        bar.update(1)
    return own, RefinementReport(before, None, steps, time.perf_counter() - start, stopped)


def _new_specs(net, particles) -> list:
    """Address-table entries for the sites the particles drew that the network has none for
    (a site never met in training, proposed from its prior): the copy learns a head for them too."""
    new = {}
    for values, priors in particles:
        for name in values:
            if name not in net.specs and name not in new:
                new[name] = site_spec(name, priors[name], net.families)
    return list(new.values())


def _record(net, values: dict, priors: dict, obs: dict) -> TraceRecord:
    """One particle as the trace record training reads: its latent values in the order drawn, each
    with its prior's context."""
    structure = tuple(values)
    contexts = tuple(net.families[net.specs[n].family].context(unwrap(priors[n])[0]).detach() for n in structure)
    return TraceRecord(structure, tuple(values[n].detach() for n in structure), contexts,
                       {n: v.detach() for n, v in obs.items()})
