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
    "random_walk_posterior",
    "random_walk_entropy",
    "hmm",
    "hmm_exact",
    "mixture",
    "mixture_exact",
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


# -- A Gaussian random walk seen through noise: x_0 ~ N(0, 1), x_t ~ N(x_{t-1}, walk_var),
#    y ~ N(x, OBS_VAR) elementwise, one latent site per step and one observed vector --------
STEPS, WALK_VAR, OBS_VAR = 30, 0.25, 1.0


def random_walk(y=None, steps=STEPS, walk_var=WALK_VAR):
    x = pyro.sample("x_0", dist.Normal(0.0, 1.0))
    xs = [x]
    for t in range(1, steps):
        x = pyro.sample(f"x_{t}", dist.Normal(x, walk_var**0.5))
        xs.append(x)
    pyro.sample("y", dist.Normal(torch.stack(xs), OBS_VAR**0.5).to_event(1), obs=y)
    return torch.stack(xs)


def random_walk_exact(y, walk_var=WALK_VAR):
    """The Kalman smoother's ``(means [T], standard deviations [T], log evidence)`` of the walk given ``y [T]``."""
    y = torch.as_tensor(y, dtype=torch.float64)
    T = len(y)
    m, P = torch.zeros(T, dtype=torch.float64), torch.zeros(T, dtype=torch.float64)
    log_z = 0.0
    for t in range(T):  # the filter: p(x_t | y_0..t)
        m_pred, P_pred = (0.0, 1.0) if t == 0 else (float(m[t - 1]), float(P[t - 1]) + walk_var)
        log_z += float(dist.Normal(torch.tensor(m_pred, dtype=torch.float64), (P_pred + OBS_VAR) ** 0.5).log_prob(y[t]))
        gain = P_pred / (P_pred + OBS_VAR)
        m[t], P[t] = m_pred + gain * (float(y[t]) - m_pred), (1 - gain) * P_pred
    ms, Ps = m.clone(), P.clone()
    for t in range(T - 2, -1, -1):  # Rauch-Tung-Striebel: p(x_t | y_0..T-1)
        c = float(P[t]) / (float(P[t]) + walk_var)
        ms[t] = m[t] + c * (ms[t + 1] - m[t])
        Ps[t] = P[t] + c * c * (Ps[t + 1] - (P[t] + walk_var))
    return ms, Ps.sqrt(), log_z


def random_walk_posterior(y, walk_var=WALK_VAR):
    """The walk's exact joint posterior ``p(x | y)``: a ``MultivariateNormal`` over the ``T`` steps
    (float64), its precision the prior's tridiagonal one plus the observations'."""
    y = torch.as_tensor(y, dtype=torch.float64)
    T = len(y)
    d = torch.arange(T)
    prec = torch.zeros(T, T, dtype=torch.float64)
    prec[0, 0] = 1.0
    prec[d[1:], d[1:]] += 1 / walk_var
    prec[d[:-1], d[:-1]] += 1 / walk_var
    prec[d[1:], d[:-1]] = prec[d[:-1], d[1:]] = -1 / walk_var
    prec += torch.eye(T, dtype=torch.float64) / OBS_VAR
    mean = torch.linalg.solve(prec, y / OBS_VAR)
    return dist.MultivariateNormal(mean, precision_matrix=prec)


def random_walk_entropy(steps=STEPS, walk_var=WALK_VAR) -> float:
    """The differential entropy (nats) of the walk's joint posterior ``p(x | y)``, the same for
    every ``y``: a compiled guide's expected loss ``-log q(x | y)`` is at least this."""
    return float(random_walk_posterior(torch.zeros(steps), walk_var).entropy())


# -- A hidden Markov model: z_0 ~ Cat(HMM_INITIAL), z_t ~ Cat(HMM_TRANSITION[z_{t-1}]),
#    y_t ~ N(HMM_MEANS[z_t], HMM_SD), one discrete site per step and one observed vector ----
HMM_STEPS = 50
HMM_INITIAL = torch.tensor([1 / 3, 1 / 3, 1 / 3])
HMM_TRANSITION = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
HMM_MEANS, HMM_SD = torch.tensor([-1.5, 0.0, 1.5]), 1.0


def hmm(y=None, steps=HMM_STEPS):
    z = pyro.sample("z_0", dist.Categorical(HMM_INITIAL))
    zs = [z]
    for t in range(1, steps):
        z = pyro.sample(f"z_{t}", dist.Categorical(HMM_TRANSITION[z]))
        zs.append(z)
    states = torch.stack(zs)
    pyro.sample("y", dist.Normal(HMM_MEANS[states], HMM_SD).to_event(1), obs=y)
    return states


def hmm_exact(y):
    """Forward-backward: ``(marginals [T, 3], log evidence)`` of the HMM given ``y [T]``; row ``t`` is ``p(z_t | y)``."""
    y = torch.as_tensor(y, dtype=torch.float64)
    log_a = HMM_TRANSITION.double().log()
    log_e = dist.Normal(HMM_MEANS.double(), HMM_SD).log_prob(y.unsqueeze(-1))  # [T, 3]
    T = len(y)
    alpha = [HMM_INITIAL.double().log() + log_e[0]]
    for t in range(1, T):
        alpha.append(torch.logsumexp(alpha[-1].unsqueeze(-1) + log_a, 0) + log_e[t])
    beta = [torch.zeros(3, dtype=torch.float64)]
    for t in range(T - 1, 0, -1):
        beta.insert(0, torch.logsumexp(log_a + log_e[t] + beta[0], -1))
    log_z = torch.logsumexp(alpha[-1], 0)
    marginals = torch.softmax(torch.stack(alpha) + torch.stack(beta), -1)
    return marginals, float(log_z)


# -- A Gaussian mixture with fixed components: in a plate of n points, z_i ~ Cat(MIX_WEIGHTS),
#    y_i ~ N(MIX_MEANS[z_i], MIX_SD); one vector site "z" of n assignments -------------------
MIX_POINTS = 20
MIX_WEIGHTS = torch.tensor([0.3, 0.4, 0.3])
MIX_MEANS, MIX_SD = torch.tensor([-2.0, 0.0, 2.0]), 1.0


def mixture(y=None, points=MIX_POINTS):
    with pyro.plate("points", points):
        z = pyro.sample("z", dist.Categorical(MIX_WEIGHTS))
        pyro.sample("y", dist.Normal(MIX_MEANS[z], MIX_SD), obs=y)
    return z


def mixture_exact(y):
    """``(assignment posteriors [n, 3], log evidence)`` of the mixture given ``y [n]``: the points
    are independent given the fixed components."""
    y = torch.as_tensor(y, dtype=torch.float64)
    log_joint = MIX_WEIGHTS.double().log() + dist.Normal(MIX_MEANS.double(), MIX_SD).log_prob(y.unsqueeze(-1))
    return torch.softmax(log_joint, -1), float(torch.logsumexp(log_joint, -1).sum())
