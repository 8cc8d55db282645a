"""The compiled guide: the inference network plus what it was compiled for, and its save file.

A :class:`Guide` is a plain Pyro guide.  Called with the model's arguments it
runs the model under :class:`~infcomp.handler.ProposalMessenger`, with the
observed sites fixed to the observation and hidden from its trace.  The
observation comes from an ``observations={site: value}`` keyword (Pyro's CSIS
convention) or from :meth:`Guide.condition`.
"""

from __future__ import annotations

import copy

import torch
import pyro.poutine as poutine

from .handler import ObservationState, ProposalMessenger
from .inputs import argument_digests, bind_arguments, warn_changed
from .nn.encoders import CNNConfig
from .nn.network import InferenceNetwork, NetworkConfig, split_config
from .traces import PriorSampler, observation_specs, observed_tensor

__all__ = ["Guide", "build_guide", "default_lr"]


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
        self.metadata = {}  # free-form strings and numbers saved with the guide (e.g. what the guide is for)
        self.last_run = None  # figures of the latest compile run (traces, seconds, ...)
        self._states = {}  # ids of an observation's tensors -> (the tensors, their ObservationState)
        self._address_terms = {}  # address -> network.address_terms(address)
        self._warned = set()
        self._checked_model = (model, self.model_args, self.model_kwargs) if model is not None else None
        self.argument_digests = {}  # the model's arguments compiled for, not seen by the guide (infcomp.inputs)

    @property
    def obs_specs(self) -> dict:
        return self.network.obs_specs

    @property
    def inputs(self) -> tuple:
        """The model's arguments the guide encodes beside the observations (``compile(inputs=)``)."""
        return tuple(n for n in self.obs_specs if n not in self.observe)

    @property
    def addresses(self) -> list:
        return list(self.network.specs)

    @property
    def device(self):
        return self.network.lstm.weight_hh_l0.device

    # -- observations -------------------------------------------------------------
    def check_observation(self, observation) -> dict:
        """A validated ``{site: tensor}``, on the device it came on (the model's: the network's
        encoder takes its own copy, :meth:`states_for`): every compiled site present, of its
        compiled shape and dtype kind, finite (:func:`~infcomp.traces.observed_tensor`, the check
        prior importance sampling makes too); else a ValueError or TypeError naming the site."""
        if not isinstance(observation, dict):
            if len(self.observe) != 1:
                raise ValueError(
                    f"this guide observes {list(self.observe)}: pass the observation as a dict site -> tensor"
                )
            observation = {self.observe[0]: observation}
        unknown = [k for k in observation if k not in self.observe]
        if unknown:
            raise ValueError(f"observation names site {unknown[0]!r}, but the guide observes {list(self.observe)}")
        out = {}
        for name in self.observe:
            if name not in observation:
                raise ValueError(f"observation is missing site {name!r} (the guide observes {list(self.observe)})")
            out[name] = self._fitted(f"observation for site {name!r}", name, observation[name])
        return out

    def _fitted(self, what: str, name: str, value):
        """``value`` checked finite and of the compiled shape of ``name``, in its dtype (a dtype of
        another kind, integer for float say, is a ValueError naming ``what``)."""
        spec = self.obs_specs[name]
        value = observed_tensor(name, value)  # finite, as on every inference path
        if tuple(value.shape) != spec.shape:
            raise ValueError(f"{what} has shape {tuple(value.shape)}, but the guide was compiled for shape {spec.shape}")
        want = getattr(torch, spec.dtype)
        if value.dtype != want:
            if _kind(value.dtype) != _kind(want):
                raise ValueError(f"{what} has dtype {value.dtype}, but the guide was compiled for {want}")
            value = value.to(want)
        return value

    def encoded(self, observation: dict, model_args=(), model_kwargs=None, model=None) -> dict:
        """What the guide's encoder reads for a call of the model: the checked ``observation`` and
        the guide's :attr:`inputs`, taken from the call's arguments (bound by ``model``'s signature,
        the bound model's by default).  ValueError naming an input the call lacks or gives in
        another shape; a warning where an argument the guide does not see differs from the one
        it was compiled for (:func:`~infcomp.inputs.warn_changed`)."""
        arguments = bind_arguments(model or self.model, model_args, model_kwargs)
        warn_changed(self, arguments, stacklevel=3)
        if not self.inputs:
            return observation
        out = dict(observation)
        for name in self.inputs:
            if arguments.get(name) is None:
                raise ValueError(f"the guide encodes the model's argument {name!r} (compiled with inputs=): pass it in "
                                 f"model_args or model_kwargs (the guide's inputs: {list(self.inputs)})")
            out[name] = self._fitted(f"input {name!r}", name, arguments[name])
        return out

    def state_for(self, observation: dict) -> ObservationState:
        """The per-observation cache (embedding, first proposal), reused while the same tensors come back."""
        key = tuple(id(v) for v in observation.values())
        hit = self._states.get(key)
        if hit is not None and all(a is b for a, b in zip(hit[0], observation.values())):
            return hit[1]
        if len(self._states) > 8:
            self._states.clear()
        state = self.states_for([observation], None)
        self._states[key] = (tuple(observation.values()), state)
        return state

    def states_for(self, observations: list, first_index=0) -> ObservationState:
        """One :class:`~infcomp.handler.ObservationState` for several checked observations read
        together; its errors number them from ``first_index`` (None: one observation, unnumbered)."""
        stacked = {n: torch.stack([o[n] for o in observations]).to(self.device) for n in self.obs_specs}
        return ObservationState(self.network, stacked, self._address_terms, first_index)

    def copy(self) -> Guide:
        """A guide of its own for the same model and arguments: the network's weights copied (the
        copy trains without touching this one), the record of its training kept, no optimiser state."""
        other = Guide(copy.deepcopy(self.network), self.observe, self.model, self.model_args, self.model_kwargs)
        other.traces_trained, other.history = self.traces_trained, list(self.history)
        other.metadata, other.last_run = dict(self.metadata), self.last_run
        other._checked_model, other.argument_digests = self._checked_model, dict(self.argument_digests)
        return other

    def invalidate(self):
        """Forget cached per-observation and per-address work (the network's weights are changing)."""
        self._states.clear()
        self._address_terms.clear()

    # -- the model ----------------------------------------------------------------
    def check_model(self, model, model_args=(), model_kwargs=None):
        """Run the model forward and raise a ValueError naming the first difference from the guide:
        a site of another distribution, proposal family, support or shape, an observed site of
        another shape, or no latent site in common with the guide at all (new sites beside known
        ones are fine: they propose from their prior)."""
        sampler = PriorSampler(model, self.observe, model_args, model_kwargs, self.network.families,
                               specs=self.network.specs)  # raises where a site is no longer its address
        record = sampler.sample()
        for _ in range(2):  # a model of several structures may miss the known sites once
            if not self.network.specs or set(record.structure) & set(self.network.specs):
                break
            record = sampler.sample()
        else:
            raise ValueError(
                f"the model shares no latent site with the guide: the guide proposes for "
                f"{list(self.network.specs)[:8]}, the model samples {list(record.structure)[:8]} "
                "(is this the model the guide was compiled for?)"
            )
        for name, value in record.observation.items():
            want = self.obs_specs[name].shape
            if tuple(value.shape) != want:
                raise ValueError(
                    f"observed site {name!r} has shape {tuple(value.shape)} in this model, "
                    f"but the guide was compiled for shape {want}"
                )
        self._checked_model = (model, tuple(model_args), dict(model_kwargs or {}))

    def bind_model(self, model, model_args=None, model_kwargs=None):
        """Use ``model`` (with these arguments) from now on; :meth:`check_model` runs it whenever the
        model, its arguments or its keyword arguments differ from those last checked."""
        args = self.model_args if model_args is None else tuple(model_args)
        kwargs = self.model_kwargs if model_kwargs is None else dict(model_kwargs)
        if not _same(self._checked_model, (model, args, kwargs)):
            self.check_model(model, args, kwargs)
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
        obs = self.check_observation({k: v for k, v in observation.items() if k in self.observe})
        model_kwargs = {k: v for k, v in kwargs.items() if k != "observations"}
        encoded = self.encoded(obs, args, model_kwargs)
        run = poutine.condition(self.model, data=obs)
        run = poutine.block(run, hide=list(self.observe))
        with self.messenger(encoded):
            return run(*args, **kwargs)

    def condition(self, observation):
        """A guide for ``pyro.condition(model, data=observation)``: what ``pyro.infer.Importance`` takes."""
        obs = self.check_observation(observation)
        guide = self

        def conditioned_guide(*args, **kwargs):
            return guide._run(obs, args, kwargs)

        return conditioned_guide

    # -- save ---------------------------------------------------------------------
    def save(self, path):
        """Write the guide to ``path`` (atomically: a save cut short leaves the old file whole)."""
        from .files import save

        save(self, path)

    def __repr__(self):
        return (
            f"Guide(observe={list(self.observe)}, addresses={len(self.network.specs)}, "
            f"traces_trained={self.traces_trained})"
        )


