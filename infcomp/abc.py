"""Approximate-likelihood (ABC) kernels: observe a tensor given a rendered one.

A simulator such as an image renderer has no tractable likelihood.  ABC replaces
it with a kernel around the simulator's output: ``p(image | latents) = K(image;
render(latents), bandwidth)``.  The kernels here are ordinary Pyro distributions,
so a model writes::

    pyro.sample("image", infcomp.abc.PixelKernel(render(latents), 0.1))

``sample()`` returns the rendering plus kernel noise, so prior draws look like
data; ``log_prob`` is the kernel's log density, so importance weights mean
something.  Nothing here knows about images beyond "the last ``event_dim``
dimensions of a tensor".
"""

from __future__ import annotations

import functools
import math

import torch
from pyro.distributions import Laplace, Normal, TorchDistribution, constraints

__all__ = ["PixelKernel", "RandomProjectionKernel", "random_projection"]

_FAMILIES = {"gaussian": Normal, "laplace": Laplace}


def _check(rendered, bandwidth, event_dim, family):
    if family not in _FAMILIES:
        raise ValueError(f"ABC kernel family must be one of {sorted(_FAMILIES)}, got {family!r}")
    if not torch.is_tensor(rendered):
        raise TypeError(f"rendered must be a tensor, got {type(rendered).__name__}")
    if event_dim is None:
        event_dim = rendered.dim()
    if not 0 <= event_dim <= rendered.dim():
        raise ValueError(f"event_dim={event_dim} does not fit a rendered tensor of shape {tuple(rendered.shape)}")
    if float(bandwidth) <= 0:
        raise ValueError(f"bandwidth must be positive, got {float(bandwidth)}")
    return event_dim


class PixelKernel(TorchDistribution):
    """Independent per-element kernel: Gaussian (``family="gaussian"``) or Laplace.

    :param rendered: the simulator's output; its last ``event_dim`` dims are one event
        (default: all of them).
    :param bandwidth: the kernel's scale (standard deviation for Gaussian, scale ``b``
        for Laplace).
    """

    arg_constraints = {"rendered": constraints.real, "bandwidth": constraints.positive}
    has_rsample = True

    def __init__(self, rendered, bandwidth, family="gaussian", event_dim=None, validate_args=None):
        event_dim = _check(rendered, bandwidth, event_dim, family)
        self.rendered = rendered
        self.bandwidth = torch.as_tensor(bandwidth, dtype=rendered.dtype, device=rendered.device)
        self.family = family
        self._base = _FAMILIES[family](rendered, self.bandwidth).to_event(event_dim)
        super().__init__(self._base.batch_shape, self._base.event_shape, validate_args=False)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.independent(constraints.real, len(self.event_shape))

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        rendered = self.rendered.expand(batch_shape + self.event_shape)
        return PixelKernel(rendered, self.bandwidth, self.family, len(self.event_shape))

    @property
    def mean(self):
        return self.rendered

    def rsample(self, sample_shape=torch.Size()):
        return self._base.rsample(sample_shape)

    def log_prob(self, value):
        return self._base.log_prob(value)


@functools.lru_cache(maxsize=16)
def random_projection(num_pixels: int, dim: int, seed: int) -> torch.Tensor:
    """A fixed ``dim x num_pixels`` matrix with orthonormal rows, drawn from ``seed``.

    Orthonormal rows make pixel noise of scale ``s`` project to noise of scale ``s``
    in every direction, so :meth:`RandomProjectionKernel.sample` agrees with its
    ``log_prob``.
    """
    if dim > num_pixels:
        raise ValueError(f"projection dim={dim} exceeds the number of pixels {num_pixels}")
    g = torch.Generator().manual_seed(seed)
    gauss = torch.randn(num_pixels, dim, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(gauss)  # num_pixels x dim, orthonormal columns
    return q.T.contiguous().float()


class RandomProjectionKernel(TorchDistribution):
    """Gaussian kernel on a fixed random projection of both images.

    ``log p(x | r) = sum_k log Normal(P x; P r, bandwidth)`` with ``P`` a ``dim x D``
    matrix of orthonormal rows (:func:`random_projection`), ``D`` the number of
    elements in one event.  As in the Anglican models of Le et al. (2017), it
    compares images by a few hundred random directions instead of every
    pixel, which is smoother in the latents.
    """

    arg_constraints = {"rendered": constraints.real, "bandwidth": constraints.positive}
    has_rsample = True

    def __init__(self, rendered, bandwidth, dim=128, seed=0, event_dim=None, validate_args=None):
        event_dim = _check(rendered, bandwidth, event_dim, "gaussian")
        self.rendered = rendered
        self.bandwidth = torch.as_tensor(bandwidth, dtype=rendered.dtype, device=rendered.device)
        self.dim, self.seed = int(dim), int(seed)
        split = rendered.dim() - event_dim
        batch_shape, event_shape = rendered.shape[:split], rendered.shape[split:]
        self.num_pixels = math.prod(event_shape)
        if self.dim > self.num_pixels:
            raise ValueError(f"projection dim={self.dim} exceeds the number of pixels {self.num_pixels}")
        super().__init__(batch_shape, event_shape, validate_args=False)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.independent(constraints.real, len(self.event_shape))

    def _project(self, x):
        flat = x.reshape(x.shape[: x.dim() - len(self.event_shape)] + (self.num_pixels,))
        proj = random_projection(self.num_pixels, self.dim, self.seed).to(flat)
        return flat @ proj.T

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        rendered = self.rendered.expand(batch_shape + self.event_shape)
        return RandomProjectionKernel(rendered, self.bandwidth, self.dim, self.seed, len(self.event_shape))

    @property
    def mean(self):
        return self.rendered

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        noise = torch.randn(shape, dtype=self.rendered.dtype, device=self.rendered.device)
        return self.rendered.expand(shape) + self.bandwidth * noise

    def log_prob(self, value):
        diff = self._project(value - self.rendered)
        return Normal(0.0, self.bandwidth).log_prob(diff).sum(-1)
