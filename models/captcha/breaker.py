"""Compile a CAPTCHA breaker for a style, and read images with it.

Two reads:

* :func:`read_greedy`: one pass of the guide up to the last letter, taking the most probable letters (fast).
* :func:`read_posterior`: importance sampling with the guide; readings ranked by
  posterior probability (the sum of normalised weights of the particles that spell them).
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

import infcomp

from . import get_style

__all__ = [
    "compile_breaker",
    "load_breaker",
    "style_of",
    "load_image",
    "read_greedy",
    "read_posterior",
    "Reading",
    "char_accuracy",
    "IMAGE_RULE",
]

IMAGE_RULE = (
    "images are converted to greyscale (transparent pixels over white), resized to the style's "
    "width x height with bilinear filtering, and scaled to [0, 1] with 1 = white"
)


ECHO = 3.0  # see compile_breaker


def compile_breaker(style, *, minutes=None, num_traces=None, guide=None, seed=None, workers=None,
                    batch_size=64, echo=ECHO, progress=True, config=None, encoder=None, **kwargs):
    """Train (or go on training) a guide on the style's prior draws; the style's name goes into its
    metadata.  Other keywords go to :func:`infcomp.compile` (``checkpoint=``, ``lr=``, ...).

    A new breaker's image encoder is built with ``encoder=`` (an :class:`infcomp.CNNConfig`),
    by default the style's own (:attr:`CaptchaStyle.encoder`); ``config=`` sizes its LSTM and
    heads (:class:`infcomp.NetworkConfig`).  A resumed ``guide`` keeps the network it was built with.

    ``echo``: each batch is trained on this many times (data echoing, :class:`infcomp.data.Echo`).
    On a 2-core CPU a rendered CAPTCHA costs more to draw than a gradient step on it; with three
    the trainer, not the renderer, sets the pace.
    """
    style = get_style(style) if isinstance(style, str) else style
    if guide is None and encoder is None:
        encoder = style.encoder
    return infcomp.compile(
        style.model, "image", num_traces, minutes=minutes, guide=guide, seed=seed, workers=workers,
        batch_size=batch_size, echo=echo, progress=progress, metadata={"style": style.name}, config=config,
        encoder=encoder, **kwargs,
    )


def style_of(guide):
    name = guide.metadata.get("style")
    if name is None:
        raise ValueError("this guide was not compiled for a CAPTCHA style (its file names no style)")
    return get_style(name)


def load_breaker(path, bandwidth=None, text_only=False):
    """``(guide, style)`` from a breaker file, the guide bound to the style's model; with
    ``bandwidth``, the model reads with that ABC kernel bandwidth (see
    :meth:`CaptchaStyle.with_bandwidth`) instead of the style's own; with ``text_only``, it weighs
    particles by their text alone (:meth:`CaptchaStyle.with_text_only`)."""
    guide = infcomp.load(path)
    style = style_of(guide)
    if bandwidth is not None:
        style = style.with_bandwidth(bandwidth)
    if text_only:
        style = style.with_text_only()
    guide.bind_model(style.model)
    return guide, style


def load_image(path, style) -> torch.Tensor:
    """An image file as the style's observation (see :data:`IMAGE_RULE`); ValueError if it is not an image."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                white = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, im)
            im = im.convert("L")
            if im.size != (style.width, style.height):
                im = im.resize((style.width, style.height), Image.BILINEAR)
            return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not a readable image ({e.__class__.__name__})") from None


def read_greedy(style, guide, image) -> str:
    """The most probable letters, one guide step per address up to the last letter: the pass stops
    before the font, so the layout and distortion latents after it are neither proposed nor rendered."""
    return style.reading(infcomp.greedy(style.model, guide, image, stop_before=style.after_text))


@dataclass
class Reading:
    text: str
    probability: float
    alternatives: list = field(default_factory=list)  # [(text, probability)], best first
    ess: float = 0.0


def read_posterior(style, guide, image, particles=100, seed=None, temperature=1.0) -> Reading:
    """Importance sampling with the guide; ``temperature > 1`` flattens its discrete
    proposals (letters, font) first (see :mod:`infcomp.temper`)."""
    with infcomp.temper(temperature):
        post = infcomp.infer(style.model, guide, image, num_samples=particles, seed=seed)
    ranked = list(post.probabilities(style.reading).items())
    return Reading(ranked[0][0], ranked[0][1], ranked[:5], post.ess)


def char_accuracy(reading: str, label: str) -> float:
    """Share of the label's characters read right, position by position (a length error costs the rest)."""
    n = max(len(reading), len(label))
    return sum(a == b for a, b in zip(reading, label)) / n if n else 1.0


def char_confusions(pairs, top: int = 10) -> list:
    """The most frequent character errors over ``(reading, label)`` pairs, position by
    position: ``[(label character, character read, count)]``, most frequent first.  Pairs
    of different lengths are left out (their positions do not line up)."""
    counts = collections.Counter(
        (a, b) for reading, label in pairs if len(reading) == len(label) for b, a in zip(reading, label) if a != b
    )
    return [(a, b, n) for (a, b), n in counts.most_common(top)]


def describe_confusions(confusions) -> str:
    """``char_confusions``' list as one line: ``"m -> n 13x, 8 -> d 2x"`` (``"none"`` if empty)."""
    return ", ".join(f"{a} -> {b} {n}x" for a, b, n in confusions) or "none"


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t
