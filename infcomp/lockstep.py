"""Many runs of a model advanced together: each run is a coroutine that pauses where it needs
an answer, and the runs paused at the same place are answered with one call.

A Pyro model is ordinary Python: its control flow may depend on every value it draws, so its
runs cannot be vectorised in general.  Here each run is a greenlet (a coroutine with its own
stack, switched in microseconds) that calls :func:`pause` at a site; :func:`lockstep` collects
the paused runs, groups them by their requests' ``key`` and hands each group to ``answer`` at
once.  Runs whose paths differ (another number of sites, a branch) simply stand in other groups
and meet again where their keys do.

Pyro keeps its handler stack and its plate dimensions in module globals.  A run's view of both
is swapped in when it resumes and out when it pauses, so runs interleave as if each ran alone
inside the caller's handlers.  The runs share one thread: torch's grad mode and Pyro's
validation flag are the caller's for all of them.
"""

from __future__ import annotations

import sys

import greenlet
from pyro.poutine import runtime

__all__ = ["pause", "lockstep"]


class _Run(greenlet.greenlet):
    """One call, with its own Pyro handler stack and plate dimensions while it is paused."""

    def __init__(self, call):
        super().__init__(call)
        self.stack = list(runtime._PYRO_STACK)  # it starts inside the caller's handlers
        self.dims = list(runtime._DIM_ALLOCATOR._stack)

    def resume(self, base, *reply):
        """Run until the next :func:`pause` (its request) or the end (the call's result); the
        caller's handler stack and plate dimensions ``base`` stand again afterwards."""
        return self._inside(base, lambda: self.switch(*reply) if reply else self.switch())

    def close(self, base):
        """End a paused run: its ``with`` blocks and ``finally`` clauses run, inside its own stack
        (again if a clause pauses it once more: a run is never left alive to be ended later
        under another run's handlers)."""
        for _ in range(100):
            if not self or self.dead:
                return
            self._inside(base, lambda: self.throw(greenlet.GreenletExit))
        raise RuntimeError("a model run keeps pausing while it is being closed")

    def _inside(self, base, step):
        """``step()`` with this run's handler stack and plate dimensions in Pyro's globals, ``base`` after."""
        stack, dims = runtime._PYRO_STACK, runtime._DIM_ALLOCATOR._stack
        stack[:], dims[:] = self.stack, self.dims
        try:
            return step()
        finally:
            self.stack, self.dims = stack[:], dims[:]
            stack[:], dims[:] = base


def pause(request):
    """From inside a run of :func:`lockstep`: hand ``request`` (with a hashable ``key``) over
    and return the answer.  RuntimeError outside such a run."""
    run = greenlet.getcurrent()
    if not isinstance(run, _Run):
        raise RuntimeError("pause() is for a model run inside infcomp.lockstep.lockstep")
    return run.parent.switch(request)


def lockstep(calls, answer) -> list:
    """Run each of ``calls`` (no-argument callables) to its end and return their results in order.

    While any run is paused, the paused runs are grouped by ``request.key`` (groups in the order
    their first runs paused); ``answer(key, ids, requests)`` returns one reply per run of the
    group, and each run resumes with its reply.  An exception in a run or in ``answer`` ends
    every other run (their ``finally`` clauses run) and propagates.
    """
    runs = [_Run(call) for call in calls]
    results = [None] * len(runs)
    base = list(runtime._PYRO_STACK), list(runtime._DIM_ALLOCATOR._stack)
    try:
        pending = {}
        for i, run in enumerate(runs):
            _step(runs, i, run.resume(base), pending, results)
        while pending:
            groups = {}
            for i, request in pending.items():
                groups.setdefault(request.key, []).append(i)
            waiting, pending = pending, {}
            for key, ids in groups.items():
                replies = answer(key, ids, [waiting[i] for i in ids])
                for i, reply in zip(ids, replies):
                    _step(runs, i, runs[i].resume(base, reply), pending, results)
        return results
    finally:
        failure = None
        for run in runs:  # every run is closed, even if closing one fails
            try:
                run.close(base)
            except Exception as e:
                failure = failure or e
        if failure is not None and sys.exc_info()[0] is None:
            raise failure


def _step(runs, i, out, pending, results):
    if runs[i].dead:
        results[i] = out
    else:
        pending[i] = out
