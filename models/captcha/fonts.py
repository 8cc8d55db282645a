"""The fonts CAPTCHA styles draw with: the TrueType files matplotlib ships.

Nothing is downloaded; every font here lives in ``matplotlib.get_data_path()/fonts/ttf``.
:data:`FONTS` is a stable, ordered ``name -> file name`` table (styles refer to fonts
by name, and a style's ``font`` latent indexes its own tuple of names, so neither
order nor names may change once models are trained).
"""

from __future__ import annotations

import functools
import os

from PIL import ImageFont

__all__ = ["FONTS", "font_dir", "font_names", "font_path", "load_font"]

#: name -> file name inside matplotlib's ``fonts/ttf`` directory.  Order is stable.
FONTS: dict[str, str] = {
    "DejaVuSans": "DejaVuSans.ttf",
    "DejaVuSans-Bold": "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique": "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique": "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono": "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold": "DejaVuSansMono-Bold.ttf",
    "DejaVuSerif": "DejaVuSerif.ttf",
    "DejaVuSerif-Bold": "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic": "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic": "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral": "STIXGeneral.ttf",
    "STIXGeneralBol": "STIXGeneralBol.ttf",
    "STIXGeneralItalic": "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta": "STIXGeneralBolIta.ttf",
    "cmr10": "cmr10.ttf",
    "cmss10": "cmss10.ttf",
    "cmtt10": "cmtt10.ttf",
    "cmb10": "cmb10.ttf",
    "cmti10": "cmti10.ttf",
}


@functools.lru_cache(maxsize=1)
def font_dir() -> str:
    """matplotlib's bundled TrueType directory."""
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


def font_names() -> tuple[str, ...]:
    """All known font names, in :data:`FONTS` order."""
    return tuple(FONTS)


def font_path(name: str) -> str:
    """Absolute path of font ``name``; ``ValueError`` for an unknown name,
    ``FileNotFoundError`` if this matplotlib lacks the file."""
    try:
        filename = FONTS[name]
    except KeyError:
        raise ValueError(f"unknown font {name!r}; known fonts: {', '.join(FONTS)}") from None
    path = os.path.join(font_dir(), filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"font {name!r} should be at {path}, but the file is missing "
            "(it ships with matplotlib; is matplotlib installed completely?)"
        )
    return path


@functools.lru_cache(maxsize=1024)
def load_font(name: str, size: int) -> ImageFont.FreeTypeFont:
    """``ImageFont.truetype`` for font ``name`` at integer pixel ``size``, cached by (name, size)."""
    size = int(size)
    if size < 1:
        raise ValueError(f"font size must be a positive integer, got {size}")
    return ImageFont.truetype(font_path(name), size)
