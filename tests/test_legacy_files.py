"""Guide and breaker files saved in format version 1 load, and give the same proposals,
weights and readings they gave when they were saved (``tests/fixtures/legacy.py``)."""

import importlib.util

import pytest
import torch

import infcomp
from infcomp_models.captcha import breaker

spec = importlib.util.spec_from_file_location("legacy", __file__.replace("test_legacy_files.py", "fixtures/legacy.py"))
legacy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(legacy)
EXPECTED = torch.load(legacy.EXPECTED, weights_only=True)


def test_a_version_1_guide_proposes_and_weighs_as_it_did():
    guide = infcomp.load(legacy.GUIDE, model=legacy.mixed)
    got, want = legacy.guide_readings(guide), EXPECTED["guide"]
    assert sorted(got) == sorted(want)
    for key in want:
        assert torch.allclose(got[key].double(), want[key].double(), atol=1e-5, rtol=0), key


def test_a_version_1_breaker_reads_as_it_did():
    guide, style = breaker.load_breaker(legacy.BREAKER)
    got, want = legacy.breaker_readings(guide, style), EXPECTED["breaker"]
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        if torch.is_tensor(value):
            assert torch.allclose(got[key], value, atol=1e-4, rtol=0), key
        elif isinstance(value, float):
            assert got[key] == pytest.approx(value, abs=1e-6), key
        else:
            assert got[key] == value, key


def test_a_version_1_guide_resumes_training_with_its_optimizer_state():
    guide = infcomp.load(legacy.GUIDE, model=legacy.mixed)
    before = guide.traces_trained
    infcomp.compile(legacy.mixed, observe="y", num_traces=64, guide=guide, seed=1, workers=0, progress=False,
                    validation_size=64)
    assert guide.traces_trained == before + 64
