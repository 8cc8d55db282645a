"""The CAPTCHA renderer (infcomp_models.captcha.render / fonts / gallery)."""

import dataclasses
import sys

import numpy as np
import pytest

import infcomp_models.captcha as captcha
from infcomp_models.captcha import fonts
from infcomp_models.captcha.render import CaptchaSpec, elastic_field, remap, render, render_coverage

CLEAN = CaptchaSpec("Ab3x", height=32, width=96, font="DejaVuSans", font_size=20)
BUSY = CaptchaSpec(
    "Kq7Zw",
    height=32,
    width=96,
    font=("DejaVuSerif", "DejaVuSans-Bold", "STIXGeneral", "cmr10", "DejaVuSansMono"),
    font_size=22,
    kerning=-2.0,
    rotation=(10.0, -20.0, 5.0, 0.0, 30.0),
    dy=(1.0, -1.0, 2.0, 0.0, -2.0),
    shear=0.2,
    wave_amplitude=2.0,
    wave_period=40.0,
    wave_phase=1.0,
    elastic_alpha=15.0,
    elastic_sigma=3.0,
    num_lines=2,
    num_arcs=1,
    num_ellipses=1,
    num_dots=10,
    blur=0.7,
    gradient=0.3,
    gradient_angle=0.5,
    noise=0.1,
    hollow=True,
)


@pytest.mark.parametrize("spec", [CLEAN, BUSY], ids=["clean", "busy"])
def test_dtype_shape_range(spec):
    img = render(spec, 3)
    assert isinstance(img, np.ndarray)
    assert img.dtype == np.float32
    assert img.shape == (spec.height, spec.width)
    assert np.isfinite(img).all()
    assert img.min() >= 0.0 and img.max() <= 1.0
    assert img.min() < 0.5 < img.max()  # some ink, some paper


@pytest.mark.parametrize("spec", [CLEAN, BUSY], ids=["clean", "busy"])
def test_deterministic_under_seed(spec):
    assert np.array_equal(render(spec, 123), render(spec, 123))


def test_different_seeds_differ():
    assert not np.array_equal(render(BUSY, 1), render(BUSY, 2))


def test_seed_irrelevant_without_nuisance():
    # no clutter, elastic field or noise: the seed has nothing to drive
    assert np.array_equal(render(CLEAN, 1), render(CLEAN, 2))


def test_paper_and_ink_levels():
    img = render(CLEAN, 0)
    assert img.max() == 1.0 and img.min() == 0.0
    grey = render(CaptchaSpec("Ab3x", ink=0.3, background=0.8), 0)
    assert np.isclose(grey.max(), 0.8) and np.isclose(grey.min(), 0.3, atol=1e-3)


def test_text_stays_inside_when_it_fits():
    cov = render_coverage(CaptchaSpec("abc", height=32, width=96, font_size=18), 0)
    assert cov[:, 0].max() == 0 and cov[:, -1].max() == 0
    assert cov[0].max() == 0 and cov[-1].max() == 0
    # x_position moves it
    left = render_coverage(CaptchaSpec("abc", font_size=18, x_position=0.0), 0)
    right = render_coverage(CaptchaSpec("abc", font_size=18, x_position=1.0), 0)
    cols = np.arange(96)
    assert (left.sum(0) * cols).sum() / left.sum() < (right.sum(0) * cols).sum() / right.sum()


def test_elastic_alpha_zero_is_identity():
    rng = np.random.default_rng(0)
    field = elastic_field((32, 96), 0.0, 4.0, rng)
    assert field.shape == (2, 32, 96) and not field.any()
    img = rng.uniform(size=(32, 96)).astype(np.float32)
    assert np.array_equal(remap(img, field[0], field[1]), img)
    # and in the renderer: alpha = 0 renders exactly as no elastic field at all
    with_zero = CaptchaSpec("Ab3x", elastic_alpha=0.0, elastic_sigma=2.0, noise=0.1)
    without = CaptchaSpec("Ab3x", noise=0.1)
    assert np.array_equal(render(with_zero, 5), render(without, 5))


