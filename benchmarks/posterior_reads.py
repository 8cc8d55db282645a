"""Why a posterior read does or does not beat the greedy one: the same particles under several ABC
bandwidths, and how well the right reading's particles fit the image.

    python benchmarks/posterior_reads.py out/bench20/ebay.pt [-n 300] [--particles 100] [--temperature 1]
                                         [--bandwidths 0.15,0.3,0.5,1,1.5] [--refine-steps 1000 --candidates 2]
                                         [--gallery errors.png]

Reads ``infcomp evaluate``'s fresh draws (draw ``i`` under seed ``seed + 1_000_003 + i``, particles
under ``seed + i``): greedily, and by importance sampling with ``--particles`` particles at the style's
own bandwidth, recording each particle's reading and its squared distance to the image (SSD). The
style's pixel kernel is Gaussian, so ``log K_b = -SSD / 2b^2 - D log b + const``, and the same
particles give the posterior at any other bandwidth ``b`` by reweighting. It prints:

* how often the right reading is among the particles (the most any reweighting could read), the
  share of particles spelling it, and the plain vote of the particles (their most frequent reading);
* per bandwidth: the posterior read's recognition rate, the share of readings given p > 0.9 and how
  many of those are right, the Brier score, and the median effective sample size;
* the fit: SSD of the image against the rendering at the draw's own latents (the kernel's noise
  alone), at its own latents with another ``noise_seed`` (clutter in other places), with one letter
  changed, and against the best particle and the best particle that spells the right reading,
  for the draws the posterior read right and those it read wrong;
* with ``--refine-steps``: each of the ``--candidates`` best readings' best particle moved by
  single-site Metropolis-Hastings (letters fixed; continuous sites half random walk, half redrawn from
  the prior; discrete sites redrawn), and the reading whose particle then fits best, on the draws the
  posterior read wrong and on as many it read right.
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import statistics
import time

import pyro
import pyro.poutine as poutine
import torch

import infcomp
from infcomp_models.captcha import save_gallery
from infcomp_models.captcha.breaker import load_breaker, read_greedy
from infcomp_models.captcha.style import latent_values


def ssd(style, values, image) -> float:
    """Squared distance between ``image`` and the rendering of ``values``."""
    return float(((image - torch.from_numpy(style.render_values(values))) ** 2).sum())


def reweighted(log_weights, fits, b0, b, pixels):
    """Log weights at bandwidth ``b`` from those at ``b0`` and each particle's SSD."""
    fits = torch.tensor(fits, dtype=torch.float64)
    return log_weights + fits * (1 / (2 * b0 * b0) - 1 / (2 * b * b)) - pixels * math.log(b / b0)


def at_bandwidth(post, fits, b0, b, pixels):
    """The same particles' posterior with the kernel at bandwidth ``b``."""
    other = copy.copy(post)
    other.log_weights = reweighted(post.log_weights, fits, b0, b, pixels)
    return other


