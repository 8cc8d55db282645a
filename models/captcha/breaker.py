"""Compile a CAPTCHA breaker for a style, and read images with it.

Three reads:

* :func:`read_greedy`: one pass of the guide up to the last letter, taking the most probable letters (fast).
* :func:`read_posterior`: the guide's own posterior over the text, ``q(text | image)``
  (:func:`infcomp.guide_marginal`): the letters are proposed before any layout, distortion or
  clutter latent, so the probability of a text is exact under the guide with all of those
  marginalised, and no image is rendered.  The readings found are the greedy one and those of
  ``samples - 1`` draws from the guide; the most probable is the reading.  Its probability is
  recalibrated (:func:`infcomp.fit_recalibration`) by a map fitted on fresh draws of the style
  (:func:`reading_calibration`), never on real images.
* :func:`read_weighted`: importance sampling with the guide under the style's ABC kernel, for
  reads that need the nuisance latents too, or a check of the guide against the model's own
  weights.  The weights rest on clutter no guide can infer (``noise_seed``), so the probabilities
  it states are over-confident.  Its reading carries the weights' diagnostics (ESS, Pareto k-hat:
  :class:`infcomp.WeightDiagnostics`); the other two reads have no importance weights.

All read any image; :func:`unlike_style` says when an image is unlike everything the style draws (blank,
black, noise), so that its reading means nothing whatever probability it gets.
"""

from __future__ import annotations

import collections
import functools
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pyro.poutine as poutine
import torch
from PIL import Image, UnidentifiedImageError

import infcomp
from infcomp.rng import fork_rng

from . import get_style

__all__ = [
    "compile_breaker",
    "load_breaker",
    "style_of",
    "load_image",
    "read_greedy",
    "read_posterior",
    "read_weighted",
    "reading_calibration",
    "Reading",
    "char_accuracy",
    "IMAGE_RULE",
    "far_from_style",
    "image_statistics",
    "style_envelope",
    "unlike_style",
]