def test_elastic_field_is_smooth_and_scaled():
    f = elastic_field((32, 96), 10.0, 4.0, np.random.default_rng(1))
    g = elastic_field((32, 96), 20.0, 4.0, np.random.default_rng(1))
    assert np.allclose(g, 2 * f, atol=1e-5)
    # smoothing: neighbouring displacements are strongly correlated
    dx = f[0]
    corr = np.corrcoef(dx[:, :-1].ravel(), dx[:, 1:].ravel())[0, 1]
    assert corr > 0.9
    assert np.abs(f).max() > 0.1


def test_remap_integer_shift():
    img = np.zeros((8, 10), np.float32)
    img[3, 4] = 1.0
    out = remap(img, np.full((8, 10), 1.0, np.float32), np.zeros((8, 10), np.float32))
    assert out[3, 3] == 1.0 and out.sum() == 1.0  # sampling from x + 1 moves content left


def test_per_letter_length_checked():
    with pytest.raises(ValueError, match="rotation"):
        render(CaptchaSpec("abcd", rotation=(1.0, 2.0)), 0)


def test_every_font_loads_and_draws():
    assert len(fonts.font_names()) >= 13
    for required in ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSansMono", "DejaVuSansMono-Bold", "DejaVuSerif",
                     "DejaVuSerif-Bold", "DejaVuSerif-Italic", "STIXGeneral", "STIXGeneralBol", "STIXGeneralItalic"):
        assert required in fonts.FONTS
    for name in fonts.font_names():
        font = fonts.load_font(name, 20)
        assert fonts.load_font(name, 20) is font  # cached by (name, size)
        img = render(CaptchaSpec("Ag7", font=name, font_size=20), 0)
        assert (img < 0.5).sum() > 20, name


def test_unknown_font_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown font 'NoSuchFont'"):
        fonts.load_font("NoSuchFont", 12)


def test_missing_font_file_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(fonts.FONTS, "Ghost", "Ghost-does-not-exist.ttf")
    with pytest.raises(FileNotFoundError, match="Ghost"):
        fonts.font_source("Ghost")


def test_font_from_a_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(fonts.FONTS, "GhostBold", fonts.PACKAGE_PREFIX + "ghostbo")
    with pytest.raises(FileNotFoundError, match="'GhostBold'.*no font 'ghostbo'"):
        fonts.font_source("GhostBold")
    monkeypatch.setitem(sys.modules, "pymupdf_fonts", None)  # as if it were not installed
    fonts._package_font.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="'FiraGO-Bold' ships with the package pymupdf-fonts"):
            fonts.font_source("FiraGO-Bold")
    finally:
        fonts._package_font.cache_clear()


def test_gallery_writes_png(tmp_path):
    images = [render(CLEAN, 0), render(BUSY, 1), captcha.STYLES["ebay"].sample(0)[0]]
    titles = ["clean", "busy: p=0.93\nsecond line", "ébay ✓ {weird} $x$"]
    path = captcha.save_gallery(images, titles, str(tmp_path / "sub" / "g.png"), ncols=2)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        captcha.save_gallery(images, ["one"], str(tmp_path / "bad.png"))


# --------------------------------------------------------------------------- newer spec fields


def _ink_runs(img, level=0.5):
    """The image's inked columns, split into runs of adjacent columns (one per separate glyph)."""
    cols = np.where((img < level).any(axis=0))[0]
    return np.split(cols, np.where(np.diff(cols) > 1)[0] + 1)


def _ink_columns(img, level=0.5):
    runs = _ink_runs(img, level)
    return runs[0][0], runs[-1][-1]


def test_new_fields_default_to_the_old_rendering():
    spec = CaptchaSpec("Ab3x", height=32, width=96, font="DejaVuSans", font_size=20, x_scale=1.0, pitch=None,
                       x_origin=None, baseline=None, fuzz=0.0, curve_width=0.0)
    assert np.array_equal(render(spec, 5), render(CLEAN, 5))


def test_x_origin_and_baseline_fix_the_pen():
    base = dict(height=40, width=120, font="DejaVuSans", font_size=20)
    a = render(CaptchaSpec("H", x_origin=10.0, baseline=30.0, **base), 0)
    b = render(CaptchaSpec("H", x_origin=30.0, baseline=25.0, **base), 0)
    (ax0, _), (bx0, _) = _ink_columns(a), _ink_columns(b)
    assert bx0 - ax0 == 20
    a_rows = np.where((a < 0.5).any(axis=1))[0]
    b_rows = np.where((b < 0.5).any(axis=1))[0]
    assert a_rows.max() - b_rows.max() == 5 and a_rows.max() <= 30


