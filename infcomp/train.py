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
checkpoints (:class:`Checkpoint`), the limit on the model's failures
(:class:`FailureLimit`) and the progress bar (:class:`ProgressBar`).
A run's figures are one :class:`RunStats`, which the guide keeps as ``guide.last_run``.

Under ``torchrun`` (``WORLD_SIZE`` and the rest of the launcher's environment set) every rank
calls :func:`compile` with the same arguments and trains one network data-parallel
(:mod:`~infcomp.distributed`): each rank draws its own traces (its own seed, its own
``workers``, which default to its share of the cores), the steps average over all ranks'
batches, and ``num_traces`` counts the traces of all ranks.  Rank 0 alone validates, shows
progress and writes the checkpoint; every rank returns the same network weights, rank 0's
with the validation history.  ``guide.metadata["world_size"]`` records the ranks of the
latest run; a checkpoint resumes on any number of them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
import os
import tempfile
import time
import types
import warnings

import torch

from .budget import draw_validation, progress_bar
from .devices import checked_device
from .distributed import Say, Solo, join, main_lock, rank_cores, rank_seed
from .data import Echo, FailureWindow, ModelFailureError, batch_stream, check_echo, collate
from .files import check_writable
from .guide import Guide, build_guide, default_lr
from .nn.proposals import make_families
from .rng import draw_seed, fork_rng
from .threads import limited_threads
from .shards import Mixed, TraceShards, shard_batches
from .inputs import check_sampler
from .widen import check_widen
from .traces import PriorSampler, check_consistent, resolve_observe

__all__ = [
    "compile", "Trainer", "RunStats", "Callback", "Budget", "LearningRateSchedule", "Validation", "Checkpoint",
    "ProgressBar", "FailureLimit", "ModelFailureError",
]


@dataclasses.dataclass
class RunStats:
    """The figures of one training run, updated by :meth:`Trainer.run` after every step.

    ``traces`` counts fresh traces, ``trained_traces`` every trace a step trained on (echoed
    repeats again); ``loss`` is the latest step's mean train loss, ``validation_loss`` the
    latest evaluation's (NaN before the first).  ``seed`` is the seed the run drew with: the
    one given to :func:`compile`, or the one it drew when given none.  ``seconds`` is the training
    loop's time, ``setup_seconds`` compile's before it (its checks, the validation draws, building
    the guide, starting the trace workers): ``minutes`` bounds the two together (:class:`Budget`).
    ``validation_traces`` is the validation set's size: ``validation_size``, or fewer where
    ``minutes`` cut its draws short (:mod:`~infcomp.budget`).

    ``failed_traces`` counts the model's runs that raised (or ran past ``trace_timeout``) and
    were skipped, ``failed_validation_traces`` those while drawing the validation set,
    ``last_failure`` the latest one's ``"Type: message"``.  ``budget_traces`` is the trace budget
    asked for (trained in whole batches of ``batch_size``: :attr:`budget_note`); ``stopped_waiting``
    is true where the wall-clock budget ran out while waiting for traces; ``saved_to`` is the
    file the checkpoint last went to (None without one, or where every save failed).
    """

    traces: int = 0
    trained_traces: int = 0
    steps: int = 0
    seconds: float = 0.0
    setup_seconds: float = 0.0
    validation_traces: int = 0
    waiting_for_data_seconds: float = 0.0  # high against seconds: trace generation is the bottleneck
    loss: float = math.nan
    validation_loss: float = math.nan
    validations: int = 0
    interrupted: bool = False  # ended by a KeyboardInterrupt
    seed: int | None = None
    failed_traces: int = 0
    failed_validation_traces: int = 0
    last_failure: str = ""
    budget_traces: int | None = None
    batch_size: int = 0
    stopped_waiting: bool = False
    saved_to: str | None = None

    @property
    def budget_note(self) -> str:
        """``"the budget 2000, rounded up to whole batches of 64"`` where the traces trained are
        more than the budget asked for, else ``""``."""
        if self.budget_traces is None or self.traces <= self.budget_traces:
            return ""
        return f"the budget {self.budget_traces}, rounded up to whole batches of {self.batch_size}"

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
    """The stopping rule: the run ends once it has trained ``num_traces`` fresh traces,
    ``trained_traces`` traces in all (repeats of stored ones counted again) or run for
    ``minutes``, whichever comes first; ``None`` is no limit of that kind.

    ``minutes`` counts ``stats.setup_seconds + stats.seconds``.  With ``start`` (a
    ``time.monotonic()`` value: compile's own start) :meth:`on_start` sets ``setup_seconds`` to
    the time since, so the work before the loop spends the same budget; rank 0's figure on
    every rank, so that all read one fraction and one learning rate."""

    def __init__(self, num_traces=None, minutes=None, trained_traces=None, start=None):
        self.num_traces, self.minutes, self.trained_traces = num_traces, minutes, trained_traces
        self.start = start

    def fraction(self, stats: RunStats) -> float:
        """The share of the budget spent: the largest of the traces', trained traces' and the time's
        (1 or more: all of it)."""
        shares = [0.0]
        if self.num_traces is not None:
            shares.append(stats.traces / self.num_traces if self.num_traces > 0 else math.inf)
        if self.trained_traces is not None:
            shares.append(stats.trained_traces / max(self.trained_traces, 1))
        if self.minutes is not None:
            seconds = stats.setup_seconds + stats.seconds
            shares.append(seconds / (60 * self.minutes) if self.minutes > 0 else math.inf)
        return max(shares)

    def on_start(self, trainer):
        if self.start is not None:  # rank 0's microseconds on every rank
            micros = trainer.group.broadcast_int(round(1e6 * (time.monotonic() - self.start)))
            trainer.stats.setup_seconds = micros / 1e6
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
    (:meth:`~infcomp.Guide.save`).  A save that fails warns, naming the file and the error, and
    training goes on; where the end's save fails the guide goes to a file of its own in the
    temporary directory instead (``stats.saved_to``, named in the warning)."""

    def __init__(self, path, every: float = 5.0):
        self.path, self.every = os.fspath(path), every
        self.last = time.perf_counter()

    def on_start(self, trainer):
        self.last = time.perf_counter()

    def on_step(self, trainer, stats):
        if time.perf_counter() - self.last >= 60 * self.every:
            self.save(trainer)

    def on_end(self, trainer, stats):
        if trainer.stopped or stats.interrupted:
            self.save(trainer, final=True)

    def save(self, trainer, final=False):
        trainer.publish()
        self.last = time.perf_counter()
        try:
            trainer.guide.save(self.path)
            trainer.stats.saved_to = self.path
            return
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
        if not final:
            warnings.warn(f"could not save the guide to {self.path} ({error}); training goes on", stacklevel=2)
            return
        fd, fallback = tempfile.mkstemp(prefix=os.path.basename(self.path) + ".", suffix=".pt")
        os.close(fd)
        try:
            trainer.guide.save(fallback)
            trainer.stats.saved_to = fallback
            warnings.warn(f"could not save the guide to {self.path} ({error}); saved it to {fallback} instead",
                          stacklevel=2)
        except Exception as e2:
            os.remove(fallback)
            warnings.warn(f"could not save the guide to {self.path} ({error}) nor to {fallback} ({e2}); "
                          "the guide is returned unsaved", stacklevel=2)


class ProgressBar(Callback):
    """A tqdm bar of the fresh traces trained (out of ``total``, where the budget counts traces;
    with ``count="trained_traces"``, of every trace trained, repeats too), with the train and
    validation loss of the latest evaluation and the failed traces skipped.  Where stderr is not
    a terminal (a log file) it is redrawn at most every ``log_interval`` seconds."""

    def __init__(self, total=None, enabled: bool = True, log_interval: float = 5.0, count: str = "traces"):
        self.total, self.enabled, self.log_interval, self.count = total, enabled, log_interval, count
        self.bar = None

    def on_start(self, trainer):
        self.bar = progress_bar(self.total, self.enabled, "compiling", self.log_interval)
        self.shown, self.validations, self.failed = 0, 0, 0

    def on_step(self, trainer, stats):
        done = getattr(stats, self.count)
        if done > self.shown:
            self.bar.update(done - self.shown)
            self.shown = done
        if stats.validations > self.validations or stats.failed_traces > self.failed:
            self.validations, self.failed = stats.validations, stats.failed_traces
            failed = {"failed": stats.failed_traces} if stats.failed_traces else {}
            self.bar.set_postfix(loss=f"{stats.loss:.3f}", val=f"{stats.validation_loss:.3f}", **failed, refresh=False)

    def on_end(self, trainer, stats):
        if self.bar is not None:
            self.on_step(trainer, stats)
            self.bar.close()
            self.bar = None


class FailureLimit(Callback):
    """Ends the run with :class:`~infcomp.data.ModelFailureError` (after the other callbacks'
    ends: the checkpoint is saved first) once more than ``max_rate`` of the model's latest
    ``window`` training runs failed (counted once at least ``min(window, 100)`` have run).  The
    error names the model's last failure; failed traces below the rate are skipped."""

    def __init__(self, max_rate: float = 0.1, window: int = 1000):
        self.max_rate, self.window = max_rate, window

    def on_start(self, trainer):
        self.failures = FailureWindow(self.max_rate, self.window)
        self.ok, self.failed = trainer.stats.traces, trainer.stats.failed_traces

    def on_step(self, trainer, stats):
        if stats.traces == self.ok and stats.failed_traces == self.failed:
            return
        self.failures.record(stats.traces - self.ok, stats.failed_traces - self.failed, stats.last_failure)
        self.ok, self.failed = stats.traces, stats.failed_traces
        if self.failures.exceeded():
            trainer.fail(self.failures.error("training traces"))


class Trainer:
    """One training run of a guide: the optimiser, the validation set, the step and the loop.

    ``validation`` is a list of trace records, evaluated in batches of ``batch_size``; a guide
    with an optimiser state resumes it, the learning rate set to ``lr``.
    """

    def __init__(self, guide: Guide, sampler: PriorSampler, validation, lr, batch_size, device, group=None):
        self.guide, self.sampler = guide, sampler
        self.batch_size, self.lr = batch_size, lr
        self.device = torch.device(device)
        self.group = Solo() if group is None else group
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
        self.group.broadcast_parameters(_state_tensors(net))  # every rank starts from rank 0's network
        self.validation = [
            collate(validation[i : i + batch_size], sampler.specs).to(self.device)
            for i in range(0, len(validation), batch_size)
        ]
        self.stats, self.stopped, self.ended, self.stalled, self.error = RunStats(), False, False, False, None

    def add_sites(self, specs: dict) -> list:
        """Give every address of ``specs`` new to the network its modules and a parameter group;
        returns the new parameters."""
        net, added = self.guide.network, []
        for name, spec in specs.items():
            if name not in net.specs:
                params = net.add_site(spec)
                self.optimizer.add_param_group({"params": params})
                added += params
        return added

    def step(self, batch, traces: int | None = None) -> float:
        """One Adam step on the mean ``-log q`` of ``batch`` (of every rank's batch together, where
        ``traces`` counts them: :mod:`~infcomp.distributed`; None is an empty one there), gradients
        clipped to norm 100; returns that mean."""
        if batch is not None:
            self.add_sites(batch.specs)
        if self.group.world_size > 1:
            return self._shared_step(batch, traces)
        loss = -self.guide.network.log_q(batch.to(self.device, non_blocking=True)).mean()
        if loss.requires_grad:  # false only when no address in the batch has a head
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.guide.network.parameters(), 100.0)
            self.optimizer.step()
        return float(loss.detach())

    def _shared_step(self, batch, traces) -> float:
        """:meth:`step` as one rank of several: this rank's summed loss backpropagated, the gradients
        summed over the ranks and divided by their ``traces`` (an empty batch adds nothing), the
        gradient balancer's norms made the ranks' mean."""
        net = self.guide.network
        params = list(net.parameters())
        self.optimizer.zero_grad(set_to_none=True)
        empty = batch is None or batch.size == 0
        loss = torch.zeros(()) if empty else -net.log_q(batch.to(self.device, non_blocking=True)).sum()
        if loss.requires_grad:
            loss.backward()
        total = self.group.reduce_gradients(params, traces, float(loss.detach()))
        self.group.mean_norms(net.balancer)
        if any(p.grad is not None for p in params):
            torch.nn.utils.clip_grad_norm_(params, 100.0)
            self.optimizer.step()
        return total / max(traces, 1)

    @torch.no_grad()
    def validation_loss(self) -> float:
        """The mean ``-log q`` over the validation set."""
        total = sum(float(-self.guide.network.log_q(b).sum()) for b in self.validation)
        return total / sum(b.size for b in self.validation)

    def stop(self):
        """End the run after the callbacks of the current step."""
        self.stopped = True

    def fail(self, error: Exception):
        """End the run as :meth:`stop` does, then raise ``error`` once every ``on_end`` has run."""
        self.stopped, self.error = True, error

    def publish(self):
        """Put the optimiser state and the run's figures on the guide, so that it saves and resumes whole."""
        self.guide.optimizer_state = self.optimizer.state_dict()
        self.guide.last_run = self.stats

    def run(self, stream, callbacks=(), stats: RunStats | None = None) -> RunStats:
        """Train on ``stream``'s ``(batch, fresh)`` pairs (:class:`~infcomp.data.Echo`) until a
        callback calls :meth:`stop` or the stream ends (a dataset's end, every rank's under
        several; or a deadline passed while waiting for traces: ``stats.stopped_waiting``);
        returns the figures, which are also ``guide.last_run``.

        Only fresh batches count towards ``stats.traces`` and ``guide.traces_trained``; a batch's
        failed traces go to ``stats.failed_traces``, and a batch left empty by them takes no step
        (the callbacks still run).  The loop drops its reference to ``stream`` as it ends, so that
        trace workers end with the run even while a traceback keeps this frame (where the caller
        holds no other reference).  An error given to :meth:`fail` is raised after every ``on_end``.
        """
        self.stats = stats = RunStats() if stats is None else stats
        self.stopped, self.ended, self.stalled, self.error = False, False, False, None
        self.guide.invalidate()
        start = time.perf_counter()
        try:
            for c in callbacks:
                c.on_start(self)
            while True:
                batch, fresh = self.next_batch(stream, stats)
                counts = self.agree(batch, fresh, stats, time.perf_counter() - start)
                if counts is None:
                    break
                self.take(batch, fresh, stats, counts)
                if self.group.world_size == 1:
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
        if self.error is not None:
            raise self.error
        return stats

    def next_batch(self, stream, stats):
        """The stream's next ``(batch, fresh)``; ``(None, False)`` once the run is stopped or the
        stream has ended (``self.ended``: a dataset's end; ``self.stalled``: a deadline passed while
        waiting for traces, which stops the run)."""
        if self.stopped or self.ended or self.stalled:
            return None, False
        t0 = time.perf_counter()
        try:
            return next(stream)
        except StopIteration:
            if getattr(stream, "finite", False) and not getattr(stream, "stalled", False):
                self.ended = True
            else:
                self.stalled = True
            return None, False
        finally:
            stats.waiting_for_data_seconds += time.perf_counter() - t0

    def agree(self, batch, fresh, stats, seconds):
        """The step's counts over every rank, ``(traces, fresh traces, failed traces)``, with every
        address new to any rank's batch added to the network, and the run's stall and latest
        failure as the ranks agreed them; None where the run stops here (a rank stopped or stalled,
        or every rank's stream ended).  One process agrees with itself.  A rank whose stream ended
        while others' go on takes their steps with an empty batch."""
        counts, error = _own_counts(batch, fresh)
        new = [] if batch is None else [s for n, s in batch.specs.items() if n not in self.guide.network.specs]
        said = self.group.agree(Say(self.stopped or self.stalled, self.ended, self.stalled, counts, new, seconds, error,
                                    _clash(batch, self.guide.network.specs)))
        stats.stopped_waiting = stats.stopped_waiting or said.stalled
        stats.last_failure = said.failure or stats.last_failure
        if said.stop:
            self.stop()
            return None
        if self.group.world_size > 1:
            stats.seconds = said.seconds
            self.group.broadcast_parameters(self.add_sites({s.name: s for s in said.new_specs}) if said.new_specs else [])
        return said.counts

    def take(self, batch, fresh, stats, counts=None):
        """A step on ``batch`` (none where the step's traces all failed), the step's ``counts``
        (:meth:`agree`; ``batch``'s own by default) added to ``stats``."""
        if counts is None:
            counts, error = _own_counts(batch, fresh)
            stats.last_failure = error or stats.last_failure
        traces, fresh_traces, failed = counts
        stats.failed_traces += failed
        if traces == 0:
            return
        stats.loss = self.step(batch) if self.group.world_size == 1 else self.step(batch, traces)
        stats.steps, stats.trained_traces = stats.steps + 1, stats.trained_traces + traces
        stats.traces += fresh_traces
        self.guide.traces_trained += fresh_traces