def _same(a, b) -> bool:
    """Whether ``a`` and ``b`` are equal models or arguments: ``==`` (a bound method is a new
    object on each access), tensors by value, containers element by element."""
    if a is b:
        return True
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:
        return False


def _kind(dtype):
    return "bool" if dtype == torch.bool else "float" if dtype.is_floating_point else "complex" if dtype.is_complex else "int"


def one_encoder(encoder, embedding, kinds=(CNNConfig, torch.nn.Module)):
    """``encoder=`` or its older name ``embedding=``; TypeError unless it is one of ``kinds``."""
    if embedding is not None and encoder is not None:
        raise ValueError("embedding= is the older name of encoder=: pass one of them")
    encoder = embedding if encoder is None else encoder
    if encoder is not None and not isinstance(encoder, kinds):
        names = " or ".join("an infcomp.CNNConfig" if k is CNNConfig else "a torch.nn.Module" for k in kinds)
        raise TypeError(f"encoder= takes {names}, got {type(encoder).__name__}")
    return encoder


def _network_settings(config, encoder, embedding):
    """``(NetworkConfig fields, CNNConfig or None, its fields set by ``config=``, user encoder
    module or None)`` from compile's ``config=``, ``encoder=`` and ``embedding=``; ValueError
    naming the argument at fault."""
    encoder = one_encoder(encoder, embedding)
    if config is None:
        fields = {}
    elif isinstance(config, NetworkConfig):
        fields = config.to_dict()
    elif isinstance(config, dict):
        fields = dict(config)
    else:
        raise TypeError(f"config= takes a NetworkConfig or a dict of its fields, got {type(config).__name__}")
    fields, cnn_fields = split_config(fields)
    NetworkConfig().differences(fields)  # a ValueError naming an unknown field
    if cnn_fields and isinstance(encoder, torch.nn.Module):
        raise ValueError(f"config= sets the default image encoder's {sorted(cnn_fields)}, but encoder= is your own module")
    cnn = encoder if isinstance(encoder, CNNConfig) else None
    return fields, cnn, cnn_fields, encoder if isinstance(encoder, torch.nn.Module) else None