def test_pitch_spaces_letters_evenly():
    spec = CaptchaSpec("II", height=30, width=90, font="DejaVuSans", font_size=18, pitch=30.0, x_origin=5.0, baseline=22.0)
    runs = _ink_runs(render(spec, 0))
    assert len(runs) == 2 and runs[1][0] - runs[0][0] == 30


def test_pitch_align_centres_glyphs_in_their_cells():
    base = dict(height=30, width=120, font="DejaVuSans", font_size=18, pitch=30.0, x_origin=5.0, baseline=22.0)
    for text in ("iW", "Wi"):
        left = render(CaptchaSpec(text, **base), 0)
        centred = render(CaptchaSpec(text, pitch_align=0.5, **base), 0)
        runs = _ink_runs(centred)
        centres = [0.5 * (r[0] + r[-1]) for r in runs]
        assert len(runs) == 2 and abs(centres[1] - centres[0] - 30) <= 1.5  # same cell centres, whatever the glyph
        assert not np.array_equal(left, centred)


def test_proportional_cells_follow_the_glyphs_ink():
    base = dict(height=30, width=160, font="DejaVuSans-Bold", font_size=18, pitch=30.0, pitch_align=0.5,
                x_origin=5.0, baseline=22.0)
    # any ink at all (level 0.98): glyphs' ink boxes end in faint anti-aliased columns
    fixed = _ink_runs(render(CaptchaSpec("mim", **base), 0), level=0.98)
    abut = _ink_runs(render(CaptchaSpec("mim", proportional=1.0, **base), 0), level=0.98)
    half = _ink_runs(render(CaptchaSpec("mim", proportional=0.5, **base), 0), level=0.98)
    assert len(fixed) == 3  # fixed 30 px cells leave gaps between the glyphs
    assert len(abut) == 1  # cells as wide as the ink boxes: neighbours touch
    span = [runs[-1][-1] - runs[0][0] for runs in (fixed, half, abut)]
    assert span[0] > span[1] > span[2]
    assert np.array_equal(render(CaptchaSpec("mim", proportional=0.0, **base), 0),
                          render(CaptchaSpec("mim", **base), 0))


def test_max_glyph_width_condenses_only_wide_glyphs():
    base = dict(height=32, width=120, font="DejaVuSans", font_size=24, x_origin=5.0, baseline=26.0)
    for text, squeezed in (("m", True), ("i", False)):
        free = render(CaptchaSpec(text, **base), 0)
        fitted = render(CaptchaSpec(text, max_glyph_width=12.0, **base), 0)
        w0 = np.subtract(*_ink_columns(free)[::-1]) + 1
        w1 = np.subtract(*_ink_columns(fitted)[::-1]) + 1
        if squeezed:
            assert w0 > 16 and w1 <= 12
        else:
            assert np.array_equal(free, fitted)


def test_hair_ink_darkens_the_hairs():
    base = dict(height=40, width=120, font="DejaVuSans-Bold", font_size=24, x_origin=10.0, baseline=30.0, fuzz=3.0)
    grey = render(CaptchaSpec("OX", hair_ink=0.5, **base), 3)
    dark = render(CaptchaSpec("OX", hair_ink=1.0, **base), 3)
    assert np.all(dark <= grey + 1e-6) and (grey - dark).max() > 0.2


def test_x_scale_condenses():
    wide = render(CaptchaSpec("MMM", height=32, width=120, font="DejaVuSans", font_size=20), 0)
    narrow = render(CaptchaSpec("MMM", height=32, width=120, font="DejaVuSans", font_size=20, x_scale=0.6), 0)
    w0, w1 = np.subtract(*_ink_columns(wide)[::-1]), np.subtract(*_ink_columns(narrow)[::-1])
    assert 0.5 * w0 < w1 < 0.7 * w0


def test_fuzz_adds_ink_around_fuzzy_letters_only():
    base = dict(height=40, width=120, font="DejaVuSans-Bold", font_size=24, pitch=50.0, x_origin=10.0, baseline=30.0)
    crisp = render(CaptchaSpec("OO", **base), 3)
    fuzzy = render(CaptchaSpec("OO", fuzz=(0.0, 3.0), **base), 3)
    assert np.all(fuzzy <= crisp + 1e-6)  # only adds ink
    diff = np.where((crisp - fuzzy > 0.05).any(axis=0))[0]
    assert len(diff) > 0 and diff.min() >= 55  # around the second letter only
    assert not np.array_equal(fuzzy, render(CaptchaSpec("OO", fuzz=(0.0, 3.0), **base), 4))


