"""The guide as an object: Pyro interop, save/load, growth, reproducibility, and every bad input."""

import collections
from pathlib import Path
import itertools
import statistics

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

import infcomp
from infcomp.data import collate
from infcomp.handler import ProposalMessenger
from infcomp.traces import PriorSampler
from infcomp.train import Trainer
from infcomp_models.examples import gaussian, poisson_branching

Y = torch.tensor([8.0, 9.0])


@pytest.fixture(scope="module")
def guide():
    return infcomp.compile(gaussian, observe="y", num_traces=4_000, seed=0, workers=0, progress=False)


@pytest.fixture(scope="module")
def branching_guide():
    return infcomp.compile(
        poisson_branching, observe="y", num_traces=3_000, seed=1, workers=0, progress=False, config={"layers": 2}
    )


# -- Pyro interop -------------------------------------------------------------------------
def test_pyro_importance_agrees_with_infer(guide):
    post = infcomp.infer(gaussian, guide, Y, num_samples=50, seed=11, batch=False)  # the reference path draws as Pyro does
    conditioned = pyro.condition(gaussian, data={"y": Y})
    pyro.set_rng_seed(11)
    imp = pyro.infer.Importance(conditioned, guide=guide.condition(Y), num_samples=50).run()
    pyro_lw = torch.stack([torch.as_tensor(w) for w in imp.log_weights]).double()
    assert torch.allclose(pyro_lw, post.log_weights, atol=1e-4)
    assert abs(float(imp.get_ESS()) - post.ess) < 1e-2


def csis_model(observations={"y": None}):
    mu = pyro.sample("mu", dist.Normal(1.0, 5**0.5))
    pyro.sample("y", dist.Normal(mu, 2**0.5).expand([2]).to_event(1), obs=observations["y"])


def test_pyro_csis_accepts_the_guide():
    guide = infcomp.compile(csis_model, observe="y", num_traces=3_000, seed=2, workers=0, progress=False)
    csis = pyro.infer.CSIS(csis_model, guide, pyro.optim.Adam({"lr": 1e-3}), num_inference_samples=40)
    pyro.set_rng_seed(5)
    with torch.no_grad():
        run = csis.run(observations={"y": Y})
    post = infcomp.infer(csis_model, guide, Y, num_samples=40, seed=5, model_kwargs={"observations": {"y": Y}}, batch=False)
    pyro_lw = torch.stack([torch.as_tensor(w) for w in run.log_weights]).double()
    assert torch.allclose(pyro_lw, post.log_weights, atol=1e-4)
    # CSIS's own training loss runs through the guide (values replayed from model traces)
    assert torch.isfinite(torch.tensor(csis.validation_loss(observations={"y": Y})))


def assert_step_by_step_matches_batch(guide, model, site, records):
    """log q from the batched training pass equals the step-by-step guide's, trace by trace."""
    specs = {}
    for r in records:
        specs.update({n: guide.network.specs[n] for n in r.structure})
    with torch.no_grad():
        batch_lq = guide.network.log_q(collate(records, specs))
    for record, expected in zip(records, batch_lq):
        data = dict(zip(record.structure, record.values))
        obs = record.observation[site]
        ref = poutine.trace(poutine.condition(model, data=data)).get_trace(obs)
        for n in record.structure:
            ref.nodes[n]["is_observed"] = False
        state = guide.state_for({site: obs})
        with torch.no_grad(), poutine.trace() as tr, ProposalMessenger(state, (site,)):
            poutine.replay(model, trace=ref)(obs)
        lq = sum(float(tr.trace.nodes[n]["fn"].log_prob(tr.trace.nodes[n]["value"]).sum()) for n in record.structure)
        assert abs(lq - float(expected)) < 1e-4


def test_inference_proposals_match_training_pass(branching_guide):
    sampler = PriorSampler(poisson_branching, "y")
    pyro.set_rng_seed(3)
    records = [sampler.sample() for _ in range(12)]
    records = [r for r in records if all(n in branching_guide.network.specs for n in r.structure)]
    assert_step_by_step_matches_batch(branching_guide, poisson_branching, "y", records)


def image_model(image=None):
    k = pyro.sample("k", dist.Categorical(torch.ones(3)))
    x = pyro.sample("x", dist.Uniform(0.0, 1.0))
    column = torch.arange(16.0)
    picture = torch.exp(-((column - 4 * k - 2 - 4 * x) ** 2)).expand(8, 16)
    pyro.sample("image", dist.Normal(picture, 0.1).to_event(2), obs=image)


