"""The compiled guide: the inference network plus what it was compiled for, and its save file.

A :class:`Guide` is a plain Pyro guide.  Called with the model's arguments it
runs the model under :class:`~infcomp.handler.ProposalMessenger`, with the
observed sites fixed to the observation and hidden from its trace.  The
observation comes from an ``observations={site: value}`` keyword (Pyro's CSIS
convention) or from :meth:`Guide.condition`.
"""

from __future__ import annotations

import os

import torch
import pyro.poutine as poutine

from .handler import ObservationState, ProposalMessenger
from .nn.network import InferenceNetwork, NetworkConfig
from .traces import ObservationSpec, PriorSampler, SiteSpec, check_consistent, observation_specs

__all__ = ["Guide", "load", "build_guide", "default_lr", "FORMAT", "VERSION"]

FORMAT = "infcomp-guide"
VERSION = 1
#: What a network setting meant in files saved before the setting existed (they lack its key).
LEGACY_CONFIG = {"conv_norm": False, "share_heads": False, "column_rnn": 0, "memory_columns": 16}


class Guide:
    def __init__(self, network: InferenceNetwork, observe: tuple, model=None, model_args=(), model_kwargs=None):
        self.network = network
        self.observe = tuple(observe)
        self.model = model
        self.model_args = tuple(model_args)
        self.model_kwargs = dict(model_kwargs or {})
        self.optimizer_state = None
        self.traces_trained = 0
        self.history = []  # (traces, train loss, validation loss)
        self.metadata = {}  # free-form strings and numbers saved with the guide (e.g. a CAPTCHA style)
        self.last_run = None  # figures of the latest compile run (traces, seconds, ...)
        self._states = {}  # observation -> ObservationState
        self._per_address = {}  # address -> network.address_constants(address)
        self._warned = set()
        self._checked_model = model

    @property
    def obs_specs(self) -> dict:
        return self.network.obs_specs

    @property
    def addresses(self) -> list:
        return list(self.network.specs)

    @property
    def device(self):
        return self.network.family_embedding.weight.device

    # -- observations -------------------------------------------------------------
    def check_observation(self, observation) -> dict:
        """A validated ``{site: tensor}`` on the guide's device, or a ValueError naming the fault."""
        if not isinstance(observation, dict):
            if len(self.observe) != 1:
                raise ValueError(
                    f"this guide observes {list(self.observe)}: pass the observation as a dict site -> tensor"
                )
            observation = {self.observe[0]: observation}
        unknown = [k for k in observation if k not in self.obs_specs]
        if unknown:
            raise ValueError(f"observation names site {unknown[0]!r}, but the guide observes {list(self.observe)}")
        out = {}
        for name, spec in self.obs_specs.items():
            if name not in observation:
                raise ValueError(f"observation is missing site {name!r} (the guide observes {list(self.observe)})")
            value = observation[name]
            if not torch.is_tensor(value):
                try:
                    value = torch.as_tensor(value)
                except Exception:
                    raise TypeError(f"observation for site {name!r} must be a tensor, got {type(value).__name__}") from None
            if tuple(value.shape) != spec.shape:
                raise ValueError(
                    f"observation for site {name!r} has shape {tuple(value.shape)}, "
                    f"but the guide was compiled for shape {spec.shape}"
                )
            want = getattr(torch, spec.dtype)
            if value.dtype != want:
                if _kind(value.dtype) != _kind(want):
                    raise ValueError(
                        f"observation for site {name!r} has dtype {value.dtype}, but the model's site has {want}"
                    )
                value = value.to(want)
            if value.dtype.is_floating_point and bool(torch.isnan(value).any()):
                raise ValueError(f"observation for site {name!r} contains NaN")
            out[name] = value.to(self.device)
        return out

    def state_for(self, observation: dict) -> ObservationState:
        """The per-observation cache (embedding, first proposal), reused while the same tensors come back."""
        key = tuple(id(v) for v in observation.values())
        hit = self._states.get(key)
        if hit is not None and all(a is b for a, b in zip(hit.observation.values(), observation.values())):
            return hit
        if len(self._states) > 8:
            self._states.clear()
        state = self._states[key] = ObservationState(self.network, observation, self._per_address)
        return state

    def invalidate(self):
        """Forget cached per-observation and per-address work (the network's weights are changing)."""
        self._states.clear()
        self._per_address.clear()

    # -- the model ----------------------------------------------------------------
    def check_model(self, model, model_args=(), model_kwargs=None):
        """Run the model once forward and raise if its addresses or observation shapes disagree with the guide."""
        sampler = PriorSampler(model, self.observe, model_args, model_kwargs, self.network.families)
        record = sampler.sample()
        for name, spec in sampler.specs.items():
            if name in self.network.specs:
                check_consistent(self.network.specs[name], spec)
        for name, value in record.observation.items():
            want = self.obs_specs[name].shape
            if tuple(value.shape) != want:
                raise ValueError(
                    f"observed site {name!r} has shape {tuple(value.shape)} in this model, "
                    f"but the guide was compiled for shape {want}"
                )
        self._checked_model = model

    def bind_model(self, model, model_args=None, model_kwargs=None):
        if model != self._checked_model:  # ==, not is: a style's bound method is a new object on each access
            self.check_model(
                model,
                self.model_args if model_args is None else model_args,
                self.model_kwargs if model_kwargs is None else model_kwargs,
            )
        self.model = model
        return self

    # -- the Pyro guide -----------------------------------------------------------
    def messenger(self, observation: dict, greedy=False) -> ProposalMessenger:
        return ProposalMessenger(self.state_for(observation), self.observe, self._warned, greedy)

    def __call__(self, *args, **kwargs):
        return self._run(kwargs.get("observations"), args, kwargs)

    def _run(self, observation, args, kwargs):
        if self.model is None:
            raise RuntimeError("this guide has no model: pass model= to infcomp.load, or call guide.bind_model(model)")
        if observation is None:
            raise ValueError(
                "the guide needs the observation: call it with observations={site: value} "
                "(Pyro's CSIS convention) or use guide.condition(observation)"
            )
        obs = self.check_observation({k: v for k, v in observation.items() if k in self.obs_specs})
        run = poutine.condition(self.model, data=obs)
        run = poutine.block(run, hide=list(self.observe))
        with self.messenger(obs):
            return run(*args, **kwargs)

    def condition(self, observation):
        """A guide for ``pyro.condition(model, data=observation)``: what ``pyro.infer.Importance`` takes."""
        obs = self.check_observation(observation)
        guide = self

        def conditioned_guide(*args, **kwargs):
            return guide._run(obs, args, kwargs)

        return conditioned_guide

    # -- save and load ------------------------------------------------------------
    def save(self, path):
        """Write the guide to ``path`` (atomically: a save cut short leaves the old file whole)."""
        net = self.network
        path = os.fspath(path)
        tmp = f"{path}.saving"
        torch.save(
            {
                "format": FORMAT,
                "version": VERSION,
                "config": net.cfg.to_dict(),
                "observe": list(self.observe),
                "obs_specs": [s.to_dict() for s in net.obs_specs.values()],
                "sites": [net.specs[n].to_dict() for n in net.specs],
                "custom_embedding": net.embed.custom is not None,
                "state_dict": net.state_dict(),
                "optimizer": self.optimizer_state,
                "traces_trained": self.traces_trained,
                "history": [list(h) for h in self.history],
                "metadata": dict(self.metadata),
                "last_run": self.last_run,
            },
            tmp,
        )
        os.replace(tmp, path)

    def __repr__(self):
        return (
            f"Guide(observe={list(self.observe)}, addresses={len(self.network.specs)}, "
            f"traces_trained={self.traces_trained})"
        )