def test_curve_spans_its_endpoints():
    spec = CaptchaSpec("", height=50, width=200, curve_width=2.0, curve_end_width=1.5, curve_x0=18.0, curve_x1=180.0,
                       curve_wiggles=2, curve_kinks=1)
    for seed in range(5):
        x0, x1 = _ink_columns(render(spec, seed), level=0.8)
        assert 16 <= x0 <= 19 and 179 <= x1 <= 182
    assert not np.array_equal(render(spec, 0), render(spec, 1))


def test_text_layer_leaves_out_what_the_seed_places():
    cluttered = CaptchaSpec("8052", num_lines=2, num_arcs=1, num_ellipses=1, num_dots=30, curve_width=2.0,
                            noise=0.05, shear=0.2, wave_amplitude=2.0, blur=0.3, background=0.9)
    text = cluttered.text_layer()
    assert (text.num_lines, text.num_arcs, text.num_ellipses, text.num_dots, text.curve_width, text.noise) == (
        0, 0, 0, 0, 0.0, 0.0)
    assert (text.text, text.shear, text.wave_amplitude, text.blur, text.background) == ("8052", 0.2, 2.0, 0.3, 0.9)
    assert not np.array_equal(render(cluttered, 1), render(text, 1))
    assert np.array_equal(render(text, 1), render(text, 2))  # nothing the seed drives is left
    elastic = CaptchaSpec("8052", num_dots=30, elastic_alpha=10.0).text_layer()
    assert not np.array_equal(render(elastic, 1), render(elastic, 2))  # the elastic field bends the text itself


def test_size_scale_and_x_scale_per_letter():
    base = dict(height=60, width=160, font="DejaVuSans", font_size=30, x_origin=5.0, baseline=50.0, gap=(20.0, 0.0))
    even = _ink_runs(render(CaptchaSpec("HH", **base), 0))
    small = _ink_runs(render(CaptchaSpec("HH", size_scale=(1.0, 0.5), **base), 0))
    narrow = _ink_runs(render(CaptchaSpec("HH", x_scale=(1.0, 0.5), **base), 0))
    width = lambda run: run[-1] - run[0] + 1  # noqa: E731
    assert len(even) == len(small) == len(narrow) == 2
    assert width(small[0]) == width(even[0]) and 0.4 * width(even[1]) <= width(small[1]) <= 0.6 * width(even[1])
    assert width(narrow[0]) == width(even[0]) and 0.4 * width(even[1]) <= width(narrow[1]) <= 0.6 * width(even[1])
    rows = lambda img: np.where((img < 0.5).any(axis=1))[0]  # noqa: E731
    half = render(CaptchaSpec("HH", size_scale=0.5, **base), 0)
    assert 0.4 <= len(rows(half)) / len(rows(render(CaptchaSpec("HH", **base), 0))) <= 0.6  # heights scale too


def test_gap_moves_every_letter_after_it():
    base = dict(height=40, width=200, font="DejaVuSans", font_size=20, x_origin=5.0, baseline=30.0)
    plain = [r[0] for r in _ink_runs(render(CaptchaSpec("III", **base), 0))]
    spaced = [r[0] for r in _ink_runs(render(CaptchaSpec("III", gap=(10.0, 0.0, 0.0), **base), 0))]
    assert spaced[0] == plain[0] and spaced[1] - plain[1] == 10 and spaced[2] - plain[2] == 10
    assert np.array_equal(render(CaptchaSpec("III", gap=0.0, **base), 0), render(CaptchaSpec("III", **base), 0))


def test_centred_letters_share_a_centre_line_not_a_foot():
    base = dict(height=60, width=120, font="DejaVuSans", font_size=40, size_scale=(1.0, 0.5), gap=(15.0, 0.0),
                x_origin=5.0)
    for centred, same_centre in ((True, True), (False, False)):
        img = render(CaptchaSpec("HH", centred=centred, **base), 0)
        runs = _ink_runs(img)
        spans = [np.where((img[:, r[0]:r[-1] + 1] < 0.5).any(axis=1))[0] for r in runs]
        centres = [0.5 * (s[0] + s[-1]) for s in spans]
        feet = [s[-1] for s in spans]
        assert (abs(centres[0] - centres[1]) <= 1.0) == same_centre
        assert (abs(feet[0] - feet[1]) <= 1.0) == (not same_centre)


