"""Compilation: train the guide on the model's own prior draws, loss ``-log q(latents | observation)``.

Traces stream from worker processes; the main process takes Adam steps on
batches grouped by structure (each batch once, or more often with data echoing:
:class:`~infcomp.data.Echo`).  Addresses met for the first time get their
modules at once and join the optimiser as a new parameter group, so the state
of every existing parameter is kept.  A guide passed back in resumes where it
stopped, optimiser state included.

:class:`Trainer` owns the optimiser and the step; :meth:`Trainer.run` is the
loop.  Everything else a run does is a :class:`Callback`, called in order after
every step: the stopping rule (:class:`Budget`), the learning-rate schedule
(:class:`LearningRateSchedule`), the validation loss (:class:`Validation`), the
checkpoints (:class:`Checkpoint`) and the progress bar (:class:`ProgressBar`).
A run's figures are one :class:`RunStats`, which the guide keeps as ``guide.last_run``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time

import torch
from tqdm.auto import tqdm

from .data import Echo, batch_stream, check_echo, collate
from .guide import Guide, build_guide, default_lr
from .nn.proposals import make_families
from .rng import draw_seed, fork_rng
from .threads import limited_threads
from .traces import PriorSampler, normalize_observe

__all__ = [
    "compile", "Trainer", "RunStats", "Callback", "Budget", "LearningRateSchedule", "Validation", "Checkpoint",
    "ProgressBar",
]


@dataclasses.dataclass
class RunStats:
    """The figures of one training run, updated by :meth:`Trainer.run` after every step.

    ``traces`` counts fresh traces, ``trained_traces`` every trace a step trained on (echoed
    repeats again); ``loss`` is the latest step's mean train loss, ``validation_loss`` the
    latest evaluation's (NaN before the first).  ``seed`` is the seed the run drew with: the
    one given to :func:`compile`, or the one it drew when given none.
    """

    traces: int = 0
    trained_traces: int = 0
    steps: int = 0
    seconds: float = 0.0
    waiting_for_data_seconds: float = 0.0  # high against seconds: trace generation is the bottleneck
    loss: float = math.nan
    validation_loss: float = math.nan
    validations: int = 0
    interrupted: bool = False  # ended by a KeyboardInterrupt
    seed: int | None = None

    @property
    def traces_per_second(self) -> float:
        return self.traces / max(self.seconds, 1e-9)

    @property
    def trained_traces_per_second(self) -> float:
        return self.trained_traces / max(self.seconds, 1e-9)

    def to_dict(self) -> dict:
        """Plain numbers, the two rates included: what a guide file stores."""
        return {**dataclasses.asdict(self), "traces_per_second": self.traces_per_second,
                "trained_traces_per_second": self.trained_traces_per_second}

    @classmethod
    def from_dict(cls, d: dict) -> RunStats:
        """The figures of :meth:`to_dict`'s dict; a missing key takes its default (files keep
        only the keys their version had), and unknown keys are ignored."""
        known = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        if "trained_traces" not in d and "trained_traces_per_second" in d:  # such a file keeps only the rate
            known["trained_traces"] = round(d["trained_traces_per_second"] * max(d.get("seconds", 0.0), 1e-9))
        return cls(**known)


class Callback:
    """A piece of a training run.  :meth:`Trainer.run` calls ``on_start`` once before the first
    step, ``on_step`` after every step (the run's figures already updated), and ``on_end`` once
    however the run ends: by a stopping rule (``trainer.stopped``), by a KeyboardInterrupt
    (``stats.interrupted``, re-raised after every ``on_end``), or by another error (neither).
    A callback ends the run by calling ``trainer.stop()``: the loop stops after that step's
    callbacks.  The methods here do nothing; subclass and override the ones you need."""

    def on_start(self, trainer: Trainer) -> None:
        pass

    def on_step(self, trainer: Trainer, stats: RunStats) -> None:
        pass

    def on_end(self, trainer: Trainer, stats: RunStats) -> None:
        pass


class Budget(Callback):
    """The stopping rule: the run ends once it has trained ``num_traces`` fresh traces or run
    for ``minutes`` (whichever comes first; ``None`` is no limit of that kind)."""

    def __init__(self, num_traces=None, minutes=None):
        self.num_traces, self.minutes = num_traces, minutes

    def fraction(self, stats: RunStats) -> float:
        """The share of the budget spent: the larger of the traces' and the time's (1 or more: all of it)."""
        shares = [0.0]
        if self.num_traces is not None:
            shares.append(stats.traces / self.num_traces if self.num_traces > 0 else math.inf)
        if self.minutes is not None:
            shares.append(stats.seconds / (60 * self.minutes) if self.minutes > 0 else math.inf)
        return max(shares)

    def on_start(self, trainer):
        if self.fraction(trainer.stats) >= 1:
            trainer.stop()

    def on_step(self, trainer, stats):
        if self.fraction(stats) >= 1:
            trainer.stop()


class LearningRateSchedule(Callback):
    """Adam's learning rate against ``budget``'s fraction spent: the trainer's rate for the first
    half of the run, then a cosine decay to 5% of it, set for the next step in every parameter
    group.  A long run spends its early steps at full rate and settles at the end.  The fraction
    is of this run's budget, so a resumed run starts the schedule over, as a continued one does."""

    def __init__(self, budget: Budget):
        self.budget = budget

    @staticmethod
    def scale(fraction: float) -> float:
        """The factor on the trainer's learning rate at ``fraction`` of the budget spent: in [0.05, 1]."""
        f = min(max((fraction - 0.5) / 0.5, 0.0), 1.0)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * f))

    def on_start(self, trainer):
        self.set(trainer, trainer.stats)

    def on_step(self, trainer, stats):
        self.set(trainer, stats)

    def set(self, trainer, stats):
        scale = self.scale(self.budget.fraction(stats))
        for g in trainer.optimizer.param_groups:
            g["lr"] = trainer.lr * scale


