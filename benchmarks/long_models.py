"""Many-site models with exact answers: how well a guide compiled for a fixed time keeps its ESS.

    python benchmarks/long_models.py [--quick] [--models walk30 hmm50 ...] [--observations 5]
                                     [--samples 2000] [--seed 0] [--plot out/long_models.png]

Each model (from ``infcomp_models.examples``) is compiled from scratch on defaults for its
budget in minutes (``infcomp.compile(minutes=...)``, seed fixed), then ``infcomp.infer`` draws
``--samples`` particles for each of ``--observations`` observations, drawn from the model's
prior with fixed seeds, and the answer is checked against the exact posterior:

* ``walk10``, ``walk30``, ``walk100``: the Gaussian random walk ``x_t ~ N(x_{t-1}, 1)`` seen
  through unit noise, against the Kalman smoother; ``err`` is the largest absolute error of a
  posterior mean over the steps, ``sd err`` the largest relative error of a standard deviation.
* ``hmm50``: the 3-state hidden Markov model, 50 steps, against forward-backward; ``err`` is the
  largest total variation between a step's weighted marginal and the exact one.
* ``mixture20``: 20 assignments in a plate, fixed components, against the exact per-point
  posteriors; ``err`` as for the HMM, over the points.

``val loss`` is the guide's last validation loss (nats per trace, ``E[-log q(latents | y)]``
over prior draws); ``entropy`` is its floor, the exact posterior's expected entropy (closed
form for the walk, a Monte-Carlo mean of ``log p(y) - log p(latents, y)`` over 2,000 prior
draws for the others).  ``wait`` is the share of the compile's time spent waiting for traces.
ESS/N and the errors are the mean and the worst over the observations; ``floor`` is the mean
``err`` of as many draws from the exact posterior (what Monte-Carlo noise alone gives a perfect
proposal); ``s/1k`` is inference seconds per 1,000 particles.  ``--plot`` saves a picture of
the walk's and the HMM's first observation against the exact answer.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import pyro
import pyro.poutine as poutine
import torch

import infcomp
from infcomp_models import examples as ex

# name: (model, model kwargs, minutes, kind, goal: (least ESS/N, most err) or None)
MODELS = {
    "walk10": (ex.random_walk, {"steps": 10, "walk_var": 1.0}, 1.0, "walk", None),
    "walk30": (ex.random_walk, {"steps": 30, "walk_var": 1.0}, 2.0, "walk", (0.5, 0.05)),
    "walk100": (ex.random_walk, {"steps": 100, "walk_var": 1.0}, 10.0, "walk", (0.2, None)),
    "hmm50": (ex.hmm, {"steps": 50}, 5.0, "hmm", (None, 0.03)),
    "mixture20": (ex.mixture, {"points": 20}, 5.0, "mixture", (None, 0.03)),
}


def prior_draws(model, kwargs, n, seed):
    """``n`` prior traces of ``model`` (fixed seed): the observations are their ``y``."""
    with torch.random.fork_rng():
        pyro.set_rng_seed(seed)
        return [poutine.trace(model).get_trace(**kwargs) for _ in range(n)]


def expected_entropy(kind, kwargs, seed=12_345, draws=2000) -> float:
    """``E_y H[p(latents | y)]``: exact for the walk, else the mean of ``log p(y) - log p(latents, y)``."""
    if kind == "walk":
        return ex.random_walk_entropy(kwargs["steps"], kwargs["walk_var"])
    model = ex.hmm if kind == "hmm" else ex.mixture
    exact = ex.hmm_exact if kind == "hmm" else ex.mixture_exact
    total = 0.0
    for tr in prior_draws(model, kwargs, draws, seed):
        tr.compute_log_prob()
        log_joint = sum(float(s["log_prob_sum"]) for n, s in tr.nodes.items() if s["type"] == "sample"
                        and s["fn"].__class__.__name__ != "_Subsample")
        total += exact(tr.nodes["y"]["value"])[1] - log_joint
    return total / draws


def discrete_marginal(post, name, shape, k=3):
    """The weighted marginal ``[*shape, k]`` of discrete site ``name``."""
    m = post.marginal(name)
    onehot = torch.nn.functional.one_hot(m.values.long().reshape(len(m.weights), *shape), k).double()
    return torch.einsum("n,n...k->...k", m.weights, onehot)


def errors(kind, kwargs, post, y):
    """``(err, sd err or None)`` of one posterior against the exact answer."""
    if kind == "walk":
        means, sds, _ = ex.random_walk_exact(y, kwargs["walk_var"])
        est_m = torch.tensor([float(post.mean(f"x_{t}")) for t in range(len(y))], dtype=torch.float64)
        est_s = torch.tensor([float(post.std(f"x_{t}")) for t in range(len(y))], dtype=torch.float64)
        return float((est_m - means).abs().max()), float(((est_s - sds) / sds).abs().max())
    if kind == "hmm":
        exact = ex.hmm_exact(y)[0]
        est = torch.stack([discrete_marginal(post, f"z_{t}", ()) for t in range(len(y))])
    else:
        exact = ex.mixture_exact(y)[0]
        est = discrete_marginal(post, "z", (len(y),))
    return float(0.5 * (est - exact).abs().sum(-1).max()), None


def floor_error(kind, kwargs, y, n, seed):
    """``err`` of ``n`` draws from the exact posterior: the Monte-Carlo error an ideal proposal
    (ESS = n) would still show.  A step's marginal from joint draws is a multinomial sample of
    its exact marginal, so the discrete models draw those directly."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if kind == "walk":
            post = ex.random_walk_posterior(y, kwargs["walk_var"])
            return float((post.sample((n,)).mean(0) - post.mean).abs().max())
        exact = ex.hmm_exact(y)[0] if kind == "hmm" else ex.mixture_exact(y)[0]
        counts = torch.distributions.Multinomial(n, probs=exact).sample()
        return float(0.5 * (counts / n - exact).abs().sum(-1).max())


