"""Trace datasets on disk: written, resumed, read by other tools, trained on."""

import json
import os

import pyro
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file as load_numpy

import infcomp
from infcomp.shards import ShardStream, TraceShards, save_traces, shard_seed
from infcomp.traces import PriorSampler
from infcomp_models.examples import gaussian, poisson_branching


def _content(file):
    """A shard's header and tensors (its bytes vary: safetensors writes the metadata in hash order)."""
    with safe_open(file, "pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def _same(files, others):
    return len(files) == len(others) and all(
        a[0] == b[0] and a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])
        for a, b in ((_content(f), _content(g)) for f, g in zip(files, others)))


def _key(r):
    return (r.structure, tuple(float(v) for v in r.values), float(r.observation["y"]))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("traces") / "branching"
    return save_traces(poisson_branching, path, 500, observe="y", shard_size=200, seed=5, workers=0, progress=False)


def test_a_shard_holds_the_traces_drawn_from_its_seed_grouped_by_structure(dataset):
    assert [os.path.basename(f) for f in dataset.files] == [f"shard-00000{i}.safetensors" for i in range(3)]
    stored = [dataset.records(f) for f in dataset.files]
    assert [len(s) for s in stored] == [200, 200, 100]
    sampler = PriorSampler(poisson_branching, "y", validate=False)
    pyro.set_rng_seed(shard_seed(5, 1))
    drawn = [sampler.sample() for _ in range(200)]
    assert sorted(map(_key, stored[1])) == sorted(map(_key, drawn))
    structures = [r.structure for r in stored[1]]
    assert structures == sorted(structures, key=structures.index)  # each structure's traces together
    for r, d in zip(sorted(stored[1], key=_key), sorted(drawn, key=_key)):
        assert all(torch.equal(a, b) for a, b in zip(r.contexts, d.contexts))


def test_the_format_reads_without_infcomp(dataset):
    arrays = load_numpy(dataset.files[0])
    with safe_open(dataset.files[0], "np") as f:
        header = json.loads(f.metadata()["infcomp"])
    assert sum(header["counts"]) == 200
    for g, (structure, n) in enumerate(zip(header["structures"], header["counts"])):
        assert arrays[f"g{g}/o0"].shape == (n,)
        assert [arrays[f"g{g}/v{t}"].shape[0] for t in range(len(structure))] == [n] * len(structure)
    assert {d["name"] for d in header["sites"]} == {n for s in header["structures"] for n in s}
    with open(os.path.join(dataset.path, "index.json")) as f:
        assert json.load(f)["num_traces"] == 500


def test_writing_is_the_same_with_workers_and_resumes_the_missing_shards(tmp_path, dataset):
    path = tmp_path / "again"
    save_traces(poisson_branching, path, 500, observe="y", shard_size=200, seed=5, workers=2, progress=False)
    assert _same(TraceShards(path).files, dataset.files)
    os.remove(path / "shard-000001.safetensors")
    with pytest.raises(ValueError, match="1 of its 3 shards are missing"):
        TraceShards(path).check_complete()
    save_traces(poisson_branching, path, 500, observe="y", shard_size=200, seed=5, workers=0, progress=False)
    assert _same(TraceShards(path).files, dataset.files)


def test_a_folder_of_other_settings_or_other_files_is_refused_before_any_draw(tmp_path, dataset):
    with pytest.raises(ValueError, match="seed=5, not 6"):
        save_traces(poisson_branching, dataset.path, 500, observe="y", shard_size=200, seed=6, progress=False)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no trace dataset"):
        save_traces(poisson_branching, tmp_path, 10, observe="y", progress=False)
    with pytest.raises(ValueError, match="observations must be one of"):
        save_traces(poisson_branching, tmp_path / "x", 10, observe="y", observations="png", progress=False)
    with pytest.raises(ValueError, match="holds no trace dataset: no index.json"):
        TraceShards(tmp_path)


