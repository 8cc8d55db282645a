"""CAPTCHA breakers per style: rendering speed, training speed, recognition, read time, memory.

    python benchmarks/captcha.py [--styles baidu2011,ebay] [--minutes 5] [--n 1000]
                                 [--posterior-n 100] [--particles 100] [--echo 3] [--out out/bench]
                                 [--compile-options "--column-pixels 4"] [--text-only] [--json]

For each style: renders/s on one core (the renderer alone) and prior traces/s on one core
(the whole Pyro model: sampling, rendering, the ABC kernel); then it compiles a breaker for
``--minutes`` of wall-clock time (resuming ``OUT/STYLE.pt`` if it exists, so budgets add up
across runs; the table says how many traces the breaker has seen in all; ``--minutes 0`` reads
with ``OUT/STYLE.pt`` as it is) and reads
``--n`` fresh CAPTCHAs drawn from the style's prior with a greedy pass (which stops after the last
letter: ``read_greedy``; the images read together, 256 at a time, ``ms/greedy`` the time per image), and the first ``--posterior-n`` of them with importance sampling
(``infcomp evaluate --weighted``; ``--particles`` particles, each a whole trace, rendered and weighed; with ``--text-only``, by
their text alone: ``CaptchaStyle.with_text_only``); ``ms/floor`` is the time per image of
prior importance sampling with as many particles on the first five of them (the model alone,
run that often: what a posterior read cannot undercut).  Peak
memory is the largest resident set of the compile process and of its trace workers.
``train/s`` is what the network trains on per second, the repeats of echoed batches included
(``--echo``, default the breaker's 3); ``fresh/s`` counts the new prior traces drawn.  ``px/col``:
the pixels per image column that the breaker's attention reads (the style's choice, or
``--compile-options "--column-pixels N"``).

Anchors from the issue: the paper's Table 1 (recognition 91-99.9% per style); pyprob 1.5.0's
LSTM with a CNN embedding trains at about 85 traces/s on a small 32 x 96 CAPTCHA of three to
five letters on a 2-core CPU.  Goals: >= 95% on every style within 60 minutes of training on
a 2-core CPU, a greedy read under 20 ms, peak memory under 4 GB while compiling.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pyro
import torch

PYPROB_TPS = 85.0
GOALS = {"recognition": 0.95, "greedy_ms": 20.0, "peak_gb": 4.0, "train_speedup_vs_pyprob": 5.0}


def renders_per_second(style, seconds=2.0):
    from infcomp_models.captcha import render
    from infcomp_models.captcha.style import latent_values

    torch.set_num_threads(1)
    specs = []
    for i in range(20):
        pyro.set_rng_seed(i)
        tr = pyro.poutine.trace(style.model).get_trace()
        specs.append(style.spec(latent_values(tr)))
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        render(specs[n % len(specs)], n)
        n += 1
    return n / (time.perf_counter() - t0)


def traces_per_second(style, seconds=2.0):
    from infcomp.traces import PriorSampler

    sampler = PriorSampler(style.model, "image", validate=False)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sampler.sample()
        n += 1
    return n / (time.perf_counter() - t0)


def floor_ms(style, images, particles, seed):
    """The posterior read's floor: ms per image of prior importance sampling with as many
    particles (the model run that often, adding up only the image's log density)."""
    import infcomp

    if not images or particles <= 0:
        return None
    t0 = time.perf_counter()
    for i, image in enumerate(images):
        infcomp.infer(style.model, None, image, observe="image", num_samples=particles, seed=seed + i)
    return 1000 * (time.perf_counter() - t0) / len(images)


def compile_in_child(style, minutes, out, echo=None, options=()):
    """Run `infcomp compile` in a child process, so its peak memory (and its workers') is measurable."""
    cmd = [sys.executable, "-m", "infcomp_models.captcha.cli", "compile", "--style", style, "--minutes", str(minutes),
           "--out", str(out), "--quiet"] + ([] if echo is None else ["--echo", str(echo)]) + list(options)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"compile failed for {style}:\n{proc.stderr[-2000:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return proc.stdout.strip(), time.perf_counter() - t0, max(peak_kb, before) / 1024**2


def main(argv=None):
    from infcomp_models.captcha.cli import _read_all, _summary  # the same reads and figures as `infcomp evaluate`
    from infcomp_models.captcha import STYLES, get_style
    from infcomp_models.captcha.breaker import load_breaker

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--styles", default=",".join(list(STYLES)[:7]))
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--posterior-n", type=int, default=100)
    p.add_argument("--particles", type=int, default=100)
    p.add_argument("--out", default="out/bench")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--echo", type=float, default=None,
                   help="data echoing factor for the compiles (infcomp compile --echo; default the breaker's, 3)")
    p.add_argument("--compile-options", default="", metavar="'--OPTION VALUE ...'",
                   help="more `infcomp compile` options, e.g. '--column-pixels 4' (network options set a new "
                        "breaker; a resumed one must have been built with them)")
    p.add_argument("--text-only", action="store_true",
                   help="weigh the posterior reads' particles by their text alone (infcomp evaluate --text-only)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}; budget {args.minutes} min per style; "
          f"n={args.n} greedy reads, {args.posterior_n} posterior reads with {args.particles} particles"
          f"{' weighed by the text alone' if args.text_only else ''}", flush=True)
    results = []
    for name in args.styles.split(","):
        style = get_style(name)
        row = {"style": name, "size": f"{style.width}x{style.height}"}
        row["renders_per_s"] = renders_per_second(style)
        row["model_traces_per_s"] = traces_per_second(style)
        if args.minutes > 0 or not (out / f"{name}.pt").exists():
            msg, wall, peak_gb = compile_in_child(name, args.minutes, out / f"{name}.pt", args.echo,
                                                  shlex.split(args.compile_options))
        else:  # --minutes 0: read with the breaker as it is
            msg, wall, peak_gb = f"read with {out / f'{name}.pt'} as it is (--minutes 0)", 0.0, 0.0
        guide, reader = load_breaker(out / f"{name}.pt", text_only=args.text_only)
        row.update(compile_message=msg, compile_wall_s=wall, peak_gb=peak_gb, traces_trained=guide.traces_trained,
                   column_pixels=guide.network.encoder.cnn.column_pixels)
        run = guide.last_run
        row["fresh_traces_per_s"] = run.traces_per_second
        # what the network trains on per second (echoed batches count again): the figure to set against pyprob's
        row["train_traces_per_s"] = run.trained_traces_per_second
        images, labels = [], []
        for i in range(args.n):
            image, text = style.sample(args.seed + i)  # the style as compiled, whatever it reads with
            images.append(image)
            labels.append(text)
        rows, greedy_ms, post_ms = _read_all(reader, guide, images, labels, [str(i) for i in range(args.n)],
                                             args.particles, args.posterior_n,
                                             [args.seed + i for i in range(args.n)], False, weighted=True)
        s = _summary(rows, greedy_ms, post_ms)
        row.update(recognition_greedy=s["recognition_rate_greedy"], recognition_posterior=s.get("recognition_rate_posterior"),
                   char_accuracy=s["char_accuracy"], greedy_ms=greedy_ms, posterior_ms=post_ms,
                   floor_ms=floor_ms(reader, images[: min(args.posterior_n, 5)], args.particles, args.seed))
        results.append(row)
        print(f"{name}: {msg}", flush=True)
    hdr = (f"{'style':12s} {'size':>7s} {'px/col':>6s} {'render/s':>9s} {'model/s':>8s} {'train/s':>8s} {'fresh/s':>8s} {'traces':>8s} "
           f"{'greedy':>7s} {'post.':>7s} {'chars':>6s} {'ms/greedy':>9s} {'ms/post':>8s} {'ms/floor':>8s} {'peak GB':>8s}")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        post = f"{100 * r['recognition_posterior']:6.1f}%" if r["recognition_posterior"] is not None else "      -"
        print(f"{r['style']:12s} {r['size']:>7s} {r['column_pixels']:6d} {r['renders_per_s']:9.0f} {r['model_traces_per_s']:8.0f} "
              f"{r['train_traces_per_s']:8.0f} {r['fresh_traces_per_s']:8.0f} {r['traces_trained']:8d} {100 * r['recognition_greedy']:6.1f}% {post} "
              f"{100 * r['char_accuracy']:5.1f}% {r['greedy_ms']:9.1f} {r['posterior_ms'] or 0:8.0f} {r['floor_ms'] or 0:8.0f} {r['peak_gb']:8.2f}")
    print(f"goals: recognition >= {100 * GOALS['recognition']:.0f}% per style within 60 min on 2 cores; "
          f"greedy read < {GOALS['greedy_ms']:.0f} ms; peak memory < {GOALS['peak_gb']:.0f} GB; "
          f"training >= {GOALS['train_speedup_vs_pyprob']:.0f}x pyprob's {PYPROB_TPS:.0f} traces/s "
          f"(= {GOALS['train_speedup_vs_pyprob'] * PYPROB_TPS:.0f}/s) on comparable images")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
