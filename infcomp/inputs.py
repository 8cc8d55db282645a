"""The model's arguments as the guide sees them: declared inputs, and the arguments it was compiled for.

A model's arguments often change between calls: the covariates of a regression, a design, the
times of a series.  A guide that never sees them proposes for the arguments it was compiled with,
whatever the call.  Two things follow:

* **inputs**: arguments declared at compile (``compile(..., inputs=sampler)``: ``sampler()``
  returns ``{argument name: tensor}``, a fresh draw for every training trace) are encoded beside
  the observations, so the guide is amortised over them.  They sit in the guide's observation
  table under the argument's name (a name no sample site of the model may have); at inference
  they are read from the call's own ``model_args``/``model_kwargs``, bound by the model's signature.
* **the compiled arguments**: the other arguments the guide was compiled with are kept as
  digests; inference with other values warns, naming the argument (the guide's proposals were
  learnt for the values it saw).
"""

from __future__ import annotations

import hashlib
import inspect
import numbers
import warnings

import torch

__all__ = ["bind_arguments", "argument_digests", "changed_argument", "check_sampler"]


def _signature(model):
    try:
        return inspect.signature(model)
    except (TypeError, ValueError):
        return None


def bind_arguments(model, model_args=(), model_kwargs=None) -> dict:
    """``{parameter name: value}`` of a call ``model(*model_args, **model_kwargs)`` (positional
    arguments named by the model's signature; ``*args`` collected under their own name as a tuple).
    TypeError naming the model where the call does not fit its signature."""
    model_kwargs = dict(model_kwargs or {})
    sig = _signature(model)
    if sig is None:  # no signature to read: keyword arguments alone have names
        return dict(model_kwargs)
    try:
        bound = sig.bind_partial(*model_args, **model_kwargs)
    except TypeError as e:
        raise TypeError(f"the model's arguments do not fit its signature {sig}: {e}") from None
    return dict(bound.arguments)


def _digest(value, h) -> bool:
    """Feed ``value`` to the hash ``h``; False where it holds something whose value cannot be read
    (an arbitrary object: no claim is made on it)."""
    if torch.is_tensor(value):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return True
    if value is None or isinstance(value, (bool, numbers.Number, str, bytes)):
        h.update(repr((type(value).__name__, value)).encode())
        return True
    if isinstance(value, (tuple, list)):
        h.update(f"L{len(value)}".encode())
        return all(_digest(v, h) for v in value)
    if isinstance(value, dict):
        h.update(f"D{len(value)}".encode())
        return all(_digest(k, h) and _digest(v, h) for k, v in sorted(value.items(), key=lambda kv: repr(kv[0])))
    return False


def argument_digests(arguments: dict, skip=()) -> dict:
    """``{name: hex digest}`` of the arguments that are not None, not in ``skip``, and made of
    tensors, numbers, strings and containers of them (others are left out: nothing is claimed)."""
    out = {}
    for name, value in arguments.items():
        if name in skip or value is None:
            continue
        h = hashlib.sha256()
        if _digest(value, h):
            out[name] = h.hexdigest()
    return out


def changed_argument(compiled: dict, arguments: dict) -> str | None:
    """The first argument named in ``compiled`` (digests) that ``arguments`` gives another value, or None."""
    now = argument_digests({n: arguments[n] for n in compiled if n in arguments})
    return next((n for n, d in now.items() if d != compiled[n]), None)


def warn_changed(guide, arguments: dict, stacklevel: int = 2):
    """Warn where ``arguments`` give an argument the guide was compiled for another value (and does not see)."""
    name = changed_argument(getattr(guide, "argument_digests", {}) or {}, arguments)
    if name is not None:
        warnings.warn(
            f"the model's argument {name!r} differs from the one the guide was compiled with, and the guide does not "
            f"see it: its proposals were learnt for the compiled value. Declare it an input of the guide "
            f"(compile(..., inputs=lambda: {{{name!r}: ...}})) to amortise over it, or refine the guide for this call "
            "(infer(..., refine=True)); the weights stay exact either way",
            UserWarning, stacklevel=stacklevel + 1)


def check_sampler(sampler, model, model_args, model_kwargs, site_names=()) -> dict:
    """One draw of ``inputs=``'s ``sampler``, checked: a callable returning a non-empty dict of
    ``{argument name: tensor}`` whose names are parameters of the model not already given in
    ``model_args``/``model_kwargs``, nor names of its sample sites, with finite values.  Returns
    the draw; TypeError or ValueError naming the input at fault."""
    if not callable(sampler):
        raise TypeError(f"inputs= takes a callable returning {{argument name: tensor}}, got {type(sampler).__name__}")
    draw = sampler()
    if not isinstance(draw, dict) or not draw or not all(isinstance(k, str) for k in draw):
        raise TypeError(f"inputs= must return a non-empty dict {{argument name: tensor}}, it returned {draw!r:.80}")
    sig = _signature(model)
    given = bind_arguments(model, model_args, model_kwargs)
    for name, value in draw.items():
        if sig is not None and name not in sig.parameters and not any(
                p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            raise ValueError(f"inputs= returns {name!r}, which is no parameter of the model {sig}")
        if name in given:
            raise ValueError(f"input {name!r} is also given in model_args/model_kwargs: give it in one place")
        if name in site_names:
            raise ValueError(f"input {name!r} has the name of one of the model's sample sites: rename the argument")
        if not torch.is_tensor(value):
            raise TypeError(f"input {name!r} must be a tensor, got {type(value).__name__}")
        if value.dtype.is_floating_point and not bool(torch.isfinite(value).all()):
            raise ValueError(f"input {name!r} drawn by inputs= is not finite")
    return draw