def compile(model, observe, num_traces=None, *, minutes=None, model_args=(), model_kwargs=None, guide=None,
            batch_size=64, lr=None, workers=None, echo=1.0, threads=None, seed=None, device="cpu", encoder=None,
            embedding=None, config=None, families=(), validation_size=512, validate_every=2.0, checkpoint=None,
            checkpoint_every=5.0, overwrite=False, max_failure_rate=0.1, failure_window=1000, trace_timeout=None,
            metadata=None, progress=True, callbacks=(), traces=None, epochs=1, fresh_share=0.0, amp=None,
            distributed=None, inputs=None, widen=None) -> Guide:
    """Compile ``model`` into a guide by training on its prior draws (under ``torchrun``: see above).

    :param observe: the observed site name, or a list of them; or a compiled regular expression
        (``re.compile(r"obs_\\d+")``, matched in full) or a callable ``(name) -> bool`` picking the
        model's sample sites (:func:`~infcomp.traces.resolve_observe`), whose names ``guide.observe`` holds.
    :param num_traces: a positive int: train on this many more fresh traces (default 10,000 if
        ``minutes`` is not given), in whole batches: the last batch may take the count past it
        (``guide.last_run.budget_note``).
    :param minutes: a positive number: the wall-clock budget of the whole call, the validation draws
        included (:mod:`~infcomp.budget`); it ends within it, one more step and the final save.  With
        workers, it also bounds the wait for traces: a model that stalls ends the run at the deadline, saved.
    :param guide: a guide to go on training (resumes its optimiser state).
    :param batch_size: a positive int: traces per gradient step.
    :param workers: processes drawing traces (default: the CPU cores, at most 4; 0 draws them in
        this process, where neither ``trace_timeout`` nor the deadline can interrupt a model that stalls).
    :param echo: train on each batch of traces this many times in all, the repeats at random later
        steps (data echoing, see :class:`~infcomp.data.Echo`): more steps per hour where drawing a
        trace costs about as much as a step on it; ``num_traces`` counts fresh traces.
    :param threads: torch threads for the gradient steps (default: the cores the workers leave, at least one).
    :param device: where the network trains (``"cuda"``: under torchrun each rank's own GPU); the
        traces are drawn on the CPU (by workers: copied over from pinned memory).
    :param amp: bfloat16 autocast of the observation encoder (:meth:`~infcomp.nn.network.InferenceNetwork.encode`;
        None: on GPUs that compute it natively).  ``distributed=False`` trains alone even where torchrun's environment is set.
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
    :param validation_size: a positive int: prior traces in the validation set, evaluated every
        ``validate_every`` seconds (with ``minutes``, those drawn in a tenth of it).
    :param checkpoint: a file the guide is saved to every ``checkpoint_every`` minutes, at the
        end, and when the run is interrupted (``KeyboardInterrupt`` is re-raised after the
        save); ``compile(..., guide=infcomp.load(checkpoint))`` goes on from there.  Its directory
        must be writable (checked before any work); the run holds a lock on it (``checkpoint +
        ".lock"``), so a second compile to it is refused; an existing file is refused unless
        ``guide=`` is the guide it holds, or ``overwrite=True``.
    :param max_failure_rate: a model's run that raises is skipped and counted
        (``guide.last_run.failed_traces``); above this share of its latest ``failure_window`` runs
        (once 100 have run) compile raises :class:`~infcomp.data.ModelFailureError` naming the
        last failure, the checkpoint saved first and the guide on the error as ``.guide``.
    :param trace_timeout: seconds a worker-drawn trace may take; a longer one is a failed trace.
    :param metadata: entries for ``guide.metadata`` (saved with the guide, checkpoints included).
    :param callbacks: more :class:`Callback` objects, called after the built-in ones at the start,
        after every step and at the end of the run (they may end it with ``trainer.stop()``).
    :param traces: a folder from :func:`~infcomp.save_traces` to train on for ``epochs`` shuffled passes,
        ``fresh_share`` of the batches drawn fresh instead; without another budget the epochs are it.
    :param inputs: ``() -> {argument: tensor}`` per trace (:mod:`~infcomp.inputs`); ``widen``: :mod:`~infcomp.widen`
    """
    return _locked_run(_checked_settings(types.SimpleNamespace(**locals())))


