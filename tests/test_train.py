"""The training run: the caller's random number generators, callbacks, the schedule, the budget,
interrupts, and a resumed run against a continued one."""

import math
import random

import numpy as np
import pyro
import pyro.util
import pytest
import torch

import infcomp
from infcomp.data import worker_seed
from infcomp.rng import SEED_BOUND, fork_rng
from infcomp.train import Budget, Callback, LearningRateSchedule, RunStats, Trainer
from infcomp_models.examples import gaussian, poisson_branching

Y = torch.tensor([8.0, 9.0])
SMALL = dict(observe="y", batch_size=64, validation_size=64, progress=False)


def draws():
    """The caller's next draws from every generator Pyro seeds."""
    return torch.rand(4), [random.random() for _ in range(4)], np.random.rand(4)


def same_draws(a, b):
    return torch.equal(a[0], b[0]) and a[1] == b[1] and np.array_equal(a[2], b[2])


def weights(guide):
    return {k: v.clone() for k, v in guide.network.state_dict().items() if torch.is_tensor(v)}


def equal_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- random number generators -------------------------------------------------------------
def test_fork_rng_draws_as_set_rng_seed_and_restores_the_callers_state():
    pyro.set_rng_seed(5)
    want = draws()
    pyro.set_rng_seed(123)
    state = pyro.util.get_rng_state()
    with fork_rng(5):
        got = draws()
        pyro.set_rng_seed(99)  # a reseed inside the block is undone with the rest
    assert same_draws(got, want)
    after = draws()
    pyro.util.set_rng_state(state)
    assert same_draws(after, draws())


@pytest.mark.parametrize("workers", [0, 1])
def test_seeded_compile_and_infer_leave_the_callers_draws_as_they_were(workers):
    pyro.set_rng_seed(123)
    draws()  # somewhere in the middle of the caller's streams
    state = pyro.util.get_rng_state()
    untouched = draws()
    pyro.util.set_rng_state(state)
    guide = infcomp.compile(gaussian, num_traces=256, seed=7, workers=workers, **SMALL)
    assert same_draws(draws(), untouched)

    pyro.util.set_rng_state(state)
    post = infcomp.infer(gaussian, guide, Y, num_samples=50, seed=3)
    assert same_draws(draws(), untouched)
    # the seed, not the caller's state, decides the run
    pyro.set_rng_seed(0)
    assert equal_weights(weights(infcomp.compile(gaussian, num_traces=256, seed=7, workers=workers, **SMALL)),
                         weights(guide))
    assert torch.equal(infcomp.infer(gaussian, guide, Y, num_samples=50, seed=3).log_weights, post.log_weights)


def test_an_unseeded_compile_advances_the_callers_rng_by_one_draw_and_does_not_reseed_it():
    pyro.set_rng_seed(11)
    state = pyro.util.get_rng_state()
    first = infcomp.compile(gaussian, num_traces=256, workers=0, **SMALL)
    after_first = draws()
    # what the caller's streams give after the one draw of the run's seed, and nothing else
    pyro.util.set_rng_state(state)
    run_seed = int(torch.randint(0, SEED_BOUND, ()))
    expected = draws()
    assert same_draws(after_first, expected)
    assert first.last_run.seed == run_seed
    # and not what they give had the stream seeded this process (compile draws with workers=0 here)
    pyro.set_rng_seed(worker_seed(run_seed + 0, 0))
    assert not torch.equal(after_first[0], torch.rand(4))

    pyro.util.set_rng_state(state)
    torch.randint(0, SEED_BOUND, ())
    draws()
    second = infcomp.compile(gaussian, num_traces=256, workers=0, **SMALL)  # the caller's RNG has moved on
    assert second.last_run.seed != run_seed
    assert not equal_weights(weights(first), weights(second))
    # the recorded seed reproduces the run
    again = infcomp.compile(gaussian, num_traces=256, workers=0, seed=first.last_run.seed, **SMALL)
    assert equal_weights(weights(again), weights(first))


def test_an_unseeded_infer_draws_from_the_callers_rng():
    guide = infcomp.compile(gaussian, num_traces=128, seed=0, workers=0, **SMALL)
    pyro.set_rng_seed(4)
    a = infcomp.infer(gaussian, guide, Y, num_samples=20)
    b = infcomp.infer(gaussian, guide, Y, num_samples=20)
    pyro.set_rng_seed(4)
    c = infcomp.infer(gaussian, guide, Y, num_samples=20)
    assert not torch.equal(a.log_weights, b.log_weights) and torch.equal(a.log_weights, c.log_weights)


