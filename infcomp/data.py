"""Training data: an endless stream of prior traces, collated into batches grouped by structure.

Traces are drawn in worker processes (``torch.utils.data.DataLoader`` over an
``IterableDataset``) while the main process takes gradient steps.  Collation runs
in the workers too: a :class:`Batch` groups its traces by structure (address
sequence) and, within a structure, stacks the values of addresses that share a
signature (family and shape) into one tensor, so the network works on whole
groups at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .traces import PriorSampler, SiteSpec, TraceRecord

__all__ = ["SiteGroup", "StructureBatch", "Batch", "collate", "PriorTraceStream", "prior_batches"]


@dataclass
class SiteGroup:
    signature: tuple
    positions: tuple  # positions in the structure's address sequence
    values: torch.Tensor  # [g, B_s, *S]
    contexts: torch.Tensor  # [g, B_s, *S, c]


@dataclass
class StructureBatch:
    addresses: tuple
    index: torch.Tensor  # [B_s] rows of the batch that have this structure
    groups: list


@dataclass
class Batch:
    size: int
    observation: dict  # site -> [B, *shape]
    structures: list
    specs: dict  # name -> SiteSpec for every address in the batch

    def to(self, device):
        if str(device) == "cpu":
            return self
        obs = {k: v.to(device) for k, v in self.observation.items()}
        structures = [
            StructureBatch(
                s.addresses,
                s.index.to(device),
                [SiteGroup(g.signature, g.positions, g.values.to(device), g.contexts.to(device)) for g in s.groups],
            )
            for s in self.structures
        ]
        return Batch(self.size, obs, structures, self.specs)


def _plan(structure, specs):
    """Positions of a structure grouped by signature, in order of first appearance."""
    groups = {}
    for pos, name in enumerate(structure):
        groups.setdefault(specs[name].signature, []).append(pos)
    return [(sig, tuple(pos)) for sig, pos in groups.items()]


def collate(records: list, specs: dict) -> Batch:
    by_structure = {}
    for i, r in enumerate(records):
        by_structure.setdefault(r.structure, []).append(i)
    structures = []
    for structure, rows in by_structure.items():
        groups = []
        for sig, positions in _plan(structure, specs):
            values = torch.stack([torch.stack([records[i].values[p] for i in rows]) for p in positions])
            contexts = torch.stack([torch.stack([records[i].contexts[p] for i in rows]) for p in positions])
            groups.append(SiteGroup(sig, positions, values, contexts))
        structures.append(StructureBatch(structure, torch.tensor(rows), groups))
    names = list(records[0].observation)
    observation = {n: torch.stack([r.observation[n] for r in records]) for n in names}
    used = {n for s in by_structure for n in s}
    return Batch(len(records), observation, structures, {n: specs[n] for n in used})


def prior_batches(sampler: PriorSampler, batch_size: int):
    while True:
        records = [sampler.sample() for _ in range(batch_size)]
        yield collate(records, sampler.specs)


class PriorTraceStream(IterableDataset):
    """Endless batches of prior traces; each worker draws from its own seed."""

    def __init__(self, sampler: PriorSampler, batch_size: int, seed: int):
        self.sampler, self.batch_size, self.seed = sampler, batch_size, seed

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        pyro.set_rng_seed(self.seed + 104729 * (worker + 1))
        self.sampler.validate = False  # the validation set already ran with Pyro's checks on
        return prior_batches(self.sampler, self.batch_size)


def batch_stream(sampler: PriorSampler, batch_size: int, seed: int, workers: int):
    """An iterator of training batches, drawn in ``workers`` processes (0: in this one)."""
    stream = PriorTraceStream(sampler, batch_size, seed)
    if workers == 0:
        return iter(stream)
    loader = DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        prefetch_factor=4,
        persistent_workers=False,
        multiprocessing_context="fork" if torch.multiprocessing.get_start_method(allow_none=True) in (None, "fork") else None,
    )
    return iter(loader)
