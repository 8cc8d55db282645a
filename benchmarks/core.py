"""infcomp vs Pyro's CSIS vs prior importance sampling on three small models with exact answers.

    python benchmarks/core.py [--quick] [--json] [--traces 20000] [--samples 1000] [--seed 0]

For each model (``gaussian`` observed at y = [8, 9]; ``poisson_branching`` observed at
y = 4; ``random_walk``, 30 steps, observed at one fixed draw of its prior) and each method,
prints the training speed (traces/s), the wall time of the training run, the ESS of an
importance-sampling run, its time per 1,000 samples, and the error against the exact posterior:

* ``infcomp``    ``infcomp.compile(num_traces=N, batch_size=64)`` (default workers), then
                 ``infcomp.infer(num_samples=S)``: the particles advanced together.  The three
                 importance-sampling runs of a model (floor, batched, sequential) take turns
                 ``--repeats`` times; each one's time is its fastest.
* ``infcomp-seq`` the same guide, ``infcomp.infer(num_samples=S, batch=False)``: one by one.
* ``pyro-csis``  ``pyro.infer.CSIS`` with a small hand-written guide (a torch MLP under
                 ``pyro.module``, in the style of Pyro's CSIS tutorial), Adam 1e-3,
                 ``training_batch_size=64``, ``ceil(N / 64)`` calls of ``csis.step``; then
                 ``csis.run`` with ``num_inference_samples=S`` under ``torch.no_grad()``.
* ``prior-is``   ``infcomp.infer(model, None, ...)``: importance sampling from the prior.  This
                 is the floor: the conditioned model run S times, adding up only its
                 observed sites' log densities; ``x floor`` is each method's time over it.
                 (Pyro CSIS has no hand-written guide for the walk.)

Accuracy: the Gaussian's posterior mean and standard deviation of ``mu`` against the exact
ones; the branching model's total-variation distance between the weighted ``p(n | y)`` and
the exact one; the walk's largest error of a posterior mean over the 30 steps, in posterior
standard deviations, against the Kalman smoother.  ``logZ err``: the log-evidence estimate
minus the exact log evidence.
Fixed seeds throughout; the reference figures are those quoted in the issue.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import time

import pyro
import pyro.distributions as dist
import torch
from torch import nn

import infcomp
from infcomp_models import examples as ex

GAUSS_Y = torch.tensor([8.0, 9.0])
BRANCH_Y = torch.tensor(4.0)

# pyprob 1.5.0 at batch 64 on a 2-core CPU, and Pyro CSIS with a small hand-written guide (from the issue)
REFERENCE = {
    "gaussian": {"pyprob_tps": 1500.0, "pyprob_infer_s": 2.1, "csis_tps": 1160.0},
    "poisson_branching": {"pyprob_tps": 390.0, "pyprob_infer_s": 9.4, "csis_tps": 450.0},
}
GOALS = {"train_speedup_vs_pyprob": 5.0, "gaussian_ess_fraction": 0.9,
         "batched_vs_floor": {"gaussian": 1.2, "poisson_branching": 1.2, "random_walk": 1.5}}


def walk_observation(steps=ex.STEPS, seed=2026):
    """One draw of the walk's observation from its prior, the same on every run."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        trace = pyro.poutine.trace(ex.random_walk).get_trace(steps=steps)
    return trace.nodes["y"]["value"]


WALK_Y = walk_observation()
MODELS = {"gaussian": (ex.gaussian, GAUSS_Y), "poisson_branching": (ex.poisson_branching, BRANCH_Y),
          "random_walk": (ex.random_walk, WALK_Y)}


# -- exact answers ------------------------------------------------------------------------
def gaussian_log_evidence(y):
    y = torch.as_tensor(y, dtype=torch.float64)
    cov = ex.PRIOR_VAR * torch.ones(2, 2, dtype=torch.float64) + ex.NOISE_VAR * torch.eye(2, dtype=torch.float64)
    mean = torch.full((2,), ex.PRIOR_MEAN, dtype=torch.float64)
    return float(dist.MultivariateNormal(mean, cov).log_prob(y))