IMAGE_RULE = (
    "images are converted to greyscale (transparent pixels over white), scaled to [0, 1] with 1 = white "
    "(8-bit values over 255, 16-bit greyscale over 65535), and resized to the style's width x height "
    "with bilinear filtering"
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


def load_breaker(path, bandwidth=None, text_only=False, device="cpu"):
    """``(guide, style)`` from a breaker file, the guide bound to the style's model, its network on
    ``device`` (the style's model draws and renders on the CPU either way); with
    ``bandwidth``, the model reads with that ABC kernel bandwidth (see
    :meth:`CaptchaStyle.with_bandwidth`) instead of the style's own; with ``text_only``, it weighs
    particles by their text alone (:meth:`CaptchaStyle.with_text_only`)."""
    guide = infcomp.load(path, device=device)
    style = style_of(guide)
    if bandwidth is not None:
        style = style.with_bandwidth(bandwidth)
    if text_only:
        style = style.with_text_only()
    guide.bind_model(style.model)
    return guide, style


#: An image whose aspect ratio is off the style's by more than this factor, or whose width or height is
#: more than this many times the style's or less than its share, draws a warning as it is read.
FAR_FACTOR = {"aspect": 1.5, "size": 4.0}

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _pixels(im) -> np.ndarray:
    """An opened image as greyscale in [0, 1] at its own size (see :data:`IMAGE_RULE`)."""
    if im.mode in _SIXTEEN_BIT:  # 16-bit greyscale: 65535 is white
        return np.clip(np.asarray(im, dtype=np.float64), 0, 65535).astype(np.float32) / 65535.0
    if im.mode in ("RGBA", "LA", "P", "PA") or "transparency" in im.info:
        im = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
    return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def far_from_style(size, style) -> str | None:
    """Why an image of ``size`` ``(width, height)`` is far from the style's, or None (see :data:`FAR_FACTOR`)."""
    (w, h), (sw, sh) = size, (style.width, style.height)
    aspect = (w / h) / (sw / sh)
    if max(aspect, 1 / aspect) > FAR_FACTOR["aspect"]:
        return f"aspect ratio {w / h:.2f} (w/h), the style's is {sw / sh:.2f}"
    scale = max(w / sw, h / sh, sw / w, sh / h)
    if scale > FAR_FACTOR["size"]:
        return f"{w}x{h} pixels is more than {FAR_FACTOR['size']:g} times off the style's size"
    return None


def load_image(path, style, warn=None) -> torch.Tensor:
    """An image file as the style's observation (see :data:`IMAGE_RULE`): 8- and 16-bit greyscale, palette,
    RGB and transparent images alike.  ValueError naming the file if it is not a readable image or is too
    large to decode (PIL's decompression-bomb limit).  ``warn(message)`` is called, with a one-line message
    naming the file, when its size or aspect ratio is far from the style's (:func:`far_from_style`)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                pixels = _pixels(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"{path}: too large to read as an image ({str(e).split(',')[0]})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: not a readable image ({e.__class__.__name__})") from None
    h, w = pixels.shape
    far = far_from_style((w, h), style)
    if far and warn is not None:
        warn(f"{path}: {far}; resized to the style's {style.width}x{style.height}, which distorts it")
    if (w, h) != (style.width, style.height):
        pixels = np.asarray(Image.fromarray(pixels, "F").resize((style.width, style.height), Image.BILINEAR))
    return torch.from_numpy(np.clip(pixels, 0.0, 1.0).astype(np.float32))


#: The image statistics that :func:`unlike_style` compares with the style's own draws: the share of ink
#: (one less the mean pixel), the contrast (the pixels' standard deviation) and the edges (the mean absolute
#: step between horizontal neighbours).
STATISTICS = ("ink", "contrast", "edges")
#: :func:`style_envelope`'s draws, and how far beyond their range, as a share of its span, an image may lie.
ENVELOPE_DRAWS, ENVELOPE_MARGIN = 200, 0.25


def image_statistics(image: torch.Tensor) -> dict:
    """:data:`STATISTICS` of a ``(height, width)`` image in [0, 1]."""
    x = image.to(torch.float64).clamp(0, 1)
    return {"ink": float(1 - x.mean()), "contrast": float(x.std(unbiased=False)),
            "edges": float((x[:, 1:] - x[:, :-1]).abs().mean()) if x.shape[1] > 1 else 0.0}


@functools.lru_cache(maxsize=None)
def style_envelope(name: str, draws: int = ENVELOPE_DRAWS) -> dict:
    """``{statistic: (low, high)}``: the range of each of :data:`STATISTICS` over the style's own prior draws,
    both its renderings and the kernel's noisy samples around them (``draws`` of each, from fixed seeds), widened
    by :data:`ENVELOPE_MARGIN` of its span on either side.  Computed once per style and process."""
    style = get_style(name)
    stats = []
    for i in range(draws):
        with fork_rng(2_000_003 + i):
            node = poutine.trace(style.model).get_trace().nodes["image"]
        stats += [image_statistics(node["fn"].mean), image_statistics(node["value"])]
    out = {}
    for key in STATISTICS:
        lo, hi = min(st[key] for st in stats), max(st[key] for st in stats)
        out[key] = (lo - ENVELOPE_MARGIN * (hi - lo), hi + ENVELOPE_MARGIN * (hi - lo))
    return out


def unlike_style(image: torch.Tensor, style) -> str | None:
    """Why ``image`` is unlike anything the style draws, or None: one of its :data:`STATISTICS` lies outside
    :func:`style_envelope` (a blank, black, flat grey or noise image does).  A reading of such an image means
    nothing, however probable the model finds it among its own texts."""
    stats, envelope = image_statistics(image), style_envelope(style.name)
    for key in STATISTICS:
        lo, hi = envelope[key]
        if not lo <= stats[key] <= hi:
            return (f"its {key} {stats[key]:.3f} is outside {max(lo, 0):.3f} .. {hi:.3f}, "
                    f"the range of the {style.name} style's own draws")
    return None


def read_greedy(style, guide, image):
    """The most probable letters, one guide step per address up to the last letter: the pass stops
    before the font, so the layout and distortion latents after it are neither proposed nor rendered.
    For a list of images, a list of readings: they are read together (:func:`infcomp.greedy`)."""
    values = infcomp.greedy(style.model, guide, image, stop_before=style.after_text)
    return [style.reading(v) for v in values] if isinstance(image, (list, tuple)) else style.reading(values)


@dataclass
class Reading:
    """A reading and its probability of being right; ``alternatives``: ``[(text, probability)]``, best first,
    under the read's own posterior (the guide's ``q(text | image)`` for :func:`read_posterior`, so not
    recalibrated); ``found``: the guide's mass on the texts found (:func:`read_posterior`); ``ess``: the
    effective sample size, and ``weights``: how far the importance weights can be trusted (:func:`read_weighted`;
    None for the guide's own posterior, which has no importance weights)."""

    text: str
    probability: float
    alternatives: list = field(default_factory=list)
    ess: float = 0.0
    found: float = 0.0
    weights: infcomp.WeightDiagnostics | None = None


#: Posterior reads: the guide's draws per image (the first is its greedy pass).
READ_SAMPLES = 32
#: :func:`reading_calibration`'s fresh draws of the style, and the seed they are drawn from (far from the
#: seeds of ``infcomp evaluate``'s draws and of a default training stream).
CALIBRATION_DRAWS, CALIBRATION_SEED = 400, 3_000_017


def _marginals(style, guide, images, samples, seed):
    """:func:`infcomp.guide_marginal` of the text, for an image or a list of them."""
    return infcomp.guide_marginal(style.model, guide, images, stop_before=style.after_text,
                                  function=style.reading, num_samples=samples, seed=seed)


def reading_calibration(style, guide, draws=None) -> infcomp.Recalibration:
    """The map from the guide's probability of its best reading to the share of such readings right,
    fitted on ``draws`` fresh draws of the style read as :func:`read_posterior` reads by default
    (:data:`READ_SAMPLES` draws each; the best reading's probability is exact whatever the number,
    which changes only how often a better one is found).  Kept in the guide's metadata (saved with
    it: ``infcomp compile`` does) for the traces, samples and seed it was fitted with, and refitted
    (on ``draws``, by default :data:`CALIBRATION_DRAWS`) once any of them differs or ``draws`` asks
    for another number.  ValueError unless ``draws`` is None or a positive int."""
    if draws is not None and (isinstance(draws, bool) or not isinstance(draws, int) or draws < 1):
        raise ValueError(f"draws must be a positive int, got {draws!r}")
    meta, samples = guide.metadata, READ_SAMPLES
    key = {"calibration_traces": guide.traces_trained, "calibration_samples": samples, "calibration_seed": CALIBRATION_SEED}
    if all(meta.get(k) == v for k, v in key.items()) and draws in (None, meta.get("calibration_draws")):
        return infcomp.Recalibration(meta["calibration_slope"], meta["calibration_intercept"], meta["calibration_draws"])
    draws = CALIBRATION_DRAWS if draws is None else draws
    drawn = get_style(style.name)  # draws come from the style as compiled
    images, texts = zip(*[drawn.sample(CALIBRATION_SEED + i) for i in range(draws)])
    tops = [m.top for m in _marginals(style, guide, list(images), samples, CALIBRATION_SEED)]
    fit = infcomp.fit_recalibration([p for _, p in tops], [t == text for (t, _), text in zip(tops, texts)])
    meta.update(key, calibration_slope=fit.slope, calibration_intercept=fit.intercept, calibration_draws=fit.num_draws)
    return fit


def read_posterior(style, guide, image, samples=READ_SAMPLES, seed=None):
    """The most probable text under the guide's posterior ``q(text | image)``, with its recalibrated
    probability (see the module's docstring); for a list of images, a list of readings (read together)."""
    calibrate = reading_calibration(style, guide)
    many = isinstance(image, (list, tuple))
    marginals = _marginals(style, guide, list(image) if many else image, samples, seed)
    readings = []
    for m in marginals if many else [marginals]:
        text, q = m.top
        readings.append(Reading(text, calibrate(q), list(m.probabilities.items())[:5], found=m.found))
    return readings if many else readings[0]


def read_weighted(style, guide, image, particles=100, seed=None, temperature=1.0, batch=True, warn=True) -> Reading:
    """Importance sampling with the guide; readings ranked by their share of the normalised weights;
    ``temperature > 1`` flattens its discrete proposals (letters, font) first (see :mod:`infcomp.temper`).
    ``batch`` and ``warn`` (about unreliable weights): as :func:`infcomp.infer`'s; the reading's ``weights``
    says how far they can be trusted either way."""
    with infcomp.temper(temperature):
        post = infcomp.infer(style.model, guide, image, num_samples=particles, seed=seed, batch=batch, warn=warn)
    ranked = list(post.probabilities(style.reading).items())
    return Reading(ranked[0][0], ranked[0][1], ranked[:5], post.ess, weights=post.diagnostics)


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
