"""Baidu (2011): four upper-case letters and digits, bold, strongly rotated and
crowded together, with a thin curve or two through the text."""

from .style import CaptchaStyle, Latent

STYLE = CaptchaStyle(
    name="baidu2011",
    description=__doc__,
    alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ23456789",
    min_letters=4,
    max_letters=4,
    height=32,
    width=96,
    fonts=("DejaVuSans-Bold", "DejaVuSerif-Bold", "DejaVuSansMono-Bold", "STIXGeneralBol", "cmb10"),
    font_size=(20.0, 28.0),
    kerning=(-5.0, 1.0),
    latents=(
        Latent("rotation", -35.0, 35.0, per_letter=True),
        Latent("dy", -3.0, 3.0, per_letter=True),
        Latent("x_position", 0.2, 0.8),
        Latent("y_position", 0.2, 0.8),
        Latent("num_arcs", choices=(0, 1, 2)),
        Latent("elastic_alpha", 0.0, 12.0),
        Latent("blur", 0.0, 0.8),
    ),
    fixed=dict(arc_width=1, elastic_sigma=3.0, noise=0.02),
    bandwidth=0.15,
)
