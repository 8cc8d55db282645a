"""Where a network runs: a device name checked before any work is spent on it."""

from __future__ import annotations

import torch

__all__ = ["checked_device"]


def checked_device(device, what: str = "device") -> torch.device:
    """``device`` (a ``torch.device`` or its name: ``"cpu"``, ``"cuda"``, ``"cuda:1"``) as a
    ``torch.device``; a ValueError naming ``what`` where torch does not know the name, or where
    it names a CUDA device this machine lacks (no CUDA, or fewer GPUs than its number)."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{what} {device!r} is not a device torch knows ({e}): use 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{what} {str(device)!r}: this machine has no CUDA device torch can use "
                             f"(torch {torch.__version__}); use 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{what} {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"{what} {str(device)!r}: infcomp runs on 'cpu' or 'cuda'")
    return device
