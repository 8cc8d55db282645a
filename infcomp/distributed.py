"""Data-parallel training over ``torch.distributed``: each rank draws its own traces, every rank
takes the same step.

Under ``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``) :func:`join` sets up the default process group (gloo on the CPU, NCCL on
CUDA) unless the caller already has; a plain process gets :class:`Solo`, whose collectives
do nothing.  The process group is left up when training ends, for the caller's later work.

The invariant: at every step each rank holds the same network, with its parameters in the
same order, and the same optimiser state.  Three agreements keep it (:meth:`Group.agree`,
one small all-reduce before every step, then what it calls for):

1. *Addresses.*  The network grows a module for each address it meets.  Where any rank's
   batch holds addresses new to the network, the ranks all-gather those addresses' specs and
   every rank adds the union in one order (rank, then the order its batch met them); rank 0's
   initial weights of the new modules are then broadcast to all.
2. *Gradients.*  Each rank backpropagates the *sum* of its traces' losses; the gradients are
   all-reduced and divided by the step's traces over all ranks: the gradient of the mean over
   the union of the ranks' batches, so a step on ``world_size`` batches of ``B`` is a step on
   one batch of ``world_size * B``.  A parameter no rank's batch reached keeps no gradient on
   any rank (Adam skips it, as a single process would).
3. *Stopping.*  A rank whose stopping rule fires (or whose trace stream ended) says so in
   the next agreement, and every rank stops there, so no rank waits on a collective another
   has left.

torch's ``DistributedDataParallel`` wrapper is not used: its reducer fixes the parameter set
when it is built, and a guide's network grows as addresses appear; the flat all-reduce here
is the same arithmetic, without overlapping communication with the backward pass.
"""

from __future__ import annotations

import contextlib
import os
from typing import NamedTuple

import torch
import torch.distributed as dist

from .files import output_lock
from .traces import SiteSpec, check_consistent

__all__ = ["Group", "Say", "Solo", "join", "launched", "main_lock", "rank_cores", "rank_seed"]


def launched() -> bool:
    """Whether this process is one rank of several: a process group is up, or the launcher's
    environment (``WORLD_SIZE`` above 1) asks for one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank_cores() -> int:
    """The CPU cores this process may count as its own: those it may run on (its affinity, as
    ``taskset`` or a container sets it), split evenly between the ranks the launcher started on
    the machine (``LOCAL_WORLD_SIZE``); at least one."""
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if launched() else 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(ranks, 1))


def local_gpu() -> int:
    """This rank's GPU among those the process sees: ``LOCAL_RANK``, wrapped by their number (a
    launcher that shows each rank one GPU gives every rank its GPU 0)."""
    return int(os.environ.get("LOCAL_RANK", "0")) % max(torch.cuda.device_count(), 1)


def rank_seed(seed: int, rank: int) -> int:
    """The seed rank ``rank``'s trace stream draws from (rank 0's is ``seed`` itself, so a
    one-rank run draws what a plain run does); far enough apart that ranks' workers never share one."""
    return seed + 1_000_003 * rank


class Say(NamedTuple):
    """What a rank says before a step, and what the ranks agreed (:meth:`Group.agree`).

    ``stop``: a stopping rule fired here, or the trace stream stalled past its deadline
    (``stalled``); ``ended``: this rank's share of a trace dataset is spent (it trains on, with
    empty batches, until every rank's is); ``counts``: ints, summed; ``new_specs``: addresses new
    to the network; ``seconds``: averaged; ``failure``: the model's latest error here (``""``)."""

    stop: bool
    ended: bool
    stalled: bool
    counts: tuple
    new_specs: list
    seconds: float
    failure: str = ""
    clash: str = ""