class Validation(Callback):
    """The validation loss, every ``every`` seconds but never spending over a tenth of the run's
    time on it, and after the last step of a run that a stopping rule ended.  Each evaluation
    sets ``stats.validation_loss`` and appends ``(traces trained, train loss, validation loss)``
    to ``guide.history``."""

    def __init__(self, every: float = 2.0):
        self.every = every
        self.last, self.cost, self.at_step = -math.inf, 0.0, 0

    def on_start(self, trainer):
        self.last, self.cost, self.at_step = -math.inf, 0.0, 0

    def on_step(self, trainer, stats):
        if trainer.stopped or time.perf_counter() - self.last >= max(self.every, 10 * self.cost):
            self.validate(trainer, stats)

    def on_end(self, trainer, stats):
        if trainer.stopped and not stats.interrupted and stats.steps > self.at_step:  # stopped by a later callback
            self.validate(trainer, stats)

    def validate(self, trainer, stats):
        start = time.perf_counter()
        stats.validation_loss = trainer.validation_loss()
        self.last = time.perf_counter()
        self.cost, self.at_step = self.last - start, stats.steps
        stats.validations += 1
        trainer.guide.history.append((trainer.guide.traces_trained, stats.loss, stats.validation_loss))


class Checkpoint(Callback):
    """Saves the guide to ``path`` every ``every`` minutes, at the end of the run, and when a
    KeyboardInterrupt ends it (before the interrupt goes on up); not when another error ends
    it, since a guide half-way through a failing step may not be whole.  Each save is atomic
    (:meth:`~infcomp.Guide.save`)."""

    def __init__(self, path, every: float = 5.0):
        self.path, self.every = path, every
        self.last = time.perf_counter()

    def on_start(self, trainer):
        self.last = time.perf_counter()

    def on_step(self, trainer, stats):
        if time.perf_counter() - self.last >= 60 * self.every:
            self.save(trainer)

    def on_end(self, trainer, stats):
        if trainer.stopped or stats.interrupted:
            self.save(trainer)

    def save(self, trainer):
        trainer.publish()
        trainer.guide.save(self.path)
        self.last = time.perf_counter()


class ProgressBar(Callback):
    """A tqdm bar of the fresh traces trained (out of ``total``, where the budget counts traces),
    with the train and validation loss of the latest evaluation."""

    def __init__(self, total=None, enabled: bool = True):
        self.total, self.enabled = total, enabled
        self.bar = None

    def on_start(self, trainer):
        self.bar = tqdm(total=self.total, disable=not self.enabled, unit="trace", desc="compiling", smoothing=0.1)
        self.shown, self.validations = 0, 0

    def on_step(self, trainer, stats):
        if stats.traces > self.shown:
            self.bar.update(stats.traces - self.shown)
            self.shown = stats.traces
        if stats.validations > self.validations:
            self.validations = stats.validations
            self.bar.set_postfix(loss=f"{stats.loss:.3f}", val=f"{stats.validation_loss:.3f}", refresh=False)

    def on_end(self, trainer, stats):
        if self.bar is not None:
            self.on_step(trainer, stats)
            self.bar.close()
            self.bar = None


