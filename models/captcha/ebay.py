"""eBay: six digits in a bold face, slanted and tightly spaced, on a gently waving
baseline with a speckle of dots and sometimes a line through them."""

import math

from infcomp import CNNConfig

from .style import CaptchaStyle, Latent

STYLE = CaptchaStyle(
    name="ebay",
    description=__doc__,
    alphabet="0123456789",
    min_letters=6,
    max_letters=6,
    height=32,
    width=112,
    fonts=("DejaVuSans-Bold", "DejaVuSans-BoldOblique", "DejaVuSansMono-Bold", "DejaVuSerif-Bold", "STIXGeneralBol"),
    font_size=(18.0, 26.0),
    kerning=(-4.0, 1.0),
    latents=(
        Latent("rotation", -15.0, 15.0, per_letter=True),
        Latent("x_position", 0.2, 0.8),
        Latent("y_position", 0.2, 0.8),
        Latent("shear", -0.4, 0.4),
        Latent("wave_amplitude", 0.0, 2.5),
        Latent("wave_period", 30.0, 100.0),
        Latent("wave_phase", 0.0, 2.0 * math.pi),
        Latent("num_lines", choices=(0, 1, 2)),
        Latent("num_dots", choices=(0, 10, 25, 40)),
    ),
    fixed=dict(line_width=1, dot_radius=0.8, noise=0.02),
    bandwidth=0.15,
    # six digits in as little as 33 px, under one 8-px column each: attention reads a column per 4 px
    encoder=CNNConfig(column_pixels=4),
)
