"""colour_arcs (a scheme met in the wild, its generator unnamed): four to six capitals and
digits from ``23456789ABCDEFGHJKLMNPQRSTUVWXYZ`` in a plain sans serif, each letter its own
size and tilt, one colour for the text on a pale tinted background, a thin arc through the
text and a scatter of small dots, in a second colour.

Modelled by looking at real images (160 x 60, RGB): the text of an image has one colour
(mid to dark: its luminance 0.39 to 0.72 across the images), the background another, pale and
barely tinted (luminance 0.91 to 0.99); the arc and the dots share a colour that may be
darker or lighter than the text.  The colour itself says nothing about the letters, so the
observation is the image's luminance, as for every style (:data:`~infcomp_models.captcha.breaker.IMAGE_RULE`):
the three levels (background, text, clutter) are latents, and a colour model would only make
the guide learn that hue is a nuisance.  The text's contrast over the background is as low as
0.24, so the ABC kernel is narrower than the other styles'.

Letters are drawn in a sans face with thick strokes (Droid-like; Noto Sans descends from Droid
Sans, the DejaVu faces are near it): one face per image, with an extra stroke of 0 to 2 px.
Each letter has its own size (the tallest fill the height, the smallest about 0.6 of them),
leans by up to about 30 degrees and is centred on the line rather than standing on a
baseline (small letters float mid-height), with its own vertical offset.  The gaps between
letters vary within an image from an overlap of half a letter to a letter's width; the text fills most of the
width, and a block wider than the image is squeezed to it.  Each letter is bent on its own
(it leans, tapers and stretches as if its corners had been pulled: the four corners of its box
moved at random by up to 30% of its size), and all a little more (straight stems come out
wavy: a mild elastic field).  The arc is the lower part of a wide,
flat ellipse (a smile), one or two pixels wide: drawn 2 px wide, then softened; it starts in the
left third of the image and ends anywhere past 40% of its width.  The dots (1 to 3 px) number
some tens; everything is slightly soft.  The gap after the last letter is drawn and moves
nothing (one site a trace, kept so that every letter has the same latents).
"""

from .style import CaptchaStyle, Latent

STYLE = CaptchaStyle(
    name="colour_arcs",
    description=__doc__,
    alphabet="23456789ABCDEFGHJKLMNPQRSTUVWXYZ",
    min_letters=4,
    max_letters=6,
    height=60,
    width=160,
    fonts=("NotoSans-Bold", "DejaVuSans", "DejaVuSans-Bold", "DejaVuSansMono", "DejaVuSansMono-Bold", "Ubuntu"),
    font_size=(48.0, 70.0),
    kerning=(-4.0, 4.0),
    latents=(
        Latent("size_scale", 0.7, 1.15, per_letter=True),
        Latent("rotation", -30.0, 30.0, per_letter=True),
        Latent("dy", -7.0, 7.0, per_letter=True),
        Latent("gap", -12.0, 20.0, per_letter=True),
        Latent("x_scale", 0.5, 0.95),
        Latent("stroke", choices=(0, 1, 2)),
        Latent("x_position", 0.0, 1.0),
        Latent("y_position", 0.15, 0.85),
        Latent("ink", 0.3, 0.8),
        Latent("background", 0.88, 1.0),
        Latent("clutter_level", 0.2, 0.85),
        Latent("num_dots", choices=(15, 30, 45)),
        Latent("blur", 0.0, 0.8),
        Latent("elastic_alpha", 0.0, 60.0),
        Latent("letter_warp", 0.0, 0.3),
    ),
    fixed=dict(
        centred=True,
        squeeze=True,
        num_arcs=1,
        arc_shape="smile",
        arc_width=2,
        dot_radius=1.0,
        elastic_sigma=7.0,
        noise=0.0,
    ),
    bandwidth=0.08,
)