def _check_validation(records, observe):
    if not any(r.structure for r in records):
        raise ValueError(
            f"the model has no latent sites (only {list(observe)} and fixed data): there is nothing to infer"
        )
    first = records[0].observation
    for r in records[1:]:
        for n, v in r.observation.items():
            if v.shape != first[n].shape:
                raise ValueError(
                    f"observed site {n!r} changes shape between runs ({tuple(first[n].shape)} vs {tuple(v.shape)}): "
                    "an observation must have one shape"
                )


class Trainer:
    """One training run of a guide: the optimiser, the validation set, the step and the loop.

    ``validation`` is a list of trace records, evaluated in batches of ``batch_size``; a guide
    with an optimiser state resumes it, the learning rate set to ``lr``.
    """

    def __init__(self, guide: Guide, sampler: PriorSampler, validation, lr, batch_size, device):
        self.guide, self.sampler = guide, sampler
        self.batch_size, self.lr = batch_size, lr
        self.device = torch.device(device)
        net = guide.network
        # fused: one kernel per parameter group, not a dozen tensor ops per parameter
        self.optimizer = torch.optim.Adam([{"params": net.core_parameters()}], lr=lr, fused=True)
        for name in net.specs:  # one group per address, in the order the addresses were added
            self.optimizer.add_param_group({"params": net.own_parameters(name)})
        if guide.optimizer_state is not None:
            self.optimizer.load_state_dict(copy.deepcopy(guide.optimizer_state))
            for g in self.optimizer.param_groups:  # a saved state brings its own settings: set ours again
                g.update(lr=lr, fused=True, foreach=None)
        self.add_sites(sampler.specs)
        self.validation = [
            collate(validation[i : i + batch_size], sampler.specs).to(self.device)
            for i in range(0, len(validation), batch_size)
        ]
        self.stats, self.stopped = RunStats(), False

    def add_sites(self, specs: dict):
        """Give every address of ``specs`` new to the network its modules and a parameter group."""
        net = self.guide.network
        for name, spec in specs.items():
            if name not in net.specs:
                self.optimizer.add_param_group({"params": net.add_site(spec)})

    def step(self, batch) -> float:
        """One Adam step on ``batch``'s mean ``-log q``, gradients clipped to norm 100; returns the loss."""
        self.add_sites(batch.specs)
        loss = -self.guide.network.log_q(batch.to(self.device)).mean()
        if loss.requires_grad:  # false only when no address in the batch has a head
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.guide.network.parameters(), 100.0)
            self.optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def validation_loss(self) -> float:
        """The mean ``-log q`` over the validation set."""
        total = sum(float(-self.guide.network.log_q(b).sum()) for b in self.validation)
        return total / sum(b.size for b in self.validation)

    def stop(self):
        """End the run after the callbacks of the current step."""
        self.stopped = True

    def publish(self):
        """Put the optimiser state and the run's figures on the guide, so that it saves and resumes whole."""
        self.guide.optimizer_state = self.optimizer.state_dict()
        self.guide.last_run = self.stats

    def run(self, stream, callbacks=(), stats: RunStats | None = None) -> RunStats:
        """Train on ``stream``'s ``(batch, fresh)`` pairs (:class:`~infcomp.data.Echo`) until a
        callback calls :meth:`stop`; returns the figures, which are also ``guide.last_run``.

        Only fresh batches count towards ``stats.traces`` and ``guide.traces_trained``.  The
        loop drops its reference to ``stream`` as it ends, so that trace workers end with the run
        even while a traceback keeps this frame (where the caller holds no other reference).
        """
        self.stats = stats = RunStats() if stats is None else stats
        self.stopped = False
        self.guide.invalidate()
        start = time.perf_counter()
        try:
            for c in callbacks:
                c.on_start(self)
            while not self.stopped:
                t0 = time.perf_counter()
                batch, fresh = next(stream)
                stats.waiting_for_data_seconds += time.perf_counter() - t0
                stats.loss = self.step(batch)
                stats.steps, stats.trained_traces = stats.steps + 1, stats.trained_traces + batch.size
                if fresh:
                    stats.traces += batch.size
                    self.guide.traces_trained += batch.size
                stats.seconds = time.perf_counter() - start
                for c in callbacks:
                    c.on_step(self, stats)
        except KeyboardInterrupt:
            stats.interrupted = True
            raise
        finally:
            del stream  # see above: the workers end here
            stats.seconds = time.perf_counter() - start
            self.publish()
            for c in callbacks:
                c.on_end(self, stats)
            self.guide.invalidate()  # the weights moved: cached per-observation work is stale
        return stats


