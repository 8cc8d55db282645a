"""Scaling out: data-parallel compile on 1 rank against several, and trace datasets on disk.

    python benchmarks/scale.py [--quick] [--models gaussian branching baidu2011] [--ranks 1 2]
                               [--dataset-traces 4000] [--plot out/scale.png]

*Loss per trace.*  Each model is compiled from scratch for the same number of traces and the
same global batch (64 traces a step: one rank 64, two ranks 32 each, four 16), seed 0, under
``torchrun --standalone`` for more than one rank.  ``eval loss`` is the compiled guide's mean
``-log q`` (nats per trace) over one set of prior traces drawn from a fixed seed, the same for
every run (less a trace with an address one of the runs never met), and ``vs 1 rank`` its relative difference from the one-rank run's.  ``1 rank, seed 1``
is one rank again from another seed: the difference that chance alone makes, the yardstick for
the ranks'.  ``traces/s`` is over all ranks, with the cores split
between the ranks (``LOCAL_WORLD_SIZE``: each rank's trace workers and torch threads take its
share).  ``efficiency`` at R ranks is ``traces/s(R) / (R * traces/s(1 rank on a 1/R share of
the cores))``; it needs at least two cores a rank and is measured only where the machine has them.

*Trace datasets.*  ``infcomp.save_traces`` writes ``--dataset-traces`` traces of the CAPTCHA
style (uint8 images; and ``exact`` float32 for its size), timed; then the dataset is read back
(every shard, collated into batches of 64, in this process: ``read``), and compiled on for one
epoch (``compile``), against the fresh-draw compile's rate.  On a CUDA machine, the CAPTCHA
style is also compiled on the GPU by one rank whose trace workers take every core but one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import torch

import infcomp
from infcomp.data import collate
from infcomp.rng import fork_rng
from infcomp.shards import ShardStream
from infcomp.traces import PriorSampler
from infcomp_models import captcha
from infcomp_models import examples as ex

STYLE = "baidu2011"
# name: (model, observed site, traces to compile, validation traces)
MODELS = {
    "gaussian": (ex.gaussian, "y", 40_000, 2048),
    "branching": (ex.poisson_branching, "y", 40_000, 2048),
    STYLE: (captcha.get_style(STYLE).model, "image", 8_192, 512),
}
GLOBAL_BATCH = 64


def evaluation_losses(guides, model, observe, n) -> tuple[list, int]:
    """Each guide's mean ``-log q`` over one set of ``n`` prior traces drawn from a fixed seed (the
    same for every run, whatever its own seed), less the rare trace with an address one of the
    guides never met: ``(losses, traces left out)``, every guide weighed on the same traces."""
    known = set.intersection(*(set(g.network.specs) for g in guides))
    sampler = PriorSampler(model, observe, specs=dict(guides[0].network.specs))
    with fork_rng(12_345), torch.no_grad():
        drawn = [sampler.sample() for _ in range(n)]
        records = [r for r in drawn if set(r.structure) <= known]
        losses = [sum(float(-g.network.log_q(collate(records[i:i + 256], g.network.specs)).sum())
                      for i in range(0, len(records), 256)) / len(records) for g in guides]
    return losses, n - len(records)


def compile_job(name, traces, out, seed, device):
    """One rank's part of a run (run under torchrun, or alone): compile ``name`` from ``seed`` and,
    on rank 0, write its figures to ``out`` as JSON and its guide beside it."""
    model, observe, _, validation = MODELS[name]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    kwargs = {"encoder": captcha.get_style(STYLE).encoder} if name == STYLE else {}
    if device != "cpu":  # one rank feeding the device: every core draws traces
        kwargs["workers"] = max(1, (os.cpu_count() or 2) - 1)
    guide = infcomp.compile(model, observe, traces, batch_size=GLOBAL_BATCH // world, seed=seed,
                            validation_size=validation, progress=False, device=device, **kwargs)
    if int(os.environ.get("RANK", "0")) == 0:
        run = guide.last_run
        guide.network.cpu()
        guide.save(out + ".guide.pt")
        with open(out, "w") as f:
            json.dump({"traces": run.traces, "seconds": run.seconds, "rate": run.traces_per_second,
                       "history": guide.history}, f)


def launch(name, traces, ranks, cores_share=None, seed=0, device="cpu") -> dict:
    """Run :func:`compile_job` on ``ranks`` ranks (one: a plain process, on a ``1 / cores_share``
    share of the cores where given) and return rank 0's figures, its guide as ``"guide"``."""
    fd, out = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    job = [__file__, "--job", name, "--job-traces", str(traces), "--job-out", out, "--job-seed", str(seed),
           "--job-device", device]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    cores, share = os.cpu_count() or 1, None
    if ranks == 1:
        command = [sys.executable, *job]
        if cores_share:
            share = lambda: os.sched_setaffinity(0, range(cores // cores_share))  # noqa: E731
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), *job]
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=share)
    with open(out) as f:
        result = json.load(f)
    os.remove(out)
    result["wall"] = time.perf_counter() - start
    result["guide"] = infcomp.load(out + ".guide.pt")
    os.remove(out + ".guide.pt")
    return result


