"""Training data: an endless stream of prior traces, collated into batches of site groups.

Traces are drawn in worker processes (``torch.utils.data.DataLoader`` over an
``IterableDataset``) while the main process takes gradient steps.  Collation runs
in the workers too.  A :class:`Batch` holds, for every *signature* (proposal
family and value shape) met in it, one :class:`SiteGroup`: the values and prior
contexts of all its sites across all traces, stacked, with each row's trace,
step and address.  Rows of one address also get a *slot* (their rank among that
address's rows), so the network can lay a group out as ``[addresses, slots]``
and apply every address's own weights in one batched matmul.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import time
import traceback
from dataclasses import dataclass, replace

import pyro
import torch
from threadpoolctl import threadpool_limits
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .traces import PriorSampler

__all__ = ["SiteGroup", "Batch", "collate", "PriorTraceStream", "worker_seed", "batch_stream", "check_echo", "Echo",
           "TraceTimeout", "ModelFailureError", "FailureWindow", "draw_records"]


@dataclass
class SiteGroup:
    signature: tuple
    names: list  # the group's addresses
    trace: torch.Tensor  # [R] which trace each row belongs to
    step: torch.Tensor  # [R] its position in that trace's address sequence
    address: torch.Tensor  # [R] index into names
    slot: torch.Tensor  # [R] rank of the row among its address's rows
    values: torch.Tensor  # [R, *S]
    contexts: torch.Tensor  # [R, *S, c]

    @property
    def num_slots(self):
        return int(self.slot.max()) + 1 if len(self.slot) else 0


@dataclass
class Batch:
    size: int
    observation: dict  # site -> [B, *shape]
    lengths: torch.Tensor  # [B] latent sites per trace
    groups: list
    specs: dict  # name -> SiteSpec for every address in the batch
    failed: int = 0  # traces drawn for this batch that failed (skipped: not in it)
    error: str = ""  # the last failure, "Type: message"

    def map(self, fn) -> Batch:
        """The batch with ``fn`` applied to every tensor of it (a copy; the counts kept)."""
        groups = [replace(g, trace=fn(g.trace), step=fn(g.step), address=fn(g.address), slot=fn(g.slot),
                          values=fn(g.values), contexts=fn(g.contexts)) for g in self.groups]
        return replace(self, observation={k: fn(v) for k, v in self.observation.items()}, lengths=fn(self.lengths),
                       groups=groups)

    def to(self, device, non_blocking: bool = False) -> Batch:
        """The batch on ``device`` (itself where that is the CPU, or it is empty); from pinned
        memory (:meth:`pin_memory`) a CUDA copy with ``non_blocking`` overlaps the work queued before it."""
        if torch.device(device).type == "cpu" or self.size == 0:
            return self
        return self.map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """The batch in page-locked memory: what a DataLoader with ``pin_memory=True`` calls, in
        its pinning thread, for every batch its workers send."""
        return self.map(lambda t: t.pin_memory())


def collate(records: list, specs: dict) -> Batch:
    groups = {}  # signature -> columns
    for b, r in enumerate(records):
        for t, (name, value, context) in enumerate(zip(r.structure, r.values, r.contexts)):
            g = groups.get(specs[name].signature)
            if g is None:
                g = groups[specs[name].signature] = {"names": {}, "count": [], "rows": []}
            u = g["names"].setdefault(name, len(g["names"]))
            if u == len(g["count"]):
                g["count"].append(0)
            g["rows"].append((b, t, u, g["count"][u], value, context))
            g["count"][u] += 1
    out = []
    for sig, g in groups.items():
        b, t, u, s, values, contexts = zip(*g["rows"])
        out.append(
            SiteGroup(sig, list(g["names"]), torch.tensor(b), torch.tensor(t), torch.tensor(u), torch.tensor(s),
                      torch.stack(values), torch.stack(contexts))
        )
    names = list(records[0].observation)
    observation = {n: torch.stack([r.observation[n] for r in records]) for n in names}
    lengths = torch.tensor([len(r.structure) for r in records])
    used = dict.fromkeys(n for g in out for n in g.names)  # in the order the records met them, in any process
    return Batch(len(records), observation, lengths, out, {n: specs[n] for n in used})


class TraceTimeout(Exception):
    """A trace ran past its ``trace_timeout``: it counts as a failed trace."""


class ModelFailureError(RuntimeError):
    """The model failed in more than the allowed share of its runs; ``guide`` is the guide trained
    so far (saved first where the run had a checkpoint), ``last_failure`` the model's last error."""

    def __init__(self, message, last_failure="", guide=None):
        super().__init__(message)
        self.last_failure, self.guide = last_failure, guide