@pytest.mark.parametrize("column_rnn,memory_columns,column_pixels,conv_refine",
                         [(0, 16, 8, True), (8, 16, 8, True), (8, 0, 8, True), (8, 0, 4, True), (8, 0, 8, False)])
def test_inference_proposals_match_training_pass_with_image_attention(column_rnn, memory_columns, column_pixels,
                                                                       conv_refine):
    guide = infcomp.compile(image_model, observe="image", num_traces=256, seed=0, workers=0, progress=False,
                            config={"column_rnn": column_rnn},
                            encoder=infcomp.CNNConfig(columns=memory_columns, column_pixels=column_pixels,
                                                      refine=conv_refine))
    convolutions = [m for m in guide.network.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convolutions) == 3 + conv_refine
    assert guide.network.attention is not None
    assert (guide.network.attention.columns is not None) == bool(column_rnn)
    assert guide.network.encoder.memory_len == (memory_columns or 16 // column_pixels)  # the image is 16 pixels wide
    sampler = PriorSampler(image_model, "image")
    assert_step_by_step_matches_batch(guide, image_model, "image", [sampler.sample() for _ in range(6)])


# -- save / load --------------------------------------------------------------------------
def test_save_load_round_trip(guide, tmp_path):
    path = tmp_path / "gauss.pt"
    guide.save(path)
    loaded = infcomp.load(path)
    a = infcomp.infer(gaussian, guide, Y, num_samples=200, seed=3)
    b = infcomp.infer(gaussian, loaded, Y, num_samples=200, seed=3)
    assert torch.equal(a.log_weights, b.log_weights)
    assert torch.equal(a.marginal("mu").values, b.marginal("mu").values)
    assert loaded.traces_trained == guide.traces_trained and loaded.addresses == guide.addresses


def test_image_guides_normalise_convolutions_by_default():
    guide = infcomp.compile(image_model, observe="image", num_traces=128, seed=0, workers=0, progress=False)
    assert guide.network.encoder.cnn.norm
    assert any(isinstance(m, torch.nn.GroupNorm) for m in guide.network.encoder.modules())
    assert guide.network.attention.columns is not None  # and key image columns with a GRU along them


def test_version_1_files_without_a_setting_mean_what_it_meant_before_it_existed():
    from infcomp import legacy

    data = torch.load(Path(__file__).parent / "fixtures" / "v1-guide.pt", weights_only=True)
    for key in ("conv_norm", "column_rnn", "memory_columns", "conv_refine", "share_heads"):
        del data["config"][key]
    upgraded = legacy.upgrade(data)
    cnn = upgraded["encoder"]["cnn"]
    assert cnn["norm"] is False and cnn["columns"] == 16 and "refine" not in cnn  # refine: the CNNConfig default
    assert upgraded["config"]["column_rnn"] == 0 and upgraded["config"]["share_heads"] is False
    assert infcomp.CNNConfig(**upgraded["encoder"]["cnn"]).refine


def test_config_fields_of_the_image_encoder_still_set_it_with_a_warning():
    with pytest.warns(FutureWarning, match="encoder=infcomp.CNNConfig"):
        guide = infcomp.compile(image_model, observe="image", num_traces=64, seed=0, workers=0, progress=False,
                                config={"conv_norm": False, "memory_columns": 16, "column_rnn": 0})
    assert guide.network.encoder.cnn == infcomp.CNNConfig(norm=False, columns=16)
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in guide.network.encoder.modules())


def test_training_resumes_with_optimizer_state(guide, tmp_path):
    path = tmp_path / "gauss.pt"
    guide.save(path)
    loaded = infcomp.load(path, model=gaussian)
    steps_before = int(max(s["step"] for s in loaded.optimizer_state["state"].values()))
    more = infcomp.compile(gaussian, observe="y", num_traces=640, guide=loaded, seed=4, workers=0, progress=False)
    assert more is loaded and more.traces_trained == guide.traces_trained + 640
    steps_after = int(max(s["step"] for s in more.optimizer_state["state"].values()))
    assert steps_after == steps_before + 10


