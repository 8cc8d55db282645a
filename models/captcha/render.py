"""A fast, deterministic text-CAPTCHA renderer (Pillow + NumPy; knows nothing of Pyro).

:func:`render` turns a :class:`CaptchaSpec` (the latents) and an integer seed into a
``float32`` array of shape ``(height, width)`` with values in ``[0, 1]``: 1.0 is white
paper, 0.0 black ink.  The seed drives only the nuisance randomness (clutter
positions, the elastic field's random values and pixel noise); everything else is
read from the spec, so ``render(spec, seed)`` is a pure function.

Pipeline, all on an ink-*coverage* map (0 = paper, 1 = ink):

1. glyphs (cached per font, size, character, stroke and horizontal scale) are rotated,
   laid out along a baseline with kerning (or a fixed ``pitch``) and per-letter
   offsets, and the text block is placed at a fraction (``x_position``,
   ``y_position``) of the free space, so it stays inside the image whenever it fits,
   or at a fixed pen origin (``x_origin``, ``baseline``) where those are given;
   letters may be bent each on its own (``letter_warp``); letters with a positive
   ``fuzz`` get hairy edges (each pixel near them is taken from a random nearby pixel,
   a "spread");
   a block wider than the image may be squeezed to its width (``squeeze``);
2. clutter drawn with the ink: lines and arcs through the text, ellipses, dots, and
   one long anti-aliased polyline (``curve_width > 0``) with a squiggle at its start;
   or, with ``clutter_level``, as a layer of its own in that intensity;
3. one bilinear remap combining shear, a sinusoidal wave and an elastic field
   (Simard et al. 2003);
4. Gaussian blur (separable, as two small matrix products);
5. coverage mixed between the background (a level plus a linear gradient) and the
   ink intensity (a separate clutter layer then painted over it at ``clutter_level``),
   then Gaussian pixel noise, clipped to ``[0, 1]``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

from .fonts import load_font

__all__ = [
    "CaptchaSpec",
    "render",
    "render_coverage",
    "elastic_field",
    "gaussian_smoothing_matrix",
    "remap",
    "seed_from_uniform",
]

FloatOrSeq = Union[float, Sequence[float]]
ARC_SHAPES = ("around", "smile")  #: the values of :attr:`CaptchaSpec.arc_shape`


@dataclasses.dataclass(frozen=True)
class CaptchaSpec:
    """Every latent a CAPTCHA image depends on (lengths in pixels, angles in degrees).

    Per-letter fields (``font``, ``size_scale``, ``x_scale``, ``gap``, ``rotation``, ``dx``, ``dy``,
    ``fuzz``) take one value
    for all letters or a sequence with one value per letter.  Every effect is off by
    default (a field that only tunes one, such as ``wave_period``, matters once it is on),
    so a spec renders only the effects it sets.
    """

    text: str
    height: int = 32
    width: int = 96
    font: Union[str, Sequence[str]] = "DejaVuSans"
    font_size: float = 24.0  #: rounded to an integer pixel size
    size_scale: FloatOrSeq = 1.0  #: per-letter factor on ``font_size`` (the product is rounded)
    kerning: float = 0.0  #: extra space between letters (negative: overlap)
    #: per-letter extra space after each letter, added to ``kerning`` (it moves all that follow; the
    #: last letter's moves nothing)
    gap: FloatOrSeq = 0.0
    rotation: FloatOrSeq = 0.0  #: per-letter rotation, degrees counter-clockwise
    dx: FloatOrSeq = 0.0  #: per-letter horizontal offset
    dy: FloatOrSeq = 0.0  #: per-letter vertical offset (down is positive)
    x_position: float = 0.5  #: where the text block sits in the horizontal free space (0 left, 1 right)
    y_position: float = 0.5  #: ... and in the vertical free space (0 top, 1 bottom)
    stroke: int = 0  #: extra stroke width (bolder letters)
    hollow: bool = False  #: draw letter outlines only
    x_scale: FloatOrSeq = 1.0  #: per-letter horizontal glyph scale (< 1 condensed), advances scale with it; quantised to 0.02
    pitch: Union[float, None] = None  #: if set, the pen advances ``pitch + kerning`` per letter (see ``proportional``)
    pitch_align: float = 0.0  #: with a pitch, where each glyph's advance sits in its cell (0 left, 0.5 centred)
    #: with a pitch, how far each cell follows its glyph: the cell is ``(1 - p) * pitch + p * ink width``
    #: and the glyph moves from its place in a fixed cell towards the cell's start (0: fixed cells;
    #: 1: each glyph's ink box starts where its neighbour's ends, so neighbours touch)
    proportional: float = 0.0
    max_glyph_width: Union[float, None] = None  #: glyphs wider than this (pixels) are condensed to fit it
    x_origin: Union[float, None] = None  #: if set, the pen starts at this x (pixels) instead of using x_position
    #: if set, the baseline's y (pixels) instead of using y_position (with ``centred``, the centre line's)
    baseline: Union[float, None] = None
    #: each glyph's ink box centred on the line (as if hung from its middle) rather than standing on the
    #: baseline: letters of different sizes then share a centre line, not a foot
    centred: bool = False
    #: a text block wider than the image is drawn on a wider canvas and squeezed to fill the image's
    #: width (``x_origin`` and ``x_position`` then change nothing); a block that fits is placed as
    #: without it (and is cut off where offsets push it past an edge)
    squeeze: bool = False
    #: each glyph's corners moved at random (by the seed) by up to this share of its size in x and in y,
    #: its mask remapped to that quadrilateral: a perspective-like bend of each letter of its own
    letter_warp: float = 0.0
    fuzz: FloatOrSeq = 0.0  #: per-letter hairy-edge radius in pixels (a random "spread"); <= 0: crisp
    hair_ink: float = 0.7  #: coverage of the hairs that fuzz grows (1: as dark as the letters)
    # geometric distortion
    shear: float = 0.0  #: horizontal shear, pixels of x per pixel of y from the centre
    wave_amplitude: float = 0.0  #: vertical sinusoidal displacement amplitude
    wave_period: float = 48.0  #: its period along x
    wave_phase: float = 0.0  #: its phase, radians
    elastic_alpha: float = 0.0  #: elastic displacement scale (Simard et al. 2003)
    elastic_sigma: float = 4.0  #: width of the Gaussian smoothing the elastic field
    # clutter (drawn with the ink, or in clutter_level, before the geometric distortion)
    num_lines: int = 0  #: straight strokes crossing the text
    line_width: int = 1
    num_arcs: int = 0  #: elliptic arcs through the text
    arc_width: int = 1
    #: ``"around"``: an arc of an ellipse around the text band, crossing it; ``"smile"``: the lower half
    #: of an ellipse (its ends within 25 degrees of level) whose box starts in the left 30% of the
    #: image, ends past 40% of it, and spans up to half the height, below a top in 10%-70% of it
    arc_shape: str = "around"
    num_ellipses: int = 0  #: ellipse outlines anywhere
    num_dots: int = 0  #: small filled discs anywhere
    dot_radius: float = 1.0
    clutter_ink: float = 1.0  #: coverage of clutter strokes (1 = as dark as the text)
    #: if set, clutter (lines, arcs, ellipses, dots, the curve) is a layer of its own painted over the
    #: text at this intensity (darker or lighter than the ink), instead of more coverage of the ink
    clutter_level: Union[float, None] = None
    # one long polyline: from x = curve_x0 to x = curve_x1 (None: the right edge), random
    # y at both ends, curve_wiggles short random segments first (within curve_wiggle_span
    # pixels of the start, each moving up to 0.4 * height up or down), curve_kinks bends
    # along the long run (up to 0.25 * height off the straight line); anti-aliased, its width
    # going linearly from curve_width at the start to curve_end_width (None: the same)
    curve_width: float = 0.0  #: 0: no curve
    curve_end_width: Union[float, None] = None
    curve_x0: float = 0.0
    curve_x1: Union[float, None] = None
    curve_wiggles: int = 0
    curve_wiggle_span: float = 25.0
    curve_kinks: int = 0
    # photometric
    ink: float = 0.0  #: ink intensity
    background: float = 1.0  #: paper intensity
    gradient: float = 0.0  #: background gradient amplitude (added in [-gradient/2, gradient/2])
    gradient_angle: float = 0.0  #: gradient direction, radians
    blur: float = 0.0  #: Gaussian blur sigma
    noise: float = 0.0  #: standard deviation of Gaussian pixel noise

    def __post_init__(self):
        if self.arc_shape not in ARC_SHAPES:
            raise ValueError(f"arc_shape must be one of {', '.join(map(repr, ARC_SHAPES))}, got {self.arc_shape!r}")

    def text_layer(self) -> "CaptchaSpec":
        """The same spec without its clutter (lines, arcs, ellipses, dots, the curve) and pixel noise:
        the text alone, with every distortion of it (fuzz, shear, waves, elastic field, blur) and the
        background.  The seed still drives what belongs to the text: its fuzz and its elastic field."""
        return dataclasses.replace(self, num_lines=0, num_arcs=0, num_ellipses=0, num_dots=0, curve_width=0.0,
                                   noise=0.0, clutter_level=None)


def seed_from_uniform(u: float) -> int:
    """Map a ``Uniform(0, 1)`` value (a model's ``noise_seed`` site) to a renderer seed."""
    return int(min(max(float(u), 0.0), 1.0) * (2**31 - 1))


def _per_letter(value, n: int, name: str) -> list:
    if isinstance(value, (str, int, float, np.floating, np.integer)):
        return [value] * n
    values = list(value)
    if len(values) == 1:
        return values * n
    if len(values) < n:
        raise ValueError(f"{name} has {len(values)} values for {n} letters")
    return values[:n]


# --------------------------------------------------------------------------- glyphs


@functools.lru_cache(maxsize=8192)
def _glyph(font_name: str, size: int, char: str, stroke: int, hollow: bool, x_scale: float = 1.0):
    """(mask image or None, left, top, advance): the glyph's ink mask with its top-left
    corner relative to the pen position on the baseline (scaled by ``x_scale``
    horizontally, about the pen position)."""
    if x_scale != 1.0:
        mask, left, top, advance = _glyph(font_name, size, char, stroke, hollow)
        if mask is None:
            return None, 0, 0, advance * x_scale
        w, h = mask.size
        new_w = max(int(round(w * x_scale)), 1)
        return mask.resize((new_w, h), Image.BILINEAR), left * x_scale, top, advance * x_scale
    font = load_font(font_name, size)
    sw = max(stroke, 1) if hollow else stroke
    advance = font.getlength(char)
    left, top, right, bottom = font.getbbox(char, anchor="ls", stroke_width=sw)
    if right <= left or bottom <= top:
        return None, 0, 0, advance
    mask = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(mask).text(
        (-left, -top), char, font=font, anchor="ls", fill=0 if hollow else 255, stroke_width=sw, stroke_fill=255
    )
    return mask, left, top, advance


@functools.lru_cache(maxsize=4096)
def _rotated_glyph(font_name: str, size: int, char: str, stroke: int, hollow: bool, angle: float,
                   x_scale: float = 1.0):
    """The glyph rotated by ``angle`` degrees about its centre (cached; angles are
    quantised to 0.5 degrees and ``x_scale`` to 0.02 by the caller)."""
    mask, left, top, advance = _glyph(font_name, size, char, stroke, hollow, x_scale)
    if mask is None or angle == 0.0:
        return mask, float(left), float(top), advance
    w, h = mask.size
    rot = mask.rotate(angle, resample=Image.BILINEAR, expand=True)
    rw, rh = rot.size
    return rot, left + (w - rw) / 2.0, top + (h - rh) / 2.0, advance


# --------------------------------------------------------------------------- warps


@functools.lru_cache(maxsize=256)
def gaussian_smoothing_matrix(n: int, sigma: float) -> np.ndarray:
    """``n x n`` row-normalised Gaussian smoothing matrix (``M @ x`` smooths ``x`` along
    its first axis); the identity for ``sigma <= 0``."""
    if sigma <= 0:
        return np.eye(n, dtype=np.float32)
    idx = np.arange(n, dtype=np.float64)
    m = np.exp(-0.5 * ((idx[:, None] - idx[None, :]) / sigma) ** 2)
    m /= m.sum(axis=1, keepdims=True)
    m = m.astype(np.float32)
    m.flags.writeable = False
    return m


def _smooth(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian smoothing of the last two axes (sigma quantised to 0.05 px)."""
    sigma = round(float(sigma) * 20.0) / 20.0
    if sigma <= 0:
        return a
    h, w = a.shape[-2:]
    return gaussian_smoothing_matrix(h, sigma) @ a @ gaussian_smoothing_matrix(w, sigma).T


def elastic_field(shape: tuple[int, int], alpha: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Simard et al. (2003) elastic displacement: array ``(2, H, W)`` of (dx, dy).

    Each component is uniform(-1, 1) per pixel, smoothed by a Gaussian of width
    ``sigma`` (separable, row-normalised) and scaled by ``alpha``.  ``alpha = 0``
    gives the zero field, i.e. the identity warp under :func:`remap`.
    """
    h, w = shape
    raw = rng.uniform(-1.0, 1.0, size=(2, h, w)).astype(np.float32)
    return (float(alpha) * _smooth(raw, sigma)).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _grid(h: int, w: int):
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs, ys


def remap(image: np.ndarray, dx: np.ndarray, dy: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Bilinear backward warp: ``out[y, x] = image[y + dy[y, x], x + dx[y, x]]``, with
    ``fill`` outside the image.  Zero displacement is exactly the identity."""
    h, w = image.shape
    xs, ys = _grid(h, w)
    padded = np.full((h + 2, w + 2), fill, dtype=np.float32)
    padded[1:-1, 1:-1] = image
    sx = np.clip(xs + dx, -1.0, float(w)) + 1.0
    sy = np.clip(ys + dy, -1.0, float(h)) + 1.0
    x0 = np.minimum(np.floor(sx), w).astype(np.intp)
    y0 = np.minimum(np.floor(sy), h).astype(np.intp)
    fx = (sx - x0).astype(np.float32)
    fy = (sy - y0).astype(np.float32)
    flat = padded.ravel()
    i00 = y0 * (w + 2) + x0
    v00 = flat[i00]
    v01 = flat[i00 + 1]
    v10 = flat[i00 + (w + 2)]
    v11 = flat[i00 + (w + 3)]
    top = v00 + fx * (v01 - v00)
    bottom = v10 + fx * (v11 - v10)
    return top + fy * (bottom - top)


# --------------------------------------------------------------------------- render


def _layout(spec: CaptchaSpec):
    """Rotated glyphs with their float top-left positions and fuzz radii, text block
    placed in the image; and the block's box."""
    n = len(spec.text)
    fonts = _per_letter(spec.font, n, "font")
    rotations = _per_letter(spec.rotation, n, "rotation")
    dxs = _per_letter(spec.dx, n, "dx")
    dys = _per_letter(spec.dy, n, "dy")
    fuzzes = _per_letter(spec.fuzz, n, "fuzz")
    gaps = _per_letter(spec.gap, n, "gap")
    sizes = [max(int(round(float(spec.font_size) * float(k))), 1) for k in _per_letter(spec.size_scale, n, "size_scale")]
    x_scales = [max(round(float(k) * 50.0) / 50.0, 0.02) for k in _per_letter(spec.x_scale, n, "x_scale")]
    stroke = int(spec.stroke)
    hollow = bool(spec.hollow)
    kerning = float(spec.kerning)
    pitch = None if spec.pitch is None else float(spec.pitch)
    max_width = None if spec.max_glyph_width is None else max(float(spec.max_glyph_width), 1.0)
    proportional = min(max(float(spec.proportional), 0.0), 1.0)
    placed = []
    pen = 0.0
    x_min = y_min = math.inf
    x_max = y_max = -math.inf
    for i, ch in enumerate(spec.text):
        angle = round(float(rotations[i]) * 2.0) / 2.0
        size, x_scale = sizes[i], x_scales[i]
        mask, left, top, advance = _rotated_glyph(fonts[i], size, ch, stroke, hollow, angle, x_scale)
        if max_width is not None and mask is not None and mask.size[0] > max_width:
            fit = max(math.floor(x_scale * max_width / mask.size[0] * 50.0) / 50.0, 0.02)
            mask, left, top, advance = _rotated_glyph(fonts[i], size, ch, stroke, hollow, angle, fit)
        cell = pitch
        if mask is not None:
            x = pen + left + float(dxs[i])
            if pitch is not None:
                x += float(spec.pitch_align) * (pitch - advance)
                if proportional:
                    ink = mask.getbbox() or (0, 0, mask.size[0], 0)
                    ink_width = ink[2] - ink[0]
                    cell = (1.0 - proportional) * pitch + proportional * ink_width
                    # at 1 the ink box fills its cell from the pen on, so neighbours' ink abuts
                    x += proportional * ((pen - ink[0] + float(dxs[i])) - x)
            y = (-0.5 * mask.size[1] if spec.centred else top) + float(dys[i])
            w, h = mask.size
            placed.append((mask, x, y, max(float(fuzzes[i]), 0.0)))
            x_min, y_min = min(x_min, x), min(y_min, y)
            x_max, y_max = max(x_max, x + w), max(y_max, y + h)
        pen += (advance if pitch is None else cell) + kerning + float(gaps[i])
    if not placed:
        return [], (0.0, 0.0, 0.0, 0.0)
    if spec.x_origin is None:
        shift_x = float(spec.x_position) * (spec.width - (x_max - x_min)) - x_min
    else:
        shift_x = float(spec.x_origin)
    if spec.baseline is None:
        shift_y = float(spec.y_position) * (spec.height - (y_max - y_min)) - y_min
    else:
        shift_y = float(spec.baseline)
    placed = [(m, x + shift_x, y + shift_y, f) for m, x, y, f in placed]
    box = (x_min + shift_x, y_min + shift_y, x_max + shift_x, y_max + shift_y)
    return placed, box


def _draw_clutter(canvas: Image.Image, spec: CaptchaSpec, box, rng: np.random.Generator) -> None:
    h, w = spec.height, spec.width
    fill = int(round(255 * min(max(float(spec.clutter_ink), 0.0), 1.0)))
    draw = ImageDraw.Draw(canvas)
    bx0, by0, bx1, by1 = box
    if bx1 <= bx0:  # no text: use the whole image
        bx0, by0, bx1, by1 = 0.0, 0.0, float(w), float(h)
    by0, by1 = max(by0, 0.0), min(by1, float(h))
    if by1 <= by0:
        by0, by1 = 0.0, float(h)
    for _ in range(int(spec.num_lines)):
        # from the left part of the image to the right part, through the text band
        x0, x1 = rng.uniform(0, 0.25 * w), rng.uniform(0.75 * w, w)
        y0, y1 = rng.uniform(by0, by1, size=2)
        draw.line([(x0, y0), (x1, y1)], fill=fill, width=max(int(spec.line_width), 1))
    for _ in range(int(spec.num_arcs)):
        if spec.arc_shape == "smile":
            x0, x1 = rng.uniform(0, 0.3 * w), rng.uniform(0.4 * w, w)
            y0 = rng.uniform(0.1 * h, 0.7 * h)
            y1 = y0 + rng.uniform(2.0, 0.5 * h)
            draw.arc([x0, y0, x1, y1], rng.uniform(0, 25), rng.uniform(155, 180), fill=fill,
                     width=max(int(spec.arc_width), 1))
            continue
        # an ellipse around the text band, of which an arc crosses the text
        cx = rng.uniform(bx0, bx1)
        cy = rng.uniform(by0, by1) + rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 1.0) * h
        rx = rng.uniform(0.3, 1.0) * w
        ry = abs(cy - 0.5 * (by0 + by1)) + rng.uniform(0, 0.2 * h) + 1.0
        start = rng.uniform(0, 360)
        draw.arc([cx - rx, cy - ry, cx + rx, cy + ry], start, start + rng.uniform(60, 200), fill=fill,
                 width=max(int(spec.arc_width), 1))
    for _ in range(int(spec.num_ellipses)):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(2, 0.3 * w), rng.uniform(2, 0.5 * h)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], outline=fill, width=max(int(spec.line_width), 1))
    n_dots = int(spec.num_dots)
    if n_dots:
        xs, ys = rng.uniform(0, w, n_dots), rng.uniform(0, h, n_dots)
        rs = float(spec.dot_radius) * rng.uniform(0.5, 1.5, n_dots)
        for x, y, r in zip(xs.tolist(), ys.tolist(), rs.tolist()):
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)


