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
    "random_walk",
    "random_walk_exact",
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


# -- A Gaussian random walk seen through noise: x_0 ~ N(0, 1), x_t ~ N(x_{t-1}, WALK_VAR),
#    y ~ N(x, OBS_VAR) elementwise, one latent site per step and one observed vector --------
STEPS, WALK_VAR, OBS_VAR = 30, 0.25, 1.0


def random_walk(y=None, steps=STEPS):
    x = pyro.sample("x_0", dist.Normal(0.0, 1.0))
    xs = [x]
    for t in range(1, steps):
        x = pyro.sample(f"x_{t}", dist.Normal(x, WALK_VAR**0.5))
        xs.append(x)
    pyro.sample("y", dist.Normal(torch.stack(xs), OBS_VAR**0.5).to_event(1), obs=y)
    return torch.stack(xs)


def random_walk_exact(y):
    """The Kalman smoother's ``(means [T], standard deviations [T], log evidence)`` of the walk given ``y [T]``."""
    y = torch.as_tensor(y, dtype=torch.float64)
    T = len(y)
    m, P = torch.zeros(T, dtype=torch.float64), torch.zeros(T, dtype=torch.float64)
    log_z = 0.0
    for t in range(T):  # the filter: p(x_t | y_0..t)
        m_pred, P_pred = (0.0, 1.0) if t == 0 else (float(m[t - 1]), float(P[t - 1]) + WALK_VAR)
        log_z += float(dist.Normal(torch.tensor(m_pred, dtype=torch.float64), (P_pred + OBS_VAR) ** 0.5).log_prob(y[t]))
        gain = P_pred / (P_pred + OBS_VAR)
        m[t], P[t] = m_pred + gain * (float(y[t]) - m_pred), (1 - gain) * P_pred
    ms, Ps = m.clone(), P.clone()
    for t in range(T - 2, -1, -1):  # Rauch-Tung-Striebel: p(x_t | y_0..T-1)
        c = float(P[t]) / (float(P[t]) + WALK_VAR)
        ms[t] = m[t] + c * (ms[t + 1] - m[t])
        Ps[t] = P[t] + c * c * (Ps[t + 1] - (P[t] + WALK_VAR))
    return ms, Ps.sqrt(), log_z