def test_a_guide_saved_with_the_unfused_optimizer_resumes_fused(guide, tmp_path):
    """A file whose optimiser groups hold fused=None (an unfused Adam's) resumes fused, its state kept."""
    guide.save(tmp_path / "gauss.pt")
    old = infcomp.load(tmp_path / "gauss.pt", model=gaussian)
    for g in old.optimizer_state["param_groups"]:
        g.update(fused=None, foreach=None)
    moment = old.optimizer_state["state"][0]["exp_avg"].clone()
    sampler = PriorSampler(gaussian, ("y",), (), {})
    trainer = Trainer(old, sampler, [sampler.sample() for _ in range(8)], 3e-3, 8, "cpu")
    assert all(g["fused"] for g in trainer.optimizer.param_groups)
    params = trainer.optimizer.param_groups[0]["params"]
    assert torch.equal(trainer.optimizer.state[params[0]]["exp_avg"], moment)
    trainer.step(collate([sampler.sample() for _ in range(8)], sampler.specs))
    assert int(trainer.optimizer.state[params[0]]["step"]) == int(old.optimizer_state["state"][0]["step"]) + 1


def test_a_resume_refuses_a_config_or_embedding_it_would_ignore(guide, tmp_path):
    guide.save(tmp_path / "gauss.pt")
    guide = infcomp.load(tmp_path / "gauss.pt", model=gaussian)  # a copy: the fixture stays as it is
    hidden = guide.network.cfg.hidden
    with pytest.raises(ValueError, match=f"built with hidden={hidden}, not {hidden + 1}"):
        infcomp.compile(gaussian, observe="y", num_traces=64, guide=guide, workers=0, progress=False,
                        config={"hidden": hidden + 1})
    with pytest.raises(ValueError, match="NetworkConfig has no field 'hiden'"):
        infcomp.compile(gaussian, observe="y", num_traces=64, guide=guide, workers=0, progress=False,
                        config={"hiden": hidden})
    with pytest.raises(ValueError, match="encoder= builds a new guide's network"):
        infcomp.compile(gaussian, observe="y", num_traces=64, guide=guide, workers=0, progress=False,
                        embedding=torch.nn.Linear(2, 8))
    before = guide.traces_trained  # the guide's own settings, as a list where it holds a tuple, are not a change
    infcomp.compile(gaussian, observe="y", num_traces=64, guide=guide, workers=0, progress=False,
                    config={"hidden": hidden}, encoder=infcomp.CNNConfig(channels=list(guide.network.encoder.cnn.channels)))
    assert guide.traces_trained == before + 64


