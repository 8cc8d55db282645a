"""How many threads torch and NumPy's BLAS may use while infcomp works.

Trace workers, the trainer and particle-by-particle inference all run small tensor
operations; extra threads only contend for the cores, and BLAS threads in every worker
multiply with the workers until the machine is oversubscribed many times over.
"""

import contextlib

import torch
from threadpoolctl import threadpool_limits


@contextlib.contextmanager
def limited_threads(torch_threads: int = 1):
    """Torch on ``torch_threads`` threads and NumPy's BLAS on one, restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, torch_threads))
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(previous)
