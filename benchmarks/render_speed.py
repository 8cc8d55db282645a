"""Renders per second for each CAPTCHA style, on one core.

    python benchmarks/render_speed.py [--specs 200] [--repeats 5]

"render" times :func:`infcomp_models.captcha.render.render` alone on specs drawn from
each style's prior (glyph caches warm); "model" times a whole prior draw of the Pyro
model (sampling every site, rendering, the ABC kernel's sample) under
``pyro.poutine.trace``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pyro  # noqa: E402
import torch  # noqa: E402
from pyro import poutine  # noqa: E402

from infcomp_models.captcha import STYLES, latent_values, render, seed_from_uniform  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", type=int, default=200, help="prior draws per style")
    parser.add_argument("--repeats", type=int, default=5, help="passes over the drawn specs")
    parser.add_argument("--styles", nargs="*", default=list(STYLES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'style':<10} {'size':>8} {'render/s':>10} {'model/s':>9}")
    for name in args.styles:
        style = STYLES[name]
        pyro.set_rng_seed(0)
        draws = []
        t0 = time.perf_counter()
        for _ in range(args.specs):
            values = latent_values(poutine.trace(style.model).get_trace())
            draws.append((style.spec(values), seed_from_uniform(values["noise_seed"].item())))
        model_rate = args.specs / (time.perf_counter() - t0)
        for spec, seed in draws:  # warm the glyph caches
            render(spec, seed)
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            for spec, seed in draws:
                render(spec, seed)
        render_rate = args.repeats * len(draws) / (time.perf_counter() - t0)
        size = f"{style.height}x{style.width}"
        print(f"{name:<10} {size:>8} {render_rate:>10.0f} {model_rate:>9.0f}")


if __name__ == "__main__":
    main()
