"""Memory of importance sampling with many particles: an image model and a scalar one.

    python benchmarks/particle_memory.py [--image-particles 100000] [--scalar-particles 1000000]
                                         [--breaker out/bench/baidu2011.pt] [--json]

Each case runs in a child process: ``infcomp.infer`` (batched, default chunks) on one
observation, with ``progress=True`` on stderr.  Printed per case: particles, seconds, the
child's resident set before ``infer`` and its peak (``ru_maxrss``) after, and the growth
between them.

* ``image``:  the baidu2011 CAPTCHA model (rendered, weighed by its ABC kernel) with the breaker
  ``--breaker`` (default: one compiled here on 64 traces; memory does not depend on training).
* ``scalar``: ``infcomp_models.examples.gaussian`` with a guide compiled on 2,048 traces.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(case, particles, breaker):
    import torch

    import infcomp

    if case == "image":
        from infcomp_models.captcha import get_style
        from infcomp_models.captcha.breaker import compile_breaker, load_breaker

        style = get_style("baidu2011")
        if breaker:
            guide, style = load_breaker(breaker)
        else:
            guide = compile_breaker(style, num_traces=64, workers=0, progress=False, seed=0)
        model, observation = style.model, style.sample(2026)[0]
    else:
        from infcomp_models import examples as ex

        guide = infcomp.compile(ex.gaussian, observe="y", num_traces=2_048, workers=0, progress=False, seed=0)
        model, observation = ex.gaussian, torch.tensor([8.0, 9.0])
    before = rss_mb()
    t0 = time.perf_counter()
    post = infcomp.infer(model, guide, observation, num_samples=particles, seed=1, progress=True)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"case": case, "particles": particles, "seconds": seconds, "rss_before_mb": before,
                      "peak_mb": peak, "growth_mb": peak - before, "ess": post.ess}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-particles", type=int, default=100_000)
    p.add_argument("--scalar-particles", type=int, default=1_000_000)
    p.add_argument("--breaker", default=None, help="a baidu2011 breaker file (default: compile a tiny one)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", choices=["image", "scalar"], help=argparse.SUPPRESS)
    p.add_argument("--particles", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child, args.particles, args.breaker)
    print(f"machine: {os.cpu_count()} cores; one child process per case", flush=True)
    rows = []
    for case, n in (("image", args.image_particles), ("scalar", args.scalar_particles)):
        cmd = [sys.executable, __file__, "--child", case, "--particles", str(n)] + (
            ["--breaker", args.breaker] if args.breaker else [])
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{'case':8s} {'particles':>10s} {'seconds':>8s} {'RSS before':>11s} {'peak':>8s} {'growth':>8s} {'ESS':>9s}")
    for r in rows:
        print(f"{r['case']:8s} {r['particles']:10,d} {r['seconds']:8.1f} {r['rss_before_mb']:9.0f} MB "
              f"{r['peak_mb']:5.0f} MB {r['growth_mb']:5.0f} MB {r['ess']:9.1f}")
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
