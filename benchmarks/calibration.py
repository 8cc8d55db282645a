"""Are the reading probabilities calibrated?  Per style and real scheme, for the same breaker.

    python benchmarks/calibration.py [--breakers out/calibration] [--traces 30000] [--draws 1000]
                                     [--weighted-draws 50] [--styles a,b] [--sbc-draws 200]

For each style (default: all, the paper's seven and the two real schemes' models) it takes the
breaker ``BREAKERS/STYLE.pt``, compiling it first on ``--traces`` prior traces if it is absent,
and reads ``--draws`` fresh draws of the style (``infcomp evaluate``, seeds the training stream
never starts from).  It prints, for the posterior read (the guide's ``q(text | image)`` with its
probability recalibrated on other fresh draws): expected calibration error (ten equal bins),
``floor``, the mean ECE a perfectly calibrated reader stating the same probabilities would show
on as many readings (outcomes drawn with the stated probabilities: the ECE of sampling noise alone), Brier score, accuracy of the greedy and of the posterior read, and the accuracy on the 90% and
50% most probable readings.  ``w-ECE`` is the ECE of the importance-weighted read (``--weighted``,
100 particles) on the first ``--weighted-draws`` draws, for comparison.  For the two real schemes
the same figures follow on every real image of ``../shared`` (never trained on, and nothing
fitted to them).  ``p>=.5 odd`` counts, of the images no draw of the style looks like (blank,
black, noise, 1 x 1, and 10 draws of every other style), those read with probability at least 0.5.

Then the simulation-based calibration of the core models (:mod:`infcomp.diagnostics`): a guide
compiled on each of the Gaussian and the branching model, checked on ``--sbc-draws`` draws.

A reliability plot per style and scheme goes to ``BREAKERS/STYLE.reliability.png``, an
accuracy-against-coverage plot to ``BREAKERS/STYLE.gallery-coverage.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from real_captchas import SHARED, run  # the command line in a child process, and where the real images are

REAL = ("really_simple_captcha", "captcha_images_v2")


def odd_images(style_name, folder: Path) -> list[str]:
    """Blank, black, noise, 1 x 1 images and 10 draws of every other style, as PNG files."""
    from infcomp_models.captcha import get_style, style_names

    folder.mkdir(parents=True, exist_ok=True)
    style = get_style(style_name)
    h, w = style.height, style.width
    arrays = {"blank": np.full((h, w), 255), "black": np.zeros((h, w)),
              "noise": np.random.default_rng(0).integers(0, 256, (h, w)), "one": np.zeros((1, 1))}
    for other in style_names():
        if other != style_name:
            for i in range(10):
                image, _ = get_style(other).sample(7_000_000 + i)
                arrays[f"{other}-{i}"] = image.clamp(0, 1).numpy() * 255
    files = []
    for name, a in arrays.items():
        path = folder / f"{name}.png"
        Image.fromarray(np.asarray(a, dtype=np.uint8)).save(path)
        files.append(str(path))
    return files


def ece_floor(probs, repeats=200, seed=0) -> float:
    """The mean ECE of a perfectly calibrated reader stating ``probs``: outcomes drawn right with the stated
    probability, scored as the readings are (the ECE a finite sample shows even where nothing is wrong)."""
    from infcomp_models.captcha.cli import _calibration

    rng = np.random.default_rng(seed)
    p = np.asarray(probs, dtype=float)
    return float(np.mean([_calibration(p, rng.random(len(p)) < p)["calibration_error"] for _ in range(repeats)]))


def figures(r) -> dict:
    cov = r.get("accuracy_at_coverage", {})
    probs = [x["probability"] for x in r["readings"] if "probability" in x and x.get("label") is not None]
    return {"n": r["n"], "ece": r.get("calibration_error"), "floor": ece_floor(probs) if probs else None,
            "brier": r.get("brier"), "greedy": r["recognition_rate_greedy"],
            "posterior": r.get("recognition_rate_posterior"), "at90": cov.get("90%"), "at50": cov.get("50%")}


def wait_for(model: Path):
    """Wait while another process compiles ``model`` (its lock file is there)."""
    lock = model.with_name(model.name + ".lock")
    while lock.exists():
        time.sleep(10)


def style_rows(style, args, out: Path) -> list[dict]:
    model = out / f"{style}.pt"
    wait_for(model)
    if not model.exists():
        print(run(["compile", "--style", style, "--traces", str(args.traces), "--out", str(model), "--quiet"]).strip(),
              flush=True)
    t = time.perf_counter()
    draws = json.loads(run(["evaluate", str(model), "-n", str(args.draws), "--posterior-n", str(args.draws), "--json",
                            "--show", str(args.draws),
                            "--gallery", str(out / f"{style}.gallery.png"),
                            "--reliability", str(out / f"{style}.reliability.png")]))
    weighted = json.loads(run(["evaluate", str(model), "-n", str(args.weighted_draws), "--posterior-n",
                               str(args.weighted_draws), "--weighted", "--particles",
                               "100", "--json", "--gallery", ""]))
    odd = json.loads(run(["break", str(model), *odd_images(style, out / f"{style}-odd"), "--json"]))
    odd_high = sum(r.get("probability", 0.0) >= 0.5 for r in odd["readings"])
    row = {"what": f"{style} (draws)", **figures(draws), "w_ece": weighted.get("calibration_error"),
           "traces": draws["traces_trained"], "odd": f"{odd_high}/{len(odd['readings'])}",
           "seconds": time.perf_counter() - t}
    rows = [row]
    if style in REAL and (SHARED / style).is_dir():
        files = sorted(str(f) for f in (SHARED / style).glob("*.png"))
        real = json.loads(run(["break", str(model), *files, "--json",
                               "--reliability", str(out / f"{style}.real.reliability.png"),
                               "--coverage", str(out / f"{style}.real.coverage.png")]))
        rows.append({"what": f"{style} (real)", **figures(real), "w_ece": None, "traces": row["traces"], "odd": "",
                     "seconds": 0.0})
    return rows


def _pct(x):
    return "     -" if x is None else f"{100 * x:5.1f}%"


def _num(x):
    return "    -" if x is None else f"{x:.3f}"


def sbc(draws):
    import infcomp
    from infcomp.diagnostics import calibration
    from infcomp_models import examples as ex

    for name, model, traces in (("gaussian", ex.gaussian, 20_000), ("poisson_branching", ex.poisson_branching, 20_000)):
        guide = infcomp.compile(model, observe="y", num_traces=traces, seed=0, workers=0, progress=False)
        cal = calibration(model, guide, num_draws=draws, num_samples=100, seed=1)
        for read in ("q", "posterior"):
            fails = cal.failures(read)
            parts = []
            for site, figures_ in cal.summary().items():
                f = figures_[read]
                p = f["rank_p_value"]
                parts.append(f"{site}: ranks p={'-' if p is None else format(p, '.2g')}"
                             + (f" ECE {f['ece']:.3f}" if "ece" in f else ""))
            print(f"SBC {name:18s} {read:9s} {'passes' if not fails else 'FAILS: ' + '; '.join(fails[:3])}  "
                  + ", ".join(parts[:3]))


def main():
    from infcomp_models.captcha import style_names

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--breakers", default="out/calibration")
    p.add_argument("--traces", type=int, default=30_000)
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--weighted-draws", type=int, default=50)
    p.add_argument("--styles", default=",".join(style_names()))
    p.add_argument("--sbc-draws", type=int, default=200, help="0: leave the core models out")
    args = p.parse_args()
    out = Path(args.breakers)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{'style':32s} {'n':>5s} {'ECE':>6s} {'floor':>6s} {'Brier':>6s} {'greedy':>7s} {'post.':>7s} {'@90%':>7s} "
          f"{'@50%':>7s} {'w-ECE':>6s} {'p>=.5 odd':>9s} {'traces':>7s} {'s':>5s}", flush=True)
    for style in args.styles.split(","):
        for r in style_rows(style, args, out):
            print(f"{r['what']:32s} {r['n']:5d} {_num(r['ece']):>6s} {_num(r['floor']):>6s} {_num(r['brier']):>6s} {_pct(r['greedy']):>7s} "
                  f"{_pct(r['posterior']):>7s} {_pct(r['at90']):>7s} {_pct(r['at50']):>7s} {_num(r['w_ece']):>6s} "
                  f"{r['odd']:>9s} {r['traces']:7d} {r['seconds']:5.0f}", flush=True)
    if args.sbc_draws:
        sbc(args.sbc_draws)


if __name__ == "__main__":
    main()
