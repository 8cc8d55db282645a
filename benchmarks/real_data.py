"""Models as Pyro users write them, on data like theirs: does the posterior hold, and does it say so?

    python benchmarks/real_data.py [--models heights schools ...] [--traces 20000] [--samples 2000]
                                   [--widen 2] [--seed 0] [--json out/real_data.json]

Each model is compiled on defaults (``--traces`` prior traces), then ``infcomp.infer`` draws
``--samples`` particles for the model's own data three times: with the compiled guide alone, with
``refine=True`` (the guide adapted to the data first, :mod:`infcomp.refine`), and with a guide
compiled with ``widen=--widen`` (trained on wider priors, :mod:`infcomp.widen`).  Each run is checked
against a reference, exact where the model is conjugate, else Pyro's NUTS (4 chains' worth of draws
in one chain, fixed seed):

* ``heights``: ``mu ~ N(0, 10)``, ``sigma ~ HalfNormal(10)``, 25 reaction times around 35 ms:
  the data sit 3.5 prior sds out (NUTS);
* ``schools``: the eight schools, centred as written in Pyro's example, ``tau ~ HalfCauchy(5)``
  (NUTS on the non-centred form);
* ``regression``: ``a ~ N(0, 10)``, two slopes ``N(0, 1)``, ``sigma ~ Uniform(0, 10)``, 40 points;
  the covariates are inputs of the guide (``compile(inputs=)``), inferred on covariates never seen
  in training (NUTS);
* ``coins``: a site per flip (``obs_0 .. obs_19``, named by a pattern), ``Beta(10, 10)``, 17 heads
  of 20 (exact Beta);
* ``counts``: ``rate ~ Gamma(0.5, 0.01)`` (mean 50), five daily counts around 3, a
  ``pyro.deterministic`` log rate (exact Gamma);
* ``hmm``: two hidden states over 10 steps, a site per step, two readings missing (masked), against
  forward-backward (each state's sd floored at 0.05 where it is nearly certain).

Printed per model and run: ESS/N, Pareto k-hat, whether infer warned, ``err``: the largest
``|mean - reference mean| / reference sd`` over the model's scalar quantities; compile and
refinement seconds.  Goal: no collapse without a warning; after refinement (or widening)
ESS/N >= 0.1 and err <= 0.3.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
import warnings

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS

import infcomp

# -- the models ---------------------------------------------------------------------------------
TIMES = torch.tensor([31.8, 36.9, 34.2, 38.5, 29.7, 35.1, 33.3, 40.2, 36.0, 32.4, 37.7, 34.9, 30.8,
                      35.6, 39.1, 33.8, 36.4, 31.2, 34.5, 37.0, 35.3, 32.9, 38.1, 34.0, 36.6])


def heights(times=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(10.0))
    with pyro.plate("trials", 25):
        pyro.sample("times", dist.Normal(mu, sigma), obs=times)


SCHOOL_Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SCHOOL_SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def schools(y=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", 8):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("obs", dist.Normal(theta, SCHOOL_SIGMA), obs=y)


def schools_noncentred(y=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", 8):
        eta = pyro.sample("eta", dist.Normal(0.0, 1.0))
        theta = pyro.deterministic("theta", mu + tau * eta)
        pyro.sample("obs", dist.Normal(theta, SCHOOL_SIGMA), obs=y)


def regression(x, y=None):
    a = pyro.sample("a", dist.Normal(0.0, 10.0))
    b = pyro.sample("b", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    sigma = pyro.sample("sigma", dist.Uniform(0.0, 10.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(a + x @ b, sigma), obs=y)


def regression_data(seed=7):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 2, generator=g) * torch.tensor([1.0, 2.0]) + torch.tensor([0.5, -1.0])
    y = 3.0 + x @ torch.tensor([1.5, -0.8]) + torch.randn(40, generator=g)
    return x, y


def coins(flips=None):
    f = pyro.sample("fairness", dist.Beta(10.0, 10.0))
    for i in range(20):
        pyro.sample(f"obs_{i}", dist.Bernoulli(f), obs=None if flips is None else flips[i])


FLIPS = torch.tensor([1.0] * 17 + [0.0] * 3)
COUNTS = torch.tensor([3.0, 1.0, 4.0, 2.0, 5.0])


def counts(days=None):
    rate = pyro.sample("rate", dist.Gamma(0.5, 0.01))
    pyro.deterministic("log_rate", rate.log())
    with pyro.plate("day", 5):
        pyro.sample("days", dist.Poisson(rate), obs=days)


TRANS = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
LOCS = torch.tensor([-1.0, 2.0])
SEEN = torch.tensor([True, True, True, False, True, True, True, False, True, True])  # two readings missing
READINGS = torch.tensor([-0.8, -1.5, 0.3, 0.0, 2.6, 1.4, 2.2, 0.0, -0.4, -1.1])


def hmm(y=None):
    z = pyro.sample("z_0", dist.Categorical(torch.tensor([0.5, 0.5])))
    for t in range(10):
        if t:
            z = pyro.sample(f"z_{t}", dist.Categorical(TRANS[z]))
        pyro.sample(f"y_{t}", dist.Normal(LOCS[z], 1.0).mask(SEEN[t]), obs=None if y is None else y[t])


def hmm_reference():
    """Forward-backward: each ``z_t``'s posterior mean (``P(z_t = 1)``) and sd."""
    like = torch.where(SEEN[:, None], dist.Normal(LOCS, 1.0).log_prob(READINGS[:, None]).exp(), torch.ones(10, 2))
    alpha = [torch.tensor([0.5, 0.5]) * like[0]]
    for t in range(1, 10):
        alpha.append((alpha[-1] @ TRANS) * like[t])
    beta = [torch.ones(2)]
    for t in range(9, 0, -1):
        beta.insert(0, TRANS @ (like[t] * beta[0]))
    ref = {}
    for t in range(10):
        p = alpha[t] * beta[t]
        p1 = p[1] / p.sum()
        ref[f"z_{t}"] = (p1, (p1 * (1 - p1)).sqrt().clamp(min=0.05))
    return ref