def _is_model_failure(exc) -> bool:
    """True for an error of the model's own (or of the libraries it calls); False for one that
    infcomp raised about the model (an address that changes meaning), which is no chance failure."""
    if isinstance(exc, TraceTimeout):
        return True
    frames = traceback.extract_tb(exc.__traceback__)
    here = os.path.dirname(os.path.abspath(__file__))
    return not frames or not os.path.abspath(frames[-1].filename).startswith(here + os.sep)


def _alarm(signum, frame):
    raise TraceTimeout("the trace ran past trace_timeout")


def _sample(sampler: PriorSampler, timeout):
    """One trace, or the ``"Type: message"`` of the model's failure; with ``timeout`` (seconds, in
    a worker process only) a trace that runs longer fails with :class:`TraceTimeout`."""
    timed = timeout is not None and get_worker_info() is not None
    if timed:
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        return sampler.sample()
    except Exception as e:
        if not _is_model_failure(e):
            raise
        return f"{type(e).__name__}: {e}"
    finally:
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)


def prior_batches(sampler: PriorSampler, batch_size: int, trace_timeout=None):
    """Batches of ``batch_size`` traces; failed traces are skipped and counted on the batch, and a
    batch that ``batch_size`` failures leave short comes out as it is (empty if none succeeded)."""
    while True:
        records, failed, error = [], 0, ""
        while len(records) < batch_size and failed < batch_size:
            r = _sample(sampler, trace_timeout)
            if isinstance(r, str):
                failed, error = failed + 1, r
            else:
                records.append(r)
        batch = collate(records, sampler.specs) if records else Batch(0, {}, torch.zeros(0), [], {})
        batch.failed, batch.error = failed, error
        yield batch


class FailureWindow:
    """The model's failure rate over its latest ``window`` runs: :meth:`exceeded` once at least
    ``min(window, 100)`` runs are counted and more than ``max_rate`` of those in the window failed."""

    def __init__(self, max_rate: float = 0.1, window: int = 1000):
        self.max_rate, self.window = max_rate, window
        self.runs = collections.deque()  # (runs, failures) per record() call
        self.count = self.failures = 0
        self.last = ""

    def record(self, ok: int, failed: int, error: str = ""):
        self.runs.append((ok + failed, failed))
        self.count, self.failures = self.count + ok + failed, self.failures + failed
        self.last = error or self.last
        while self.runs and self.count - self.runs[0][0] >= self.window:
            n, f = self.runs.popleft()
            self.count, self.failures = self.count - n, self.failures - f

    def exceeded(self) -> bool:
        return self.count >= min(self.window, 100) and self.failures > self.max_rate * self.count

    def error(self, what: str) -> ModelFailureError:
        """The :class:`ModelFailureError` to raise, naming ``what`` was being drawn and the last failure."""
        return ModelFailureError(
            f"the model failed in {self.failures} of its latest {self.count} runs drawing {what} "
            f"({self.failures / max(self.count, 1):.0%}, above max_failure_rate={self.max_rate}); "
            f"its last failure: {self.last}", self.last)


def draw_records(sampler: PriorSampler, n: int, failures: FailureWindow, what: str = "the validation set",
                 until=None, bar=None) -> list:
    """``n`` traces drawn in this process, failed ones skipped and counted in ``failures``
    (:class:`ModelFailureError` naming ``what`` was being drawn, once its rate is exceeded).

    With ``until`` (a ``time.monotonic()`` value) the draws stop there with fewer, though never
    before one trace is drawn; a trace under way is not interrupted.  ``bar``: a tqdm bar moved
    on by each trace drawn."""
    records = []
    while len(records) < n and not (records and until is not None and time.monotonic() >= until):
        r = _sample(sampler, None)
        if isinstance(r, str):
            failures.record(0, 1, r)
            if failures.exceeded():
                raise failures.error(what)
        else:
            records.append(r)
            failures.record(1, 0)
            if bar is not None:
                bar.update()
    return records


def worker_seed(seed: int, worker: int) -> int:
    """The seed trace worker ``worker`` draws from (worker 0 also for a stream drawn in this process)."""
    return seed + 104729 * (worker + 1)


class PriorTraceStream(IterableDataset):
    """Endless batches of prior traces; each worker draws from its own seed.

    Iterating the stream seeds Pyro's generators (torch, ``random``, NumPy) in the process it
    runs in with :func:`worker_seed`: a worker's own process, or, outside a DataLoader, the
    caller's, whose later draws (a new address's initial weights in a training step) then go
    on from that seed too.  That is what makes a ``workers=0`` run reproducible; a caller who
    keeps its own draws runs the stream inside :func:`infcomp.rng.fork_rng`, as ``compile`` does.
    """

    def __init__(self, sampler: PriorSampler, batch_size: int, seed: int, trace_timeout=None):
        self.sampler, self.batch_size, self.seed = sampler, batch_size, seed
        self.trace_timeout = trace_timeout

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        pyro.set_rng_seed(worker_seed(self.seed, worker))
        self.sampler.validate = False  # the validation set already ran with Pyro's checks on
        return prior_batches(self.sampler, self.batch_size, self.trace_timeout)