def _locked_run(s) -> Guide:
    """:func:`_train` on the checked settings ``s``, in this rank's process group (where one is
    asked for), under the lock on the checkpoint (rank 0's alone: it writes the file; where rank 0
    may not, every rank raises its error)."""
    if s.checkpoint is not None:
        check_writable(s.checkpoint)
    s.group = join(s.device) if s.distributed is not False else Solo()
    s.device = s.group.device(s.device)
    if s.checkpoint is None:
        return _train(s)
    with main_lock(s.group, s.checkpoint, check=lambda: _check_overwrite(s.checkpoint, s.guide, s.overwrite)):
        return _train(s)


def _train(s) -> Guide:
    """The run :func:`compile` describes, on its checked settings ``s``."""
    group = s.group
    if s.traces is not None and len(s.traces.files) < group.world_size:  # a rank with no share ends every rank's run
        raise ValueError(f"the trace dataset {s.traces.path} has {len(s.traces.files)} shards for {group.world_size} "
                         "ranks: write it with a smaller shard_size (one shard a rank at least)")
    run_seed = group.broadcast_int(draw_seed() if s.seed is None else int(s.seed))
    with fork_rng(run_seed):
        guide, model_kwargs = s.guide, dict(s.model_kwargs or {})
        table = guide.network.families if guide is not None else make_families(s.families)
        sampler = PriorSampler(s.model, s.observe, s.model_args, model_kwargs, table,
                               specs=guide.network.specs if guide is not None else None, inputs=s.inputs,
                               widen=s.widen)
        failures = FailureWindow(s.max_failure_rate, s.failure_window)
        validation = draw_validation(sampler, s.validation_size, failures, s.start, s.minutes, s.progress, group)
        if s.traces is not None:
            _add_stored_sites(sampler, s.traces, validation[0].observation)
        guide = build_guide(s.model, s.observe, validation, s.model_args, model_kwargs, guide=guide,
                            encoder=s.encoder, embedding=s.embedding, config=s.config, families=s.families,
                            device=s.device)
        guide.network.amp = s.amp
        guide.metadata.update(s.metadata or {})
        guide.metadata["world_size"] = group.world_size
        guide.metadata["widen"] = s.widen or 1.0
        trainer = Trainer(guide, sampler, validation, default_lr(guide) if s.lr is None else s.lr, s.batch_size,
                          s.device, group)
        epochs = None if s.traces is None or s.num_traces or s.minutes else \
            math.ceil(s.epochs * s.traces.num_traces / (1 - s.fresh_share))  # fresh batches come on top
        budget = Budget(s.num_traces, s.minutes, epochs, start=s.start)
        main = group.is_main  # rank 0 alone validates, saves and shows progress
        pieces = [budget, LearningRateSchedule(budget), *([Validation(s.validate_every)] if main else []),
                  *([Checkpoint(s.checkpoint, s.checkpoint_every)] if s.checkpoint is not None and main else []),
                  FailureLimit(s.max_failure_rate, s.failure_window),
                  ProgressBar(epochs or s.num_traces, s.progress and main, count="trained_traces" if epochs else "traces"),
                  *s.callbacks]
        stats = RunStats(seed=run_seed, budget_traces=s.num_traces, batch_size=s.batch_size,
                         failed_validation_traces=failures.failures, last_failure=failures.last,
                         validation_traces=len(validation))
        stream_seed = rank_seed(run_seed + guide.traces_trained, group.rank)
        deadline = None if s.minutes is None else s.start + 60 * s.minutes
        drawing = s.workers if s.traces is None or s.fresh_share > 0 else min(s.workers, 1)  # readers are light
        with limited_threads(_torch_threads(s.threads, drawing)):
            try:
                trainer.run(_stream(s, sampler, stream_seed, deadline), pieces, stats)
            except ModelFailureError as e:
                raise _with_guide(e, guide, stats) from None
    return guide


