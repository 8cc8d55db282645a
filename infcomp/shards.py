"""Trace datasets on disk: prior traces drawn once, trained on for epochs, by any number of ranks.

:func:`save_traces` writes a folder of *shards* in the safetensors format (a JSON header and
raw little-endian tensors: readable from Python with ``safetensors``, NumPy or PyTorch, from
Rust, or by hand), and an ``index.json`` that names the dataset's settings::

    DIR/index.json              {"format": "infcomp-traces", "version": 1, "observe": [...],
                                 "seed": ..., "shard_size": ..., "num_traces": ..., "observations": ...}
    DIR/shard-000000.safetensors
    DIR/shard-000001.safetensors ...

Shard ``i`` holds the ``shard_size`` traces drawn from seed :func:`shard_seed` ``(seed, i)``
(the last one fewer), grouped by trace structure: for the ``g``-th structure met in the shard,
tensor ``g{g}/v{t}`` stacks the value of its ``t``-th address over the shard's traces of that
structure (``[n, *value_shape]``), ``g{g}/c{t}`` their prior contexts (what the address's
proposal family reads of its prior, ``[n, *value_shape, c]``) and ``g{g}/o{k}`` the value at the
``k``-th observed site.  The header's metadata key ``"infcomp"`` holds, as JSON, the structures
(address lists) and counts, the address table (:class:`~infcomp.traces.SiteSpec` of each
address) and, per observed site, how it is stored.  Observations are stored as drawn
(``observations="exact"``), or ``"uint8"``: each observed site of each shard quantised to 256
levels between its minimum and maximum there, ``x = low + step * q``, at most ``step / 2`` off
(both in the header): a quarter of float32's size, for images whose noise is far above the step.

Every shard is written to a temporary file and renamed, so a folder holds only whole shards: a
run cut short is resumed by calling :func:`save_traces` again with the same settings, and
draws only the shards missing, the same traces it would have drawn.
"""

from __future__ import annotations

import json
import os
import random
import tempfile

import pyro
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from .files import output_lock
from .data import FailureWindow, _init_worker, collate, draw_records
from .rng import fork_rng
from .traces import PriorSampler, SiteSpec, TraceRecord, check_consistent, resolve_observe

__all__ = ["save_traces", "TraceShards", "ShardStream", "shard_batches", "Mixed", "shard_seed", "FORMAT", "VERSION", "OBSERVATIONS"]

FORMAT, VERSION = "infcomp-traces", 1
OBSERVATIONS = ("exact", "uint8")
_SETTINGS = ("observe", "seed", "shard_size", "num_traces", "observations")  # what a resumed run must repeat


def shard_seed(seed: int, index: int) -> int:
    """The seed shard ``index`` of a dataset written with ``seed`` draws its traces from."""
    return seed + 7919 * (index + 1)


def _shard_name(index: int) -> str:
    return f"shard-{index:06d}.safetensors"


# -- writing ------------------------------------------------------------------------------

def _quantised(x: torch.Tensor):
    """``x`` as uint8 levels between its minimum and maximum: ``(levels, low, step)``."""
    x = x.double()
    low, high = float(x.min()), float(x.max())
    step = (high - low) / 255 if high > low else 1.0
    return ((x - low) / step).round().clamp(0, 255).to(torch.uint8), low, step


def _shard_tensors(records: list, observe: tuple, specs: dict, observations: str):
    """The tensors and the JSON header of one shard of ``records`` (the format above)."""
    groups = {}
    for r in records:
        groups.setdefault(r.structure, []).append(r)
    tensors, observed = {}, [{"name": n} for n in observe]
    for g, (structure, rs) in enumerate(groups.items()):
        for t in range(len(structure)):
            tensors[f"g{g}/v{t}"] = torch.stack([r.values[t] for r in rs])
            tensors[f"g{g}/c{t}"] = torch.stack([r.contexts[t] for r in rs])
        for k, name in enumerate(observe):
            tensors[f"g{g}/o{k}"] = torch.stack([r.observation[name] for r in rs])
    for k, entry in enumerate(observed):
        parts = [key for key in tensors if key.endswith(f"/o{k}")]
        first = tensors[parts[0]]
        entry.update(shape=list(first.shape[1:]), dtype=str(first.dtype).replace("torch.", ""))
        entry["stored"] = entry["dtype"]
        if observations == "uint8" and first.is_floating_point() and first.numel():
            flat = torch.cat([tensors[p].reshape(-1) for p in parts])
            if not bool(torch.isfinite(flat).all()):
                raise ValueError(f"observed site {entry['name']!r} has values that are not finite: observations='uint8' "
                                 "cannot store them (use observations='exact')")
            levels, low, step = _quantised(flat)
            for p, q in zip(parts, levels.split([tensors[p].numel() for p in parts])):
                tensors[p] = q.view(tensors[p].shape)
            entry.update(stored="uint8", low=low, step=step)
    used = dict.fromkeys(n for s in groups for n in s)
    header = {"structures": [list(s) for s in groups], "counts": [len(rs) for rs in groups.values()],
              "sites": [specs[n].to_dict() for n in used], "observed": observed}
    return {k: v.contiguous() for k, v in tensors.items()}, header


