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
        if torch.is_tensor(value):  # log weights of thousands of nats: saved as float32 sums, now summed in float64
            assert torch.allclose(got[key], value, atol=1e-4, rtol=2e-7), key
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


def test_a_version_1_optimizer_state_is_regrouped_moment_for_moment():
    from infcomp.data import collate
    from infcomp.legacy import FAMILY_ROWS
    from infcomp.traces import PriorSampler
    from infcomp.train import Trainer

    old = torch.load(legacy.GUIDE, weights_only=True)["optimizer"]
    old_family = old["state"][old["param_groups"][0]["params"][4]]  # the MLP encoder's 4 tensors, then the matrix
    assert old_family["exp_avg"].shape[0] == len(FAMILY_ROWS)
    guide = infcomp.load(legacy.GUIDE, model=legacy.mixed)
    net = guide.network
    sampler = PriorSampler(legacy.mixed, "y", families=net.families, specs=net.specs)
    trainer = Trainer(guide, sampler, [sampler.sample() for _ in range(8)], 1e-3, 8, "cpu")
    state = trainer.optimizer.state
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    assert len({id(state[p]["step"]) for p in params}) == len(params)  # every parameter counts its own steps
    for p in params:
        assert state[p]["exp_avg"].shape == p.shape
    for family, p in net.family_embedding.items():
        assert torch.equal(state[p]["exp_avg"], old_family["exp_avg"][FAMILY_ROWS.index(family)])
    kept = sorted(float(s["exp_avg"].sum()) for i, s in old["state"].items() if s is not old_family)
    assert sorted(float(state[p]["exp_avg"].sum()) for p in params if p not in set(net.family_embedding.values())) \
        == pytest.approx(kept, abs=0)
    before = {id(p): int(state[p]["step"]) for p in params}
    trainer.step(collate([sampler.sample() for _ in range(8)], sampler.specs))
    stepped = [p for p in params if p.grad is not None]  # Adam leaves the addresses the batch lacks
    assert len(stepped) > len(params) // 2
    assert all(int(state[p]["step"]) == before[id(p)] + (p.grad is not None) for p in params)