# -- callbacks ------------------------------------------------------------------------------
class Recorder(Callback):
    def __init__(self, stop_after=None):
        self.events, self.stop_after = [], stop_after

    def on_start(self, trainer):
        self.trainer = trainer
        self.events.append(("start", trainer.stats.steps))

    def on_step(self, trainer, stats):
        self.events.append(("step", stats.steps, stats.traces, [g["lr"] for g in trainer.optimizer.param_groups]))
        if stats.steps == self.stop_after:
            trainer.stop()

    def on_end(self, trainer, stats):
        self.events.append(("end", stats.steps, stats.interrupted))
        self.final = stats


def test_callbacks_are_called_at_the_start_after_every_step_and_at_the_end():
    rec = Recorder()
    guide = infcomp.compile(gaussian, num_traces=320, seed=0, workers=0, validate_every=1e9, callbacks=[rec], **SMALL)
    assert rec.events[0] == ("start", 0) and rec.events[-1] == ("end", 5, False)
    assert [e[1:3] for e in rec.events[1:-1]] == [(s, 64 * s) for s in range(1, 6)]
    assert isinstance(rec.trainer, Trainer) and rec.trainer.guide is guide
    assert rec.final is guide.last_run and isinstance(guide.last_run, RunStats)
    assert guide.last_run.steps == 5 and guide.last_run.traces == guide.traces_trained == 320
    # validated after the first step, then (validate_every being long) only at the end
    assert [h[0] for h in guide.history] == [64, 320] and guide.last_run.validations == 2


def test_a_callback_can_end_the_run_and_the_run_is_still_validated_and_saved(tmp_path):
    rec = Recorder(stop_after=2)
    path = tmp_path / "stopped.pt"
    guide = infcomp.compile(gaussian, num_traces=6400, seed=0, workers=0, validate_every=1e9, checkpoint=path,
                            checkpoint_every=60.0, callbacks=[rec], **SMALL)
    assert guide.traces_trained == 128 and rec.events[-1] == ("end", 2, False)
    assert [h[0] for h in guide.history] == [64, 128]
    assert infcomp.load(path).traces_trained == 128


def test_a_callback_without_the_protocol_is_refused():
    class OnlyStep:
        def on_step(self, trainer, stats):
            pass

    with pytest.raises(TypeError, match="lacks on_start, on_step or on_end"):
        infcomp.compile(gaussian, num_traces=64, workers=0, callbacks=[OnlyStep()], **SMALL)


# -- the schedule and the budget ---------------------------------------------------------------
def previous_set_progress(lr, fraction):
    """The learning rate the trainer set before the schedule became a callback."""
    f = min(max((fraction - 0.5) / 0.5, 0.0), 1.0)
    scale = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * f))
    return lr * scale


def test_the_schedule_sets_the_learning_rates_it_always_set():
    for fraction in [i / 64 for i in range(80)]:
        assert 3e-3 * LearningRateSchedule.scale(fraction) == previous_set_progress(3e-3, fraction)
    rec = Recorder()
    infcomp.compile(gaussian, num_traces=640, seed=0, workers=0, lr=2e-3, callbacks=[rec], **SMALL)
    steps = [e for e in rec.events if e[0] == "step"]
    assert len(steps) == 10
    for _, step, traces, lrs in steps:  # what the next step trains at
        assert lrs == [previous_set_progress(2e-3, traces / 640)] * len(lrs)
    assert steps[4][3][0] == 2e-3 and steps[-1][3][0] == pytest.approx(0.05 * 2e-3)  # full rate to half-way, then down