def run_model(name, args):
    model, kwargs, minutes, kind, goal = MODELS[name]
    if args.quick:
        minutes = 0.25
    start = time.perf_counter()
    guide = infcomp.compile(model, observe="y", minutes=minutes, model_kwargs=kwargs, seed=args.seed, progress=False)
    compile_s = time.perf_counter() - start
    stats = guide.last_run
    rows = []
    for i, tr in enumerate(prior_draws(model, kwargs, args.observations, 2026 + args.seed)):
        y = tr.nodes["y"]["value"]
        t0 = time.perf_counter()
        post = infcomp.infer(model, guide, y, num_samples=args.samples, seed=i, model_kwargs=kwargs)
        infer_s = time.perf_counter() - t0
        err, sd_err = errors(kind, kwargs, post, y)
        rows.append({"ess": post.ess / args.samples, "err": err, "sd_err": sd_err, "s_per_1k": infer_s * 1000 / args.samples,
                     "floor": floor_error(kind, kwargs, y, args.samples, seed=i), "post": post, "y": y})
    return {"name": name, "kind": kind, "kwargs": kwargs, "minutes": minutes, "goal": goal, "compile_s": compile_s,
            "traces": stats.traces, "steps": stats.steps, "wait": stats.waiting_for_data_seconds / max(stats.seconds, 1e-9),
            "val_loss": guide.history[-1][2] if guide.history else float("nan"),
            "entropy": expected_entropy(kind, kwargs), "rows": rows}


def verdict(r) -> str:
    if r["goal"] is None:
        return "-"
    least_ess, most_err = r["goal"]
    ess = min(x["ess"] for x in r["rows"])
    err = max(x["err"] for x in r["rows"])
    ok = (least_ess is None or ess >= least_ess) and (most_err is None or err <= most_err)
    want = " and ".join(w for w in (least_ess and f"ESS/N >= {least_ess}", most_err and f"err <= {most_err}") if w)
    return f"{want}: {'met' if ok else '**missed**'} (worst observation)"


def table(results) -> str:
    head = ("| model | budget | compile s | traces | wait | val loss | entropy | ESS/N mean (worst) "
            "| err mean (worst) | floor | sd err worst | s/1k | goal |")
    lines = [head, "| " + " | ".join("---" for _ in head.split("|")[1:-1]) + " |"]
    for r in results:
        rows = r["rows"]
        ess = [x["ess"] for x in rows]
        err = [x["err"] for x in rows]
        sd = [x["sd_err"] for x in rows if x["sd_err"] is not None]
        sd_cell = f"{max(sd):.1%}" if sd else "-"
        lines.append(
            f"| {r['name']} | {r['minutes']:g} min | {r['compile_s']:.0f} | {r['traces']:,} | {r['wait']:.0%} "
            f"| {r['val_loss']:.2f} | {r['entropy']:.2f} | {sum(ess) / len(ess):.3f} ({min(ess):.3f}) "
            f"| {sum(err) / len(err):.3f} ({max(err):.3f}) | {sum(x['floor'] for x in rows) / len(rows):.3f} | {sd_cell} "
            f"| {sum(x['s_per_1k'] for x in rows) / len(rows):.2f} | {verdict(r)} |"
        )
    return "\n".join(lines)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in results if r["kind"] in ("walk", "hmm")]
    if not shown:
        return
    fig, axes = plt.subplots(len(shown), 1, figsize=(9, 2.6 * len(shown)), squeeze=False)
    for ax, r in zip(axes[:, 0], shown):
        first = r["rows"][0]
        post, y = first["post"], first["y"]
        t = range(len(y))
        if r["kind"] == "walk":
            means, sds, _ = ex.random_walk_exact(y, r["kwargs"]["walk_var"])
            est = [float(post.mean(f"x_{i}")) for i in t]
            ax.fill_between(t, means - 2 * sds, means + 2 * sds, color="0.85", label="Kalman smoother, ±2 sd")
            ax.plot(t, means, color="0.3", label="Kalman mean")
            ax.plot(t, est, "o", ms=3, color="C0", label="infcomp mean")
            ax.plot(t, y, "x", ms=3, color="C3", label="y")
        else:
            exact = ex.hmm_exact(y)[0]
            est = torch.stack([discrete_marginal(post, f"z_{i}", ()) for i in t])
            for k in range(3):
                ax.plot(t, exact[:, k], color=f"C{k}", lw=1, label=f"p(z_t = {k} | y), exact" if k == 0 else None)
                ax.plot(t, est[:, k], "o", ms=3, color=f"C{k}", label="infcomp" if k == 0 else None)
        ax.set_title(f"{r['name']}: ESS/N {first['ess']:.2f}, err {first['err']:.3f}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", ncol=4)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"saved {path}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: 15 s of compiling per model")
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--observations", type=int, default=5)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default="out/long_models.png", help="'' for no picture")
    args = p.parse_args()
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.2f} at start", flush=True)
    results = []
    for name in args.models:
        results.append(run_model(name, args))
        r = results[-1]
        print(f"{name}: {r['traces']:,} traces in {r['compile_s']:.0f} s, ESS/N {[round(x['ess'], 3) for x in r['rows']]}, "
              f"err {[round(x['err'], 3) for x in r['rows']]}", flush=True)
    print(table(results))
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