def _stream(s, sampler, seed, deadline):
    """The run's ``(batch, fresh)`` pairs: prior draws (echoed), or the trace dataset with a
    ``fresh_share`` of them mixed in."""
    prior, pin = None, s.device.type == "cuda"  # pinned batches copy to the GPU while it works
    if s.traces is None or s.fresh_share > 0:
        prior = Echo(batch_stream(sampler, s.batch_size, seed, s.workers, s.trace_timeout, deadline, pin), s.echo,
                     seed=seed)
    if s.traces is None:
        return prior
    stored = shard_batches(s.traces, sampler.specs, s.batch_size, s.epochs, seed + 1, s.workers, s.group.rank,
                           s.group.world_size, pin)  # each random choice from a seed of its own
    return Mixed(stored, prior, s.fresh_share, seed + 2)


def _own_counts(batch, fresh) -> tuple:
    """``((traces, fresh traces, failed traces), latest failure)`` of one rank's ``batch`` (None: an
    empty one); a repeat's failures were counted with its first showing, so it has none."""
    size = 0 if batch is None else batch.size
    if not fresh:
        return (size, 0, 0), ""
    return (size, size, batch.failed), batch.error


def _clash(batch, known: dict) -> str:
    """The error where ``batch`` holds an address the network knows as another site (met so by a
    worker, or a rank, that had not seen the network's entry), else ``""``."""
    for name, spec in ({} if batch is None else batch.specs).items():
        have = known.get(name)
        if have is not None and have != spec:
            try:
                check_consistent(have, spec)  # "before": the network's; "now": the batch's
            except ValueError as e:
                return str(e)
    return ""


