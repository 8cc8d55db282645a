"""Baidu (2013): four lower-case letters and digits, heavy overlapping strokes on a
sinusoidal wave with elastic wobble and occasional hollow (outlined) letters."""

import math

from infcomp import CNNConfig

from .style import CaptchaStyle, Latent

STYLE = CaptchaStyle(
    name="baidu2013",
    description=__doc__,
    alphabet="abcdefghjkmnpqrstuvwxyz23456789",
    min_letters=4,
    max_letters=4,
    height=32,
    width=100,
    fonts=("DejaVuSans", "DejaVuSans-Bold", "DejaVuSerif", "DejaVuSerif-Bold", "STIXGeneral", "cmss10"),
    font_size=(22.0, 30.0),
    kerning=(-7.0, -1.0),
    latents=(
        Latent("rotation", -20.0, 20.0, per_letter=True),
        Latent("x_position", 0.2, 0.8),
        Latent("y_position", 0.2, 0.8),
        Latent("stroke", choices=(0, 1)),
        Latent("hollow", choices=(False, True)),
        Latent("wave_amplitude", 0.0, 4.0),
        Latent("wave_period", 25.0, 80.0),
        Latent("wave_phase", 0.0, 2.0 * math.pi),
        Latent("elastic_alpha", 0.0, 20.0),
    ),
    fixed=dict(elastic_sigma=3.0, noise=0.02, blur=0.3),
    bandwidth=0.15,
    # four letters overlapping by up to 7 px: attention reads a column per 4 px
    encoder=CNNConfig(column_pixels=4),
)
