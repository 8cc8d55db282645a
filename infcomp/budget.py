"""The validation set of :func:`~infcomp.compile`, drawn within its share of ``minutes=``.

``minutes`` counts from the moment compile is called: the checks, the validation draws, the
guide's construction and the training loop all spend the one budget (the loop's stopping rule,
:class:`~infcomp.train.Budget`, counts the time before it as ``RunStats.setup_seconds``).  The
validation traces are drawn in this process before training starts, where a slow simulator
could spend the whole budget on them, so they may take at most :data:`VALIDATION_SHARE` of it:
drawing stops there with the traces drawn so far, and a warning says how many.  Fewer than
:data:`MIN_VALIDATION` by then is a ValueError naming the model's speed, since such a budget
leaves training less than a batch.  Without ``minutes`` all ``validation_size`` traces are drawn.
"""

from __future__ import annotations

import sys
import time
import warnings

from tqdm.auto import tqdm

from .data import FailureWindow, draw_records
from .distributed import Solo
from .traces import PriorSampler

__all__ = ["VALIDATION_SHARE", "MIN_VALIDATION", "draw_validation", "check_validation", "progress_bar"]

VALIDATION_SHARE = 0.1  # of minutes=: the most the validation draws may take
MIN_VALIDATION = 2  # traces: the fewest a validation set cut short by the budget may keep


def progress_bar(total, enabled: bool, desc: str, log_interval: float = 5.0) -> tqdm:
    """A tqdm bar of traces, redrawn often on a terminal; where stderr is not one (a log file) at
    most every ``log_interval`` seconds, so that a long run's log stays readable."""
    every = 0.1 if sys.stderr.isatty() else log_interval
    return tqdm(total=total, disable=not enabled, unit="trace", desc=desc, smoothing=0.1, mininterval=every,
                maxinterval=max(every, 10.0))


def draw_validation(sampler: PriorSampler, size: int, failures: FailureWindow, start: float, minutes=None,
                    progress: bool = True, group=None) -> list:
    """``size`` prior traces drawn in this process (:func:`~infcomp.data.draw_records`), shown as a
    bar where ``progress``, and checked (:func:`check_validation`).  With ``minutes`` (counted
    from ``start``, a ``time.monotonic()`` value) only those drawn by :data:`VALIDATION_SHARE` of
    it, at least one: a warning names the count, and under :data:`MIN_VALIDATION` (where
    ``size`` is not smaller) it is a ValueError saying what budget the model needs.

    Under several ranks (``group``) every rank draws the same traces (one seed) and keeps rank
    0's count, drawing on where its own clock stopped it sooner, so that every rank builds one
    network; rank 0 alone shows the bar and warns."""
    group = Solo() if group is None else group
    until = None if minutes is None else start + VALIDATION_SHARE * 60 * minutes
    began = time.monotonic()
    with progress_bar(size, progress and group.is_main, "drawing validation traces") as bar:
        records = draw_records(sampler, size, failures, until=until, bar=bar)
    n = group.broadcast_int(len(records))
    records = records[:n] + draw_records(sampler, n - len(records), failures)
    if n < size:
        _cut_short(n, size, (time.monotonic() - began) / n, minutes, group.is_main)
    check_validation(records, sampler.observe)
    return records


def _cut_short(n, size, per_trace, minutes, warn):
    """The ValueError (under :data:`MIN_VALIDATION`) or the warning (where ``warn``) for a validation
    set of ``n`` of ``size`` traces, cut by ``minutes`` at ``per_trace`` seconds a trace."""
    share = f"{VALIDATION_SHARE:.0%} of minutes={minutes}"
    if n < MIN_VALIDATION:
        need = MIN_VALIDATION * per_trace / VALIDATION_SHARE / 60
        left = int(60 * minutes * (1 - VALIDATION_SHARE) / per_trace)
        raise ValueError(
            f"the model takes {per_trace:.3g} s a trace: in {share} (the validation set's share of the budget) it "
            f"drew {n} of validation_size={size} traces, under the {MIN_VALIDATION} a validation set needs, and the "
            f"rest of the budget has time for about {left} traces to train on; pass minutes={need:.3g} or more "
            "(or validation_size=1)")
    if warn:
        warnings.warn(
            f"the validation set has {n} of validation_size={size} traces: drawing them stopped at {share} "
            f"({per_trace:.3g} s a trace), the rest of the budget left to training; pass a smaller validation_size, "
            "or a larger minutes, to draw it whole", stacklevel=2)


def check_validation(records: list, observe) -> None:
    """ValueError where the validation traces hold no latent site (nothing to infer), or an
    observed site changes shape between them (an observation must have one shape)."""
    if not any(r.structure for r in records):
        raise ValueError(
            f"the model has no latent sites (only {list(observe)} and fixed data): there is nothing to infer"
        )
    first = records[0].observation
    for r in records[1:]:
        for name, v in r.observation.items():
            if v.shape != first[name].shape:
                raise ValueError(
                    f"observed site {name!r} changes shape between runs ({tuple(first[name].shape)} vs "
                    f"{tuple(v.shape)}): an observation must have one shape"
                )
