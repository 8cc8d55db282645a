"""Bad inputs to compile, through the API and the command line: each refused early, naming the
argument or file; models that fail or stall; outputs that cannot be written or are in use."""

import os
import subprocess
import sys
import threading
import time

import pytest
import torch

import infcomp
import infcomp.files
from infcomp.data import ModelFailureError
from infcomp_models.captcha.cli import main
from infcomp_models.examples import gaussian

FAST = dict(observe="y", workers=0, progress=False, validation_size=16, seed=0)


class Counting:
    """The Gaussian model, counting its runs (in this process) and failing or stalling on cue."""

    def __init__(self, fail_from=None, fail_every=None, stall_from=None, stall_every=None, error=ZeroDivisionError):
        self.calls, self.fail_from, self.fail_every, self.error = 0, fail_from, fail_every, error
        self.stall_from, self.stall_every = stall_from, stall_every

    def __call__(self, y=None):
        self.calls += 1
        if self.fail_from is not None and self.calls > self.fail_from:
            raise self.error("boom in the simulator")
        if self.fail_every is not None and self.calls % self.fail_every == 0:
            raise self.error("boom in the simulator")
        if (self.stall_from is not None and self.calls > self.stall_from) or (
                self.stall_every is not None and self.calls % self.stall_every == 0):
            time.sleep(60)
        return gaussian(y)