def render_coverage(spec: CaptchaSpec, seed: int) -> np.ndarray:
    """Ink coverage (0 paper, 1 ink) after clutter and geometric distortion, before
    blur, background and noise; with ``clutter_level``, the larger of the text's and the clutter's
    coverage (which :func:`render` paints in two intensities).  ``float32``, shape ``(height, width)``."""
    return _coverage(spec, int(seed))


def _rng(seed: int, stream: int) -> np.random.Generator:
    """Independent generator per purpose, so e.g. the elastic field does not change
    when the number of clutter strokes does."""
    return np.random.default_rng([stream, seed])


_CLUTTER, _ELASTIC, _NOISE, _FUZZ, _CURVE, _WARP = 1, 2, 3, 4, 5, 6
_CURVE_SUPERSAMPLE = 4


def _spread(canvas: Image.Image, placed, hair_ink: float, rng: np.random.Generator) -> Image.Image:
    """Hairy edges: around each letter with fuzz radius ``r > 0`` (its box grown by
    ``r``), every pixel also gets the ink of a pixel displaced by up to ``r`` in x and
    in y, at random (like ImageMagick's ``-spread``, kept only where it
    adds ink, so the letter's body stays solid and a halo of grey hairs grows around it)."""
    w, h = canvas.size
    radius = np.zeros((h, w), np.float32)
    for mask, x, y, f in placed:
        if f <= 0:
            continue
        mw, mh = mask.size
        pad = int(math.ceil(f))
        x0, y0 = max(int(math.floor(x)) - pad, 0), max(int(math.floor(y)) - pad, 0)
        x1, y1 = min(int(math.ceil(x + mw)) + pad, w), min(int(math.ceil(y + mh)) + pad, h)
        if x1 > x0 and y1 > y0:
            np.maximum(radius[y0:y1, x0:x1], np.float32(f), out=radius[y0:y1, x0:x1])
    cols = np.flatnonzero(radius.max(axis=0) > 0)
    if len(cols) == 0:
        return canvas
    cov = np.asarray(canvas, dtype=np.float32).copy()
    c0, c1 = int(cols[0]), int(cols[-1]) + 1  # work on the columns the fuzzy letters need
    cw = c1 - c0
    # x displacements correlated along rows and y displacements along columns, so that
    # the copied ink forms short spikes sticking out of the edges rather than dots; a
    # Gaussian of width 1 shrinks white noise's spread by about 0.53, undone here
    raw = rng.standard_normal(size=(2, h, cw), dtype=np.float32) * np.float32(0.7 / 0.53)
    jx = np.clip(raw[0] @ gaussian_smoothing_matrix(cw, 1.0).T, -1.0, 1.0)
    jy = np.clip(gaussian_smoothing_matrix(h, 1.0) @ raw[1], -1.0, 1.0)
    r = radius[:, c0:c1]
    part = cov[:, c0:c1]
    cov[:, c0:c1] = np.maximum(part, np.float32(hair_ink) * remap(part, jx * r, jy * r))
    return Image.fromarray(np.clip(cov + 0.5, 0, 255).astype(np.uint8))