# -- references ---------------------------------------------------------------------------------
def nuts(model, args, kwargs, sites, seed, samples=2000):
    pyro.set_rng_seed(seed)
    mcmc = MCMC(NUTS(model), num_samples=samples, warmup_steps=1000, disable_progbar=True)
    mcmc.run(*args, **kwargs)
    draws = mcmc.get_samples()
    if "theta" in sites and "theta" not in draws:
        draws["theta"] = draws["mu"][:, None] + draws["tau"][:, None] * draws["eta"]
    return {s: (draws[s].mean(0), draws[s].std(0)) for s in sites}


def beta_reference():
    a, b = 10 + float(FLIPS.sum()), 10 + float((1 - FLIPS).sum())
    return {"fairness": (torch.tensor(a / (a + b)), torch.tensor((a * b / ((a + b) ** 2 * (a + b + 1))) ** 0.5))}


def gamma_reference(draws=200_000):
    post = dist.Gamma(0.5 + COUNTS.sum(), 0.01 + len(COUNTS))
    r = post.sample((draws,))
    return {"rate": (post.mean, post.stddev), "log_rate": (r.log().mean(), r.log().std())}


def cases(seed):
    """name -> (model, compile kwargs, infer observation, infer kwargs, reference thunk)."""
    x, y = regression_data()
    x_new, y_new = regression_data(seed=11)
    return {
        "heights": (heights, dict(observe="times"), TIMES, {},
                    lambda: nuts(heights, (), {"times": TIMES}, ["mu", "sigma"], seed)),
        "schools": (schools, dict(observe="obs"), SCHOOL_Y, {},
                    lambda: nuts(schools_noncentred, (), {"y": SCHOOL_Y}, ["mu", "tau", "theta"], seed)),
        "regression": (regression, dict(observe="y", inputs=lambda: {"x": regression_data(int(torch.randint(10 ** 6, ())))[0]}),
                       y_new, {"model_args": (x_new,)},
                       lambda: nuts(regression, (x_new,), {"y": y_new}, ["a", "b", "sigma"], seed)),
        "coins": (coins, dict(observe=re.compile(r"obs_\d+")), {f"obs_{i}": FLIPS[i] for i in range(20)}, {},
                  beta_reference),
        "counts": (counts, dict(observe="days"), COUNTS, {}, gamma_reference),
        "hmm": (hmm, dict(observe=re.compile(r"y_\d+")), {f"y_{t}": READINGS[t] for t in range(10)}, {},
                hmm_reference),
    }


def error(post, reference) -> float:
    worst = 0.0
    for site, (mean, sd) in reference.items():
        gap = ((post.mean(site).to(torch.float64) - mean.to(torch.float64)).abs() / sd.to(torch.float64)).max()
        worst = max(worst, float(gap))
    return worst


def run(name, case, a) -> list:
    model, compile_kwargs, observation, infer_kwargs, reference = case
    guides, compile_seconds = {}, {}
    for widen in (None, a.widen):
        t0 = time.perf_counter()
        guides[widen] = infcomp.compile(model, num_traces=a.traces, seed=a.seed, progress=False, widen=widen,
                                        **compile_kwargs)
        compile_seconds[widen] = time.perf_counter() - t0
    ref = reference()
    rows = []
    for label, widen, refine in (("compiled", None, False), ("refined", None, True), ("widened", a.widen, False)):
        guide, compile_s = guides[widen], compile_seconds[widen]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", infcomp.UnreliableWeightsWarning)
            t0 = time.perf_counter()
            post = infcomp.infer(model, guide, observation, num_samples=a.samples, seed=a.seed + 1, refine=refine,
                                 **infer_kwargs)
            seconds = time.perf_counter() - t0
        warned = any(issubclass(w.category, infcomp.UnreliableWeightsWarning) for w in caught)
        d = post.diagnostics
        rows.append({"model": name, "run": label, "ess_fraction": d.ess_fraction, "khat": d.khat,
                     "reliable": d.reliable, "warned": warned, "err": error(post, ref), "compile_s": compile_s,
                     "refine_s": post.refinement.seconds if post.refinement else 0.0,
                     "refine_steps": post.refinement.steps if post.refinement else 0, "infer_s": seconds})
        print(f"{name:<11} {label:<9} ESS/N {d.ess_fraction:6.3f}  k-hat {d.khat:5.2f}  warned {str(warned):<5} "
              f"err {rows[-1]['err']:6.2f} sd  compile {compile_s:5.1f} s  refine {rows[-1]['refine_s']:5.1f} s "
              f"({rows[-1]['refine_steps']} updates)", flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--traces", type=int, default=20_000)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--widen", type=float, default=2.0, help="the widened compile's widen=")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    table = cases(a.seed)
    names = a.models or list(table)
    print(f"{platform.node()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"{a.traces} traces, {a.samples} particles, seed {a.seed}")
    rows = [r for n in names for r in run(n, table[n], a)]
    silent = [r for r in rows if not r["reliable"] and not r["warned"]]
    print(f"collapses without a warning: {len(silent)}")
    for kind in ("refined", "widened"):
        done = [r for r in rows if r["run"] == kind]
        met = [r for r in done if r["ess_fraction"] >= 0.1 and r["err"] <= 0.3]
        print(f"{kind} runs with ESS/N >= 0.1 and err <= 0.3: {len(met)} of {len(done)}")
    if a.json:
        os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
