"""A guide's save file: what :meth:`Guide.save` writes and :func:`load` reads.

The file is a ``torch.save`` archive of plain data (read back with ``weights_only=True``):
the network's settings, the address table, the state dict and the optimiser's state, with
the training history and metadata.  Files of format version 1 are upgraded as they load
(:mod:`infcomp.legacy`), tensors unchanged.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import zipfile

import torch

from . import legacy
from .devices import checked_device
from .guide import Guide, one_encoder
from .nn.encoders import CNNConfig
from .nn.network import InferenceNetwork, NetworkConfig
from .nn.proposals import family_class, is_builtin
from .traces import ObservationSpec, SiteSpec

__all__ = ["save", "load", "check_writable", "output_lock", "FORMAT", "VERSION"]

FORMAT = "infcomp-guide"
VERSION = 2
#: What a network setting meant in files of any version saved before it existed (they lack its key;
#: version-1 files come here through legacy.upgrade).
SETTINGS_BEFORE_THEY_EXISTED = {"tokens": 0}


def _plain(run):
    return run.to_dict() if hasattr(run, "to_dict") else run


def save(guide: Guide, path) -> None:
    """Write ``guide`` to ``path`` through a temporary file of its own beside it, so a save cut
    short leaves the old file whole and no temporary file behind, and saves at once to one path
    do not collide.  A ``path`` that is a directory, or whose directory is missing, is an error
    naming it."""
    net = guide.network
    path = os.fspath(path)
    _check_target(path)
    data = {
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
        "argument_digests": dict(guide.argument_digests),
    }
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".saving", dir=_parent(path))
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(data, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _parent(path) -> str:
    return os.path.dirname(os.path.abspath(path))


def _check_target(path):
    """IsADirectoryError or FileNotFoundError, naming ``path``, where no file can be saved there."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot save a guide to {path}: it is a directory (give a file name, e.g. guide.pt)")
    if not os.path.isdir(_parent(path)):
        raise FileNotFoundError(f"cannot save a guide to {path}: the directory {_parent(path)} does not exist")


def check_writable(path, what="checkpoint"):
    """ValueError naming ``what`` and ``path`` unless a guide can be saved there: its directory
    exists and a file can be created in it (one is, and removed at once)."""
    path = os.fspath(path)
    try:
        _check_target(path)
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".probe", dir=_parent(path))
        os.close(fd)
        os.remove(tmp)
    except OSError as e:
        reason = e.strerror if e.filename else str(e)
        raise ValueError(f"{what} {path} cannot be written ({reason}): give a file in a writable directory") from None


_held = {}  # real path -> [lock file descriptor, holders in this process]


@contextlib.contextmanager
def output_lock(path, what="checkpoint"):
    """Hold the lock on the output file ``path`` (``fcntl.flock`` on ``path + ".lock"``) for the
    block; ValueError naming the file at once if another process holds it.  Re-entrant within a
    process; the lock file is removed when the last holder lets go."""
    key = os.path.realpath(os.fspath(path))
    if key in _held:
        _held[key][1] += 1
    else:
        _held[key] = [_acquire(key + ".lock", path, what), 1]
    try:
        yield
    finally:
        _held[key][1] -= 1
        if _held[key][1] == 0:
            fd = _held.pop(key)[0]
            with contextlib.suppress(OSError):
                os.remove(key + ".lock")
            os.close(fd)  # closing releases the lock


def _acquire(lock, path, what) -> int:
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ValueError(f"{what} {path} cannot be locked ({e.strerror}): give a file in a writable directory") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = "compile" if what in ("checkpoint", "--out") else "process"
            raise ValueError(f"{what} {path} is in use by another {holder} (it holds {lock}): wait for it to "
                             "end, or give another one") from None
        try:
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed that lock file as we took it: take the new one


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
    _check_archive(path)
    try:
        data = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # pickle, zip or unpickling errors: not our file (torch's own advice is not ours to give)
        raise _corrupt(path, f"its contents do not read as a guide's plain data ({type(e).__name__})") from None
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


def _check_archive(path) -> None:
    """ValueError naming ``path`` unless it is a zip archive (what ``torch.save`` writes) whose
    every member matches its CRC; FileNotFoundError if there is no such file."""
    if not isinstance(path, (str, os.PathLike)):
        return  # a file object: torch.load reads it as it is
    if not os.path.exists(path):
        raise FileNotFoundError(f"no guide file {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise _corrupt(path, f"it is not a sound torch archive ({type(e).__name__})") from None
    if bad is not None:
        raise _corrupt(path, f"its member {bad!r} fails its checksum (the file was damaged after it was saved)")


def _non_finite(tree, where=""):
    """The path of the first floating tensor in nested dicts and lists ``tree`` that holds NaN or
    an infinity, or None."""
    if torch.is_tensor(tree):
        ok = not (tree.is_floating_point() or tree.is_complex()) or bool(torch.isfinite(tree).all())
        return None if ok else where or "tensor"
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    for key, value in items:
        hit = _non_finite(value, f"{where}.{key}" if where else str(key))
        if hit is not None:
            return hit
    return None


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
    cfg = NetworkConfig(**{**SETTINGS_BEFORE_THEY_EXISTED, **data["config"]})
    cnn = CNNConfig(**data["encoder"]["cnn"])
    obs_specs = {d["name"]: ObservationSpec.from_dict(d) for d in data["obs_specs"]}
    net = InferenceNetwork(obs_specs, cfg, encoder, cnn, _families(path, data["families"], families))
    for d in data["sites"]:
        net.add_site(SiteSpec.from_dict(d))
    state = data["state_dict"]
    bad = _non_finite({"state_dict": state, "optimizer": data.get("optimizer")})
    if bad is not None:
        raise _corrupt(path, f"its tensor {bad!r} holds NaN or infinite values")
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
    device = checked_device(device)
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
    guide.argument_digests = dict(data.get("argument_digests", {}))
    if model is not None:
        guide.bind_model(model, model_args, model_kwargs)
    return guide


def _run_stats(d):
    try:
        from .train import RunStats
    except ImportError:
        return d
    return RunStats.from_dict(d) if isinstance(d, dict) else d
