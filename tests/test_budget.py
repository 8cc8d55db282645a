"""``minutes=`` bounds the whole of compile, the validation draws included (infcomp.budget)."""

import time
import warnings

import pyro
import pyro.distributions as dist
import pytest

import infcomp
from infcomp.budget import MIN_VALIDATION, VALIDATION_SHARE
from infcomp.train import Budget, RunStats

FAST = dict(observe="y", workers=0, batch_size=16, progress=False, seed=0)


class Sleepy:
    """A model that takes ``seconds`` a trace, as a slow simulator does; counts its runs."""

    def __init__(self, seconds):
        self.seconds, self.calls = seconds, 0

    def __call__(self, y=None):
        self.calls += 1
        time.sleep(self.seconds)
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def test_the_budget_counts_the_time_before_the_training_loop():
    assert Budget(minutes=1).fraction(RunStats(setup_seconds=15, seconds=15)) == 0.5
    assert Budget(num_traces=100).fraction(RunStats(traces=50, setup_seconds=1e9)) == 0.5  # time is no limit here


def test_minutes_bound_the_validation_draws_and_the_whole_run():
    model = Sleepy(0.01)  # validation_size=10000 would take 100 s
    start = time.monotonic()
    with pytest.warns(UserWarning, match=r"the validation set has \d+ of validation_size=10000 traces: drawing them "
                                         r"stopped at 10% of minutes=0.05"):
        guide = infcomp.compile(model, minutes=0.05, validation_size=10000, **FAST)
    elapsed = time.monotonic() - start
    run = guide.last_run
    # the budget, then at most one step (16 traces here) and the last evaluation
    assert elapsed < 3.0 + 1.5, elapsed
    assert run.setup_seconds + run.seconds >= 3.0 and run.setup_seconds <= elapsed and run.seconds < elapsed
    assert MIN_VALIDATION <= run.validation_traces < 60 * 0.05 * VALIDATION_SHARE / 0.01 + 2
    assert run.traces > 0 and run.steps > 0 and run.validations >= 1
    assert len(guide.history) == run.validations


def test_a_model_too_slow_for_the_validation_share_is_refused_naming_its_speed():
    model = Sleepy(0.2)  # the share is 0.06 s: one trace overruns it
    with pytest.raises(ValueError, match=r"the model takes 0\.2\d* s a trace: in 10% of minutes=0.01 .* drew 1 of "
                                         r"validation_size=512 traces, under the 2 .* pass minutes=.* or more"):
        infcomp.compile(model, minutes=0.01, validation_size=512, **FAST)
    assert model.calls == 1


def test_without_minutes_the_whole_validation_set_is_drawn():
    model = Sleepy(0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning of a cut set
        guide = infcomp.compile(model, num_traces=32, validation_size=40, **FAST)
    run = guide.last_run
    assert run.validation_traces == 40 and model.calls == 40 + 32 and run.traces == 32
    assert run.setup_seconds > 0 and run.seconds > 0


def test_the_validation_draws_show_progress(capsys):
    infcomp.compile(Sleepy(0.0), num_traces=16, validation_size=20, **{**FAST, "progress": True})
    err = capsys.readouterr().err
    assert "drawing validation traces" in err and "20/20" in err and "compiling" in err