def _init_worker(worker_id):
    # torch already runs one thread per worker; NumPy's BLAS (used by simulators) must too,
    # or workers and the trainer oversubscribe the cores many times over
    threadpool_limits(1)
    # a SIGTERM sent to the whole process group (a batch scheduler's time limit, `pkill -f`)
    # is the main process's to handle: a worker killed by it would abort the checkpoint
    # being saved; workers still end with the main process (the DataLoader watches it)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def batch_stream(sampler: PriorSampler, batch_size: int, seed: int, workers: int, trace_timeout=None,
                 deadline=None, pin: bool = False):
    """An iterator of training batches, drawn in ``workers`` processes (0: in this one, which
    it seeds: see :class:`PriorTraceStream`).

    With workers, ``trace_timeout`` (seconds) fails a trace that runs longer, ``deadline`` (a
    ``time.monotonic()`` value) ends the stream (``StopIteration``) when no batch has come by
    then, and ``pin`` puts each batch in pinned memory (for a CUDA trainer) as it arrives.  With
    ``workers=0`` none of the three applies: a model that stalls in this process stalls the stream.
    """
    stream = PriorTraceStream(sampler, batch_size, seed, trace_timeout)
    if workers == 0:
        return iter(stream)
    loader = DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=4, worker_init_fn=_init_worker,
                        timeout=0 if deadline is None else _POLL, pin_memory=pin)
    return _Deadline(iter(loader), deadline)


_POLL = 0.25  # seconds between looks at the deadline while waiting for a batch


class _Deadline:
    """A DataLoader iterator that ends at ``deadline``: waiting is polled, and workers still busy
    then are terminated, so that a stalled model cannot hold the run past it."""

    def __init__(self, it, deadline):
        self.it, self.deadline = it, deadline

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            try:
                return next(self.it)
            except RuntimeError as e:
                if self.deadline is None or "timed out" not in str(e):
                    raise
                if time.monotonic() >= self.deadline:
                    self.close()
                    raise StopIteration from None

    def close(self):
        """Kill the workers still busy (a stalled one would hold the DataLoader's shutdown), first
        telling the DataLoader's SIGCHLD watch that they are meant to end."""
        from torch.utils.data._utils import signal_handling

        if getattr(self.it, "_worker_pids_set", False):
            signal_handling._remove_worker_pids(id(self.it))
            self.it._worker_pids_set = False
        for w in getattr(self.it, "_workers", ()):
            if w.is_alive():
                w.kill()  # not terminate(): workers ignore SIGTERM (see _init_worker)


def check_echo(factor):
    """ValueError unless ``factor`` is a valid echo factor: at least 1 (each batch trained on once)."""
    if not factor >= 1:
        raise ValueError(f"echo must be at least 1 (each batch trained on once), got {factor!r}")


class Echo:
    """Data echoing (Choi et al. 2019, *Faster Neural Network Training with Data Echoing*): each
    fresh batch is trained on ``factor`` times in all, its repeats at random later steps.

    When drawing a trace costs about as much as a gradient step on it (an image rendered on a
    CPU), repeats buy more steps per hour for fewer fresh traces.  Repeats wait in a pool of at
    least ``pool`` batches and are drawn from it at random, so a batch comes back on average
    about that many steps later, when the network has moved on.  A fractional factor repeats
    that share of batches once more on average.  Iterating gives ``(batch, fresh)``.
    """

    def __init__(self, stream, factor: float, pool: int = 16, seed: int = 0):
        check_echo(factor)
        self.stream, self.factor, self.pool = stream, float(factor), pool
        self.rng = random.Random(seed)
        self.waiting = []  # [batch, repeats left]
        self.credit = 0.0

    def __iter__(self):
        return self

    def __next__(self):
        if self.credit >= 1 and len(self.waiting) >= self.pool:
            self.credit -= 1
            i = self.rng.randrange(len(self.waiting))
            entry = self.waiting[i]
            entry[1] -= 1
            if entry[1] == 0:
                self.waiting[i] = self.waiting[-1]
                self.waiting.pop()
            return entry[0], False
        batch = next(self.stream)
        if self.factor > 1 and getattr(batch, "size", 1):  # a batch its failed traces left empty is not repeated
            if len(self.waiting) >= self.pool:  # while the pool fills, batches are not owed their repeats at once
                self.credit += self.factor - 1
            repeats = int(self.factor - 1) + (self.rng.random() < (self.factor - 1) % 1)
            if repeats:
                self.waiting.append([batch, repeats])
        return batch, True
