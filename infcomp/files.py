"""A guide's save file: what :meth:`Guide.save` writes and :func:`load` reads.

The file is a ``torch.save`` archive of plain data (read back with ``weights_only=True``):
the network's settings, the address table, the state dict and the optimiser's state, with
the training history and metadata.  Files of format version 1 are upgraded as they load
(:mod:`infcomp.legacy`), tensors unchanged.
"""

from __future__ import annotations

import os

import torch

from . import legacy
from .guide import Guide, one_encoder
from .nn.encoders import CNNConfig
from .nn.network import InferenceNetwork, NetworkConfig
from .nn.proposals import family_class, is_builtin
from .traces import ObservationSpec, SiteSpec

__all__ = ["save", "load", "FORMAT", "VERSION"]

FORMAT = "infcomp-guide"
VERSION = 2


def _plain(run):
    return run.to_dict() if hasattr(run, "to_dict") else run


def save(guide: Guide, path) -> None:
    """Write ``guide`` to ``path`` through a temporary file, so a save cut short leaves the old file whole."""
    net = guide.network
    path = os.fspath(path)
    tmp = f"{path}.saving"
    torch.save(
        {
            "format": FORMAT,
            "version": VERSION,
            "config": net.cfg.to_dict(),
            "encoder": {"cnn": net.encoder.cnn.to_dict(), "custom": net.encoder.custom is not None},
            "families": sorted({s.family for s in net.specs.values() if not is_builtin(s.family)}),
            "observe": list(guide.observe),
            "obs_specs": [s.to_dict() for s in net.obs_specs.values()],
            "sites": [net.specs[n].to_dict() for n in net.specs],
            "state_dict": net.state_dict(),
            "optimizer": guide.optimizer_state,
            "traces_trained": guide.traces_trained,
            "history": [list(h) for h in guide.history],
            "metadata": dict(guide.metadata),
            "last_run": _plain(guide.last_run),
        },
        tmp,
    )
    os.replace(tmp, path)


def _corrupt(path, why):
    return ValueError(f"{path} is not a usable infcomp guide file (corrupt or foreign): {why}")


def _layout_mismatch(net, state: dict) -> str:
    """A short account of how a saved state dict's tensors differ from ``net``'s, or ''."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and torch.is_tensor(own[k]) and tuple(own[k].shape) != tuple(state[k].shape)]
    parts = [f"{len(v)} {what}, e.g. {v[0]!r}" for what, v in
             (("tensors missing", missing), ("unexpected tensors", extra), ("tensors of another shape", shapes)) if v]
    return "; ".join(parts)


def _read(path, device) -> dict:
    """The file's contents as format ``VERSION``; ValueError naming the file if it is not one."""
    try:
        data = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # pickle, zip or unpickling errors: not our file
        raise _corrupt(path, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _corrupt(path, "it has no infcomp-guide header")
    if data.get("version") == 1:
        try:
            return legacy.upgrade(data)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise _corrupt(path, f"a version-1 file that does not read: {type(e).__name__}: {e}") from None
    if data.get("version") != VERSION:
        raise _corrupt(path, f"format version {data.get('version')!r}, this infcomp reads versions 1 and {VERSION}")
    return data


def _families(path, names, given) -> tuple:
    """The classes ``given``, then those of the families the file names that ``given`` lacks."""
    classes = list(given)
    for name in names:
        if any(cls.name == name for cls in classes):
            continue
        cls = family_class(name, given)
        if cls is None:
            raise ValueError(f"{path} uses the proposal family {name!r}: pass its class as families=, or register_family it")
        classes.append(cls)
    return tuple(classes)


def _network(path, data, encoder, families) -> InferenceNetwork:
    if data["encoder"]["custom"] and encoder is None:
        raise ValueError(f"{path} was compiled with your own observation encoder: pass it again as encoder=")
    if encoder is not None and not data["encoder"]["custom"]:
        raise ValueError(f"{path} was compiled with the default observation encoder: load it without encoder=")
    cfg = NetworkConfig(**data["config"])
    cnn = CNNConfig(**data["encoder"]["cnn"])
    obs_specs = {d["name"]: ObservationSpec.from_dict(d) for d in data["obs_specs"]}
    net = InferenceNetwork(obs_specs, cfg, encoder, cnn, _families(path, data["families"], families))
    for d in data["sites"]:
        net.add_site(SiteSpec.from_dict(d))
    state = data["state_dict"]
    mismatch = _layout_mismatch(net, state)
    if mismatch:
        raise ValueError(
            f"{path} holds a network of another layout than this infcomp builds ({mismatch}): "
            "it was saved by another version, or for another encoder; compile it again"
        )
    net.load_state_dict(state)
    return net


def load(path, model=None, model_args=(), model_kwargs=None, embedding=None, device="cpu", *, encoder=None,
         families=()) -> Guide:
    """Load a saved guide; with ``model=``, check that the model's addresses and observation shapes match.

    :param encoder: the guide's own observation encoder module, for a guide compiled with one
        (``embedding=`` is its older name).
    :param families: proposal family classes the guide was compiled with, beyond the registered ones.
    """
    encoder = one_encoder(encoder, embedding, kinds=(torch.nn.Module,))
    data = _read(path, device)
    try:
        net = _network(path, data, encoder, families)
        if data.get("upgrade_optimizer"):
            data["optimizer"] = legacy.upgrade_optimizer(data["optimizer"], net)
    except ValueError:
        raise
    except (KeyError, TypeError, RuntimeError, IndexError) as e:
        raise _corrupt(path, f"{type(e).__name__}: {e}") from None
    guide = Guide(net.to(device), data["observe"], None, model_args, model_kwargs)
    guide.optimizer_state = data.get("optimizer")
    guide.traces_trained = int(data.get("traces_trained", 0))
    guide.history = [tuple(h) for h in data.get("history", [])]
    guide.metadata = dict(data.get("metadata", {}))
    guide.last_run = _run_stats(data.get("last_run"))
    if model is not None:
        guide.bind_model(model, model_args, model_kwargs)
    return guide


def _run_stats(d):
    try:
        from .train import RunStats
    except ImportError:
        return d
    return RunStats.from_dict(d) if isinstance(d, dict) else d