def _kind(dtype):
    return "bool" if dtype == torch.bool else "float" if dtype.is_floating_point else "complex" if dtype.is_complex else "int"


def _corrupt(path, why):
    return ValueError(f"{path} is not a usable infcomp guide file (corrupt or foreign): {why}")


def _layout_mismatch(net, state: dict) -> str:
    """A short account of how a saved state dict's tensors differ from ``net``'s, or ''."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    parts = [f"{len(v)} {what}, e.g. {v[0]!r}" for what, v in
             (("tensors missing", missing), ("unexpected tensors", extra), ("tensors of another shape", shapes)) if v]
    return "; ".join(parts)


def load(path, model=None, model_args=(), model_kwargs=None, embedding=None, device="cpu") -> Guide:
    """Load a saved guide; with ``model=``, check that the model's addresses and observation shapes match."""
    try:
        data = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # pickle, zip or unpickling errors: not our file
        raise _corrupt(path, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _corrupt(path, "it has no infcomp-guide header")
    if data.get("version") != VERSION:
        raise _corrupt(path, f"format version {data.get('version')!r}, this infcomp reads version {VERSION}")
    try:
        cfg = NetworkConfig(**{**LEGACY_CONFIG, **data["config"]})
        obs_specs = {d["name"]: ObservationSpec.from_dict(d) for d in data["obs_specs"]}
        if data["custom_embedding"] and embedding is None:
            raise ValueError(f"{path} was compiled with a custom observation embedding: pass it again as embedding=")
        net = InferenceNetwork(obs_specs, cfg, embedding)
        for d in data["sites"]:
            net.add_site(SiteSpec.from_dict(d))
        mismatch = _layout_mismatch(net, data["state_dict"])
        if mismatch:
            raise ValueError(
                f"{path} holds a network of another layout than this infcomp builds ({mismatch}): "
                "it was saved by another version; compile it again"
            )
        net.load_state_dict(data["state_dict"])
    except ValueError:
        raise
    except (KeyError, TypeError, RuntimeError) as e:
        raise _corrupt(path, f"{type(e).__name__}: {e}") from None
    net.to(device)
    guide = Guide(net, data["observe"], None, model_args, model_kwargs)
    guide.optimizer_state = data.get("optimizer")
    guide.traces_trained = int(data.get("traces_trained", 0))
    guide.history = [tuple(h) for h in data.get("history", [])]
    guide.metadata = dict(data.get("metadata", {}))
    guide.last_run = data.get("last_run")
    if model is not None:
        guide.bind_model(model, model_args, model_kwargs)
    return guide


def build_guide(model, observe, validation, model_args=(), model_kwargs=None, *, guide=None, embedding=None,
                config=None, device="cpu") -> Guide:
    """A new guide for ``model`` (its network sized from the ``validation`` trace records), or
    ``guide`` checked against the model and bound to it.  ValueError if a resumed guide observes
    other sites or was built with another network than ``config`` asks for."""
    if guide is None:
        if isinstance(config, dict):
            config = NetworkConfig(**config)
        obs_specs = observation_specs(validation[0])
        network = InferenceNetwork(obs_specs, config, embedding)
        network.embed.set_normalization(
            {n: torch.stack([r.observation[n] for r in validation]) for n in obs_specs}
        )
        return Guide(network.to(device), observe, model, model_args, model_kwargs)
    if tuple(guide.observe) != tuple(observe):
        raise ValueError(f"the guide observes {list(guide.observe)}, not {list(observe)}")
    if embedding is not None:
        raise ValueError("embedding= builds a new guide's network; the guide to resume has its own")
    for key, have, wanted in guide.network.cfg.differences(config or {}):
        raise ValueError(
            f"config: the guide to resume was built with {key}={have!r}, not {wanted!r} "
            "(config= sets up a new guide's network: resume without it, or compile a new guide)"
        )
    return guide.bind_model(model, model_args, model_kwargs)


def default_lr(guide) -> float:
    """Adam's default learning rate for training ``guide``: 1e-3 for an image embedding built
    without ``conv_norm`` (its CNN stalls on noisy images at a higher rate), else 3e-3."""
    net = guide.network
    return 1e-3 if net.embed.memory_dim and not net.cfg.conv_norm else 3e-3
