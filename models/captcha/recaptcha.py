"""reCAPTCHA (old, scanned-word era): five to eight lower-case letters in a serif
face, strongly warped (wave and elastic), blurred, often struck through by a line."""

import math

from .style import CaptchaStyle, Latent

STYLE = CaptchaStyle(
    name="recaptcha",
    description=__doc__,
    alphabet="abcdefghijklmnopqrstuvwxyz",
    min_letters=5,
    max_letters=8,
    height=40,
    width=160,
    fonts=("DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic", "STIXGeneral", "STIXGeneralItalic", "cmr10"),
    font_size=(24.0, 34.0),
    kerning=(-3.0, 1.0),
    latents=(
        Latent("rotation", -12.0, 12.0),
        Latent("x_position", 0.1, 0.9),
        Latent("y_position", 0.2, 0.8),
        Latent("shear", -0.3, 0.3),
        Latent("wave_amplitude", 0.0, 5.0),
        Latent("wave_period", 50.0, 160.0),
        Latent("wave_phase", 0.0, 2.0 * math.pi),
        Latent("elastic_alpha", 0.0, 40.0),
        Latent("elastic_sigma", 3.0, 6.0),
        Latent("num_lines", choices=(0, 1)),
        Latent("line_width", choices=(1, 2, 3)),
        Latent("blur", 0.0, 1.0),
    ),
    fixed=dict(noise=0.02),
    bandwidth=0.15,
)
