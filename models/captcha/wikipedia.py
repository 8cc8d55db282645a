"""Wikipedia (FancyCaptcha): two short English-looking words run together, six to
ten lower-case letters in grey ink, gently waved and wobbled on a lightly shaded
background."""

import math

from infcomp import CNNConfig

from .style import CaptchaStyle, Latent

STYLE = CaptchaStyle(
    name="wikipedia",
    description=__doc__,
    alphabet="abcdefghijklmnopqrstuvwxyz",
    min_letters=6,
    max_letters=10,
    height=40,
    width=180,
    fonts=("DejaVuSans", "DejaVuSerif", "DejaVuSans-Oblique", "STIXGeneral", "cmss10", "cmr10"),
    font_size=(20.0, 28.0),
    kerning=(-2.0, 2.0),
    latents=(
        Latent("rotation", -10.0, 10.0),
        Latent("x_position", 0.1, 0.9),
        Latent("y_position", 0.2, 0.8),
        Latent("wave_amplitude", 0.0, 4.0),
        Latent("wave_period", 40.0, 140.0),
        Latent("wave_phase", 0.0, 2.0 * math.pi),
        Latent("elastic_alpha", 0.0, 25.0),
        Latent("ink", 0.0, 0.45),
        Latent("gradient", 0.0, 0.3),
        Latent("gradient_angle", 0.0, 2.0 * math.pi),
    ),
    fixed=dict(elastic_sigma=4.0, background=0.9, noise=0.03, blur=0.4),
    bandwidth=0.15,
    # up to ten letters in 180 px, about two 8-px columns each: attention reads a column per 4 px
    encoder=CNNConfig(column_pixels=4),
)
