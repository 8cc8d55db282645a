"""Text-CAPTCHA generative models (after Le, Baydin, Zinkov & Wood 2017).

Each style is a :class:`~infcomp_models.captcha.style.CaptchaStyle` whose
``model(image=None)`` is a Pyro model; :data:`STYLES` maps names to styles: the
paper's seven in its order, then styles modelled on real schemes.
"""

from __future__ import annotations

from . import baidu2011, baidu2013, ebay, facebook, recaptcha, wikipedia, yahoo
from . import captcha_images_v2, colour_arcs, really_simple_captcha
from .fonts import FONTS, font_names, font_source, load_font
from .gallery import save_gallery
from .render import CaptchaSpec, elastic_field, remap, render, seed_from_uniform
from .style import CaptchaStyle, Latent, latent_values

__all__ = [
    "STYLES",
    "get_style",
    "style_names",
    "CaptchaStyle",
    "Latent",
    "CaptchaSpec",
    "render",
    "remap",
    "elastic_field",
    "seed_from_uniform",
    "latent_values",
    "FONTS",
    "font_names",
    "font_source",
    "load_font",
    "save_gallery",
]

#: name -> style: the paper's seven in its order, then styles modelled on real schemes.
STYLES: dict[str, CaptchaStyle] = {
    m.STYLE.name: m.STYLE
    for m in (
        baidu2011, baidu2013, ebay, yahoo, recaptcha, wikipedia, facebook,
        captcha_images_v2, really_simple_captcha, colour_arcs,
    )
}


def style_names() -> tuple[str, ...]:
    return tuple(STYLES)


def get_style(name: str) -> CaptchaStyle:
    """The style called ``name``; ``ValueError`` listing the valid names otherwise."""
    try:
        return STYLES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown CAPTCHA style {name!r}; valid styles: {', '.join(STYLES)}") from None
