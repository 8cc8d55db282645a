"""Really Simple CAPTCHA (the WordPress plugin): four capitals and digits in a small
serif face, each letter in its own variant of the family (regular, bold, italic or
bold italic), set at a fixed pitch with its own small vertical offset and rotation,
black on white, no clutter.

Modelled by looking at real images (72 x 24): letters sit in four even slots 15 px
apart (column ink profiles dip at x = 19, 34, 49), the first starting 3-10 px from
the left; capitals are about 12 px tall (digits a little less); baselines vary
per letter by a few pixels; letters lean by up to ~10 degrees; no noise or lines.
The plugin draws with Gentium Basic, which is not installed here.  The prior covers it
with eleven serif faces rather than the closest one: the four STIX General variants (a
Times-like serif), the four DejaVu Serif ones and Computer Modern roman, bold and italic.
Gentium's curly italic "2" is drawn by no STIX face (Computer Modern italic's "2" is close
to it), and Gentium is narrower than every installed serif (its "G" and "S" otherwise read
as "6" and "5"), so the glyphs are also condensed, by 0.75 to 1.05.
"""

from .style import CaptchaStyle, Latent

STYLE = CaptchaStyle(
    name="really_simple_captcha",
    description=__doc__,
    alphabet="23456789ABCDEFGHJKLMNPQRSTUVWXYZ",
    min_letters=4,
    max_letters=4,
    height=24,
    width=72,
    fonts=(
        "STIXGeneral", "STIXGeneralBol", "STIXGeneralItalic", "STIXGeneralBolIta",
        "DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic", "DejaVuSerif-BoldItalic",
        "cmr10", "cmb10", "cmti10",
    ),
    font_per_letter=True,
    font_size=(16.5, 20.0),
    kerning=(-1.0, 1.0),  # added to the 15 px pitch
    latents=(
        Latent("x_origin", 3.0, 9.0),
        Latent("baseline", 17.0, 20.0),
        Latent("rotation", -15.0, 15.0, per_letter=True),
        Latent("dy", -3.0, 3.0, per_letter=True),
        Latent("blur", 0.0, 0.45),
        # last in the trace, so that the letters keep their place (a breaker saved without it resumes)
        Latent("x_scale", 0.75, 1.05),
    ),
    fixed=dict(pitch=15.0, ink=0.0, background=1.0, noise=0.0),
    bandwidth=0.15,
)
