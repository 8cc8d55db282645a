"""The device path: device names checked up front, batches that copy to a GPU, the encoder's mixed
precision, and (where this machine has CUDA; skipped elsewhere) compile, infer and reads on it."""

import pyro
import pytest
import torch

import infcomp
from infcomp.data import collate
from infcomp.devices import checked_device
from infcomp.traces import PriorSampler
from infcomp_models.examples import gaussian, gaussian_exact

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
Y = torch.tensor([0.0, 2.0])


def _batch(n=8):
    pyro.set_rng_seed(0)
    sampler = PriorSampler(gaussian, "y")
    return collate([sampler.sample() for _ in range(n)], sampler.specs)


def test_a_device_name_is_checked_before_any_work():
    assert checked_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device 'gpu' is not a device torch knows"):
        infcomp.compile(gaussian, "y", 64, device="gpu", progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda': this machine has no CUDA device"):
            infcomp.compile(gaussian, "y", 64, device="cuda", progress=False)
        with pytest.raises(ValueError, match="no CUDA device"):
            infcomp.load("never-read.pt", device="cuda")


def test_a_batch_keeps_its_counts_through_a_copy():
    batch = _batch()
    batch.failed, batch.error = 2, "RuntimeError: twice"
    assert batch.to("cpu") is batch
    copy = batch.map(torch.clone)
    assert (copy.failed, copy.error, copy.size) == (2, "RuntimeError: twice", 8)
    assert torch.equal(copy.groups[0].values, batch.groups[0].values) and copy.groups[0].values is not batch.groups[0].values


def test_mixed_precision_of_the_encoder_keeps_log_q_in_float32_and_close():
    guide = infcomp.compile(gaussian, "y", 256, workers=0, seed=0, validation_size=16, progress=False, amp=True)
    net, batch = guide.network, _batch(64)
    assert net.amp is True
    with torch.no_grad():
        mixed = net.log_q(batch)
        net.amp = False
        exact = net.log_q(batch)
    assert mixed.dtype == torch.float32 and bool(torch.isfinite(mixed).all())
    assert float((mixed - exact).abs().max()) < 0.05 * float(exact.abs().max()) + 0.05
    with pytest.raises(ValueError, match="amp must be None, True or False"):
        infcomp.compile(gaussian, "y", 64, amp="bf16", progress=False)


@cuda
def test_a_batch_pins_and_copies_to_the_gpu():
    batch = _batch().pin_memory()
    assert all(t.is_pinned() for t in batch.observation.values()) and batch.groups[0].values.is_pinned()
    on = batch.to("cuda", non_blocking=True)
    assert on.groups[0].values.device.type == "cuda" and on.lengths.device.type == "cuda"


@cuda
def test_compile_and_infer_on_the_gpu_give_the_exact_posterior():
    guide = infcomp.compile(gaussian, "y", 12_000, workers=2, seed=3, device="cuda", progress=False)
    assert guide.device.type == "cuda"
    mean, std = gaussian_exact(Y)
    for batch in (True, False):
        post = infcomp.infer(gaussian, guide, Y, num_samples=1_000, seed=0, batch=batch)
        assert post.marginal("mu").values.device.type == "cpu"
        assert abs(float(post.mean("mu")) - mean) < 0.05 and abs(float(post.std("mu")) / std - 1) < 0.05
    importance = pyro.infer.Importance(pyro.condition(gaussian, data={"y": Y}), guide.condition({"y": Y}),
                                       num_samples=200).run()
    assert importance.get_ESS() > 100


@cuda
def test_a_breaker_compiles_resumes_and_reads_on_the_gpu(tmp_path):
    from infcomp_models.captcha.cli import main

    out = tmp_path / "baidu2011.pt"
    base = ["compile", "--style", "baidu2011", "--out", str(out), "--workers", "2", "--seed", "0",
            "--calibration-draws", "20", "--quiet", "--device", "cuda"]
    assert main(base + ["--traces", "256"]) == 0
    assert main(base + ["--traces", "128"]) == 0  # resumed on the device
    assert infcomp.load(out).traces_trained >= 384
    assert main(["evaluate", str(out), "-n", "8", "--posterior-n", "2", "--particles", "20", "--gallery", "",
                 "--device", "cuda", "--json"]) == 0