class Solo:
    """One process: every agreement is its own say, every collective does nothing."""

    rank, world_size, local_rank, is_main = 0, 1, 0, True

    def device(self, device) -> torch.device:
        return torch.device(device)

    def agree(self, say: Say) -> Say:
        if say.clash:
            raise ValueError(say.clash)
        return say._replace(stop=say.stop or say.ended, counts=tuple(say.counts), new_specs=list(say.new_specs))

    def broadcast_int(self, value: int) -> int:
        return value

    def raise_main(self, error) -> None:
        if error is not None:
            raise error

    def broadcast_parameters(self, parameters) -> None:
        pass

    def mean_norms(self, balancer) -> None:
        pass


class Group(Solo):
    """This process's place in the default process group, and the collectives training needs.

    Collectives go through tensors on ``comm_device``: the rank's CUDA device under NCCL, the CPU
    under gloo.  Every method is a collective: each rank must call it, in the same order."""

    def __init__(self):
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        self.is_main = self.rank == 0
        nccl = dist.get_backend() == "nccl"
        self.comm_device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    def device(self, device) -> torch.device:
        """``device`` for this rank: ``"cuda"`` becomes this rank's own GPU (:func:`local_gpu`), as
        does ``"cuda:0"`` where each rank sees one GPU; another numbered GPU is a ValueError, on
        every rank alike (the ranks would share it)."""
        device = torch.device(device)
        if device.type != "cuda":
            return device
        if device.index is None or (device.index == 0 and torch.cuda.device_count() == 1):
            return torch.device("cuda", local_gpu())
        raise ValueError(f"device {str(device)!r}: under torchrun each rank trains on a GPU of its own (cuda:LOCAL_RANK "
                         "of those it sees); pass device='cuda'")

    def agree(self, say: Say) -> Say:
        """Every rank's :class:`Say`, agreed in one all-reduce (and, where called for, a gather):

        ``stop`` where any rank's is, or where every rank's share is ``ended``; ``stalled`` where
        any rank's is; a ValueError on every rank where any rank's ``clash`` is set (the lowest
        such rank's); each of ``counts`` summed; the specs new to the network on any rank in one
        order, the same on every rank (each named once, the lower rank's first; ValueError, on
        every rank alike, where two ranks met one address as different sites); the ranks' mean
        ``seconds`` (so that a budget in minutes, and the learning rate that follows it, is read
        alike on every rank); and the highest rank's ``failure`` where traces failed."""
        flags = [float(say.stop), float(say.ended), float(say.stalled), float(bool(say.clash)), say.seconds,
                 len(say.new_specs)]
        total = torch.tensor(flags + list(say.counts), dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(total)
        stop, ended, stalled, clash, seconds, new, *counts = total.tolist()
        if clash:
            clashes = [None] * self.world_size
            dist.all_gather_object(clashes, say.clash)
            rank = next(r for r, c in enumerate(clashes) if c)
            raise ValueError(f"rank {rank}: {clashes[rank]}")
        counts = tuple(round(c) for c in counts)
        union = {}
        if new:
            gathered = [None] * self.world_size
            dist.all_gather_object(gathered, [s.to_dict() for s in say.new_specs])
            for rank, specs in enumerate(gathered):
                for d in specs:
                    first = union.setdefault(d["name"], d)
                    if first is not d:
                        _check_same(first, d, rank)
        failure = say.failure
        if len(counts) > 2 and counts[2] > 0:  # (traces, fresh, failed): someone's model failed
            failures = [None] * self.world_size
            dist.all_gather_object(failures, say.failure)
            failure = next((f for f in reversed(failures) if f), "")
        ended = round(ended) == self.world_size
        return Say(stop > 0 or ended, ended, stalled > 0, counts, [SiteSpec.from_dict(d) for d in union.values()],
                   seconds / self.world_size, failure)

    def raise_main(self, error) -> None:
        """Raise rank 0's ``error`` (a ValueError, or None) on every rank: the others get one of the
        same message, so that no rank waits on a collective rank 0 has left."""
        box = [None if error is None else str(error)]
        dist.broadcast_object_list(box, src=0)
        if error is not None:
            raise error
        if box[0] is not None:
            raise ValueError(f"rank 0 refused the run: {box[0]}")

    def broadcast_int(self, value: int) -> int:
        """Rank 0's ``value`` (a seed, a count), on every rank."""
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return int(box[0])

    def broadcast_parameters(self, parameters) -> None:
        """Rank 0's values of ``parameters`` (in one order on every rank), copied to every rank."""
        parameters = list(parameters)
        if not parameters:
            return
        flat = torch.cat([p.detach().reshape(-1) for p in parameters]).to(self.comm_device)
        dist.broadcast(flat, src=0)
        with torch.no_grad():
            for p, v in zip(parameters, flat.split([p.numel() for p in parameters])):
                p.copy_(v.view_as(p))

    def mean_norms(self, balancer) -> None:
        """Give every rank the same running gradient norms of ``balancer`` (a
        :class:`~infcomp.nn.balance.GradientBalancer`, or None): each key's mean over the ranks
        that hold it, in one order.  Called after each step, so that every rank rescales the next
        step's gradients alike and the guide saves one table."""
        if balancer is None:
            return
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, list(balancer.norms.items()))
        seen = {}
        for items in gathered:
            for key, norm in items:
                seen.setdefault(key, []).append(norm)
        balancer.norms = {key: sum(norms) / len(norms) for key, norms in seen.items()}

    def reduce_gradients(self, parameters, traces: int, loss: float) -> float:
        """Sum every rank's gradients of ``parameters`` and divide by ``traces`` (the step's over
        all ranks), in one flat all-reduce that also sums the ranks' ``loss``, returned; a
        parameter with no gradient on any rank keeps none."""
        parameters = list(parameters)
        dtype, device = parameters[0].dtype, parameters[0].device
        parts = [p.grad.reshape(-1).to(dtype) if p.grad is not None else p.new_zeros(p.numel())
                 for p in parameters]
        parts.append(torch.tensor([float(p.grad is not None) for p in parameters] + [loss], dtype=dtype,
                                  device=device))
        flat = torch.cat(parts).to(self.comm_device)
        dist.all_reduce(flat)
        *grads, reached = flat.to(device).split([p.numel() for p in parameters] + [len(parameters) + 1])
        reached = reached.tolist()
        for p, g, r in zip(parameters, grads, reached):
            p.grad = g.view_as(p) / max(traces, 1) if r > 0 else None
        return reached[-1]


