"""Save a grid of grey-scale images, each with a title underneath (matplotlib ``Figure``,
rendered by Agg without pyplot)."""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

__all__ = ["save_gallery"]


def _to_array(image) -> np.ndarray:
    if hasattr(image, "detach"):  # torch tensor
        image = image.detach().cpu().numpy()
    a = np.asarray(image, dtype=np.float32)
    a = np.squeeze(a)
    if a.ndim != 2:
        raise ValueError(f"gallery images must be 2-D (H, W) after squeezing, got shape {a.shape}")
    return a


def save_gallery(
    images: Sequence,
    titles: Sequence[str] | None = None,
    path: str = "gallery.png",
    ncols: int = 4,
    scale: float = 2.5,
    dpi: int = 100,
    fontsize: float = 8.0,
) -> str:
    """Write ``images`` (2-D arrays or tensors, 1 = white) as a PNG grid to ``path``.

    :param titles: one string per image, drawn under it (any text; newlines allowed).
    :param ncols: images per row.
    :param scale: width of one panel in inches (height follows the first image's aspect).
    :returns: ``path``.
    """
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    arrays = [_to_array(im) for im in images]
    if not arrays:
        raise ValueError("save_gallery needs at least one image")
    titles = [""] * len(arrays) if titles is None else [str(t) for t in titles]
    if len(titles) != len(arrays):
        raise ValueError(f"{len(arrays)} images but {len(titles)} titles")
    ncols = max(1, min(int(ncols), len(arrays)))
    nrows = math.ceil(len(arrays) / ncols)
    h, w = arrays[0].shape
    lines = max(t.count("\n") + 1 for t in titles)
    panel_h = scale * h / w + 0.18 * lines * fontsize / 8.0 + 0.1
    fig = Figure(figsize=(ncols * scale, nrows * panel_h), dpi=dpi)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= len(arrays):
            ax.axis("off")
            continue
        ax.imshow(arrays[k], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xlabel(titles[k], fontsize=fontsize)
    fig.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(path, format="png")
    return path