def loss_rows(args):
    rows = []
    for name in args.models:
        model, observe, full, validation = MODELS[name]
        traces = full // (8 if args.quick else 1)
        runs = [("1 rank", launch(name, traces, 1)), ("1 rank, seed 1", launch(name, traces, 1, seed=1))]
        runs += [(f"{r} ranks", launch(name, traces, r)) for r in args.ranks if r > 1]
        losses, left_out = evaluation_losses([run["guide"] for _, run in runs], model, observe, validation)
        for (label, run), loss in zip(runs, losses):
            rows.append({"model": name, "run": label, "traces": run["traces"], "loss": loss,
                         "vs": (loss - losses[0]) / abs(losses[0]), "rate": run["rate"], "history": run["history"]})
            print(f"{name} {label}: {run['traces']:,} traces, eval loss {loss:.4f} ({left_out} of {validation} "
                  f"evaluation traces left out), {run['rate']:.0f} traces/s", flush=True)
    return rows


def gpu_rate(args):
    """CAPTCHA training traces/s on this machine's GPU, one rank, every core but one drawing traces."""
    if not torch.cuda.is_available():
        return "GPU: not measured (no CUDA device)"
    run = launch(STYLE, MODELS[STYLE][2] // (8 if args.quick else 1), 1, device="cuda")
    return f"{STYLE} on {torch.cuda.get_device_name()}: {run['rate']:.0f} traces/s ({run['traces']:,} traces)"


def efficiency(args):
    """Traces/s at each rank count against one rank on its share of the cores: only with 2+ cores a rank."""
    cores, top = os.cpu_count() or 1, max(args.ranks)
    if cores < 2 * top:
        return f"efficiency: not measured ({cores} cores: {top} ranks need {2 * top})"
    lines = []
    for name in args.models:
        traces = MODELS[name][2] // (8 if args.quick else 1)
        for r in (x for x in args.ranks if x > 1):
            base = launch(name, traces, 1, cores_share=r)["rate"]
            lines.append(f"{name} {r} ranks: efficiency {launch(name, traces, r)['rate'] / (r * base):.2f}")
    return "\n".join(lines)


def dataset_rows(args, fresh_rate):
    style = captcha.get_style(STYLE)
    n, root = args.dataset_traces // (8 if args.quick else 1), tempfile.mkdtemp(prefix="scale-")
    rows = []
    try:
        for mode in ("uint8", "exact"):
            start = time.perf_counter()
            shards = infcomp.save_traces(style.model, os.path.join(root, mode), n, observe="image", observations=mode,
                                         progress=False)
            seconds = time.perf_counter() - start
            size = sum(os.path.getsize(f) for f in shards.files)
            rows.append((f"write ({mode})", n / seconds, size / n))
            print(f"wrote {n} traces ({mode}) in {seconds:.1f} s, {size / n / 1024:.1f} KiB a trace", flush=True)
        shards = infcomp.TraceShards(os.path.join(root, "uint8"))
        start = time.perf_counter()
        read = sum(b.size for b, _ in ShardStream(shards, shards.specs(), GLOBAL_BATCH, 1, seed=0))
        rows.append(("read (uint8)", read / (time.perf_counter() - start), None))
        guide = infcomp.compile(style.model, "image", traces=shards, batch_size=GLOBAL_BATCH, seed=0,
                                validation_size=MODELS[STYLE][3], encoder=style.encoder, progress=False)
        rows.append(("compile on it", guide.last_run.trained_traces_per_second, None))
        if fresh_rate:
            rows.append(("compile on fresh draws", fresh_rate, None))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def plot(rows, path):
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(r["model"] for r in rows))
    fig = Figure(figsize=(4 * len(names), 3.2))
    for ax, name in zip(fig.subplots(1, len(names), squeeze=False)[0], names):
        for r in (r for r in rows if r["model"] == name):
            if r["history"]:
                t, _, val = zip(*r["history"])
                ax.plot(t, val, label=r["run"], lw=1.5)
        ax.set_title(name)
        ax.set_xlabel("traces (all ranks)")
        ax.set_ylabel("validation loss")
        ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"saved {path}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: an eighth of the traces")
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--ranks", nargs="*", type=int, default=[1, 2])
    p.add_argument("--dataset-traces", type=int, default=4000)
    p.add_argument("--plot", default="out/scale.png", help="'' for no picture")
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.add_argument("--job-traces", type=int, help=argparse.SUPPRESS)
    p.add_argument("--job-out", help=argparse.SUPPRESS)
    p.add_argument("--job-seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--job-device", default="cpu", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.job:
        return compile_job(args.job, args.job_traces, args.job_out, args.job_seed, args.job_device)
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, CUDA {'yes' if torch.cuda.is_available() else 'no'}, "
          f"load average {os.getloadavg()[0]:.2f} at start", flush=True)
    rows = loss_rows(args)
    print("\n| model | run | traces | eval loss | vs 1 rank | traces/s |\n| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['run']} | {r['traces']:,} | {r['loss']:.4f} | {100 * r['vs']:+.2f}% | {r['rate']:.0f} |")
    print(efficiency(args))
    print(gpu_rate(args))
    fresh = next((r["rate"] for r in rows if r["model"] == STYLE and r["run"] == "1 rank"), None)
    data = dataset_rows(args, fresh)
    print(f"\n| {STYLE} dataset | traces/s | KiB a trace |\n| --- | --- | --- |")
    for what, rate, size in data:
        print(f"| {what} | {rate:.0f} | {'' if size is None else f'{size / 1024:.2f}'} |")
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