def branching_log_evidence(y, max_n=60):
    n = torch.arange(max_n + 1, dtype=torch.float64)
    lp = dist.Poisson(torch.tensor(ex.RATE, dtype=torch.float64)).log_prob(n) + dist.Normal(0.0, (n + 1).sqrt()).log_prob(
        torch.as_tensor(y, dtype=torch.float64)
    )
    return float(torch.logsumexp(lp, 0))


def weighted_stats(values, log_weights):
    """ESS, log evidence, weighted mean and std of scalar values."""
    lw = log_weights.to(torch.float64)
    w = torch.softmax(lw, 0)
    v = values.to(torch.float64)
    mean = float((w * v).sum())
    std = float((w * (v - mean) ** 2).sum().sqrt())
    ess = float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)))
    logz = float(torch.logsumexp(lw, 0) - math.log(len(lw)))
    return ess, logz, mean, std


def tv_distance(probs: dict, exact: torch.Tensor) -> float:
    """Total variation between ``{n: p}`` and the exact ``p(n)`` on 0 .. len(exact) - 1."""
    est = torch.zeros(max(len(exact), int(max(probs, default=0)) + 1), dtype=torch.float64)
    for n, p in probs.items():
        est[int(n)] += p
    ref = torch.zeros_like(est)
    ref[: len(exact)] = exact
    return 0.5 * float((est - ref).abs().sum())


def accuracy(model_name, mean=None, std=None, n_probs=None, logz=None):
    if model_name == "random_walk":
        means, sds, exact_logz = ex.random_walk_exact(WALK_Y)
        return {"walk_err_sd": float(((mean - means).abs() / sds).max()), "logz_err": logz - exact_logz}
    if model_name == "gaussian":
        m, s = ex.gaussian_exact(GAUSS_Y)
        return {"mean_err": mean - m, "std_err": std - s, "logz_err": logz - gaussian_log_evidence(GAUSS_Y)}
    exact = ex.poisson_branching_exact(BRANCH_Y)
    return {"tv_n": tv_distance(n_probs, exact), "logz_err": logz - branching_log_evidence(BRANCH_Y)}


# -- Pyro CSIS: the models take ``observations=`` and small hand-written guides --------------
def csis_gaussian(observations={"y": GAUSS_Y}):
    return ex.gaussian(y=observations["y"])


def csis_branching(observations={"y": BRANCH_Y}):
    return ex.poisson_branching(y=observations["y"])


class GaussianGuide(nn.Module):
    """y (2) -> Normal(loc, scale) for mu."""

    def __init__(self, hidden=32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, observations={"y": GAUSS_Y}):
        pyro.module("gaussian_guide", self)
        y = observations["y"]
        out = self.net((y - ex.PRIOR_MEAN) / 3.0)
        loc = ex.PRIOR_MEAN + 3.0 * out[0]
        scale = nn.functional.softplus(out[1]) + 1e-3
        return pyro.sample("mu", dist.Normal(loc, scale))


class BranchingGuide(nn.Module):
    """y -> Poisson(rate) for n (covers all of the prior's support); then for each i,
    (y, i, n, sum of x_<i) -> Normal(loc, scale) for x_i."""

    def __init__(self, hidden=32):
        super().__init__()
        self.rate_net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.x_net = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, observations={"y": BRANCH_Y}):
        pyro.module("branching_guide", self)
        y = observations["y"].reshape(1) / 3.0
        rate = nn.functional.softplus(self.rate_net(y)[0] + 2.0) + 1e-3
        n = pyro.sample("n", dist.Poisson(rate))
        total = torch.tensor(0.0)
        for i in range(int(n)):
            feats = torch.cat([y, torch.tensor([i / 5.0, float(n) / 5.0]), total.reshape(1) / 3.0])
            out = self.x_net(feats)
            x = pyro.sample(f"x_{i}", dist.Normal(out[0], nn.functional.softplus(out[1] + 0.5) + 1e-3))
            total = total + x
        return n


