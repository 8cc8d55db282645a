"""captcha_images_v2 (the Keras OCR example's data set, Wilhelmy and Rosas 2013): five
characters from ``2345678bcdefgmnpwxy`` in a heavy sans serif, crowded so
that neighbours touch, some letters with hairy (spread) edges, one long black stroke
with a squiggle at its start crossing the text, on a grey left-to-right gradient.

Modelled by looking at real images (200 x 50): the background rises smoothly from
about 0.77 at the left to 0.99 at the right, with no pixel noise; the text block
starts near x = 28 and ends near x = 140 whatever the letters (narrow "ffpxf" spans
as much as wide "m67b3"), so the letters sit centred in cells of a fixed pitch
(about 21 px); caps about 30 px tall on a baseline near y = 41 (descenders reach the
bottom edge); stems about 6 px; the later letters (usually the last three) have hairy
edges, dark or grey, the first ones are crisp; the stroke always runs from x = 18 to
x = 180, about 2 px wide at its right end and thicker (about 3 px) in the squiggle at
its left end.

The typeface is a heavy sans, proportional or monospaced letter by letter, that none of
the bundled fonts matches exactly, so the prior is broad around it: sans faces (Computer
Modern Sans, DejaVu Sans and its bold, DejaVu Sans Mono and its bold), one per letter,
with or without an extra 1 px stroke (stems 3.5 to 8 px), condensed by 0.72 to 1.0, at
pitches of 19 to 23.5 px.  The letters keep their cells rather than their own advances.
The real "m" comes in two kinds: a narrow one with heavy stems and slit counters, as a
monospaced face's "m" (DejaVu Sans Mono Bold's at 40 px matches it closely, while the
real "n" is as wide as DejaVu Sans Bold's), and a wide one (legs 6 px, counters 5 to 7
px, about 30 px in all) in a wider cell (strings with them run long, "mmfm6" to
x = 170).  So each letter picks its own face among the five, glyphs wider than a latent
cell width of 18 to 40 px are condensed to it, and a ``proportional`` latent moves each
cell from the fixed pitch towards the glyph's own ink width (at 1, neighbours touch).  A
mild smooth warp (elastic field, shear) covers the bends the real glyphs show and no face
draws.
"""

from .style import CaptchaStyle, Latent

STYLE = CaptchaStyle(
    name="captcha_images_v2",
    description=__doc__,
    alphabet="2345678bcdefgmnpwxy",
    min_letters=5,
    max_letters=5,
    height=50,
    width=200,
    fonts=("cmss10", "DejaVuSans", "DejaVuSans-Bold", "DejaVuSansMono", "DejaVuSansMono-Bold"),
    font_per_letter=True,
    font_size=(36.0, 46.0),
    kerning=(-1.0, 1.0),
    latents=(
        Latent("pitch", 19.0, 23.5),
        Latent("x_scale", 0.72, 1.0),
        Latent("stroke", choices=(0, 1)),
        Latent("x_origin", 18.0, 38.0),
        Latent("baseline", 37.0, 45.0),
        Latent("dy", -2.0, 2.0, per_letter=True),
        # hairy-edge radius per letter: the renderer treats <= 0 as crisp, so about
        # 23% of letters are crisp and the rest grow a halo of up to 5 px
        Latent("fuzz", -1.5, 5.0, per_letter=True),
        Latent("hair_ink", 0.6, 1.0),
        Latent("curve_width", 1.5, 4.0),
        Latent("curve_end_width", 1.2, 3.0),
        Latent("background", 0.82, 0.92),
        Latent("gradient", 0.1, 0.35),
        # last in the trace, so that every other site keeps its place (a breaker saved without it resumes)
        Latent("max_glyph_width", 18.0, 40.0),
        # a smooth warp: the real glyphs bend (a curved "7", swashes on the "2", legs that
        # lean), which no installed face draws; displacements of standard deviation about
        # 1.2 px mid-range (alpha 50, sigma 8), 3 px at the strong end (alpha 100, sigma 6)
        Latent("elastic_alpha", 0.0, 100.0),
        Latent("elastic_sigma", 6.0, 10.0),
        Latent("shear", -0.1, 0.1),
        # how far each cell follows its glyph's ink width (0: fixed pitch; 1: glyphs abut)
        Latent("proportional", 0.0, 1.0),
    ),
    fixed=dict(
        pitch_align=0.5,
        ink=0.0,
        gradient_angle=0.05,
        curve_x0=18.0,
        curve_x1=180.0,
        curve_wiggles=2,
        curve_wiggle_span=25.0,
        curve_kinks=1,
        noise=0.0,
    ),
    bandwidth=0.15,
)