def test_checkpoint_saves_during_the_run_at_its_end_and_on_interrupt(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    g = infcomp.compile(gaussian, observe="y", num_traces=256, seed=0, workers=0, progress=False,
                        checkpoint=path, checkpoint_every=0.0, metadata={"note": "ckpt"})
    saved = infcomp.load(path)
    assert saved.traces_trained == g.traces_trained == 256 and saved.metadata["note"] == "ckpt"
    assert saved.optimizer_state is not None and not (tmp_path / "ckpt.pt.saving").exists()

    # a Ctrl-C in the middle of a run: the traces trained so far are saved, and the interrupt goes on up
    import infcomp.train as train

    calls = {"n": 0}
    real_step = train.Trainer.step

    def step_then_interrupt(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(train.Trainer, "step", step_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        infcomp.compile(gaussian, observe="y", num_traces=6400, guide=saved, workers=0, progress=False,
                        checkpoint=path, checkpoint_every=60.0)
    resumed = infcomp.load(path)
    assert resumed.traces_trained == 256 + 2 * 64 and resumed.last_run.interrupted


def test_new_addresses_keep_optimizer_state():
    sampler = PriorSampler(poisson_branching, "y")
    pyro.set_rng_seed(0)
    records = [sampler.sample() for _ in range(400)]
    few = [r for r in records if len(r.structure) <= 2][:64]
    many = [r for r in records if len(r.structure) >= 6][:64]
    from infcomp.nn.network import InferenceNetwork
    from infcomp.traces import observation_specs

    net = InferenceNetwork(observation_specs(records[0]))
    g = infcomp.Guide(net, ("y",), poisson_branching)
    small = PriorSampler(poisson_branching, "y")
    small.specs = {n: sampler.specs[n] for r in few for n in r.structure}
    trainer = Trainer(g, small, few, 1e-3, 64, "cpu")
    trainer.step(collate(few, sampler.specs))
    lstm_w = net.lstm.weight_ih_l0
    x0 = net.site("x_0").address
    state_before = {k: v.clone() for k, v in trainer.optimizer.state[lstm_w].items()}
    trainer.step(collate(many, sampler.specs))  # meets x_2 .. x_5 for the first time
    assert "x_5" in net.specs
    assert int(trainer.optimizer.state[lstm_w]["step"]) == int(state_before["step"]) + 1
    assert int(trainer.optimizer.state[x0]["step"]) == 2
    assert int(trainer.optimizer.state[net.site("x_5").address]["step"]) == 1
    # x_5 arrives with the head x_0 .. x_1 trained (addresses that differ only in their numbers share it)
    assert int(trainer.optimizer.state[net.site("x_5").head1.weight]["step"]) == 2


def test_numbered_addresses_share_value_embedding_and_head(branching_guide, tmp_path):
    net = branching_guide.network
    xs = [net.site(n) for n in net.specs if n.startswith("x_")]
    assert len(xs) >= 3
    for m in xs[1:]:
        assert m.head1 is xs[0].head1 and m.head2 is xs[0].head2 and m.value is xs[0].value
        assert m.address is not xs[0].address  # each address keeps its own embedding
    assert net.site("n").head1 is not xs[0].head1  # another name: its own head
    in_groups = [id(p) for n in net.specs for p in net.own_parameters(n)]
    assert len(in_groups) == len(set(in_groups))  # the optimiser gets each shared weight once
    owned = {id(p) for n, p in net.named_parameters() if n.startswith(("sites.", "family_embedding."))}
    assert set(in_groups) == owned  # and every one, each family's embedding with its first address

    path = tmp_path / "branching.pt"
    branching_guide.save(path)
    loaded = infcomp.load(path).network
    assert loaded.site("x_2").head1 is loaded.site("x_0").head1
    separate = infcomp.compile(poisson_branching, observe="y", num_traces=256, seed=1, workers=0, progress=False,
                               config={"share_heads": False}).network
    assert separate.site("x_1").head1 is not separate.site("x_0").head1


def test_seed_makes_training_reproducible():
    a = infcomp.compile(gaussian, observe="y", num_traces=640, seed=9, workers=0, progress=False)
    b = infcomp.compile(gaussian, observe="y", num_traces=640, seed=9, workers=0, progress=False)
    for (n, p), (_, q) in zip(a.network.state_dict().items(), b.network.state_dict().items()):
        assert torch.equal(p, q) if torch.is_tensor(p) else p == q, n


def test_workers_stream_traces(tmp_path):
    g = infcomp.compile(poisson_branching, observe="y", num_traces=1_280, seed=0, workers=1, progress=False)
    assert g.traces_trained == 1_280 and "n" in g.addresses


def test_echo_repeats_each_batch_later_and_counts_fresh_traces():
    from infcomp.data import Echo

    steps = list(itertools.islice(Echo(iter(range(10_000)), 3, pool=8, seed=0), 3_000))
    fresh = [b for b, f in steps if f]
    assert fresh == list(range(len(fresh)))  # fresh batches in stream order, each once
    counts = collections.Counter(b for b, _ in steps)
    assert set(counts.values()) <= {1, 2, 3}
    assert counts[fresh[8]] == 3 and sum(c < 3 for c in counts.values()) <= 8 + 2 * 8  # the pool's still owed
    first = {}
    for i, (b, f) in enumerate(steps):
        first.setdefault(b, i)
        assert f == (first[b] == i)  # a repeat never comes before its fresh draw
    gaps = [i - first[b] for i, (b, f) in enumerate(steps) if not f]
    assert statistics.median(gaps) > 8  # repeats wait in the pool, not right after their batch

    with pytest.raises(ValueError, match="echo must be at least 1"):
        Echo(iter([]), 0.5)
    g = infcomp.compile(gaussian, observe="y", num_traces=1_280, echo=2, seed=0, workers=0, progress=False)
    assert g.traces_trained == 1_280 and g.last_run.traces == 1_280
    # 20 fresh batches: the first 16 fill the pool, then each of the next three is followed by one repeat
    assert g.last_run.steps == 23


def test_posterior_keeps_latents_not_observations():
    def model(image=None):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("image", dist.Normal(z * torch.ones(16, 16), 1.0).to_event(2), obs=image)

    post = infcomp.infer(model, None, torch.zeros(16, 16), observe="image", num_samples=500, seed=0)
    stored = sum(v.numel() for _, v in post._samples.values()) + post.log_weights.numel()
    assert stored == 500 + 500


# -- bad input ------------------------------------------------------------------------------
def test_observe_names_a_site_the_model_never_samples():
    with pytest.raises(ValueError, match="observe names site 'x'.*never samples it"):
        infcomp.compile(gaussian, observe="x", num_traces=64, workers=0, progress=False)


def test_observation_of_wrong_shape_dtype_or_nan(guide):
    with pytest.raises(ValueError, match=r"site 'y' has shape \(3,\).*compiled for shape \(2,\)"):
        infcomp.infer(gaussian, guide, torch.ones(3))
    with pytest.raises(ValueError, match="site 'y' has dtype torch.int64"):
        infcomp.infer(gaussian, guide, torch.tensor([8, 9]))
    with pytest.raises(ValueError, match="site 'y' contains NaN"):
        infcomp.infer(gaussian, guide, torch.tensor([8.0, float("nan")]))
    with pytest.raises(ValueError, match="observation names site 'z'"):
        infcomp.infer(gaussian, guide, {"z": Y})


def test_model_that_does_not_observe_the_site(guide):
    def other(y=None):
        pyro.sample("mu", dist.Normal(1.0, 5**0.5))

    with pytest.raises(ValueError, match="never samples it"):
        infcomp.infer(other, guide, Y)
    with pytest.raises(ValueError, match="does not observe site 'y'"):
        infcomp.infer(other, None, Y, observe="y")


def test_model_with_no_latent_sites():
    def model(y=None):
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=y)

    with pytest.raises(ValueError, match="no latent sites"):
        infcomp.compile(model, observe="y", num_traces=64, workers=0, progress=False)


def test_site_changing_family_between_runs():
    def model(y=None):
        flip = pyro.sample("flip", dist.Bernoulli(0.5))
        if flip:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
        else:
            z = pyro.sample("z", dist.Gamma(2.0, 1.0))
        pyro.sample("y", dist.Normal(z, 1.0), obs=y)

    with pytest.raises(ValueError, match="site 'z' was sampled from (Normal|Gamma) before and from (Gamma|Normal) now"):
        infcomp.compile(model, observe="y", num_traces=64, workers=0, progress=False)


def test_unsupported_family_warns_once_and_proposes_from_prior():
    def model(y=None):
        w = pyro.sample("w", dist.OneHotCategorical(torch.ones(3) / 3))
        pyro.sample("y", dist.Normal(w.sum(), 1.0), obs=y)

    with pytest.warns(UserWarning, match="site 'w': no proposal family fits OneHotCategorical"):
        g = infcomp.compile(model, observe="y", num_traces=128, workers=0, progress=False)
    post = infcomp.infer(model, g, torch.tensor(1.0), num_samples=50)
    assert post.ess == pytest.approx(50, rel=1e-6)  # the prior is the proposal: equal weights


def test_corrupt_and_foreign_files(tmp_path, guide):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a torch file")
    with pytest.raises(ValueError, match="not a usable infcomp guide file"):
        infcomp.load(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="no infcomp-guide header"):
        infcomp.load(foreign)
    good = tmp_path / "good.pt"
    guide.save(good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ValueError, match="not a usable infcomp guide file"):
        infcomp.load(truncated)
    # a file from a version whose network had other tensors: named as such, briefly
    data = torch.load(good, weights_only=True)
    data["state_dict"] = {k: v for k, v in data["state_dict"].items() if not k.startswith("lstm.")}
    data["state_dict"]["old_layer.weight"] = torch.zeros(2)
    old = tmp_path / "old.pt"
    torch.save(data, old)
    with pytest.raises(ValueError, match=r"another layout .*tensors missing, e\.g\. 'lstm\..*1 unexpected tensors.*compile it again"):
        infcomp.load(old)


def test_loading_into_a_mismatched_model(guide, tmp_path):
    path = tmp_path / "gauss.pt"
    guide.save(path)

    def wider(y=None):
        mu = pyro.sample("mu", dist.Normal(1.0, 5**0.5))
        pyro.sample("y", dist.Normal(mu, 1.0).expand([3]).to_event(1), obs=y)

    with pytest.raises(ValueError, match=r"observed site 'y' has shape \(3,\).*compiled for shape \(2,\)"):
        infcomp.load(path, model=wider)

    def other_family(y=None):
        mu = pyro.sample("mu", dist.Gamma(2.0, 1.0))
        pyro.sample("y", dist.Normal(mu, 1.0).expand([2]).to_event(1), obs=y)

    with pytest.raises(ValueError, match="site 'mu' was sampled from Normal before and from Gamma now"):
        infcomp.load(path, model=other_family)


def test_guide_called_without_observation(guide):
    with pytest.raises(ValueError, match="needs the observation"):
        guide()