def refine(style, values, image, steps, bandwidth, rng):
    """Single-site Metropolis-Hastings on every latent but the letters; returns the final SSD."""
    trace = poutine.trace(poutine.condition(style.model, data=values)).get_trace()
    sites = {n: node["fn"] for n, node in trace.nodes.items()
             if n in values and not n.startswith("letter_") and n != "num_letters"}
    names = sorted(sites)
    values, cur = dict(values), ssd(style, values, image)
    for _ in range(steps):
        name = rng.choice(names)
        fn = sites[name]
        new = dict(values)
        if fn.support.is_discrete or rng.random() < 0.5:  # independence proposal from the prior
            new[name] = fn.sample()
            log_prior_ratio = 0.0
        else:  # symmetric random walk, a twentieth of the support
            lo, hi = float(fn.support.lower_bound), float(fn.support.upper_bound)
            new[name] = torch.tensor(float(values[name]) + rng.gauss(0.0, 0.05 * (hi - lo)))
            if not lo <= float(new[name]) <= hi:
                continue
            log_prior_ratio = float(fn.log_prob(new[name]) - fn.log_prob(values[name]))
        fit = ssd(style, new, image)
        if math.log(rng.random() + 1e-300) < log_prior_ratio - (fit - cur) / (2 * bandwidth ** 2):
            values, cur = new, fit
    return cur


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("-n", type=int, default=300)
    p.add_argument("--particles", type=int, default=100)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--bandwidths", default="0.15,0.2,0.3,0.5,0.75,1.0,1.5")
    p.add_argument("--refine-steps", type=int, default=0)
    p.add_argument("--candidates", type=int, default=2)
    p.add_argument("--gallery", default=None, help="PNG of the draws the posterior read wrong")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    guide, style = load_breaker(a.model)
    if style.kernel != "pixel":
        raise SystemExit(f"error: style {style.name!r} observes through a {style.kernel} kernel; this needs the pixel kernel")
    b0, pixels = style.bandwidth, style.height * style.width
    bandwidths = [float(x) for x in a.bandwidths.split(",")]
    print(f"{a.model} ({style.name}, bandwidth {b0}): {a.n} draws, {a.particles} particles, temperature {a.temperature}")
    rows, t0 = [], time.time()
    for i in range(a.n):
        pyro.set_rng_seed(a.seed + 1_000_003 + i)
        trace = poutine.trace(style.model).get_trace()
        truth, image = latent_values(trace), trace.nodes["image"]["value"]
        label = style.reading(truth)
        with infcomp.temper(a.temperature):
            post = infcomp.infer(style.model, guide, image, num_samples=a.particles, seed=a.seed + i)
        particles = [post.values(j) for j in range(a.particles)]
        readings = [style.reading(v) for v in particles]
        fits = [ssd(style, v, image) for v in particles]
        other_seed = dict(truth, noise_seed=torch.tensor((float(truth["noise_seed"]) + 0.5) % 1.0))
        one_letter = dict(truth, letter_0=torch.tensor((int(truth["letter_0"]) + 1) % len(style.alphabet)))
        row = dict(i=i, label=label, image=image, particles=particles, readings=readings, fits=fits,
                   greedy=read_greedy(style, guide, image), vote=max(set(readings), key=readings.count),
                   fit_truth=ssd(style, truth, image), fit_other_seed=ssd(style, other_seed, image),
                   fit_one_letter=ssd(style, one_letter, image), fit_best=min(fits),
                   fit_best_right=min((f for f, r in zip(fits, readings) if r == label), default=None))
        for b in bandwidths:
            reweighed = at_bandwidth(post, fits, b0, b, pixels)
            top, p_top = next(iter(reweighed.probabilities(style.reading).items()))
            row[b] = (top, p_top, reweighed.ess)
        rows.append(row)
        if (i + 1) % 50 == 0:
            print(f"  {i + 1} draws read, {time.time() - t0:.0f} s", flush=True)

    n = len(rows)
    share = lambda rs, f: sum(map(f, rs)) / max(len(rs), 1)  # noqa: E731
    print(f"greedy {share(rows, lambda r: r['greedy'] == r['label']):.1%}; right reading among the particles "
          f"{share(rows, lambda r: r['label'] in r['readings']):.1%}; mean share of particles spelling it "
          f"{share(rows, lambda r: r['readings'].count(r['label']) / a.particles):.2f}; particles' vote "
          f"{share(rows, lambda r: r['vote'] == r['label']):.1%}")
    print("bandwidth   right   p > 0.9   right of those   Brier   median ESS")
    for b in bandwidths:
        right = [r[b][0] == r["label"] for r in rows]
        sure = [c for c, r in zip(right, rows) if r[b][1] > 0.9]
        brier = sum((r[b][1] - c) ** 2 for c, r in zip(right, rows)) / n
        print(f"{b:9.2f}  {sum(right) / n:6.1%}  {len(sure) / n:8.1%}  {share(sure, bool):15.1%}  {brier:.4f}  "
              f"{statistics.median(r[b][2] for r in rows):10.1f}")
    wrong = [r for r in rows if r[b0][0] != r["label"]]
    right = [r for r in rows if r[b0][0] == r["label"]]
    print(f"fit (mean SSD; the kernel's noise alone is about {pixels * b0 * b0:.0f}):")
    for tag, rs in (("read right", right), ("read wrong", wrong)):
        mean = lambda k: statistics.mean(r[k] for r in rs if r[k] is not None) if rs else float("nan")  # noqa: E731
        print(f"  {tag} ({len(rs)}): own latents {mean('fit_truth'):.1f}, own latents with another noise_seed "
              f"{mean('fit_other_seed'):.1f}, letter_0 changed {mean('fit_one_letter'):.1f}; best particle "
              f"{mean('fit_best'):.1f}, best particle spelling the right reading {mean('fit_best_right'):.1f} "
              f"(among the particles in {sum(r['fit_best_right'] is not None for r in rs)})")
    beaten = [r for r in wrong if r["fit_best_right"] is not None and r["fit_best_right"] > r["fit_best"]]
    print(f"  of the {len(wrong)} read wrong, the best particle spelling a wrong reading fits better than every "
          f"particle spelling the right one in {len(beaten)}")

    if a.refine_steps > 0:
        rng = random.Random(a.seed)
        pyro.set_rng_seed(a.seed)
        for tag, rs in (("read wrong", wrong), ("read right", right[:len(wrong)])):
            fixed, t0 = 0, time.time()
            for r in rs:
                best = {}
                for v, reading, fit in zip(r["particles"], r["readings"], r["fits"]):
                    if reading not in best or fit < best[reading][0]:
                        best[reading] = (fit, v)
                candidates = sorted(best.items(), key=lambda kv: kv[1][0])[:a.candidates]
                fits = {t: refine(style, v, r["image"], a.refine_steps, b0, rng) for t, (_, v) in candidates}
                fixed += min(fits, key=fits.get) == r["label"]
            print(f"refined ({a.refine_steps} steps, {a.candidates} best readings), {tag} by the posterior: "
                  f"{fixed} of {len(rs)} now read right ({time.time() - t0:.0f} s)")

    if a.gallery and wrong:
        shown = wrong[:16]
        save_gallery([r["image"] for r in shown],
                     [f"{r['label']}: read {r[b0][0]}\ngreedy {r['greedy']}" for r in shown], a.gallery, ncols=4)
        print(f"gallery of draws read wrong -> {a.gallery}")


if __name__ == "__main__":
    main()