def _curve(spec: CaptchaSpec, box, rng: np.random.Generator) -> np.ndarray:
    """The long polyline's coverage (anti-aliased by drawing at 4x and averaging)."""
    h, w = int(spec.height), int(spec.width)
    s = _CURVE_SUPERSAMPLE
    x0 = float(spec.curve_x0)
    x1 = float(w if spec.curve_x1 is None else spec.curve_x1)
    span = max(float(spec.curve_wiggle_span), 0.0)
    pts = [(x0, rng.uniform(0, h))]
    for _ in range(int(spec.curve_wiggles)):  # short strokes near the start
        y = pts[-1][1] + rng.uniform(-0.4, 0.4) * h
        pts.append((x0 + rng.uniform(0, span), min(max(y, 0.0), float(h))))
    start_long = pts[-1]
    end = (x1, rng.uniform(0, h))
    kinks = int(spec.curve_kinks)
    if kinks:
        ts = np.sort(rng.uniform(0.15, 0.85, kinks))
        for t in ts.tolist():
            kx = start_long[0] + t * (end[0] - start_long[0])
            ky = start_long[1] + t * (end[1] - start_long[1]) + rng.uniform(-0.25, 0.25) * h
            pts.append((kx, min(max(ky, 0.0), float(h))))
    pts.append(end)
    w0 = float(spec.curve_width)
    w1 = w0 if spec.curve_end_width is None else float(spec.curve_end_width)
    xs_lo, xs_hi = min(p[0] for p in pts), max(p[0] for p in pts)

    def width_at(x):
        t = 0.0 if xs_hi <= xs_lo else (x - xs_lo) / (xs_hi - xs_lo)
        return max(w0 + t * (w1 - w0), 0.5) * s

    big = Image.new("L", (w * s, h * s), 0)
    draw = ImageDraw.Draw(big)
    # the long run is cut into pieces so its width can change along it
    pieces = []
    for (ax, ay), (bx, by) in zip(pts[:-1], pts[1:]):
        k = max(int(abs(bx - ax) // 20) + 1, 1)
        for j in range(k):
            t0, t1 = j / k, (j + 1) / k
            pieces.append(((ax + t0 * (bx - ax), ay + t0 * (by - ay)), (ax + t1 * (bx - ax), ay + t1 * (by - ay))))
    for (ax, ay), (bx, by) in pieces:
        width = width_at(0.5 * (ax + bx))
        draw.line([(ax * s, ay * s), (bx * s, by * s)], fill=255, width=max(int(round(width)), 1))
        r = 0.5 * width
        draw.ellipse([bx * s - r, by * s - r, bx * s + r, by * s + r], fill=255)
    small = big.reduce(s)
    return np.asarray(small, dtype=np.float32) * np.float32(1.0 / 255.0)


def _warp_letters(placed, share: float, rng: np.random.Generator):
    """Each placed glyph mask remapped to a random quadrilateral: the mask, padded by ``share`` of its
    larger side, takes its pixels from a quadrilateral whose corners are the padded box's, each moved by
    up to the padding in x and in y (so a letter leans, tapers and stretches on its own)."""
    out = []
    for mask, x, y, f in placed:
        w, h = mask.size
        pad = max(int(math.ceil(share * max(w, h))), 1)
        W, H = w + 2 * pad, h + 2 * pad
        jitter = rng.uniform(-pad, pad, size=8)
        corners = np.array([0, 0, 0, H, W, H, W, 0], dtype=np.float64) - pad + jitter
        padded = Image.new("L", (W, H), 0)
        padded.paste(mask, (pad, pad))
        quad = padded.transform((W, H), Image.QUAD, tuple((corners + pad).tolist()), Image.BILINEAR)
        out.append((quad, x - pad, y - pad, f))
    return out


def _text_canvas(spec: CaptchaSpec, seed: int):
    """The letters' coverage (with their fuzz) as an image-sized canvas, and the text block's box in
    image coordinates; a block wider than the image is squeezed to its width where ``spec.squeeze`` asks."""
    h, w = int(spec.height), int(spec.width)
    placed, box = _layout(spec)
    if spec.letter_warp > 0 and placed:
        placed = _warp_letters(placed, float(spec.letter_warp), _rng(seed, _WARP))
        box = (min(x for _, x, _, _ in placed), min(y for _, _, y, _ in placed),
               max(x + m.size[0] for m, x, _, _ in placed), max(y + m.size[1] for m, _, y, _ in placed))
    squeeze = bool(spec.squeeze) and box[2] - box[0] > w
    margin = 1 + math.ceil(max((f for *_, f in placed), default=0.0))  # room for the hairs of fuzz
    ox = math.floor(box[0]) - margin if squeeze else 0
    cw = int(math.ceil(box[2])) + margin - ox if squeeze else w
    placed = [(m, x - ox, y, f) for m, x, y, f in placed]
    canvas = Image.new("L", (cw, h), 0)
    for mask, x, y, _ in placed:
        canvas.paste(255, (int(round(x)), int(round(y))), mask)
    if any(f > 0 for *_, f in placed):
        canvas = _spread(canvas, placed, min(max(float(spec.hair_ink), 0.0), 1.0), _rng(seed, _FUZZ))
    if squeeze:
        canvas = canvas.resize((w, h), Image.BILINEAR)
        box = ((box[0] - ox) * w / cw, box[1], (box[2] - ox) * w / cw, box[3])
    return canvas, box


def _warp(spec: CaptchaSpec, seed: int):
    """``(dx, dy)`` of the one remap combining shear, wave and elastic field, or None for none."""
    h, w = int(spec.height), int(spec.width)
    field = None
    if spec.elastic_alpha:
        field = elastic_field((h, w), spec.elastic_alpha, spec.elastic_sigma, _rng(seed, _ELASTIC))
    if not (spec.shear or spec.wave_amplitude or field is not None):
        return None
    xs, ys = _grid(h, w)
    dx = np.zeros((h, w), np.float32) if field is None else field[0]
    dy = np.zeros((h, w), np.float32) if field is None else field[1]
    if spec.shear:
        dx = dx + np.float32(spec.shear) * (ys - np.float32((h - 1) / 2.0))
    if spec.wave_amplitude:
        period = max(float(spec.wave_period), 1.0)
        wave = float(spec.wave_amplitude) * np.sin(2.0 * np.pi * xs[0] / period + float(spec.wave_phase))
        dy = dy + wave.astype(np.float32)[None, :]
    return dx, dy


def _layers(spec: CaptchaSpec, seed: int):
    """``(text, clutter)`` coverages after the geometric distortion; ``clutter`` is None unless
    ``spec.clutter_level`` makes it a layer of its own (else the clutter is in ``text``)."""
    canvas, box = _text_canvas(spec, seed)
    separate = spec.clutter_level is not None
    layer = Image.new("L", canvas.size, 0) if separate else canvas
    if spec.num_lines or spec.num_arcs or spec.num_ellipses or spec.num_dots:
        _draw_clutter(layer, spec, box, _rng(seed, _CLUTTER))
    cov = np.asarray(canvas, dtype=np.float32) * np.float32(1.0 / 255.0)
    clutter = np.asarray(layer, dtype=np.float32) * np.float32(1.0 / 255.0) if separate else None
    if spec.curve_width > 0:
        curve = _curve(spec, box, _rng(seed, _CURVE))
        if separate:
            clutter = np.maximum(clutter, curve)
        else:
            cov = np.maximum(cov, curve)
    warp = _warp(spec, seed)
    if warp is not None:
        cov = remap(cov, *warp)
        clutter = None if clutter is None else remap(clutter, *warp)
    return cov, clutter


def _coverage(spec: CaptchaSpec, seed: int) -> np.ndarray:
    cov, clutter = _layers(spec, seed)
    return cov if clutter is None else np.maximum(cov, clutter)


def render(spec: CaptchaSpec, seed: int) -> np.ndarray:
    """Render ``spec``: ``float32`` array ``(height, width)`` in ``[0, 1]``, 1 = paper.

    Deterministic given ``spec`` and ``seed``; ``seed`` drives only clutter
    positions, the elastic field's random values and the pixel noise.
    """
    seed = int(seed)
    cov, clutter = _layers(spec, seed)
    h, w = cov.shape
    if spec.blur > 0:
        cov = _smooth(cov, spec.blur)
        clutter = None if clutter is None else _smooth(clutter, spec.blur)
    bg = float(spec.background)
    if spec.gradient:
        xs, ys = _grid(h, w)
        a = float(spec.gradient_angle)
        ramp = math.cos(a) * (xs / max(w - 1, 1) - 0.5) + math.sin(a) * (ys / max(h - 1, 1) - 0.5)
        bg = bg + float(spec.gradient) * ramp
    img = bg + (float(spec.ink) - bg) * cov
    if clutter is not None:
        img = img + (float(spec.clutter_level) - img) * clutter
    if spec.noise > 0:
        img = img + np.float32(spec.noise) * _rng(seed, _NOISE).standard_normal((h, w), dtype=np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32, copy=False)
