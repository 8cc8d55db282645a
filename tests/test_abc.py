"""ABC kernels: log densities against hand computations; samples consistent with them."""

import math

import pyro
import pyro.poutine as poutine
import pytest
import torch

from infcomp.abc import PixelKernel, RandomProjectionKernel, random_projection


def test_gaussian_pixel_kernel_by_hand():
    rendered = torch.tensor([[0.0, 0.5], [1.0, 0.25]])
    image = torch.tensor([[0.1, 0.5], [0.7, 0.25]])
    bw = 0.2
    k = PixelKernel(rendered, bw)
    d2 = (0.1**2 + 0.0 + 0.3**2 + 0.0)
    expected = -d2 / (2 * bw**2) - 4 * math.log(bw * math.sqrt(2 * math.pi))
    assert float(k.log_prob(image)) == pytest.approx(expected, rel=1e-6)
    assert k.event_shape == (2, 2) and k.batch_shape == ()


def test_laplace_pixel_kernel_by_hand():
    rendered = torch.zeros(3)
    image = torch.tensor([0.1, -0.2, 0.0])
    k = PixelKernel(rendered, 0.5, family="laplace")
    expected = -(0.1 + 0.2) / 0.5 - 3 * math.log(2 * 0.5)
    assert float(k.log_prob(image)) == pytest.approx(expected, rel=1e-6)


def test_projection_kernel_by_hand():
    rendered = torch.rand(6, 5, generator=torch.Generator().manual_seed(0))
    image = rendered + 0.1
    k = RandomProjectionKernel(rendered, 0.3, dim=7, seed=4)
    p = random_projection(30, 7, 4)
    assert torch.allclose(p @ p.T, torch.eye(7), atol=1e-5)  # orthonormal rows
    z = p @ (image - rendered).reshape(-1)
    expected = float((-0.5 * (z / 0.3) ** 2 - math.log(0.3 * math.sqrt(2 * math.pi))).sum())
    assert float(k.log_prob(image)) == pytest.approx(expected, rel=1e-5)


def test_samples_look_like_data_and_match_the_density():
    torch.manual_seed(0)
    rendered = torch.rand(20, 30)
    k = PixelKernel(rendered, 0.1)
    x = k.sample(torch.Size([200]))
    assert x.shape == (200, 20, 30)
    assert abs(float((x - rendered).std()) - 0.1) < 0.002
    proj = RandomProjectionKernel(rendered, 0.1, dim=50)
    z = proj._project(proj.sample(torch.Size([400])) - rendered)
    assert abs(float(z.std()) - 0.1) < 0.005  # projected noise has the kernel's scale


def test_kernels_work_as_pyro_sites():
    rendered = torch.zeros(4, 4)

    def model(image=None):
        pyro.sample("image", RandomProjectionKernel(rendered, 0.2, dim=8), obs=image)

    tr = poutine.trace(model).get_trace(torch.ones(4, 4) * 0.1)
    assert torch.isfinite(tr.log_prob_sum())


def test_bad_kernel_arguments():
    with pytest.raises(ValueError, match="bandwidth must be positive"):
        PixelKernel(torch.zeros(3), 0.0)
    with pytest.raises(ValueError, match="family must be one of"):
        PixelKernel(torch.zeros(3), 0.1, family="cauchy")
    with pytest.raises(ValueError, match="exceeds the number of pixels"):
        RandomProjectionKernel(torch.zeros(2, 2), 0.1, dim=9)
