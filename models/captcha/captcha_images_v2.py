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

The typeface is a condensed sans serif that none of the bundled fonts matches
exactly, so the prior is broad around it: three sans faces (Computer Modern Sans,
DejaVu Sans and its bold) with or without an extra 1 px stroke (stems 3.5 to 8 px),
condensed by 0.72 to 1.0, at pitches of 19 to 23.5 px.  A first version with
Computer Modern Sans alone, set by its own advances, read 5% of the real images
(55% of characters): letters crowded where the real ones keep their cells.  The next
one read 75% (94% of characters); its errors were mostly "n" and "m" confused: the real
"m" is squeezed to about the width of an "n", as if each glyph were condensed to fit its
cell, so glyphs wider than a (latent) width of 18 to 28 px are condensed to it.
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
    fonts=("cmss10", "DejaVuSans", "DejaVuSans-Bold"),
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
        # last, so that adding it left every other site's place in the trace unchanged
        Latent("max_glyph_width", 18.0, 28.0),
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