def _add_stored_sites(sampler, shards, observation):
    """The dataset's addresses added to the sampler's table, each checked against the model's
    entry where the model has met it, and its observations' shapes and dtypes against the
    model's ``observation`` (ValueError naming the address or site, and the dataset)."""
    for name, (shape, dtype) in shards.observed().items():
        want = (tuple(observation[name].shape), str(observation[name].dtype).replace("torch.", ""))
        if (shape, dtype) != want:
            raise ValueError(f"the trace dataset {shards.path} does not fit the model: observed site {name!r} is "
                             f"{shape} {dtype} there, {want[0]} {want[1]} in the model")
    for name, spec in shards.specs().items():
        if name not in sampler.specs:
            sampler.specs[name] = spec
            continue
        try:
            check_consistent(spec, sampler.specs[name])  # "before": in the dataset; "now": the model's
        except ValueError as e:
            raise ValueError(f"the trace dataset {shards.path} does not fit the model: {e}") from None


def _state_tensors(net) -> list:
    """The network's floating-point parameters and buffers, in the order the network holds them."""
    return [t for t in (*net.parameters(), *net.buffers()) if t.is_floating_point()]


def _with_guide(error, guide, stats):
    """``error`` with the guide trained so far on it, and its message saying where that is saved."""
    error.guide = guide
    where = f"saved in {stats.saved_to}" if stats.saved_to else "on this error as .guide (not saved)"
    error.args = (f"{error.args[0]}; the guide trained so far is {where}",)
    return error