def test_uint8_observations_are_within_half_a_step_at_a_quarter_of_the_size(tmp_path):
    shape = dict(model_kwargs={}, observe="y", shard_size=400, seed=1, workers=0, progress=False)

    def image_model(y=None):
        level = pyro.sample("level", pyro.distributions.Uniform(0.0, 1.0))
        pyro.sample("y", pyro.distributions.Normal(level.expand(32, 32), 0.1).to_event(2), obs=y)

    exact = save_traces(image_model, tmp_path / "exact", 400, **shape)
    small = save_traces(image_model, tmp_path / "small", 400, observations="uint8", **shape)
    a, b = exact.records(exact.files[0]), small.records(small.files[0])
    with safe_open(small.files[0], "pt") as f:
        entry = json.loads(f.metadata()["infcomp"])["observed"][0]
    assert entry["stored"] == "uint8" and entry["dtype"] == "float32"
    worst = max(float((x.observation["y"] - y.observation["y"]).abs().max()) for x, y in zip(a, b))
    assert 0 < worst <= entry["step"] / 2 + 1e-6
    assert b[0].observation["y"].dtype == torch.float32
    assert os.path.getsize(small.files[0]) < 0.3 * os.path.getsize(exact.files[0])


def test_ranks_and_workers_read_disjoint_shares_that_cover_the_dataset(dataset):
    specs = dataset.specs()
    seen = []
    for rank in range(2):
        for batch, fresh in ShardStream(dataset, specs, 64, 1, seed=0, rank=rank, world=2):
            assert fresh
            seen += batch.observation["y"].tolist()
    everything = [float(r.observation["y"]) for f in dataset.files for r in dataset.records(f)]
    assert sorted(seen) == sorted(everything)
    epochs = [fresh for _, fresh in ShardStream(dataset, specs, 100, 2, seed=0)]
    assert epochs == [True] * 5 + [False] * 5


def test_compile_trains_on_a_dataset_for_its_epochs(dataset):
    guide = infcomp.compile(poisson_branching, "y", traces=dataset.path, epochs=2, batch_size=50, workers=0, seed=0,
                            validation_size=32, progress=False)
    run = guide.last_run
    assert (run.traces, run.trained_traces, run.steps, run.stopped_waiting) == (500, 1000, 20, False)
    assert set(dataset.specs()) <= set(guide.addresses) and run.validation_loss == run.validation_loss
    mixed = infcomp.compile(poisson_branching, "y", 400, traces=dataset, fresh_share=0.5, batch_size=50, workers=0,
                            seed=0, validation_size=32, progress=False)
    assert mixed.last_run.traces >= 400 and mixed.last_run.trained_traces == mixed.last_run.traces


def test_a_dataset_that_does_not_fit_the_compile_is_refused(tmp_path, dataset):
    with pytest.raises(ValueError, match="observes \\['y'\\], not \\['x'\\]"):
        infcomp.compile(poisson_branching, "x", traces=dataset.path, progress=False)
    with pytest.raises(ValueError, match="holds no trace dataset"):
        infcomp.compile(poisson_branching, "y", traces=tmp_path / "none", progress=False)
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        infcomp.compile(poisson_branching, "y", traces=dataset.path, epochs=0, progress=False)
    with pytest.raises(ValueError, match="does not fit the model: site 'n' was sampled from Poisson before"):
        def renamed(y=None):
            n = pyro.sample("n", pyro.distributions.Normal(0.0, 1.0))
            pyro.sample("y", pyro.distributions.Normal(n, 1.0), obs=y)
        infcomp.compile(renamed, "y", traces=dataset.path, workers=0, validation_size=8, progress=False)
    gaussian_data = save_traces(gaussian, tmp_path / "g", 64, observe="y", workers=0, progress=False)
    assert infcomp.compile(gaussian, "y", traces=gaussian_data, workers=0, validation_size=8,
                           progress=False).last_run.trained_traces == 64