def run_csis(name, num_traces, num_samples, seed):
    model, guide, y = {
        "gaussian": (csis_gaussian, GaussianGuide, GAUSS_Y),
        "poisson_branching": (csis_branching, BranchingGuide, BRANCH_Y),
    }[name]
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = guide()
    csis = pyro.infer.CSIS(
        model, guide, pyro.optim.Adam({"lr": 1e-3}), num_inference_samples=num_samples, training_batch_size=64
    )
    steps = math.ceil(num_traces / 64)
    t0 = time.perf_counter()
    for _ in range(steps):
        csis.step(observations={"y": y})
    train_s = time.perf_counter() - t0
    traces = steps * 64

    pyro.set_rng_seed(seed + 1)
    t0 = time.perf_counter()
    with torch.no_grad():
        posterior = csis.run(observations={"y": y})
    infer_s = time.perf_counter() - t0
    log_w = torch.tensor([float(w) for w in posterior.log_weights], dtype=torch.float64)
    ess_pyro = float(csis.get_ESS())
    if name == "gaussian":
        values = torch.tensor([float(t.nodes["mu"]["value"]) for t in posterior.exec_traces])
        ess, logz, mean, std = weighted_stats(values, log_w)
        acc = accuracy(name, mean=mean, std=std, logz=logz)
    else:
        values = torch.tensor([float(t.nodes["n"]["value"]) for t in posterior.exec_traces])
        ess, logz, _, _ = weighted_stats(values, log_w)
        w = torch.softmax(log_w, 0)
        probs = {}
        for v, wi in zip(values.tolist(), w.tolist()):
            probs[int(v)] = probs.get(int(v), 0.0) + wi
        acc = accuracy(name, n_probs=probs, logz=logz)
    return {
        "traces": traces,
        "train_tps": traces / train_s,
        "train_s": train_s,
        "ess": ess,
        "ess_pyro": ess_pyro,
        "infer_s": infer_s,
        **acc,
    }


# -- infcomp and prior IS -------------------------------------------------------------------
def summarize(name, posterior):
    ess, logz = posterior.ess, posterior.log_evidence
    if name == "random_walk":
        mean = torch.stack([posterior.mean(f"x_{t}") for t in range(ex.STEPS)])
        return {"ess": ess, **accuracy(name, mean=mean, logz=logz)}
    if name == "gaussian":
        return {"ess": ess, **accuracy(name, mean=float(posterior.mean("mu")), std=float(posterior.std("mu")), logz=logz)}
    probs = {int(k): v for k, v in posterior.marginal("n").probs().items()}
    return {"ess": ess, **accuracy(name, n_probs=probs, logz=logz)}


def run_infcomp(name, num_traces, num_samples, seed):
    """Compile; the guide is kept for the timed inference runs (:func:`inference_rows`)."""
    model, y = MODELS[name]
    t0 = time.perf_counter()
    guide = infcomp.compile(model, observe="y", num_traces=num_traces, batch_size=64, seed=seed, progress=False)
    wall = time.perf_counter() - t0
    run = guide.last_run
    GUIDES[name] = guide
    return {"traces": run.traces, "train_tps": run.traces_per_second, "train_s": wall, "train_loop_s": run.seconds,
            "validation_loss": run.validation_loss}


GUIDES = {}  # model name -> the guide run_infcomp compiled


def inference_rows(name, num_samples, seed, repeats):
    """``{method: figures}`` for the floor (prior IS), batched and sequential guided IS: each run
    ``repeats`` times in turn (floor, batched, sequential, floor, ...), its time the fastest of
    them (the runs are seeded alike, so their posteriors are the same)."""
    model, y = MODELS[name]
    guide = GUIDES.get(name)
    runs = {"prior-is": lambda: infcomp.infer(model, None, y, observe="y", num_samples=num_samples, seed=seed + 1)}
    if guide is not None:
        runs["infcomp"] = lambda: infcomp.infer(model, guide, y, num_samples=num_samples, seed=seed + 1)
        runs["infcomp-seq"] = lambda: infcomp.infer(model, guide, y, num_samples=num_samples, seed=seed + 1, batch=False)
    best, posteriors = {}, {}
    for _ in range(repeats):
        for method, run in runs.items():
            t0 = time.perf_counter()
            posteriors[method] = run()
            best[method] = min(best.get(method, math.inf), time.perf_counter() - t0)
    return {m: {"infer_s": best[m], **summarize(name, posteriors[m])} for m in runs}


