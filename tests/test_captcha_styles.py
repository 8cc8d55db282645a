"""The CAPTCHA styles as Pyro models (infcomp_models.captcha)."""

import pyro
import pytest
import torch
from pyro import poutine

import infcomp_models.captcha as captcha
from infcomp_models.captcha import STYLES, get_style, latent_values
from infcomp_models.captcha.render import CaptchaSpec, render

PAPER_STYLES = ["baidu2011", "baidu2013", "ebay", "yahoo", "recaptcha", "wikipedia", "facebook"]
#: styles modelled on real schemes (../shared/data/real-captchas), after the paper's seven
REAL_SCHEME_STYLES = {
    # name: (alphabet, (min_letters, max_letters), (height, width))
    "captcha_images_v2": ("2345678bcdefgmnpwxy", (5, 5), (50, 200)),
    "really_simple_captcha": ("23456789ABCDEFGHJKLMNPQRSTUVWXYZ", (4, 4), (24, 72)),
    "colour_arcs": ("23456789ABCDEFGHJKLMNPQRSTUVWXYZ", (4, 6), (60, 160)),
}
ALL_STYLES = PAPER_STYLES + list(REAL_SCHEME_STYLES)


def _trace(style, seed, **kwargs):
    pyro.set_rng_seed(seed)
    return poutine.trace(style.model).get_trace(**kwargs)


def test_registry():
    assert list(STYLES) == ALL_STYLES
    for name, style in STYLES.items():
        assert style.name == name
        assert get_style(name) is style


def test_unknown_style_is_a_clear_error():
    with pytest.raises(ValueError) as err:
        get_style("altavista")
    msg = str(err.value)
    assert "altavista" in msg
    for name in ALL_STYLES:
        assert name in msg


@pytest.mark.parametrize("name", PAPER_STYLES)
def test_style_declares_sane_sizes(name):
    style = STYLES[name]
    assert 32 <= style.height <= 50 and 96 <= style.width <= 200
    assert 1 <= style.min_letters <= style.max_letters
    assert len(set(style.alphabet)) == len(style.alphabet) > 1
    assert 0.05 <= style.bandwidth <= 0.3 and style.kernel in ("pixel", "projection")
    assert len(style.addresses(style.max_letters)) < 32


@pytest.mark.parametrize("name", list(REAL_SCHEME_STYLES))
def test_real_scheme_style_matches_its_scheme(name):
    style = STYLES[name]
    alphabet, letters, shape = REAL_SCHEME_STYLES[name]
    assert style.alphabet == alphabet
    assert (style.min_letters, style.max_letters) == letters
    assert style.shape == shape
    assert 0.05 <= style.bandwidth <= 0.3 and style.kernel == "pixel"
    assert len(style.addresses(letters[1])) <= 48  # every site is an LSTM step: keep the model lean


def _font_sites(style, n):
    return [f"font_{i}" for i in range(n)] if style.font_per_letter else ["font"]


def test_per_letter_fonts():
    style = STYLES["really_simple_captcha"]
    assert style.font_per_letter
    fonts = set()
    for seed in range(20):
        trace = _trace(style, seed)
        values = latent_values(trace)
        assert "font" not in values
        spec = style.spec(values)
        assert spec.font == tuple(style.fonts[int(values[f"font_{i}"])] for i in range(4))
        fonts.update(spec.font)
    assert len(fonts) > 1


@pytest.mark.parametrize("name", ALL_STYLES)
def test_addresses_image_and_reading(name):
    style = STYLES[name]
    seen_lengths = set()
    for seed in range(8):
        trace = _trace(style, seed)
        sites = [n for n, node in trace.nodes.items() if node["type"] == "sample"]
        values = latent_values(trace)
        text = style.reading(values)
        n = len(text)
        seen_lengths.add(n)
        assert style.min_letters <= n <= style.max_letters
        assert set(text) <= set(style.alphabet)
        # declared addresses, in order
        assert sites == style.addresses(n)
        head = ["num_letters"] if style.max_letters > style.min_letters else []
        head += [f"letter_{i}" for i in range(n)] + _font_sites(style, n) + ["font_size", "kerning"]
        assert sites[: len(head)] == head
        assert sites[-2:] == ["noise_seed", "image"]
        assert all(torch.is_tensor(v) for v in values.values())
        if "num_letters" in values:
            assert n == style.min_letters + int(values["num_letters"])
        # the image
        image = trace.nodes["image"]["value"]
        assert image.shape == (style.height, style.width) and image.dtype == torch.float32
        rendered = trace.nodes["image"]["fn"].mean
        assert rendered.min() >= 0 and rendered.max() <= 1
        text_only = torch.from_numpy(style.with_text_only().render_values(values))
        assert (text_only < text_only.max() - 0.05).sum() > 10  # there is text (some styles' ink is mid-grey)
        assert torch.equal(rendered, torch.from_numpy(style.render_values(values)))
    if style.max_letters > style.min_letters:
        assert len(seen_lengths) > 1


@pytest.mark.parametrize("name", ALL_STYLES)
def test_deterministic_under_pyro_seed(name):
    style = STYLES[name]
    a_img, a_text = style.sample(11)
    b_img, b_text = style.sample(11)
    c_img, c_text = style.sample(12)
    assert a_text == b_text and torch.equal(a_img, b_img)
    assert a_img.shape == (style.height, style.width)
    assert not torch.equal(a_img, c_img)
    clean, text = style.sample(11, noiseless=True)
    assert text == a_text and clean.min() >= 0 and clean.max() <= 1


@pytest.mark.parametrize("name", ALL_STYLES)
def test_observed_image_scores(name):
    style = STYLES[name]
    image, _ = style.sample(3)
    trace = _trace(style, 3, image=image)
    node = trace.nodes["image"]
    assert node["is_observed"] and torch.equal(node["value"], image)
    trace.compute_log_prob()
    assert torch.isfinite(trace.log_prob_sum())
    # the same latents score the image better than other latents do
    values = {k: v for k, v in latent_values(trace).items()}
    good = poutine.trace(poutine.condition(style.model, data=values)).get_trace(image=image)
    other = _trace(style, 4, image=image)
    good_lp = good.nodes["image"]["fn"].log_prob(image)
    other_lp = other.nodes["image"]["fn"].log_prob(image)
    assert good_lp > other_lp


@pytest.mark.parametrize("name", ALL_STYLES)
def test_every_font_draws_every_character(name):
    style = STYLES[name]
    for font in style.fonts:
        for ch in style.alphabet:
            img = render(CaptchaSpec(ch, height=style.height, width=style.width, font=font, font_size=20), 0)
            assert (img < 0.5).sum() >= 3, (font, ch)


def test_every_style_in_the_gallery(tmp_path):
    images, titles = [], []
    for name in ALL_STYLES:
        image, text = STYLES[name].sample(0, noiseless=True)
        images.append(image)
        titles.append(f"{name}: {text}")
    captcha.save_gallery(images, titles, str(tmp_path / "styles.png"), ncols=3)
    assert (tmp_path / "styles.png").stat().st_size > 1000
