"""Yahoo: five to eight mixed-case letters and digits, often hollow (outlined),
crowded and strongly waved, with elastic wobble."""

import math

from .style import CaptchaStyle, Latent

STYLE = CaptchaStyle(
    name="yahoo",
    description=__doc__,
    alphabet="ABCDEFGHJKLMNPRSTUVWXYZabcdefghjkmnprstuvwxyz2345678",
    min_letters=5,
    max_letters=8,
    height=40,
    width=150,
    fonts=("DejaVuSans-Bold", "DejaVuSerif-Bold", "STIXGeneralBol", "DejaVuSans", "cmss10"),
    font_size=(22.0, 30.0),
    kerning=(-5.0, 0.0),
    latents=(
        Latent("rotation", -15.0, 15.0),
        Latent("x_position", 0.1, 0.9),
        Latent("y_position", 0.2, 0.8),
        Latent("hollow", choices=(False, True)),
        Latent("shear", -0.3, 0.3),
        Latent("wave_amplitude", 0.0, 5.0),
        Latent("wave_period", 40.0, 120.0),
        Latent("wave_phase", 0.0, 2.0 * math.pi),
        Latent("elastic_alpha", 0.0, 25.0),
    ),
    fixed=dict(elastic_sigma=4.0, noise=0.02, blur=0.3),
    bandwidth=0.15,
)