def test_a_dataset_whose_observations_are_not_the_model_s_is_refused(tmp_path):
    def wide(y=None):
        mu = pyro.sample("mu", pyro.distributions.Normal(0.0, 1.0))
        pyro.sample("y", pyro.distributions.Normal(mu, 1.0).expand([3]).to_event(1), obs=y)

    data = save_traces(wide, tmp_path / "wide", 64, observe="y", workers=0, progress=False)
    assert data.observed() == {"y": ((3,), "float32")}
    with pytest.raises(ValueError, match="observed site 'y' is \\(3,\\) float32 there, \\(2,\\) float32 in the model"):
        infcomp.compile(gaussian, "y", traces=data, workers=0, validation_size=8, progress=False)


def test_epochs_or_a_fresh_share_without_a_dataset_is_refused():
    for kwargs in ({"epochs": 3}, {"fresh_share": 0.5}):
        with pytest.raises(ValueError, match="settings of training on a trace dataset: pass traces="):
            infcomp.compile(gaussian, "y", 64, progress=False, **kwargs)


def test_a_model_that_fails_at_once_leaves_no_folder_behind_and_a_cut_write_no_temporary_files(tmp_path, dataset):
    def broken(y=None):
        raise RuntimeError("no such simulator")

    with pytest.raises(Exception, match="no such simulator"):
        save_traces(broken, tmp_path / "broken", 10, observe="y", workers=0, progress=False)
    assert not (tmp_path / "broken").exists()
    path = tmp_path / "cut"
    save_traces(poisson_branching, path, 500, observe="y", shard_size=200, seed=5, workers=0, progress=False)
    os.remove(path / "shard-000002.safetensors")
    (path / "shard-000002.safetensors.abc.writing").write_bytes(b"half a shard")
    save_traces(poisson_branching, path, 500, observe="y", shard_size=200, seed=5, workers=0, progress=False)
    assert sorted(os.listdir(path)) == ["index.json"] + [f"shard-00000{i}.safetensors" for i in range(3)]
    assert _same(TraceShards(path).files, dataset.files)


def test_uint8_refuses_observations_that_are_not_finite(tmp_path):
    class NaNNormal(pyro.distributions.Normal):
        def rsample(self, sample_shape=torch.Size()):
            return torch.full(sample_shape + self.batch_shape, float("nan"))

        sample = rsample

    def model(y=None):
        mu = pyro.sample("mu", pyro.distributions.Normal(0.0, 1.0))
        pyro.sample("y", NaNNormal(mu, 1.0, validate_args=False), obs=y)

    with pytest.raises(ValueError, match="observed site 'y' has values that are not finite: observations='uint8'"):
        save_traces(model, tmp_path / "nan", 16, observe="y", observations="uint8", workers=0, progress=False)


def test_the_command_line_writes_a_style_s_traces_and_compiles_a_breaker_on_them(tmp_path, capsys):
    from infcomp_models.captcha.cli import main

    data, out = tmp_path / "baidu", tmp_path / "baidu.pt"
    assert main(["traces", "--style", "baidu2011", "-n", "96", "--out", str(data), "--shard-size", "48",
                 "--workers", "0", "--quiet"]) == 0
    assert "wrote 96 prior traces of style 'baidu2011'" in capsys.readouterr().out
    assert TraceShards(data).num_traces == 96
    assert main(["compile", "--style", "baidu2011", "--from-traces", str(data), "--epochs", "2", "--batch-size", "32",
                 "--out", str(out), "--workers", "0", "--calibration-draws", "0", "--quiet"]) == 0
    assert infcomp.load(out).last_run.trained_traces == 192
    assert main(["compile", "--style", "baidu2011", "--from-traces", str(tmp_path / "none"), "--out",
                 str(tmp_path / "x.pt"), "--workers", "0", "--quiet"]) == 2
    assert "none holds no trace dataset" in capsys.readouterr().err


def test_a_mixed_stream_whose_fresh_draws_stall_says_so():
    from infcomp.shards import Mixed

    mixed = Mixed(iter([("stored", True)] * 3), iter([]), share=1.0, seed=0)
    with pytest.raises(StopIteration):
        next(mixed)
    assert mixed.stalled
    done = Mixed(iter([("stored", True)]), None, share=0.5, seed=0)
    assert next(done) == ("stored", True)
    with pytest.raises(StopIteration):
        next(done)
    assert not done.stalled
