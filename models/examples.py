"""Small models with exact answers, used by the tests, the benchmarks and the first tutorial."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch

__all__ = [
    "gaussian",
    "gaussian_exact",
    "poisson_branching",
    "poisson_branching_exact",
    "beta_bernoulli",
    "beta_bernoulli_exact",
]

# -- Gaussian with unknown mean: mu ~ N(1, 5), y_i ~ N(mu, 2), i = 1, 2 -----------------
PRIOR_MEAN, PRIOR_VAR, NOISE_VAR = 1.0, 5.0, 2.0


def gaussian(y=None):
    mu = pyro.sample("mu", dist.Normal(PRIOR_MEAN, PRIOR_VAR**0.5))
    pyro.sample("y", dist.Normal(mu, NOISE_VAR**0.5).expand([2]).to_event(1), obs=y)
    return mu


def gaussian_exact(y):
    """Posterior mean and standard deviation of ``mu`` given ``y``."""
    y = torch.as_tensor(y, dtype=torch.float64)
    precision = 1 / PRIOR_VAR + len(y) / NOISE_VAR
    mean = (PRIOR_MEAN / PRIOR_VAR + y.sum() / NOISE_VAR) / precision
    return float(mean), float(precision**-0.5)


# -- A Poisson number of latent sites: n ~ Poisson(3), x_i ~ N(0, 1), y ~ N(sum x, 1) --------
RATE = 3.0


def poisson_branching(y=None):
    n = pyro.sample("n", dist.Poisson(RATE))
    total = torch.tensor(0.0)
    for i in range(int(n)):
        total = total + pyro.sample(f"x_{i}", dist.Normal(0.0, 1.0))
    pyro.sample("y", dist.Normal(total, 1.0), obs=y)
    return n


def poisson_branching_exact(y, max_n=60):
    """``p(n | y)`` for n = 0 .. max_n by enumeration: given n, y ~ N(0, n + 1)."""
    n = torch.arange(max_n + 1, dtype=torch.float64)
    log_p = dist.Poisson(torch.tensor(RATE, dtype=torch.float64)).log_prob(n) + dist.Normal(
        0.0, (n + 1).sqrt()
    ).log_prob(torch.as_tensor(y, dtype=torch.float64))
    return torch.softmax(log_p, 0)


# -- Beta-Bernoulli: p ~ Beta(2, 2), k flips observed ---------------------------------------
ALPHA, BETA, FLIPS = 2.0, 2.0, 10


def beta_bernoulli(y=None):
    p = pyro.sample("p", dist.Beta(ALPHA, BETA))
    pyro.sample("y", dist.Bernoulli(p).expand([FLIPS]).to_event(1), obs=y)
    return p


def beta_bernoulli_exact(y):
    """The posterior ``Beta(alpha + heads, beta + tails)``: its mean and standard deviation."""
    heads = float(torch.as_tensor(y).sum())
    a, b = ALPHA + heads, BETA + FLIPS - heads
    return a / (a + b), math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
