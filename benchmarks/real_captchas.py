"""Breakers for the real CAPTCHA schemes, compiled from their models alone, read on the real images.

    python benchmarks/real_captchas.py [--minutes 30] [--particles 30] [--out out/real] [--schemes A,B]

For each scheme in ``../shared/data/real-captchas`` (``really_simple_captcha``,
``captcha_images_v2``, ``colour_arcs``; ``--schemes`` picks some): compile a breaker from the style's prior draws for ``--minutes``
(resuming ``OUT/SCHEME.pt`` if it exists, so budgets add up; the table reports the total
traces seen), then read every real image of the scheme and print the whole-string
recognition rate (greedy and posterior), per-character accuracy, and calibration: the
share of images whose reading got posterior probability above 0.9, and how many of those
are right.  A reliability plot per scheme goes to ``OUT/SCHEME.reliability.png``.  No real
image is ever a training example and no parameter is fitted to them.

Reference: Le et al. (2017) read 81% (Wikipedia) and 42% (Facebook) of real CAPTCHAs with
breakers trained on synthetic data only; supervised CRNNs trained on 900 real captcha_images_v2
images report about 93-95%.  Goal: at least 95% whole-string on every scheme's held-out images,
with calibration error at most 0.05 (the shared images here are a small look at each scheme).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from infcomp_models.captcha.breaker import describe_confusions

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-captchas"
SCHEMES = ("really_simple_captcha", "captcha_images_v2", "colour_arcs")


def run(cmd):
    proc = subprocess.run([sys.executable, "-m", "infcomp_models.captcha.cli", *cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return proc.stdout


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="compiling budget per scheme")
    p.add_argument("--schemes", default=",".join(SCHEMES), help="comma-separated, of: " + ", ".join(SCHEMES))
    p.add_argument("--particles", type=int, default=30)
    p.add_argument("--out", default="out/real")
    p.add_argument("--skip-compile", action="store_true", help="only read, with the breakers already in --out")
    p.add_argument("--bandwidth", type=float, help="read with this ABC bandwidth instead of each style's own")
    p.add_argument("--temperature", type=float, default=1.0, help="flatten the guide's letter proposals (infcomp.temper)")
    args = p.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is absent: the real CAPTCHAs come from ../shared beside the checkout")
    schemes = [s for s in args.schemes.split(",") if s]
    unknown = sorted(set(schemes) - set(SCHEMES))
    if unknown or not schemes:
        raise SystemExit(f"--schemes: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(SCHEMES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for scheme in schemes:
        model = out / f"{scheme}.pt"
        if not args.skip_compile:
            print(run(["compile", "--style", scheme, "--minutes", str(args.minutes), "--out", str(model), "--quiet"]).strip(), flush=True)
        files = sorted(str(f) for f in (SHARED / scheme).glob("*.png"))
        wider = (["--bandwidth", str(args.bandwidth)] if args.bandwidth else []) + ["--temperature", str(args.temperature)]
        wider += ["--weighted"] if args.bandwidth or args.temperature != 1.0 else []  # they change weighted reads only
        result = json.loads(run(["break", str(model), *files, *wider, "--particles", str(args.particles), "--json",
                                 "--reliability", str(out / f"{scheme}.reliability.png"),
                                 "--gallery", str(out / f"{scheme}.gallery.png")]))
        result["scheme"] = scheme
        rows.append(result)
    print(f"{'scheme':22s} {'n':>4s} {'greedy':>7s} {'posterior':>9s} {'chars':>6s} {'p>0.9':>6s} {'right|p>0.9':>11s} "
          f"{'Brier':>6s} {'ECE':>6s} {'ms/greedy':>9s} {'ms/post':>8s}")
    for r in rows:
        conf = r.get("accuracy_when_confident")
        print(f"{r['scheme']:22s} {r['n']:4d} {100 * r['recognition_rate_greedy']:6.1f}% "
              f"{100 * r.get('recognition_rate_posterior', float('nan')):8.1f}% {100 * r['char_accuracy']:5.1f}% "
              f"{100 * (r['confident_share'] or 0):5.0f}% {('%10.1f%%' % (100 * conf)) if conf is not None else '         -'} "
              f"{r.get('brier', float('nan')):6.3f} {r.get('calibration_error', float('nan')):6.3f} "
              f"{r['ms_per_captcha']['greedy']:9.1f} {r['ms_per_captcha']['posterior'] or 0:8.0f}")
    for r in rows:
        top = describe_confusions(r["char_confusions"][:5])
        print(f"{r['scheme']}: most frequent character errors (label -> read): {top}")
    print("reference: Le et al. 2017 read 81% (Wikipedia) and 42% (Facebook) of real CAPTCHAs; "
          "goal >= 95% whole-string on every scheme's held-out images, calibration error <= 0.05")


if __name__ == "__main__":
    main()
