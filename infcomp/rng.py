"""Seeded runs that leave the caller's random number generators as they were.

``compile(..., seed=s)`` and ``infer(..., seed=s)`` draw exactly what they would
after ``pyro.set_rng_seed(s)``, but inside :func:`fork_rng`: the state of every
generator Pyro seeds (torch's, and CUDA's where it is in use, Python's ``random``,
NumPy's global one) is saved first and put back afterwards, however the block ends.
A caller's own stream of draws therefore goes on as if the call had not happened.
"""

from __future__ import annotations

import contextlib

import pyro
import pyro.util
import torch

__all__ = ["fork_rng", "draw_seed"]

SEED_BOUND = 2**31 - 1  # seeds are drawn in [0, SEED_BOUND): valid for torch, random and NumPy alike


def draw_seed() -> int:
    """A seed for a run the caller did not seed: one draw from torch's global generator, which
    advances it by that draw only (so successive unseeded runs differ)."""
    return int(torch.randint(0, SEED_BOUND, ()))


@contextlib.contextmanager
def fork_rng(seed: int | None):
    """Run the block as after ``pyro.set_rng_seed(seed)``, then restore every generator's state.

    The block's draws are exactly those a plain ``pyro.set_rng_seed(seed)`` would give; a
    reseed inside the block (a trace stream seeding its process) is undone with the rest.
    ``seed=None`` forks nothing: the block draws from, and advances, the caller's generators.
    """
    if seed is None:
        yield
        return
    state = pyro.util.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None  # the block may start CUDA
    try:
        pyro.set_rng_seed(seed)
        yield
    finally:
        pyro.util.set_rng_state(state)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