def compile(model, observe, num_traces=None, *, minutes=None, model_args=(), model_kwargs=None, guide=None,
            batch_size=64, lr=None, workers=None, echo=1.0, threads=None, seed=None, device="cpu", encoder=None,
            embedding=None, config=None, families=(), validation_size=512, validate_every=2.0, checkpoint=None,
            checkpoint_every=5.0, metadata=None, progress=True, callbacks=()) -> Guide:
    """Compile ``model`` into a guide by training on its prior draws.

    :param observe: the observed site name, or a list of them.
    :param num_traces: stop after this many training traces (default 10,000 if ``minutes`` is not given).
    :param minutes: stop after this much wall-clock time.
    :param guide: a guide to go on training (resumes its optimiser state).
    :param workers: processes drawing traces (default: the CPU cores, at most 4; 0 draws them in this process).
    :param echo: train on each batch of traces this many times in all, the repeats at random later
        steps (data echoing, see :class:`~infcomp.data.Echo`): more steps per hour where drawing a
        trace costs about as much as a step on it; ``num_traces`` counts fresh traces.
    :param threads: torch threads for the gradient steps (default: the cores the workers leave, at least one).
    :param seed: makes the run reproducible (for a fixed number of workers).  Either way the
        caller's random number generators are left as if compile had not run, except that
        without a seed the run's seed is one draw from torch's (``guide.last_run.seed``).
    :param encoder: an :class:`~infcomp.CNNConfig`, or a ``torch.nn.Module`` mapping a batch of
        observations to ``[B, dim]`` (a new guide only; ``embedding=`` is its older name).
    :param config: a :class:`~infcomp.NetworkConfig` or dict of its fields, for a new guide;
        with ``guide=``, a field that differs from the guide's own is an error.
    :param families: proposal family classes to fit to the sites, beyond the registered ones.
    :param lr: Adam's learning rate (default: :func:`~infcomp.guide.default_lr`); it stays there
        for the first half of the run, then decays along a cosine to 5% of it.
    :param validate_every: seconds between validation-loss evaluations.
    :param checkpoint: a file the guide is saved to every ``checkpoint_every`` minutes, at the
        end, and when the run is interrupted (``KeyboardInterrupt`` is re-raised after the
        save); ``compile(..., guide=infcomp.load(checkpoint))`` goes on from there.
    :param metadata: entries for ``guide.metadata`` (saved with the guide, checkpoints included).
    :param callbacks: more :class:`Callback` objects, called after the built-in ones at the start,
        after every step and at the end of the run (they may end it with ``trainer.stop()``).
    """
    observe, callbacks = normalize_observe(observe), _checked_callbacks(callbacks)
    check_echo(echo)
    if num_traces is None and minutes is None:
        num_traces = 10_000
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    run_seed = draw_seed() if seed is None else int(seed)
    with fork_rng(run_seed):
        model_kwargs = dict(model_kwargs or {})
        table = guide.network.families if guide is not None else make_families(families)
        sampler = PriorSampler(model, observe, model_args, model_kwargs, table,
                               specs=guide.network.specs if guide is not None else None)
        validation = [sampler.sample() for _ in range(validation_size)]
        _check_validation(validation, observe)
        guide = build_guide(model, observe, validation, model_args, model_kwargs, guide=guide, encoder=encoder,
                            embedding=embedding, config=config, families=families, device=device)
        guide.metadata.update(metadata or {})
        trainer = Trainer(guide, sampler, validation, default_lr(guide) if lr is None else lr, batch_size, device)
        budget = Budget(num_traces, minutes)
        pieces = [budget, LearningRateSchedule(budget), Validation(validate_every),
                  *([Checkpoint(checkpoint, checkpoint_every)] if checkpoint is not None else []),
                  ProgressBar(num_traces, progress), *callbacks]
        stream_seed = run_seed + guide.traces_trained
        with limited_threads(_torch_threads(threads, workers)):
            trainer.run(Echo(batch_stream(sampler, batch_size, stream_seed, workers), echo, seed=stream_seed),
                        pieces, RunStats(seed=run_seed))
    return guide


def _checked_callbacks(callbacks) -> list:
    callbacks = list(callbacks)
    for c in callbacks:
        if not all(callable(getattr(c, m, None)) for m in ("on_start", "on_step", "on_end")):
            raise TypeError(f"callbacks: {c!r} lacks on_start, on_step or on_end (subclass infcomp.train.Callback)")
    return callbacks


def _torch_threads(threads, workers) -> int:
    """The trainer's torch threads: ``threads``, else the cores the workers leave (at least one);
    with ``workers=0`` torch keeps its own setting (a simulator's NumPy is held to one thread)."""
    if threads is not None:
        return threads
    return max(1, (os.cpu_count() or 1) - workers) if workers > 0 else torch.get_num_threads()