# -- refused before any work --------------------------------------------------------------------
BAD = [
    (dict(num_traces=0), ValueError, r"num_traces must be a positive int, got 0"),
    (dict(num_traces=-5), ValueError, r"num_traces must be a positive int, got -5"),
    (dict(num_traces="100"), TypeError, r"num_traces must be a positive int, got '100' \(str\)"),
    (dict(num_traces=2.5), TypeError, r"num_traces must be a positive int"),
    (dict(num_traces=True), TypeError, r"num_traces must be a positive int"),
    (dict(minutes=-1), ValueError, r"minutes must be a positive number, got -1"),
    (dict(minutes=0), ValueError, r"minutes must be a positive number"),
    (dict(minutes=float("nan")), ValueError, r"minutes must be a positive number"),
    (dict(minutes="1"), TypeError, r"minutes must be a positive number"),
    (dict(num_traces=64, batch_size=0), ValueError, r"batch_size must be a positive int, got 0"),
    (dict(num_traces=64, batch_size=-1), ValueError, r"batch_size must be a positive int, got -1"),
    (dict(num_traces=64, validation_size=0), ValueError, r"validation_size must be a positive int, got 0"),
    (dict(num_traces=64, max_failure_rate=1.5), ValueError, r"max_failure_rate must be a share in \[0, 1\)"),
    (dict(num_traces=64, trace_timeout=0), ValueError, r"trace_timeout must be a positive number"),
    (dict(num_traces=64, workers=-1), ValueError, r"workers must be 0 or a positive int"),
    (dict(num_traces=64, checkpoint="/proc/x.pt"), ValueError, r"checkpoint /proc/x\.pt cannot be written"),
    (dict(num_traces=64, checkpoint="{tmp}/missing/x.pt"), ValueError,
     r"checkpoint .*/missing/x\.pt cannot be written .*does not exist"),
    (dict(num_traces=64, checkpoint="{tmp}"), ValueError, r"checkpoint .* cannot be written .*is a directory"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD, ids=[f"{k}" for k, _, _ in BAD])
def test_bad_arguments_are_refused_before_any_work(kwargs, error, message, tmp_path):
    kwargs = {k: v.format(tmp=tmp_path) if isinstance(v, str) and "{tmp}" in v else v for k, v in kwargs.items()}
    model = Counting()
    with pytest.raises(error, match=message):
        infcomp.compile(model, **{**FAST, "validation_size": 16, **kwargs})
    assert model.calls == 0
    assert os.listdir(tmp_path) == []  # nothing left behind


STYLE = "baidu2011"
CLI_BAD = [
    (["--traces", "0"], "--traces"),
    (["--traces", "-5"], "--traces"),
    (["--traces", "2k"], "--traces"),
    (["--minutes", "-1"], "--minutes"),
    (["--minutes", "0"], "--minutes"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-1"], "--batch-size"),
    (["--trace-timeout", "0"], "--trace-timeout"),
]


@pytest.mark.parametrize("argv, named", CLI_BAD, ids=[" ".join(a) for a, _ in CLI_BAD])
def test_the_command_line_refuses_bad_budgets(argv, named, tmp_path, capsys):
    out = tmp_path / "b.pt"
    with pytest.raises(SystemExit) as e:
        main(["compile", "--calibration-draws", "0", "--style", STYLE, "--out", str(out), "--workers", "0", "--quiet", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert named in err and ("positive" in err)
    assert not out.exists()


@pytest.mark.parametrize("where", ["/proc/x.pt", "{tmp}", "/proc/nowhere/x.pt"])
def test_the_command_line_refuses_an_unwritable_out_before_training(where, tmp_path, capsys):
    out = where.format(tmp=tmp_path)
    start = time.perf_counter()
    assert main(["compile", "--calibration-draws", "0", "--style", STYLE, "--out", out, "--traces", "64", "--workers", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert out in err and "--out" in err and "Traceback" not in err
    assert time.perf_counter() - start < 5


# -- budgets -------------------------------------------------------------------------------------
def test_a_trace_budget_is_met_in_whole_batches_and_says_so():
    guide = infcomp.compile(gaussian, num_traces=100, batch_size=64, **FAST)
    run = guide.last_run
    assert run.traces == 128 and run.budget_traces == 100
    assert run.budget_note == "the budget 100, rounded up to whole batches of 64"
    guide = infcomp.compile(gaussian, num_traces=64, guide=guide, **FAST)  # a resumed budget: this many more
    assert guide.last_run.traces == 64 and guide.last_run.budget_note == "" and guide.traces_trained == 192


# -- the checkpoint file ---------------------------------------------------------------------------
def test_a_checkpoint_holding_another_guide_is_refused(tmp_path):
    path = tmp_path / "g.pt"
    first = infcomp.compile(gaussian, num_traces=64, checkpoint=path, **FAST)
    before = path.read_bytes()
    for guide in (None, infcomp.compile(gaussian, num_traces=64, **{**FAST, "seed": 1})):
        model = Counting()
        with pytest.raises(ValueError, match=rf"checkpoint {path} already exists .*guide=infcomp\.load\('{path}'\)"
                                             r".*overwrite=True"):
            infcomp.compile(model, num_traces=64, guide=guide, checkpoint=path, **FAST)
        assert model.calls == 0 and path.read_bytes() == before
    resumed = infcomp.compile(gaussian, num_traces=64, guide=infcomp.load(path), checkpoint=path, **FAST)
    assert infcomp.load(path).traces_trained == resumed.traces_trained == 128
    infcomp.compile(gaussian, num_traces=64, guide=first, checkpoint=path, overwrite=True, **FAST)
    assert infcomp.load(path).traces_trained == 128  # first's 64, and 64 more
    assert sorted(os.listdir(tmp_path)) == ["g.pt"]  # no lock, no temporary file


def test_a_failed_final_save_keeps_the_guide_and_says_where_it_went(tmp_path, monkeypatch):
    path = str(tmp_path / "g.pt")
    real = infcomp.files.save

    def failing(guide, p):
        if os.fspath(p) == path:
            raise OSError(28, "No space left on device")
        return real(guide, p)

    monkeypatch.setattr(infcomp.files, "save", failing)
    with pytest.warns(UserWarning, match=rf"could not save the guide to {path} \(OSError: .*No space left.*saved it to"):
        guide = infcomp.compile(gaussian, num_traces=64, checkpoint=path, **FAST)
    fallback = guide.last_run.saved_to
    try:
        assert fallback != path and infcomp.load(fallback).traces_trained == 64 == guide.traces_trained
    finally:
        os.remove(fallback)


def test_save_names_a_directory_or_a_missing_one_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    guide = infcomp.compile(gaussian, num_traces=64, **FAST)
    with pytest.raises(IsADirectoryError, match=f"cannot save a guide to {tmp_path}: it is a directory"):
        guide.save(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/no/g.pt: the directory {tmp_path}/no does not exist"):
        guide.save(tmp_path / "no" / "g.pt")

    def broken(*args, **kwargs):
        raise RuntimeError("disk vanished")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="disk vanished"):
        guide.save(tmp_path / "g.pt")
    assert os.listdir(tmp_path) == []


def test_concurrent_saves_to_one_path_all_succeed(tmp_path):
    guide = infcomp.compile(gaussian, num_traces=64, **FAST)
    path, errors = tmp_path / "g.pt", []

    def save():
        try:
            for _ in range(5):
                guide.save(path)
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=save) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and os.listdir(tmp_path) == ["g.pt"] and infcomp.load(path).traces_trained == 64


def test_a_second_compile_on_one_output_is_refused_at_once(tmp_path, capsys):
    path = tmp_path / "g.pt"
    holder = subprocess.Popen(  # another compile's lock, held by another process
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'w'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", f"{path}.lock"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        model = Counting()
        with pytest.raises(ValueError, match=rf"checkpoint {path} is in use by another compile"):
            infcomp.compile(model, num_traces=64, checkpoint=path, **FAST)
        assert model.calls == 0
        assert main(["compile", "--calibration-draws", "0", "--style", STYLE, "--out", str(path), "--traces", "64", "--workers", "0",
                     "--quiet"]) == 2
        assert f"--out {path} is in use by another compile" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert not path.exists()


# -- models that fail ------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 1])
def test_failed_traces_are_skipped_and_counted(workers):
    model = Counting(fail_every=40)
    guide = infcomp.compile(model, num_traces=640, **{**FAST, "workers": workers})
    run = guide.last_run
    assert run.traces == 640 and run.failed_traces >= 10 and run.failed_validation_traces == 0
    assert run.last_failure == "ZeroDivisionError: boom in the simulator"


def test_an_echoed_batch_counts_its_failed_traces_once():
    model = Counting(fail_every=40)
    run = infcomp.compile(model, num_traces=1280, batch_size=16, **{**FAST, "echo": 3.0}).last_run
    assert run.traces == 1280 and run.trained_traces > 2 * 1280
    assert 10 <= run.failed_traces <= model.calls // 40 + 1  # each failure once, not once a repeat


def test_a_model_failing_too_often_stops_saved_naming_its_error(tmp_path):
    path = tmp_path / "g.pt"
    model = Counting(fail_from=16 + 3 * 64, error=KeyError)  # the validation set and three batches, then failures
    with pytest.raises(ModelFailureError, match=r"failed in \d+ of its latest \d+ runs drawing training traces "
                                                r".*max_failure_rate=0\.1.*its last failure: KeyError: "
                                                rf"'boom in the simulator'.*saved in {path}") as e:
        infcomp.compile(model, num_traces=6400, checkpoint=path, **FAST)
    assert e.value.guide.traces_trained == 3 * 64 == infcomp.load(path).traces_trained
    assert e.value.guide.last_run.failed_traces >= 64 and not any(n.endswith((".saving", ".lock"))
                                                                    for n in os.listdir(tmp_path))


def test_a_validation_set_that_fails_too_often_is_refused_naming_the_error():
    model = Counting(fail_every=2)
    with pytest.raises(ModelFailureError, match=r"drawing the validation set \(5\d%.*ZeroDivisionError: boom"):
        infcomp.compile(model, num_traces=64, **{**FAST, "validation_size": 500})
    assert 100 <= model.calls < 220
    model = Counting(fail_every=12)  # under the rate: skipped and counted
    guide = infcomp.compile(model, num_traces=64, **FAST)
    assert guide.last_run.failed_validation_traces == 1 and guide.last_run.last_failure.startswith("ZeroDivisionError")


# -- models that stall -----------------------------------------------------------------------------
def test_a_stalled_model_ends_the_run_at_the_deadline_saved(tmp_path):
    path = tmp_path / "g.pt"
    start = time.perf_counter()
    guide = infcomp.compile(Counting(stall_from=16 + 2 * 64), minutes=0.05, checkpoint=path,
                            **{**FAST, "workers": 1})
    assert time.perf_counter() - start < 15
    run = guide.last_run
    assert run.stopped_waiting and run.traces == 128 and infcomp.load(path).traces_trained == 128


def test_a_trace_past_trace_timeout_is_a_failed_trace():
    start = time.perf_counter()
    guide = infcomp.compile(Counting(stall_every=150), num_traces=320, trace_timeout=0.2, **{**FAST, "workers": 1})
    run = guide.last_run
    assert run.traces == 320 and run.failed_traces >= 2 and run.last_failure.startswith("TraceTimeout")
    assert time.perf_counter() - start < 15


# -- progress in a log file ------------------------------------------------------------------------
def test_the_progress_bar_in_a_log_redraws_rarely(capsys):
    infcomp.compile(gaussian, minutes=0.04, **{**FAST, "progress": True})
    err = capsys.readouterr().err
    assert 1 <= err.count("\r") <= 4, err[-500:]
