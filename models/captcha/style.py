"""A CAPTCHA style: alphabet, sizes, fonts and a prior over distortions, as a Pyro model.

A :class:`CaptchaStyle` declares its latents; :meth:`CaptchaStyle.model` samples them
at these addresses, in this order::

    num_letters            Categorical over min_letters..max_letters (only if they differ)
    letter_0 .. letter_{n-1}  Categorical over the alphabet (value = index)
    font                   Categorical over the style's fonts (font_0 .. font_{n-1}, one
                           per letter, instead, for a style with ``font_per_letter``)
    font_size, kerning     Uniform
    <distortion latents>   the style's Latent list, in order; per-letter latents
                           expand to name_0 .. name_{n-1} where they are declared
    noise_seed             Uniform(0, 1), the renderer's seed (nuisance)
    image                  ABC kernel around the rendering (observed)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch

from infcomp.abc import PixelKernel, RandomProjectionKernel
from infcomp import CNNConfig
from infcomp.rng import fork_rng

from .fonts import font_source
from .render import CaptchaSpec, render, seed_from_uniform

__all__ = ["Latent", "CaptchaStyle", "latent_values"]

_SPEC_FIELDS = {f.name for f in dataclasses.fields(CaptchaSpec)}
_RESERVED = {"num_letters", "font", "font_size", "kerning", "noise_seed", "image"}


def _number(v) -> float:
    return v.item() if torch.is_tensor(v) else float(v)


@dataclasses.dataclass(frozen=True)
class Latent:
    """One distortion latent of a style.

    Continuous: ``Uniform(low, high)``.  Discrete: give ``choices`` and the site is
    ``Categorical`` over them (value = index; the spec gets ``choices[index]``).

    :param name: the site name (``name_i`` per letter if ``per_letter``).
    :param field: the :class:`CaptchaSpec` field it sets (default: ``name``).
    """

    name: str
    low: float = 0.0
    high: float = 1.0
    choices: tuple | None = None
    per_letter: bool = False
    field: str | None = None

    def __post_init__(self):
        target = self.field or self.name
        if target not in _SPEC_FIELDS:
            raise ValueError(f"latent {self.name!r} sets unknown CaptchaSpec field {target!r}")
        if self.name in _RESERVED:
            raise ValueError(f"latent name {self.name!r} is reserved")
        if self.choices is None and not self.high > self.low:
            raise ValueError(f"latent {self.name!r}: need high > low, got [{self.low}, {self.high}]")
        if self.choices is not None and len(self.choices) < 1:
            raise ValueError(f"latent {self.name!r}: empty choices")

    @property
    def target(self) -> str:
        return self.field or self.name

    def distribution(self):
        if self.choices is not None:
            return dist.Categorical(logits=torch.zeros(len(self.choices)))
        return dist.Uniform(torch.tensor(float(self.low)), torch.tensor(float(self.high)))

    def to_python(self, value):
        if self.choices is not None:
            return self.choices[int(value)]
        return _number(value)

    def addresses(self, num_letters: int) -> list[str]:
        if self.per_letter:
            return [f"{self.name}_{i}" for i in range(num_letters)]
        return [self.name]


@dataclasses.dataclass(frozen=True, eq=False)
class CaptchaStyle:
    """A text-CAPTCHA family: a renderer prior with a Pyro model.

    :param fixed: constant :class:`CaptchaSpec` fields (overridden by latents).
    :param bandwidth: the ABC kernel's bandwidth on ``[0, 1]`` pixel values.
    :param font_per_letter: draw each letter's font independently (sites ``font_i``
        in place of the single ``font`` site).
    :param kernel: ``"pixel"`` (:class:`infcomp.abc.PixelKernel`) or ``"projection"``
        (:class:`infcomp.abc.RandomProjectionKernel` with ``projection_dim`` directions).
    :param text_only: render the text alone (:meth:`CaptchaSpec.text_layer`): a read-time model,
        see :meth:`with_text_only`.
    :param encoder: the :class:`infcomp.CNNConfig` this style's breakers are built with unless the
        compile asks for another (:func:`~infcomp_models.captcha.breaker.compile_breaker`), e.g.
        ``CNNConfig(column_pixels=4)`` where its letters are too narrow for 8-pixel columns.
    """

    name: str
    alphabet: str
    min_letters: int
    max_letters: int
    height: int
    width: int
    fonts: tuple[str, ...]
    font_size: tuple[float, float]
    kerning: tuple[float, float]
    latents: tuple[Latent, ...] = ()
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    font_per_letter: bool = False
    bandwidth: float = 0.15
    kernel: str = "pixel"
    projection_dim: int = 128
    description: str = ""
    text_only: bool = False
    encoder: CNNConfig = CNNConfig()

    def __post_init__(self):
        if len(set(self.alphabet)) != len(self.alphabet) or not self.alphabet:
            raise ValueError(f"style {self.name!r}: alphabet must be non-empty with distinct characters")
        if not 1 <= self.min_letters <= self.max_letters:
            raise ValueError(f"style {self.name!r}: need 1 <= min_letters <= max_letters")
        if self.kernel not in ("pixel", "projection"):
            raise ValueError(f"style {self.name!r}: kernel must be 'pixel' or 'projection', got {self.kernel!r}")
        if not self.fonts:
            raise ValueError(f"style {self.name!r}: needs at least one font")
        for f in self.fonts:
            font_source(f)  # unknown or missing fonts fail here, loudly
        names = [lat.name for lat in self.latents]
        if len(set(names)) != len(names):
            raise ValueError(f"style {self.name!r}: duplicate latent names")
        if self.font_per_letter and any(a.startswith("font_") for lat in self.latents
                                        for a in lat.addresses(self.max_letters)):
            raise ValueError(f"style {self.name!r}: latent names font_* are taken by the per-letter fonts")
        bad = set(self.fixed) - _SPEC_FIELDS
        if bad:
            raise ValueError(f"style {self.name!r}: unknown CaptchaSpec fields in fixed: {sorted(bad)}")
        if not isinstance(self.encoder, CNNConfig):
            raise TypeError(f"style {self.name!r}: encoder must be an infcomp.CNNConfig, got {type(self.encoder).__name__}")

    # ------------------------------------------------------------------ structure

    @property
    def variable_length(self) -> bool:
        return self.max_letters > self.min_letters

    @property
    def shape(self) -> tuple[int, int]:
        """Image shape ``(height, width)``."""
        return (self.height, self.width)

    def addresses(self, num_letters: int) -> list[str]:
        """The model's sample-site names, in order, for ``num_letters`` letters."""
        if not self.min_letters <= num_letters <= self.max_letters:
            raise ValueError(f"style {self.name!r} has {self.min_letters}..{self.max_letters} letters, not {num_letters}")
        names = ["num_letters"] if self.variable_length else []
        names += [f"letter_{i}" for i in range(num_letters)]
        names += self._font_addresses(num_letters) + ["font_size", "kerning"]
        for lat in self.latents:
            names += lat.addresses(num_letters)
        return names + ["noise_seed", "image"]

    @property
    def after_text(self) -> str:
        """The first address after the letters (``font``, or ``font_0`` with ``font_per_letter``):
        a read of the text alone can stop there (``infcomp.greedy(..., stop_before=)``)."""
        return self._font_addresses(1)[0]

    def _font_addresses(self, num_letters: int) -> list[str]:
        if self.font_per_letter:
            return [f"font_{i}" for i in range(num_letters)]
        return ["font"]

    # ------------------------------------------------------------------ values -> text / spec

    def num_letters(self, values: Mapping[str, Any]) -> int:
        """The number of letters a trace's values describe."""
        if self.variable_length:
            return self.min_letters + int(values["num_letters"])
        return self.min_letters

    def reading(self, values: Mapping[str, Any]) -> str:
        """The text a trace's latent values (site name -> tensor or number) spell."""
        n = self.num_letters(values)
        return "".join(self.alphabet[int(values[f"letter_{i}"])] for i in range(n))

    def spec(self, values: Mapping[str, Any]) -> CaptchaSpec:
        """The :class:`CaptchaSpec` for a complete set of latent values."""
        n = self.num_letters(values)
        kwargs = dict(self.fixed)
        kwargs.update(
            text=self.reading(values),
            height=self.height,
            width=self.width,
            font=(tuple(self.fonts[int(values[a])] for a in self._font_addresses(n)) if self.font_per_letter
                  else self.fonts[int(values["font"])]),
            font_size=_number(values["font_size"]),
            kerning=_number(values["kerning"]),
        )
        for lat in self.latents:
            if lat.per_letter:
                kwargs[lat.target] = tuple(lat.to_python(values[a]) for a in lat.addresses(n))
            else:
                kwargs[lat.target] = lat.to_python(values[lat.name])
        return CaptchaSpec(**kwargs)

    def render_values(self, values: Mapping[str, Any]) -> np.ndarray:
        """The noiseless rendering (before the ABC kernel) for a complete set of latent values."""
        spec = self.spec(values)
        return render(spec.text_layer() if self.text_only else spec, seed_from_uniform(_number(values["noise_seed"])))

    def make_kernel(self, rendered: torch.Tensor, bandwidth: float | None = None):
        """The ABC kernel the ``image`` site uses around ``rendered``."""
        bw = self.bandwidth if bandwidth is None else float(bandwidth)
        if self.kernel == "projection":
            return RandomProjectionKernel(rendered, bw, dim=self.projection_dim, seed=0)
        return PixelKernel(rendered, bw)

    # ------------------------------------------------------------------ Pyro

    @functools.cached_property
    def _distributions(self) -> dict:
        """Prior distributions, built once (they are immutable; reuse saves time per trace)."""
        def uniform(lo, hi):
            return dist.Uniform(torch.tensor(float(lo)), torch.tensor(float(hi)))

        d = {
            "num_letters": dist.Categorical(logits=torch.zeros(self.max_letters - self.min_letters + 1)),
            "letter": dist.Categorical(logits=torch.zeros(len(self.alphabet))),
            "font": dist.Categorical(logits=torch.zeros(len(self.fonts))),
            "font_size": uniform(*self.font_size),
            "kerning": uniform(*self.kerning),
            "noise_seed": uniform(0.0, 1.0),
        }
        for lat in self.latents:
            d[lat.name] = lat.distribution()
        return d

    def model(self, image: torch.Tensor | None = None) -> torch.Tensor:
        """The style's generative model; ``image`` (``(height, width)``, 1 = paper) is observed if given."""
        d = self._distributions
        values: dict[str, torch.Tensor] = {}
        if self.variable_length:
            values["num_letters"] = pyro.sample("num_letters", d["num_letters"])
        n = self.num_letters(values)
        for i in range(n):
            values[f"letter_{i}"] = pyro.sample(f"letter_{i}", d["letter"])
        for address in self._font_addresses(n):
            values[address] = pyro.sample(address, d["font"])
        for name in ("font_size", "kerning"):
            values[name] = pyro.sample(name, d[name])
        for lat in self.latents:
            for address in lat.addresses(n):
                values[address] = pyro.sample(address, d[lat.name])
        values["noise_seed"] = pyro.sample("noise_seed", d["noise_seed"])
        rendered = torch.from_numpy(self.render_values(values))
        return pyro.sample("image", self.make_kernel(rendered), obs=image)

    def __call__(self, image: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(image)

    def sample(self, seed: int, noiseless: bool = False) -> tuple[torch.Tensor, str]:
        """One prior draw: ``(image, text)``, drawn as after ``pyro.set_rng_seed(seed)``; the
        caller's random number generators are left as they were.

        :param noiseless: return the rendering itself instead of the kernel's sample
            (which adds ``bandwidth`` noise, as the model's prior does).
        """
        with fork_rng(int(seed)):
            trace = poutine.trace(self.model).get_trace()
        values = latent_values(trace)
        node = trace.nodes["image"]
        image = node["fn"].mean if noiseless else node["value"]
        return image, self.reading(values)

    def with_bandwidth(self, bandwidth: float) -> "CaptchaStyle":
        """The same style with another ABC kernel bandwidth: a read-time tolerance.

        A wider kernel forgives a real image for what the model cannot draw, and keeps
        importance weights from collapsing onto one particle.  Its addresses and
        latents are the same, so a breaker compiled for this style reads with it.
        """
        if not float(bandwidth) > 0:
            raise ValueError(f"bandwidth must be positive, got {bandwidth}")
        return dataclasses.replace(self, bandwidth=float(bandwidth))

    def with_text_only(self) -> "CaptchaStyle":
        """The same style rendering its text alone, without clutter or pixel noise: a read-time model.

        Clutter falls where ``noise_seed`` puts it, and no guide can infer a seed: under the
        style's own kernel a particle's weight then rests on how well its clutter happens to fall,
        more than on its letters.  Rendered without clutter, every particle misses the image's
        clutter alike and the weights judge the text more (``benchmarks/text_only_reads.py``
        compares the two reads on the same particles).  Its addresses are the same (the clutter latents are still
        drawn, and change nothing), so a breaker compiled for this style reads with it; what the
        seed also drives in the text itself (an elastic field) stays.
        """
        return dataclasses.replace(self, text_only=True)


def latent_values(trace) -> dict[str, torch.Tensor]:
    """Site name -> value for a trace's latent sample sites (all but ``image``)."""
    return {
        name: node["value"]
        for name, node in trace.nodes.items()
        if node["type"] == "sample" and not node["is_observed"] and name != "image"
    }