def _positive(name, value, kind):
    """ValueError or TypeError naming ``name`` unless ``value`` is a positive number of ``kind``."""
    what = "a positive int" if kind is numbers.Integral else "a positive number"
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{name} must be {what}, got {value!r} ({type(value).__name__})")
    if not value > 0 or (kind is numbers.Real and math.isnan(value)):
        raise ValueError(f"{name} must be {what}, got {value!r}")


def _checked_settings(s):
    """``s`` with ``observe`` (the sites' names: a pattern's resolved by one run of the model, after
    the other checks), ``callbacks``, ``workers`` and the budget filled in, and ``start``, the
    moment ``minutes`` counts from; an error naming the argument, before any work, for a value
    that cannot be right."""
    s.start = time.monotonic()
    s.callbacks = _checked_callbacks(s.callbacks)
    for name in ("amp", "distributed"):
        if getattr(s, name) not in (None, True, False):
            raise ValueError(f"{name} must be None, True or False, got {getattr(s, name)!r}")
    check_echo(s.echo)
    s.device = checked_device(s.device)
    if s.num_traces is None and s.minutes is None and s.traces is None:
        s.num_traces = 10_000
    for name in ("num_traces", "minutes", "trace_timeout"):
        if getattr(s, name) is not None:
            _positive(name, getattr(s, name), numbers.Integral if name == "num_traces" else numbers.Real)
    for name in ("batch_size", "validation_size", "failure_window"):
        _positive(name, getattr(s, name), numbers.Integral)
    if isinstance(s.checkpoint_every, bool) or not isinstance(s.checkpoint_every, numbers.Real) \
            or not s.checkpoint_every >= 0:
        raise ValueError(f"checkpoint_every must be minutes, 0 or more, got {s.checkpoint_every!r}")
    if isinstance(s.max_failure_rate, bool) or not isinstance(s.max_failure_rate, numbers.Real) \
            or not 0 <= s.max_failure_rate < 1:
        raise ValueError(f"max_failure_rate must be a share in [0, 1), got {s.max_failure_rate!r}")
    if s.workers is not None and (isinstance(s.workers, bool) or not isinstance(s.workers, numbers.Integral)
                                  or s.workers < 0):
        raise ValueError(f"workers must be 0 or a positive int, got {s.workers!r}")
    s.workers = min(4, rank_cores()) if s.workers is None else s.workers
    s.widen = check_widen(s.widen)
    drawn = {} if s.inputs is None else check_sampler(s.inputs, s.model, s.model_args, s.model_kwargs)
    s.observe = resolve_observe(s.model, s.observe, s.model_args, {**(s.model_kwargs or {}), **drawn})
    clash = [n for n in drawn if n in s.observe]
    if clash:
        raise ValueError(f"input {clash[0]!r} has the name of an observed site: rename the argument")
    _checked_dataset(s)
    return s