def test_squeeze_fits_a_wide_block_to_the_image():
    base = dict(height=40, width=100, font="DejaVuSans", font_size=30, gap=8.0)
    cut = render(CaptchaSpec("HHHHH", **base), 0)
    fitted = render(CaptchaSpec("HHHHH", squeeze=True, **base), 0)
    assert len(_ink_runs(fitted)) == 5 and len(_ink_runs(cut)) < 5  # all five letters, none cut at the edges
    x0, x1 = _ink_columns(fitted)
    assert x0 <= 3 and x1 >= 96
    fits = dict(base, width=300)
    assert np.array_equal(render(CaptchaSpec("HHHHH", squeeze=True, **fits), 0), render(CaptchaSpec("HHHHH", **fits), 0))


def test_clutter_level_paints_clutter_in_its_own_intensity():
    base = dict(height=40, width=120, font="DejaVuSans-Bold", font_size=26, ink=0.6, background=1.0, num_dots=40,
                dot_radius=1.5)
    for level in (0.1, 0.9):
        spec = CaptchaSpec("HX", clutter_level=level, **base)
        img, text = render(spec, 3), render(spec.text_layer(), 3)
        changed = np.abs(img - text) > 1e-6
        assert changed.sum() > 40  # the dots
        # where a dot covers its pixel fully, that pixel is the clutter's level, over paper and letters alike
        full = render_coverage(dataclasses.replace(spec, ink=0.0, num_dots=0), 3) < 0.01
        dots_over_paper = changed & full & (np.abs(img - level) < 0.02)
        dots_over_text = changed & (text < 0.61) & (np.abs(img - level) < 0.02)
        assert dots_over_paper.sum() > 10 and dots_over_text.sum() > 0
        assert np.array_equal(img[~changed], text[~changed])
    mixed = render(CaptchaSpec("HX", **base), 3)
    assert mixed.min() >= 0.6 - 1e-6  # without it, clutter is more of the ink


def test_smile_arcs_and_arc_shape_checked():
    spec = CaptchaSpec("", height=60, width=160, num_arcs=1, arc_width=2, arc_shape="smile")
    for seed in range(20):
        img = render(spec, seed)
        x0, x1 = _ink_columns(img)
        assert x0 <= 0.4 * 160 and x1 >= 0.3 * 160 and x1 > x0
        row = lambda x: np.where(img[:, x] < 0.5)[0].mean()  # noqa: E731
        mid = (x0 + x1) // 2
        if x1 - x0 > 30 and (img[:, mid] < 0.5).any():
            assert row(mid) > row(x0) and row(mid) > row(x1)  # the middle hangs below both ends: a smile
    with pytest.raises(ValueError, match="arc_shape"):
        CaptchaSpec("A", arc_shape="circle")


def test_letter_warp_bends_each_letter_by_the_seed():
    base = dict(height=60, width=160, font="DejaVuSans-Bold", font_size=40, gap=20.0, x_origin=10.0, baseline=50.0)
    straight = render(CaptchaSpec("HHH", **base), 0)
    a, b = render(CaptchaSpec("HHH", letter_warp=0.25, **base), 0), render(CaptchaSpec("HHH", letter_warp=0.25, **base), 1)
    assert not np.array_equal(a, straight) and not np.array_equal(a, b)
    assert np.array_equal(a, render(CaptchaSpec("HHH", letter_warp=0.25, **base), 0))
    runs = [_ink_runs(a), _ink_runs(b), _ink_runs(straight)]
    widths = [[r[-1] - r[0] for r in rs] for rs in runs]
    assert all(len(rs) == 3 for rs in runs)
    assert len(set(widths[0])) > 1 and len(set(widths[2])) == 1  # each letter bent its own way
    ink = [(img < 0.5).sum() for img in (a, b, straight)]
    assert 0.5 * ink[2] < ink[0] < 1.5 * ink[2] and 0.5 * ink[2] < ink[1] < 1.5 * ink[2]