# -- output ----------------------------------------------------------------------------------
def fmt(v, spec):
    if v is None:
        width = re.match(r"\d*", spec).group()
        return format("-", ">" + width)
    return format(v, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2,048 traces, 200 samples")
    parser.add_argument("--json", action="store_true", help="also print one JSON object")
    parser.add_argument("--traces", type=int, default=None, help="training traces (default 20,000)")
    parser.add_argument("--samples", type=int, default=None, help="importance samples (default 1,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--repeats", type=int, default=3, help="inference runs per method, the fastest reported (default 3)")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    num_traces = args.traces or (2_048 if args.quick else 20_000)
    num_samples = args.samples or (200 if args.quick else 1_000)

    machine = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "infcomp": infcomp.__version__,
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "load_average_at_start": os.getloadavg()[0],
    }
    print(
        f"machine: {machine['cpu_count']} cores, torch {machine['torch']} with {machine['torch_threads']} threads, "
        f"pyro {machine['pyro']}, infcomp {machine['infcomp']}, python {machine['python']}; "
        f"1-min load average at start {machine['load_average_at_start']:.2f}"
    )
    print(f"training: {num_traces:,} traces at batch 64; inference: {num_samples:,} samples; seed {args.seed}")
    print()

    results = {}
    for name in args.models:
        results[name] = {}
        try:
            trained = run_infcomp(name, num_traces, num_samples, args.seed)
        except Exception as e:  # report and go on: one failing method should not hide the rest
            trained = {"error": f"{type(e).__name__}: {e}"}
        csis = None
        if name in REFERENCE:
            try:
                csis = run_csis(name, num_traces, num_samples, args.seed)
            except Exception as e:
                csis = {"error": f"{type(e).__name__}: {e}"}
        rows = inference_rows(name, num_samples, args.seed, args.repeats)
        if "error" in trained:
            rows["infcomp"] = trained
        else:
            rows["infcomp"].update(trained)
        for method in ("infcomp", "infcomp-seq", "pyro-csis", "prior-is"):
            r = csis if method == "pyro-csis" else rows.get(method)
            if r is None:
                continue
            r.setdefault("traces", 0)
            r.setdefault("train_tps", None)
            r.setdefault("train_s", None)
            r["infer_s_per_1k"] = r["infer_s"] * 1000 / num_samples if "infer_s" in r else None
            results[name][method] = r

    head = (
        f"{'model':<18} {'method':<11} {'train tr/s':>10} {'train s':>8} {'ESS':>7} {'ESS/N':>6} "
        f"{'infer s/1k':>10} {'x floor':>7} {'accuracy vs exact':<30} {'logZ err':>9}"
    )
    print(head)
    print("-" * len(head))
    for name, by_method in results.items():
        for method, r in by_method.items():
            if "error" in r:
                print(f"{name:<18} {method:<10} FAILED: {r['error']}")
                continue
            if name == "gaussian":
                acc = f"mean {r['mean_err']:+.3f}  std {r['std_err']:+.3f}"
            elif name == "random_walk":
                acc = f"max |mean err| {r['walk_err_sd']:.2f} sd"
            else:
                acc = f"TV(p(n|y)) {r['tv_n']:.3f}"
            floor = by_method.get("prior-is", {}).get("infer_s")
            print(
                f"{name:<18} {method:<11} {fmt(r['train_tps'], '10,.0f')} {fmt(r['train_s'], '8.1f')} "
                f"{r['ess']:7.1f} {r['ess'] / num_samples:6.3f} {r['infer_s_per_1k']:10.2f} "
                f"{fmt(r['infer_s'] / floor if floor else None, '7.2f')} {acc:<30} {r['logz_err']:+9.3f}"
            )
        if name not in REFERENCE:
            continue
        ref = REFERENCE[name]
        print(
            f"{name:<18} {'pyprob*':<10} {ref['pyprob_tps']:10,.0f} {num_traces / ref['pyprob_tps']:8.1f} "
            f"{'':>7} {'':>6} {ref['pyprob_infer_s']:10.2f}"
        )
        print(f"{name:<18} {'csis*':<10} {ref['csis_tps']:10,.0f} {num_traces / ref['csis_tps']:8.1f}")
    print()
    m, s = ex.gaussian_exact(GAUSS_Y)
    print(
        f"exact: gaussian y={GAUSS_Y.tolist()}: mean {m:.4f} std {s:.4f} logZ {gaussian_log_evidence(GAUSS_Y):.4f}; "
        f"poisson_branching y={float(BRANCH_Y)}: logZ {branching_log_evidence(BRANCH_Y):.4f}, "
        "p(n|y) for n=0..8 "
        + " ".join(f"{p:.3f}" for p in ex.poisson_branching_exact(BRANCH_Y)[:9].tolist())
        + f"; random_walk ({ex.STEPS} steps): logZ {ex.random_walk_exact(WALK_Y)[2]:.4f} (Kalman)"
    )
    print(
        "* reference figures from the issue: pyprob 1.5.0 at batch 64 on a 2-core CPU, and Pyro CSIS with a small "
        "hand-written guide; 'train s' for them is the target traces divided by their rate."
    )
    print(
        "infcomp 'train tr/s' is guide.last_run (the training loop); its 'train s' is the whole compile() call "
        "(validation set, workers starting). pyro-csis: both from the csis.step loop."
    )
    print()

    machine["load_average_at_end"] = os.getloadavg()[0]
    if max(machine["load_average_at_start"], machine["load_average_at_end"]) > 0.5:
        print(
            f"note: 1-min load average {machine['load_average_at_start']:.2f} at start, "
            f"{machine['load_average_at_end']:.2f} at end: other processes share the CPU and slow the timings"
        )
    goals = {}
    print("goals:")
    for name in results:
        r, p = results[name].get("infcomp", {}), results[name].get("prior-is", {})
        if "error" in r:
            continue
        if name in REFERENCE:
            speedup = r["train_tps"] / REFERENCE[name]["pyprob_tps"]
            ok = speedup >= GOALS["train_speedup_vs_pyprob"]
            print(f"  {name:<18} infcomp training traces/s / pyprob's   = {speedup:6.2f}x  (goal >= 5x)   {'ok' if ok else 'MISSED'}")
            goals[f"{name}_train_speedup_vs_pyprob"] = speedup
        if "error" not in p:
            ratio, goal = r["infer_s"] / p["infer_s"], GOALS["batched_vs_floor"][name]
            print(f"  {name:<18} batched inference time / the floor's   = {ratio:6.2f}x  (goal <= {goal}x) "
                  f"{'ok' if ratio <= goal else 'MISSED'}")
            goals[f"{name}_batched_vs_floor"] = ratio
        if name == "gaussian":
            frac = r["ess"] / num_samples
            ok = frac >= GOALS["gaussian_ess_fraction"]
            print(f"  {name:<18} infcomp ESS / N                        = {frac:6.3f}   (goal >= 0.9)  {'ok' if ok else 'MISSED'}")
            goals["gaussian_ess_fraction"] = frac

    if args.json:
        print()
        print(
            json.dumps(
                {
                    "machine": machine,
                    "num_traces": num_traces,
                    "num_samples": num_samples,
                    "seed": args.seed,
                    "results": results,
                    "reference": REFERENCE,
                    "goals": goals,
                    "goal_targets": GOALS,
                }
            )
        )


if __name__ == "__main__":
    main()