@contextlib.contextmanager
def main_lock(group, path, what="checkpoint", check=None):
    """The block with rank 0 holding the output lock on ``path`` (:func:`~infcomp.files.output_lock`;
    it alone writes there) and ``check()`` passed under it; where either raises a ValueError on
    rank 0, every rank raises it (:meth:`Group.raise_main`) before the block."""
    with contextlib.ExitStack() as held:
        refused = None
        if group.is_main:
            try:
                held.enter_context(output_lock(path, what))
                if check is not None:
                    check()
            except ValueError as e:
                refused = e
        group.raise_main(refused)
        yield


def _check_same(first: dict, other: dict, rank: int) -> None:
    """ValueError naming the address where rank ``rank`` met it as another site than a lower rank did."""
    try:
        check_consistent(SiteSpec.from_dict(first), SiteSpec.from_dict(other))
    except ValueError as e:
        raise ValueError(f"rank {rank} met an address as another site than a lower rank: {e}") from None


def join(device="cpu"):
    """This process's :class:`Group`, setting up the default process group where the launcher's
    environment asks for one and the caller has not (gloo for a CPU ``device``, NCCL for CUDA);
    else :class:`Solo`.  A RuntimeError naming what is missing where ``WORLD_SIZE`` is set above 1
    but the rest of the launcher's environment is not."""
    if not launched():
        return Solo()
    if not dist.is_initialized():
        missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} asks for distributed training, but "
                               f"{', '.join(missing)} is not set: launch with torchrun, or unset WORLD_SIZE")
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(local_gpu())
        dist.init_process_group("nccl" if cuda else "gloo")
    return Group()
