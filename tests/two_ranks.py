"""What tests/test_distributed.py runs on each of two ranks under torchrun: ``python -m
torch.distributed.run --standalone --nproc_per_node 2 tests/two_ranks.py OUT``.

Each rank writes ``OUT/rank{r}.pt``: its answers to the checks below, for the test to compare.

1. ``agree``: each rank offers its own new addresses (rank 0 ``a, b``; rank 1 ``b, c``), and both
   must get back one table in one order, the stop, the summed counts and rank 1's failure; an
   ended share stops the run only once both have ended; an address met as two sites is an error
   on both ranks.  Then ``uneven``: rank 1's stream ends after one batch, rank 0's after three,
   and both ranks must take all three steps.
2. ``exact``: three steps on fixed batches, each rank half of every batch, from one network;
   the parameters after them, to compare with one process stepping on the whole batches.
3. ``compile``: ``infcomp.compile`` of the Poisson-branching model (a varying number of
   addresses, the rare ones met first by one rank or the other) with a checkpoint; the
   parameters, the address table and the run's figures on each rank.  Then ``refused``: a
   second compile to that checkpoint without ``guide=``, which rank 0 refuses, on both ranks.
"""

import copy
import os
import sys

import pyro
import torch
import torch.distributed as dist

import infcomp
from infcomp.data import collate
from infcomp.distributed import Say, join
from infcomp.guide import build_guide
from infcomp.traces import PriorSampler, SiteSpec
from infcomp.train import Trainer
from infcomp_models.examples import poisson_branching

EXACT_CONFIG = {"balance_gradients": False}  # the balancer's norms are each rank's own: not exact across ranks
EXACT_STEPS, EXACT_BATCH = 3, 16
COMPILE_TRACES, COMPILE_BATCH = 2048, 64  # COMPILE_BATCH traces a step over both ranks


def exact_batches(sampler, rank=None, world=2):
    """``EXACT_STEPS`` batches of ``EXACT_BATCH`` prior traces drawn from seed 1 (all the same on
    every rank); with ``rank``, only that rank's share of each."""
    pyro.set_rng_seed(1)
    records = [sampler.sample() for _ in range(EXACT_STEPS * EXACT_BATCH)]
    out = []
    for k in range(EXACT_STEPS):
        batch = records[k * EXACT_BATCH:(k + 1) * EXACT_BATCH]
        if rank is not None:
            share = EXACT_BATCH // world
            batch = batch[rank * share:(rank + 1) * share]
        out.append(collate(batch, sampler.specs))
    return out


def exact_trainer(group=None):
    """A fresh guide of the branching model from seed 0, its trainer, and its sampler."""
    pyro.set_rng_seed(0)
    sampler = PriorSampler(poisson_branching, "y")
    validation = [sampler.sample() for _ in range(8)]
    guide = build_guide(poisson_branching, ("y",), validation, config=EXACT_CONFIG)
    return Trainer(guide, sampler, validation, 3e-3, EXACT_BATCH, "cpu", group), sampler


class Finite:
    """Its items, then the end of a dataset (not a stalled model's)."""

    finite = True

    def __init__(self, items):
        self.it = iter(items)

    def __next__(self):
        return next(self.it)


class AddressesAtStart(infcomp.Callback):
    def on_start(self, trainer):
        self.addresses = list(trainer.guide.network.specs)


def main(out):
    group = join("cpu")
    rank = group.rank
    result = {}

    offered = [SiteSpec(n, "normal", "Normal", (), 0) for n in (["a", "b"] if rank == 0 else ["b", "c"])]
    said = group.agree(Say(rank == 1, False, False, (rank + 1, 10, rank), offered, float(rank), f"E: on rank {rank}"))
    result["agree"] = {"stop": said.stop, "counts": said.counts, "names": [s.name for s in said.new_specs],
                       "seconds": said.seconds, "failure": said.failure, "stalled": said.stalled}
    result["ended"] = [group.agree(Say(False, rank == 1, False, (0,), [], 0.0)).stop,
                       group.agree(Say(False, True, False, (0,), [], 0.0)).stop]
    clash = [SiteSpec("a", "normal", "Normal", () if rank == 0 else (2,), 0)]
    try:
        group.agree(Say(False, False, False, (0,), clash, 0.0))
        result["clash"] = None
    except ValueError as e:
        result["clash"] = str(e)
    try:
        group.agree(Say(False, False, False, (0,), [], 0.0, "", "site 'a' changed shape" if rank == 1 else ""))
        result["known_clash"] = None
    except ValueError as e:
        result["known_clash"] = str(e)

    trainer, sampler = exact_trainer(group)
    batches = exact_batches(sampler, rank)
    stats = trainer.run(Finite([(b, True) for b in (batches if rank == 0 else batches[:1])]))
    result["uneven"] = {"steps": stats.steps, "trained": stats.trained_traces, "stopped_waiting": stats.stopped_waiting}

    trainer, sampler = exact_trainer(group)
    trainer.run(iter([(b, True) for b in exact_batches(sampler, rank)]))
    result["exact"] = copy.deepcopy(trainer.guide.network.state_dict())

    checkpoint, start = os.path.join(out, "branching.pt"), AddressesAtStart()
    guide = infcomp.compile(poisson_branching, "y", COMPILE_TRACES, batch_size=COMPILE_BATCH // 2, workers=0, seed=3,
                            validation_size=16, checkpoint=checkpoint, progress=False, callbacks=[start])
    result["compile"] = {
        "addresses_at_start": start.addresses,
        "state": copy.deepcopy(guide.network.state_dict()),
        "addresses": guide.addresses, "traces_trained": guide.traces_trained,
        "world_size": guide.metadata["world_size"], "traces": guide.last_run.traces,
        "validation_loss": guide.last_run.validation_loss,
        "norms": dict(guide.network.balancer.norms),
    }
    try:  # the checkpoint exists and no guide= is given: rank 0 refuses, and so must rank 1
        infcomp.compile(poisson_branching, "y", 64, workers=0, validation_size=8, checkpoint=checkpoint, progress=False)
        result["refused"] = None
    except ValueError as e:
        result["refused"] = str(e)
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
