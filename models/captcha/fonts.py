"""The fonts CAPTCHA styles draw with: TrueType faces that installed Python packages ship.

Nothing is downloaded at run time.  Two packages carry them: matplotlib (its
``fonts/ttf`` folder: DejaVu, STIX and Computer Modern) and pymupdf-fonts (OFL faces stored
compressed inside Python modules: FiraGO, Noto Sans, Ubuntu and three monospaced faces).
:data:`FONTS` is a stable, ordered ``name -> source`` table (styles refer to fonts by name, and
a style's ``font`` latent indexes its own tuple of names, so neither order nor names may change
once models are trained).  A source is a file name in matplotlib's folder, or
``pymupdf_fonts:KEY`` for the font that package's ``fontbuffers[KEY]`` loads.
"""

from __future__ import annotations

import functools
import io
import os

from PIL import ImageFont

__all__ = ["FONTS", "font_dir", "font_names", "font_source", "load_font"]

PACKAGE_PREFIX = "pymupdf_fonts:"

#: name -> source (see the module docstring).  Order is stable: add new fonts at the end.
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
    "FiraGO-Bold": PACKAGE_PREFIX + "figbo",
    "NotoSans-Bold": PACKAGE_PREFIX + "notosbo",
    "Ubuntu-Bold": PACKAGE_PREFIX + "ubuntubo",
    "Ubuntu": PACKAGE_PREFIX + "ubuntu",
    "FiraMono-Bold": PACKAGE_PREFIX + "fimbo",
    "SpaceMono-Bold": PACKAGE_PREFIX + "spacembo",
}


@functools.lru_cache(maxsize=1)
def font_dir() -> str:
    """matplotlib's bundled TrueType directory."""
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


def font_names() -> tuple[str, ...]:
    """All known font names, in :data:`FONTS` order."""
    return tuple(FONTS)


def font_source(name: str) -> str | bytes:
    """What Pillow opens for font ``name``: the absolute path of a matplotlib font, or the bytes of
    a pymupdf-fonts font.  ``ValueError`` for an unknown name, ``FileNotFoundError`` if the package
    that ships it is missing or incomplete."""
    try:
        source = FONTS[name]
    except KeyError:
        raise ValueError(f"unknown font {name!r}; known fonts: {', '.join(FONTS)}") from None
    if source.startswith(PACKAGE_PREFIX):
        return _package_font(name, source[len(PACKAGE_PREFIX):])
    path = os.path.join(font_dir(), source)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"font {name!r} should be at {path}, but the file is missing "
            "(it ships with matplotlib; is matplotlib installed completely?)"
        )
    return path


@functools.lru_cache(maxsize=None)
def _package_font(name: str, key: str) -> bytes:
    try:
        import pymupdf_fonts
    except ImportError:
        raise FileNotFoundError(
            f"font {name!r} ships with the package pymupdf-fonts, which is not installed "
            "(pip install pymupdf-fonts; it is one of infcomp's dependencies)"
        ) from None
    try:
        return bytes(pymupdf_fonts.fontbuffers[key]())
    except KeyError:
        raise FileNotFoundError(f"font {name!r}: this pymupdf-fonts has no font {key!r}") from None


@functools.lru_cache(maxsize=1024)
def load_font(name: str, size: int) -> ImageFont.FreeTypeFont:
    """``ImageFont.truetype`` for font ``name`` at integer pixel ``size``, cached by (name, size)."""
    size = int(size)
    if size < 1:
        raise ValueError(f"font size must be a positive integer, got {size}")
    source = font_source(name)
    return ImageFont.truetype(io.BytesIO(source) if isinstance(source, bytes) else source, size)