def _checked_dataset(s):
    """``s.traces`` as a complete :class:`~infcomp.shards.TraceShards` of the observed sites (else an
    error naming the folder), with ``epochs`` and ``fresh_share`` checked."""
    if s.traces is None:
        if s.epochs != 1 or s.fresh_share != 0:
            raise ValueError(f"epochs={s.epochs!r} and fresh_share={s.fresh_share!r} are settings of training on a "
                             "trace dataset: pass traces= too, or leave them out")
        return
    _positive("epochs", s.epochs, numbers.Integral)
    if isinstance(s.fresh_share, bool) or not isinstance(s.fresh_share, numbers.Real) or not 0 <= s.fresh_share < 1:
        raise ValueError(f"fresh_share must be a share in [0, 1), got {s.fresh_share!r}")
    if not isinstance(s.traces, TraceShards):
        s.traces = TraceShards(s.traces)
    s.traces.check_complete()
    if tuple(s.traces.observe) != tuple(s.observe):
        raise ValueError(f"the trace dataset {s.traces.path} observes {list(s.traces.observe)}, not {list(s.observe)}")


def _check_overwrite(path, guide, overwrite):
    """ValueError unless saving to ``path`` loses nothing: it does not exist, ``overwrite`` is
    true, or it holds ``guide`` as it stands (the file it was loaded from, or last saved to)."""
    if overwrite or not os.path.exists(path):
        return
    if guide is not None and _holds(path, guide):
        return
    given = "the guide passed as guide= is not the one it holds" if guide is not None else "no guide= was passed"
    raise ValueError(
        f"checkpoint {path} already exists and {given}: to go on training it pass guide=infcomp.load({str(path)!r}); "
        "to start over delete it, give another checkpoint=, or pass overwrite=True")


def _holds(path, guide) -> bool:
    """Whether the guide file ``path`` holds ``guide``'s weights and trace count."""
    from .files import _read

    try:
        data = _read(path, "cpu")
    except Exception:
        return False
    saved, own = data.get("state_dict", {}), guide.network.state_dict()
    return data.get("traces_trained") == guide.traces_trained and saved.keys() == own.keys() and all(
        torch.equal(saved[k], v.cpu()) if torch.is_tensor(v) else saved[k] == v for k, v in own.items())


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
    return max(1, rank_cores() - workers) if workers > 0 else torch.get_num_threads()
