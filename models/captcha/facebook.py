"""Facebook: five to eight mixed-case letters, sheared and waved as a block, with
arcs and a line crossing the text."""

import math

from .style import CaptchaStyle, Latent

STYLE = CaptchaStyle(
    name="facebook",
    description=__doc__,
    alphabet="ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz",
    min_letters=5,
    max_letters=8,
    height=40,
    width=160,
    fonts=("DejaVuSans", "DejaVuSans-Bold", "DejaVuSerif", "DejaVuSerif-Bold", "STIXGeneral", "cmr10"),
    font_size=(22.0, 30.0),
    kerning=(-3.0, 1.0),
    latents=(
        Latent("rotation", -10.0, 10.0),
        Latent("x_position", 0.1, 0.9),
        Latent("y_position", 0.2, 0.8),
        Latent("shear", -0.5, 0.5),
        Latent("wave_amplitude", 0.0, 4.0),
        Latent("wave_period", 60.0, 200.0),
        Latent("wave_phase", 0.0, 2.0 * math.pi),
        Latent("num_lines", choices=(0, 1, 2)),
        Latent("num_arcs", choices=(0, 1, 2)),
        Latent("line_width", choices=(1, 2)),
    ),
    fixed=dict(arc_width=1, noise=0.02, blur=0.3),
    bandwidth=0.15,
)
