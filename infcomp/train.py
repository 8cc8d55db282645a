"""Compilation: train the guide on the model's own prior draws, loss ``-log q(latents | observation)``.

Traces stream from worker processes; the main process takes Adam steps on
batches grouped by structure (each batch once, or more often with data echoing:
:class:`~infcomp.data.Echo`).  Addresses met for the first time get their
modules at once and join the optimiser as a new parameter group, so the state
of every existing parameter is kept.  A fixed validation set of traces tracks
progress; ``num_traces`` or ``minutes`` ends the run; a guide passed back in
resumes where it stopped, optimiser state included.
"""

from __future__ import annotations

import copy
import math
import os
import time

import pyro
import torch
from tqdm.auto import tqdm

from .data import Echo, batch_stream, collate
from .guide import Guide, build_guide, default_lr
from .threads import limited_threads
from .traces import PriorSampler, normalize_observe

__all__ = ["compile", "Trainer"]


def _check_validation(records, observe):
    if not any(r.structure for r in records):
        raise ValueError(
            f"the model has no latent sites (only {list(observe)} and fixed data): there is nothing to infer"
        )
    first = records[0].observation
    for r in records[1:]:
        for n, v in r.observation.items():
            if v.shape != first[n].shape:
                raise ValueError(
                    f"observed site {n!r} changes shape between runs ({tuple(first[n].shape)} vs {tuple(v.shape)}): "
                    "an observation must have one shape"
                )


class Trainer:
    """One training run of a guide: the optimiser, the validation set and the step."""

    def __init__(self, guide: Guide, sampler: PriorSampler, validation, lr, batch_size, device):
        self.guide, self.sampler = guide, sampler
        self.batch_size, self.lr = batch_size, lr
        self.device = torch.device(device)
        net = guide.network
        core = [p for n, p in net.named_parameters() if not n.startswith("sites.")]
        # fused: one kernel per parameter group, not a dozen tensor ops per parameter (ebay's whole
        # step on one thread, the two alternated in one process: 208 against 241 ms, session 21)
        self.optimizer = torch.optim.Adam([{"params": core}], lr=lr, fused=True)
        for name in net.specs:  # one group per address, in the order the addresses were added
            self.optimizer.add_param_group({"params": net.own_parameters(name)})
        if guide.optimizer_state is not None:
            self.optimizer.load_state_dict(copy.deepcopy(guide.optimizer_state))
            for g in self.optimizer.param_groups:  # a saved state brings its own settings: set ours again
                g.update(lr=lr, fused=True, foreach=None)
        self.add_sites(sampler.specs)
        self.validation = [
            collate(validation[i : i + batch_size], sampler.specs).to(self.device)
            for i in range(0, len(validation), batch_size)
        ]

    def add_sites(self, specs: dict):
        net = self.guide.network
        for name, spec in specs.items():
            if name not in net.specs:
                self.optimizer.add_param_group({"params": net.add_site(spec)})

    def set_progress(self, fraction: float):
        """Constant learning rate for the first half of the run, then a cosine decay to 5% of it."""
        f = min(max((fraction - 0.5) / 0.5, 0.0), 1.0)
        scale = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * f))
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr * scale

    def step(self, batch) -> float:
        self.add_sites(batch.specs)
        loss = -self.guide.network.log_q(batch.to(self.device)).mean()
        if loss.requires_grad:  # false only when no address in the batch has a head
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.guide.network.parameters(), 100.0)
            self.optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def validation_loss(self) -> float:
        total = sum(float(-self.guide.network.log_q(b).sum()) for b in self.validation)
        return total / sum(b.size for b in self.validation)


