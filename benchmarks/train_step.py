"""Time one training step of a CAPTCHA breaker's network: forward and backward of -log q on a batch.

    python benchmarks/train_step.py [--styles baidu2011,ebay] [--batch-size 64] [--passes 8] [--runs 4]
                                    [--config '{"column_rnn": 32}'] [--with-optimizer]

Isolates the network's cost from trace generation (see `captcha.py` for whole compiles). On
one thread: per style, a freshly built network, one batch of prior traces, ``--runs`` timings
of ``--passes`` steps each; prints every run's ms per batch, the median and the best, and the
traces/s that the median means for the trainer alone. A step is the forward and backward pass of
``-log q``; with ``--with-optimizer``, the trainer's whole step (:meth:`infcomp.train.Trainer.step`:
also the gradient clipping and the Adam update), as a compile takes it. To compare two versions of the library,
run the same script against each (``git worktree add /tmp/old COMMIT`` then
``PYTHONPATH=/tmp/old python benchmarks/train_step.py``), alternating, on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import infcomp
from infcomp.data import collate
from infcomp.traces import PriorSampler
from infcomp.train import Trainer
from infcomp_models.captcha import get_style
from infcomp_models.captcha.breaker import compile_breaker


def time_step(style_name, batch_size, passes, runs, config=None, with_optimizer=False):
    style = get_style(style_name)
    guide = compile_breaker(style, num_traces=batch_size, workers=0, seed=0, progress=False, config=config)
    sampler = PriorSampler(style.model, ("image",), (), {})
    batch = collate([sampler.sample() for _ in range(batch_size)], sampler.specs)
    net = guide.network
    trainer = Trainer(guide, sampler, [sampler.sample()], 3e-3, batch_size, "cpu") if with_optimizer else None

    def step():
        if trainer is not None:
            return trainer.step(batch)
        net.zero_grad()
        loss = -net.log_q(batch).mean()
        loss.backward()
        return float(loss.detach())

    loss = step()  # warm up (and the figure to check two versions compute the same)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        for _ in range(passes):
            step()
        times.append(1000 * (time.perf_counter() - t) / passes)
    return loss, times


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--styles", default="baidu2011")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--passes", type=int, default=8)
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--config", type=json.loads, default=None, help="NetworkConfig fields as JSON")
    p.add_argument("--with-optimizer", action="store_true",
                   help="time the trainer's whole step (clipping and the Adam update too)")
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"infcomp from {infcomp.__file__}; torch {torch.__version__}, one thread, batch {args.batch_size}, "
          f"config {args.config or 'default'}, {'whole step' if args.with_optimizer else 'forward and backward'}")
    for name in args.styles.split(","):
        loss, times = time_step(name, args.batch_size, args.passes, args.runs, args.config, args.with_optimizer)
        med = statistics.median(times)
        print(f"{name:12s} loss {loss:.4f}  ms/batch " + " ".join(f"{t:.1f}" for t in times)
              + f"  median {med:.1f}, best {min(times):.1f}  ({1000 * args.batch_size / med:.0f} traces/s for the trainer alone)")


if __name__ == "__main__":
    main()
