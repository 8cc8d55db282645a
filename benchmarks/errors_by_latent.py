"""Where a breaker fails: its greedy recognition rate on fresh draws, binned by each latent.

    python benchmarks/errors_by_latent.py out/bench8/baidu2011.pt [-n 1500] [--bins 5] [--seed 10000]

Draws ``n`` CAPTCHAs from the breaker's own style (draw ``i`` under ``pyro.set_rng_seed(seed + i)``),
reads each greedily, and prints, per latent site, the whole-string recognition rate in each
quantile bin of its value (continuous sites: ``--bins`` bins of equal count; rotations by their
absolute value; discrete sites: per value). Errors that pile up in one corner of the prior (the
smallest fonts, the strongest warps) point at draws that may be unreadable; errors spread over
every bin point at a breaker that has not learnt enough yet. Letters are left out (they are what
is read); instead, per letter count, the share of each position's letter read right, and how often
the reading has the right length. Letters that fall off after the first point at a reader that
loses its place along the line.
"""

from __future__ import annotations

import argparse

import numpy as np
import pyro
import pyro.poutine as poutine
import torch

from infcomp_models.captcha.breaker import load_breaker, read_greedy
from infcomp_models.captcha.style import latent_values


def read_draws(guide, style, n, seed):
    """``(latents {site: [n] array}, discrete sites, [(label, reading)] * n)``; sites a draw lacks are
    NaN there."""
    draws, pairs, discrete = [], [], set()
    for i in range(n):
        pyro.set_rng_seed(seed + i)
        trace = poutine.trace(style.model).get_trace()
        values = latent_values(trace)
        reading = read_greedy(style, guide, trace.nodes["image"]["value"])
        pairs.append((style.reading(values), reading))
        draws.append({k: float(v) for k, v in values.items() if not k.startswith("letter_")})
        discrete |= {k for k in draws[-1] if trace.nodes[k]["fn"].support.is_discrete}
    names = list(dict.fromkeys(k for d in draws for k in d))
    latents = {k: np.array([d.get(k, np.nan) for d in draws]) for k in names}
    return latents, discrete, pairs


def position_rates(pairs):
    """``{letter count: (draws, [share right at each position])}``: a position is right when the
    reading has the label's letter there (whatever the reading's length)."""
    out = {}
    for length in sorted({len(label) for label, _ in pairs}):
        these = [(label, r) for label, r in pairs if len(label) == length]
        right = [np.mean([j < len(r) and r[j] == label[j] for label, r in these]) for j in range(length)]
        out[length] = (len(these), right)
    return out


def binned_rates(x, correct, bins, discrete=False):
    """``[(label, rate, count)]`` over the quantile bins of ``x``, or its distinct values where it is
    ``discrete`` or takes no more than ``bins`` of them."""
    seen = ~np.isnan(x)
    x, correct = x[seen], correct[seen]
    values = np.unique(x)
    if discrete or len(values) <= bins:
        return [(f"{v:g}", correct[x == v].mean(), int((x == v).sum())) for v in values]
    edges = np.quantile(x, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, bins - 1)
    return [(f"{edges[j]:.2f}-{edges[j + 1]:.2f}", correct[which == j].mean(), int((which == j).sum()))
            for j in range(bins)]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("breaker")
    p.add_argument("-n", type=int, default=1500)
    p.add_argument("--bins", type=int, default=5)
    p.add_argument("--seed", type=int, default=10_000)
    args = p.parse_args()
    torch.set_num_threads(1)
    guide, style = load_breaker(args.breaker)
    latents, discrete, pairs = read_draws(guide, style, args.n, args.seed)
    correct = np.array([label == r for label, r in pairs])
    print(f"{style.name}: {guide.traces_trained} traces trained; greedy recognition {correct.mean():.1%} "
          f"on {args.n} draws; per latent, the rate in each bin (value range: rate)")
    for name, x in latents.items():
        if name.startswith("rotation"):
            x, name = np.abs(x), f"|{name}|"
        cells = binned_rates(x, correct, args.bins, name in discrete)
        spread = max(r for _, r, _ in cells) - min(r for _, r, _ in cells)
        print(f"{name:14s} " + "  ".join(f"{label}: {rate:.0%}" for label, rate, _ in cells)
              + f"   (spread {spread:.0%})")
    right_length = np.mean([len(label) == len(r) for label, r in pairs])
    print(f"letters right by position (the reading has the right length in {right_length:.0%} of draws)")
    for length, (count, right) in position_rates(pairs).items():
        print(f"{length} letters ({count:4d} draws) " + "  ".join(f"{x:.0%}" for x in right))


if __name__ == "__main__":
    main()
