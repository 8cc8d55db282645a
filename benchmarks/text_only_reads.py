"""The posterior read weighed by the style's own model against the text alone, on the same particles.

    python benchmarks/text_only_reads.py out/bench21/ebay.pt [-n 400] [--start 0] [--particles 100]
                                         [--gallery text_only_errors.png]

Reads ``infcomp evaluate``'s fresh draws ``start .. start + n - 1`` (draw ``i`` under seed
``seed + 1_000_003 + i``, particles under ``seed + i``) greedily, and twice by importance sampling
with the same particles: weighed by the style's own model, whose rendering holds clutter (lines,
arcs, ellipses, dots, the curve) and pixel noise where each particle's ``noise_seed`` puts them, and
weighed by the text alone (:meth:`CaptchaStyle.with_text_only`: rendered without them). It prints
how often the right reading is among the particles, each read's recognition rate, the share of
readings given p > 0.9 and how many of those are right, and the draws only one of the two reads
right.
"""

from __future__ import annotations

import argparse
import time

import infcomp
from infcomp_models.captcha import save_gallery
from infcomp_models.captcha.breaker import load_breaker, read_greedy


def top_reading(post, style):
    reading, p = next(iter(post.probabilities(style.reading).items()))
    return reading, p


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("-n", type=int, default=400)
    p.add_argument("--start", type=int, default=0, help="the first draw's number")
    p.add_argument("--particles", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gallery", default=None, help="PNG of the draws the text-only read gets wrong")
    a = p.parse_args()
    guide, style = load_breaker(a.model)
    text = style.with_text_only()
    print(f"{a.model} ({style.name}): draws {a.start}..{a.start + a.n - 1}, {a.particles} particles")
    rows, t0 = [], time.time()
    for i in range(a.start, a.start + a.n):
        image, label = style.sample(a.seed + 1_000_003 + i)  # `infcomp evaluate`'s draw i
        full = infcomp.infer(style.model, guide, image, num_samples=a.particles, seed=a.seed + i)
        only = infcomp.infer(text.model, guide, image, num_samples=a.particles, seed=a.seed + i)
        readings = {style.reading(full.values(j)) for j in range(a.particles)}
        rows.append(dict(label=label, image=image, greedy=read_greedy(style, guide, image), among=label in readings,
                         full=top_reading(full, style), text=top_reading(only, style)))
        if len(rows) % 50 == 0:
            print(f"  {len(rows)} draws read, {time.time() - t0:.0f} s", flush=True)

    n = len(rows)
    print(f"greedy {sum(r['greedy'] == r['label'] for r in rows) / n:.1%}; "
          f"right reading among the particles {sum(r['among'] for r in rows) / n:.1%}")
    print("weighed by          right   p > 0.9   right of those")
    for key, tag in (("full", "the style's model"), ("text", "the text alone")):
        right = [r[key][0] == r["label"] for r in rows]
        sure = [c for c, r in zip(right, rows) if r[key][1] > 0.9]
        print(f"{tag:18s} {sum(right) / n:6.1%}  {len(sure) / n:8.1%}  {sum(sure) / max(len(sure), 1):15.1%}")
    only_full = sum(r["full"][0] == r["label"] != r["text"][0] for r in rows)
    only_text = sum(r["text"][0] == r["label"] != r["full"][0] for r in rows)
    print(f"read right by the style's model only: {only_full}; by the text alone only: {only_text} (of {n})")
    shown = [r for r in rows if r["text"][0] != r["label"]][:16]
    if a.gallery and shown:
        titles = [f"{r['label']}: text {r['text'][0]}\nmodel {r['full'][0]}" for r in shown]
        print(f"gallery of draws the text-only read gets wrong -> {save_gallery([r['image'] for r in shown], titles, a.gallery)}")


if __name__ == "__main__":
    main()