def test_the_budget_stops_the_run_where_it_is_spent():
    budget = Budget(num_traces=200)
    assert budget.fraction(RunStats(traces=100)) == 0.5 and budget.fraction(RunStats(traces=200)) == 1
    assert Budget(minutes=1).fraction(RunStats(traces=10**9, seconds=30)) == 0.5
    assert Budget(num_traces=100, minutes=1).fraction(RunStats(traces=50, seconds=45)) == 0.75
    assert Budget().fraction(RunStats(traces=10**9, seconds=1e9)) == 0
    g = infcomp.compile(gaussian, num_traces=200, seed=0, workers=0, **SMALL)
    assert g.traces_trained == 256 and g.last_run.steps == 4  # the batch that reaches 200 is the last
    with pytest.raises(ValueError, match="num_traces must be a positive int"):
        infcomp.compile(gaussian, num_traces=0, seed=0, workers=0, **SMALL)
    timed = infcomp.compile(gaussian, minutes=0.01, seed=0, workers=0, **SMALL).last_run
    assert 0.6 <= timed.setup_seconds + timed.seconds < 30 and timed.traces > 0


# -- interrupts ---------------------------------------------------------------------------------
class Raiser(Callback):
    def __init__(self, at_step, error):
        self.at_step, self.error, self.ended = at_step, error, None

    def on_step(self, trainer, stats):
        if stats.steps == self.at_step:
            raise self.error

    def on_end(self, trainer, stats):
        self.ended = stats.interrupted


def test_a_keyboard_interrupt_from_a_callback_saves_the_checkpoint_and_goes_on_up(tmp_path):
    guide = infcomp.compile(gaussian, num_traces=64, seed=0, workers=0, **SMALL)
    path = tmp_path / "ckpt.pt"
    raiser = Raiser(3, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        infcomp.compile(gaussian, num_traces=6400, guide=guide, seed=1, workers=0, checkpoint=path,
                        checkpoint_every=60.0, callbacks=[raiser], **SMALL)
    assert raiser.ended is True and guide.last_run.interrupted and guide.last_run.steps == 3
    saved = infcomp.load(path)  # no save was due: this one is the interrupt's
    assert saved.traces_trained == guide.traces_trained == 64 + 3 * 64
    assert int(max(s["step"] for s in saved.optimizer_state["state"].values())) == 1 + 3

    # another error ends the run unsaved (as it did), and goes on up
    other = tmp_path / "error.pt"
    raiser = Raiser(2, RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        infcomp.compile(gaussian, num_traces=6400, seed=1, workers=0, checkpoint=other, checkpoint_every=60.0,
                        callbacks=[raiser], **SMALL)
    assert raiser.ended is False and not other.exists()


def test_run_stats_round_trip_and_read_an_older_files_dict():
    stats = RunStats(traces=640, trained_traces=1280, steps=20, seconds=2.0, loss=1.5, validation_loss=1.25,
                     validations=3, interrupted=True, seed=4)
    d = stats.to_dict()
    assert d["traces_per_second"] == 320 and d["trained_traces_per_second"] == 640
    assert RunStats.from_dict(d) == stats
    torch.save(d, "/dev/null")  # plain data
    older = {"traces": 640, "seconds": 2.0, "traces_per_second": 320.0, "trained_traces_per_second": 640.0,
             "steps": 20, "validation_loss": 1.25, "waiting_for_data_seconds": 0.5, "interrupted": False}
    run = RunStats.from_dict(older)
    assert (run.traces, run.trained_traces, run.steps, run.waiting_for_data_seconds) == (640, 1280, 20, 0.5)
    assert math.isnan(run.loss) and run.seed is None and run.trained_traces_per_second == 640


# -- resuming --------------------------------------------------------------------------------
@pytest.mark.parametrize("model", [gaussian, poisson_branching])  # one site group, and two (the balancer at work)
def test_a_resumed_run_trains_exactly_as_a_continued_one(model, tmp_path):
    guide = infcomp.compile(model, num_traces=640, seed=0, workers=0, **SMALL)
    path = tmp_path / "guide.pt"
    guide.save(path)
    resumed = infcomp.load(path, model=model)
    for g in (guide, resumed):  # the same run of 640 more traces: in memory, and from the file
        infcomp.compile(model, num_traces=640, guide=g, seed=1, workers=0, echo=1, **SMALL)
    a, b = guide.network.state_dict(), resumed.network.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k], k
    sa, sb = guide.optimizer_state, resumed.optimizer_state
    assert sa["param_groups"] == sb["param_groups"]
    for i in sa["state"]:
        for k in sa["state"][i]:
            assert torch.equal(sa["state"][i][k], sb["state"][i][k]), (i, k)