def compile(
    model,
    observe,
    num_traces=None,
    *,
    minutes=None,
    model_args=(),
    model_kwargs=None,
    guide=None,
    batch_size=64,
    lr=None,
    workers=None,
    echo=1.0,
    threads=None,
    seed=None,
    device="cpu",
    embedding=None,
    config=None,
    validation_size=512,
    validate_every=2.0,
    checkpoint=None,
    checkpoint_every=5.0,
    metadata=None,
    progress=True,
) -> Guide:
    """Compile ``model`` into a guide by training on its prior draws.

    :param observe: the observed site name, or a list of them.
    :param num_traces: stop after this many training traces (default 10,000 if ``minutes`` is not given).
    :param minutes: stop after this much wall-clock time.
    :param guide: a guide to go on training (resumes its optimiser state).
    :param workers: processes drawing traces (default: the CPU cores, at most 4; 0 draws them in this process).
    :param echo: train on each batch of traces this many times in all, the repeats at random later
        steps (data echoing, see :class:`~infcomp.data.Echo`): more steps per hour where drawing a
        trace costs about as much as a step on it; ``num_traces`` counts fresh traces.
    :param threads: torch threads for the gradient steps (default: the cores the workers leave, at least one).
    :param seed: makes the run reproducible (for a fixed number of workers).
    :param embedding: a ``torch.nn.Module`` mapping a batch of observations to ``[B, dim]`` (a new guide only).
    :param config: a :class:`~infcomp.nn.network.NetworkConfig` or dict of its fields, for a new
        guide; with ``guide=``, a field that differs from the guide's own is an error.
    :param lr: Adam's learning rate (default 3e-3; 1e-3 for an image embedding built without
        ``conv_norm``, whose CNN stalls on noisy images at the higher rate).  With the norm, on
        baidu2011 CAPTCHAs 2e-3 and 4e-3 reach a validation loss 3.3 and 3.6 nats below 1e-3's in
        10 minutes with ``echo=3``, and 2e-3 2.2 nats below without echo (``benchmarks/README.md``).
    :param validate_every: seconds between validation-loss evaluations.
    :param checkpoint: a file the guide is saved to every ``checkpoint_every`` minutes, at the
        end, and when the run is interrupted (``KeyboardInterrupt`` is re-raised after the
        save); ``compile(..., guide=infcomp.load(checkpoint))`` goes on from there.
    :param metadata: entries for ``guide.metadata`` (saved with the guide, checkpoints included).
    """
    observe = normalize_observe(observe)
    if num_traces is None and minutes is None:
        num_traces = 10_000
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    if seed is not None:
        pyro.set_rng_seed(seed)
    model_kwargs = dict(model_kwargs or {})
    sampler = PriorSampler(model, observe, model_args, model_kwargs)

    validation = [sampler.sample() for _ in range(validation_size)]
    _check_validation(validation, observe)
    guide = build_guide(model, observe, validation, model_args, model_kwargs, guide=guide, embedding=embedding,
                        config=config, device=device)
    if lr is None:
        lr = default_lr(guide)
    guide.metadata.update(metadata or {})
    trainer = Trainer(guide, sampler, validation, lr, batch_size, device)
    guide.invalidate()

    stream_seed = (seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()))) + guide.traces_trained
    # the trainer keeps the cores the workers leave; NumPy in a simulator (workers=0) stays on one thread
    if threads is not None:
        torch_threads = threads
    else:
        torch_threads = max(1, (os.cpu_count() or 1) - workers) if workers > 0 else torch.get_num_threads()
    with limited_threads(torch_threads):
        stream = Echo(batch_stream(sampler, batch_size, stream_seed, workers), echo, seed=stream_seed)
        start = time.perf_counter()
        deadline = start + 60 * minutes if minutes is not None else math.inf
        target = num_traces if num_traces is not None else math.inf
        done, seen, steps, last_val, val = 0, 0, 0, -math.inf, float("nan")
        waited, val_cost = 0.0, 0.0
        bar = tqdm(
            total=num_traces if num_traces is not None else None,
            disable=not progress,
            unit="trace",
            desc="compiling",
            smoothing=0.1,
        )
        last_save = start

        def snapshot(interrupted=False) -> Guide:
            return _finish(guide, trainer, done, seen, steps, time.perf_counter() - start, val, waited, interrupted)

        try:
            while done < target and time.perf_counter() < deadline:
                t0 = time.perf_counter()
                batch, fresh = next(stream)
                waited += time.perf_counter() - t0
                trainer.set_progress(max(done / target, (time.perf_counter() - start) / (deadline - start)))
                loss = trainer.step(batch)
                seen, steps = seen + batch.size, steps + 1
                if fresh:
                    done += batch.size
                    guide.traces_trained += batch.size
                    bar.update(batch.size)
                now = time.perf_counter()
                # validate every `validate_every` seconds, but never spend over a tenth of the time on it
                if now - last_val >= max(validate_every, 10 * val_cost) or done >= target or now >= deadline:
                    val = trainer.validation_loss()
                    last_val = time.perf_counter()
                    val_cost = last_val - now
                    guide.history.append((guide.traces_trained, loss, val))
                    bar.set_postfix(loss=f"{loss:.3f}", val=f"{val:.3f}", refresh=False)
                if checkpoint is not None and now - last_save >= 60 * checkpoint_every:
                    snapshot().save(checkpoint)
                    last_save = time.perf_counter()
        except KeyboardInterrupt:
            snapshot(interrupted=True)
            if checkpoint is not None:
                guide.save(checkpoint)
            raise
        finally:
            bar.close()
            del stream
        snapshot()
    if checkpoint is not None:
        guide.save(checkpoint)
    return guide


def _finish(guide, trainer, done, seen, steps, elapsed, val, waited, interrupted=False) -> Guide:
    """Put the run's optimiser state and figures on the guide (so it saves and resumes whole)."""
    guide.optimizer_state = trainer.optimizer.state_dict()
    guide.last_run = {
        "traces": done,
        "seconds": elapsed,
        "traces_per_second": done / max(elapsed, 1e-9),
        "trained_traces_per_second": seen / max(elapsed, 1e-9),  # repeats of echoed batches included
        "steps": steps,
        "validation_loss": val,
        "waiting_for_data_seconds": waited,  # high: trace generation is the bottleneck (more workers may help)
        "interrupted": interrupted,
    }
    return guide