def _write_shard(path: str, tensors: dict, header: dict):
    """``tensors`` to ``path`` through a temporary file renamed into place (never half a shard)."""
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".writing", dir=os.path.dirname(path))
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": FORMAT, "version": str(VERSION), "infcomp": json.dumps(header)})
        _sync(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _sync(path):
    """Flush ``path``'s data to the disk, so that a crash after the rename leaves a whole file."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


class _ShardWriter(Dataset):
    """Item ``i``: draw and write the missing shard ``todo[i]``; returns ``(traces, failed traces,
    the last failure)``.  A worker process (or this one) draws each shard from its own seed."""

    def __init__(self, sampler, path, settings, todo, max_failure_rate):
        self.sampler, self.path, self.settings, self.todo = sampler, path, settings, todo
        self.max_failure_rate = max_failure_rate

    def __len__(self):
        return len(self.todo)

    def __getitem__(self, i):
        index, s = self.todo[i], self.settings
        n = min(s["shard_size"], s["num_traces"] - index * s["shard_size"])
        failures = FailureWindow(self.max_failure_rate, max(n, 100))
        pyro.set_rng_seed(shard_seed(s["seed"], index))
        records = draw_records(self.sampler, n, failures, f"shard {index} of {self.path}")
        tensors, header = _shard_tensors(records, self.sampler.observe, self.sampler.specs, s["observations"])
        _write_shard(os.path.join(self.path, _shard_name(index)), tensors, header)
        return n, failures.failures, failures.last


def _checked_folder(path, settings) -> bool:
    """Whether ``path`` holds a dataset with ``settings`` already (True) or is new or empty (False);
    else a ValueError naming the setting that differs, or the folder."""
    if os.path.exists(os.path.join(path, "index.json")):
        have = TraceShards(path).settings
        for key in _SETTINGS:
            if have.get(key) != settings[key]:
                raise ValueError(f"{path} holds a trace dataset written with {key}={have.get(key)!r}, not "
                                 f"{settings[key]!r}: to go on writing it repeat its settings; else give another folder")
        return True
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise ValueError(f"{path} is not empty and holds no trace dataset (no index.json): give a new or empty folder")
    return False


def _start_folder(path, settings, exists: bool) -> None:
    """Write ``path``'s ``index.json`` where it has none; remove the temporary files of a write
    that was cut short (the caller holds the folder's lock, so no other writer is using them)."""
    if exists:
        for name in os.listdir(path):
            if name.endswith(".writing"):
                os.remove(os.path.join(path, name))
        return
    os.makedirs(path, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path, suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump({"format": FORMAT, "version": VERSION, **settings}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(path, "index.json"))


def save_traces(model, path, num_traces: int, *, observe, model_args=(), model_kwargs=None, shard_size: int = 1024,
                seed: int = 0, workers: int | None = None, observations: str = "exact", max_failure_rate: float = 0.1,
                families=(), progress: bool = True) -> TraceShards:
    """Draw ``num_traces`` prior traces of ``model`` and write them to the folder ``path`` (the format
    above); returns the dataset, for ``compile(..., traces=path)``.

    :param observe: the observed site name, or a list of them (stored as the traces' data); or a
        compiled regular expression or a callable ``(name) -> bool`` picking them, as for
        :func:`~infcomp.compile` (the names it picks are the dataset's settings).
    :param shard_size: traces per shard file (the last one fewer).
    :param seed: shard ``i`` draws from :func:`shard_seed` ``(seed, i)``: the dataset is the same
        however many ``workers`` write it, and however often it was resumed.
    :param workers: processes writing shards (default: the CPU cores, at most 4; 0: this one).
    :param observations: ``"exact"`` (stored as drawn) or ``"uint8"`` (quantised per shard, see above).
    :param max_failure_rate: a trace whose model run raises is skipped and another drawn; above
        this share of a shard's runs the run stops with :class:`~infcomp.data.ModelFailureError`
        (the shards already written stay: a resumed run redraws only the missing ones).
    :param families: proposal family classes to fit to the sites, beyond the registered ones.

    A folder that holds a dataset written with other settings, or files that are not one, is a
    ValueError before any trace is drawn.
    """
    from .nn.proposals import make_families

    if isinstance(num_traces, bool) or not isinstance(num_traces, int) or num_traces < 1:
        raise ValueError(f"num_traces must be a positive int, got {num_traces!r}")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive int, got {shard_size!r}")
    if observations not in OBSERVATIONS:
        raise ValueError(f"observations must be one of {list(OBSERVATIONS)}, got {observations!r}")
    path = os.fspath(path)
    observe = resolve_observe(model, observe, model_args, model_kwargs)  # a pattern's names: one run of the model
    settings = {"observe": list(observe), "seed": int(seed), "shard_size": shard_size,
                "num_traces": num_traces, "observations": observations}
    _checked_folder(path, settings)  # before any work; again under the lock, before any file
    sampler = PriorSampler(model, settings["observe"], model_args, model_kwargs, make_families(families))
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # where the lock file goes
    with fork_rng(int(seed)), output_lock(path, "trace dataset"):  # the caller's generators as they were
        draw_records(sampler, 1, FailureWindow(max_failure_rate))  # the model's errors here, before any file
        sampler.validate = False  # Pyro's argument checks ran on that trace
        _start_folder(path, settings, _checked_folder(path, settings))
        shards = TraceShards(path)
        todo = [i for i, f in enumerate(shards.files) if not os.path.exists(f)]
        done = num_traces - sum(min(shard_size, num_traces - i * shard_size) for i in todo)
        writer = _ShardWriter(sampler, path, settings, todo, max_failure_rate)
        loader = DataLoader(writer, batch_size=None, num_workers=min(workers, len(todo)), worker_init_fn=_init_worker)
        failed = 0
        with tqdm(total=num_traces, initial=done, unit="trace", desc="writing traces", disable=not progress) as bar:
            for n, shard_failed, _ in loader:
                bar.update(n)
                failed += shard_failed
                if failed:
                    bar.set_postfix(failed=failed, refresh=False)
    return shards


# -- reading ------------------------------------------------------------------------------

class TraceShards:
    """A trace dataset on disk (:func:`save_traces`): its settings and its shards, read as trace
    records.  ValueError naming ``path`` where it holds no dataset of this format, or an
    incomplete one (shards missing: resume :func:`save_traces` with its settings)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        index = os.path.join(self.path, "index.json")
        try:
            with open(index) as f:
                self.settings = json.load(f)
        except FileNotFoundError:
            raise ValueError(f"{self.path} holds no trace dataset: no index.json (write one with "
                             "infcomp.save_traces)") from None
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{index} cannot be read as a trace dataset's index: {e}") from None
        if self.settings.get("format") != FORMAT or self.settings.get("version") != VERSION:
            raise ValueError(f"{index} is not an {FORMAT} index of version {VERSION}")
        count = -(-self.settings["num_traces"] // self.settings["shard_size"])
        self.files = [os.path.join(self.path, _shard_name(i)) for i in range(count)]
        self._headers = None

    @property
    def observe(self) -> tuple:
        return tuple(self.settings["observe"])

    @property
    def num_traces(self) -> int:
        return self.settings["num_traces"]

    def check_complete(self):
        missing = [f for f in self.files if not os.path.exists(f)]
        if missing:
            raise ValueError(f"{self.path}: {len(missing)} of its {len(self.files)} shards are missing "
                             f"(first {os.path.basename(missing[0])}): resume infcomp.save_traces with its settings")

    def headers(self) -> list:
        """Every shard's header, in shard order: read once, when first asked (every shard written)."""
        if self._headers is None:
            self._headers = [_header(f) for f in self.files]
        return self._headers

    def __getstate__(self):
        return {**self.__dict__, "_headers": None}  # a reader process reads only its own shards' headers

    def observed(self) -> dict:
        """``{site: (shape, dtype)}`` of each observed site as drawn (one trace's, not the stored
        form); ValueError naming the shard where two shards disagree."""
        out = {}
        for f, header in zip(self.files, self.headers()):
            for e in header["observed"]:
                if "shape" not in e:
                    raise ValueError(f"{f} was written by an earlier infcomp that did not record the observations' "
                                     "shape: write the dataset again with infcomp.save_traces")
                have = (tuple(e["shape"]), e["dtype"])
                if out.setdefault(e["name"], have) != have:
                    raise ValueError(f"{f}: observed site {e['name']!r} is {have}, but {out[e['name']]} in an "
                                     "earlier shard of the dataset")
        return out

    def specs(self) -> dict:
        """The address table of every shard, ``{name: SiteSpec}`` (ValueError where two shards disagree)."""
        out = {}
        for header in self.headers():
            for d in header["sites"]:
                spec = SiteSpec.from_dict(d)
                if spec.name in out:
                    check_consistent(out[spec.name], spec)
                out.setdefault(spec.name, spec)
        return out

    def records(self, file) -> list:
        """The trace records of one shard file, in its structure groups' order."""
        tensors, header = load_file(file), _header(file)
        out = []
        for g, (structure, n) in enumerate(zip(header["structures"], header["counts"])):
            values = [tensors[f"g{g}/v{t}"] for t in range(len(structure))]
            contexts = [tensors[f"g{g}/c{t}"] for t in range(len(structure))]
            observed = [_restored(tensors[f"g{g}/o{k}"], e) for k, e in enumerate(header["observed"])]
            for j in range(n):
                out.append(TraceRecord(tuple(structure), tuple(v[j] for v in values), tuple(c[j] for c in contexts),
                                       {e["name"]: o[j] for e, o in zip(header["observed"], observed)}))
        return out


def _header(file) -> dict:
    from safetensors import safe_open

    with safe_open(file, "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT or "infcomp" not in meta:
        raise ValueError(f"{file} is not a shard of an {FORMAT} dataset")
    return json.loads(meta["infcomp"])


def _restored(t, entry):
    if entry["stored"] == entry["dtype"]:  # stored as drawn
        return t
    return (entry["low"] + entry["step"] * t.double()).to(getattr(torch, entry["dtype"]))


class ShardStream(IterableDataset):
    """Batches of ``batch_size`` stored traces for ``epochs`` passes, as ``(batch, fresh)`` (fresh in
    the first pass only); each rank reads its own share of the shards (every ``world``-th from
    ``rank``), each DataLoader worker its share of those.  Every pass visits the share's shards in
    a new order and shuffles traces across ``buffer`` shards at a time, from ``seed``."""

    def __init__(self, shards: TraceShards, specs: dict, batch_size: int, epochs: int, seed: int, rank=0, world=1,
                 buffer: int = 4):
        self.shards, self.specs, self.batch_size, self.epochs = shards, specs, batch_size, epochs
        self.seed, self.rank, self.world, self.buffer = seed, rank, world, buffer

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        files = self.shards.files[self.rank::self.world][worker::workers]
        rng = random.Random(self.seed + 104729 * worker)
        for epoch in range(self.epochs):
            order = rng.sample(files, len(files))
            for i in range(0, len(order), self.buffer):
                pool = [r for f in order[i:i + self.buffer] for r in self.shards.records(f)]
                rng.shuffle(pool)
                for j in range(0, len(pool), self.batch_size):
                    yield collate(pool[j:j + self.batch_size], self.specs), epoch == 0


def shard_batches(shards: TraceShards, specs: dict, batch_size: int, epochs: int, seed: int, workers: int,
                  rank: int = 0, world: int = 1, pin: bool = False):
    """An iterator of :class:`ShardStream`'s ``(batch, fresh)`` pairs, read and collated in
    ``workers`` processes (0: in this one), each batch put in pinned memory with ``pin``."""
    stream = ShardStream(shards, specs, batch_size, epochs, seed, rank, world)
    if workers == 0:
        return iter(stream)
    return iter(DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=4,
                           worker_init_fn=_init_worker, pin_memory=pin))


class Mixed:
    """Stored ``(batch, fresh)`` pairs with fresh prior ones mixed in: before each stored batch, with
    probability ``share``, a batch of ``prior`` (an :class:`~infcomp.data.Echo`) comes instead.
    Ends with the stored batches (``finite``: its end is the run's), or where the prior's stream
    ends (``stalled``: a deadline passed while waiting for fresh traces)."""

    finite = True

    def __init__(self, stored, prior, share: float, seed: int):
        self.stored, self.prior, self.share = stored, prior, share
        self.rng = random.Random(seed)
        self.stalled = False  # the prior's stream ended: a deadline passed while waiting for fresh traces

    def __iter__(self):
        return self

    def __next__(self):
        if self.prior is not None and self.rng.random() < self.share:
            try:
                return next(self.prior)
            except StopIteration:
                self.stalled = True
                raise
        return next(self.stored)