def _refuse_changes(differences, what: str, argument: str):
    for key, have, wanted in differences:
        raise ValueError(
            f"{what}: the guide to resume was built with {key}={have!r}, not {wanted!r} "
            f"({argument}= sets up a new guide's network: resume without it, or compile a new guide)"
        )


def build_guide(model, observe, validation, model_args=(), model_kwargs=None, *, guide=None, encoder=None,
                embedding=None, config=None, families=(), device="cpu") -> Guide:
    """A new guide for ``model`` (its network sized from the ``validation`` trace records), or
    ``guide`` checked against the model, bound to it and moved to ``device``.  ValueError if a
    resumed guide observes other sites or was built with another network than ``config`` or
    ``encoder`` ask for."""
    fields, cnn, cnn_fields, module = _network_settings(config, encoder, embedding)
    if guide is None:
        obs_specs = observation_specs(validation[0])
        cnn = (cnn or CNNConfig()).replace(**cnn_fields)
        network = InferenceNetwork(obs_specs, NetworkConfig(**fields), module, cnn, families)
        network.encoder.set_normalization(
            {n: torch.stack([r.observation[n] for r in validation]) for n in obs_specs}
        )
        guide = Guide(network.to(device), observe, model, model_args, model_kwargs)
        guide.argument_digests = argument_digests(bind_arguments(model, model_args, model_kwargs), skip=guide.inputs)
        return guide
    if tuple(guide.observe) != tuple(observe):
        raise ValueError(f"the guide observes {list(guide.observe)}, not {list(observe)}")
    inputs = tuple(n for n in validation[0].observation if n not in observe)
    if inputs != guide.inputs:
        raise ValueError(f"the guide was compiled with inputs {list(guide.inputs)}, not {list(inputs)}: resume it with "
                         "the same inputs=, or compile a new guide")
    if module is not None:
        raise ValueError("encoder= builds a new guide's network; the guide to resume has its own")
    built = guide.network.encoder.cnn
    _refuse_changes(guide.network.cfg.differences(fields), "config", "config")
    _refuse_changes(built.differences(cnn.replace(**cnn_fields)) if cnn is not None else
                    [(k, getattr(built, k), v) for k, v in cnn_fields.items() if getattr(built, k) != v],
                    "encoder: CNNConfig", "encoder")
    guide.network.to(device)
    guide.invalidate()
    guide.argument_digests = argument_digests(bind_arguments(model, model_args, model_kwargs), skip=guide.inputs)
    return guide.bind_model(model, model_args, model_kwargs)


def default_lr(guide) -> float:
    """Adam's default learning rate for training ``guide``: 1e-3 for an image encoder built
    without a norm (its CNN stalls on noisy images at a higher rate), else 3e-3."""
    enc = guide.network.encoder
    return 1e-3 if enc.uses_cnn and not enc.cnn.norm else 3e-3
