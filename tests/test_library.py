"""The library's seams and its hygiene: user encoders with a memory, user proposal families,
nothing of the CAPTCHA app inside ``infcomp/``, short functions, no backend switched."""

import ast
import subprocess
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import infcomp
from infcomp.nn import proposals
from infcomp.traces import PriorSampler
from infcomp_models.examples import gaussian
from test_core_guide import assert_step_by_step_matches_batch, image_model

LIBRARY = Path(infcomp.__file__).resolve().parent


# -- the encoder seam ---------------------------------------------------------------------
class ColumnEncoder(nn.Module):
    """A user's encoder: ``[B, 8, 16]`` images -> summary ``[B, 12]`` and a memory of their 16 columns."""

    def __init__(self):
        super().__init__()
        self.column = nn.Linear(8, 6)
        self.summary = nn.Linear(16 * 6, 12)

    def forward(self, image):
        columns = torch.relu(self.column(image.transpose(1, 2)))  # [B, 16, 6]
        return torch.relu(self.summary(columns.flatten(1))), columns


def test_a_users_encoder_with_a_memory_gets_attention_and_reads_the_same_step_by_step(tmp_path):
    torch.manual_seed(0)
    encoder = ColumnEncoder()
    guide = infcomp.compile(image_model, observe="image", num_traces=256, seed=0, workers=0, progress=False,
                            encoder=encoder)
    assert guide.network.encoder.custom is encoder
    assert (guide.network.encoder.memory_len, guide.network.encoder.memory_dim) == (16, 6)
    assert guide.network.attention is not None and guide.network.head_in.widths["context"] == 6
    sampler = PriorSampler(image_model, "image")
    assert_step_by_step_matches_batch(guide, image_model, "image", [sampler.sample() for _ in range(6)])
    guide.save(tmp_path / "own.pt")
    with pytest.raises(ValueError, match="own observation encoder: pass it again as encoder="):
        infcomp.load(tmp_path / "own.pt")
    loaded = infcomp.load(tmp_path / "own.pt", encoder=ColumnEncoder())
    image = sampler.sample().observation["image"]
    a = infcomp.infer(image_model, guide, image, num_samples=20, seed=1)
    b = infcomp.infer(image_model, loaded, image, num_samples=20, seed=1)
    assert torch.equal(a.log_weights, b.log_weights)


def test_an_encoder_of_the_wrong_shape_is_refused_before_training():
    with pytest.raises(ValueError, match=r"a memory \[B, L, M\]"):
        infcomp.compile(image_model, observe="image", num_traces=64, workers=0, progress=False,
                        encoder=lambda_module(lambda x: (x.flatten(1), x.flatten(1))))
    with pytest.raises(TypeError, match="encoder= takes an infcomp.CNNConfig or a torch.nn.Module"):
        infcomp.compile(image_model, observe="image", num_traces=64, workers=0, progress=False,
                        encoder={"column_pixels": 4})


def lambda_module(fn):
    class Wrapped(nn.Module):
        def forward(self, x):
            return fn(x)

    return Wrapped()


# -- user proposal families -----------------------------------------------------------------
class ExponentialRate(infcomp.ProposalFamily):
    """Exponential priors: a Gamma proposal, its shape and rate (relative to the prior's) from the network."""

    name = "exponential_rate"

    def fits(self, prior):
        return isinstance(prior, dist.Exponential) and prior.event_shape == ()

    def num_params(self, spec):
        return 2

    def context(self, prior):
        return prior.rate.unsqueeze(-1)

    def features(self, value, context, spec):
        return proposals.base.flat(torch.log(value * context[..., 0]), spec)

    def proposal(self, params, context):
        shape, rate = torch.exp(params.clamp(-10, 10)).unbind(-1)
        return dist.Gamma(shape, context[..., 0] * rate, validate_args=False)


def exponential_model(y=None):
    x = pyro.sample("x", dist.Exponential(1.0))
    pyro.sample("y", dist.Normal(x, 0.5), obs=y)


def exponential_posterior_mean(y):
    x = torch.linspace(0, 20, 200_001, dtype=torch.float64)
    log_p = -x + dist.Normal(x, 0.5).log_prob(torch.tensor(y, dtype=torch.float64))
    w = torch.softmax(log_p, 0)
    return float((w * x).sum())


def test_a_users_family_proposes_for_its_sites_and_saves_by_name(tmp_path):
    guide = infcomp.compile(exponential_model, observe="y", num_traces=3_000, seed=0, workers=0, progress=False,
                            families=[ExponentialRate])
    assert guide.network.specs["x"].family == "exponential_rate"
    post = infcomp.infer(exponential_model, guide, torch.tensor(2.0), num_samples=4_000, seed=1)
    assert post.mean("x").item() == pytest.approx(exponential_posterior_mean(2.0), abs=0.03)
    assert post.ess > 0.6 * post.num_samples  # it learned: the prior's is under 0.3
    guide.save(tmp_path / "exp.pt")
    with pytest.raises(ValueError, match="uses the proposal family 'exponential_rate': pass its class as families="):
        infcomp.load(tmp_path / "exp.pt")
    loaded = infcomp.load(tmp_path / "exp.pt", model=exponential_model, families=[ExponentialRate])
    a = infcomp.infer(exponential_model, guide, torch.tensor(2.0), num_samples=50, seed=1)
    b = infcomp.infer(exponential_model, loaded, torch.tensor(2.0), num_samples=50, seed=1)
    assert torch.equal(a.log_weights, b.log_weights)


def test_adding_a_family_changes_no_tensor_of_a_guide():
    plain = infcomp.compile(gaussian, observe="y", num_traces=64, seed=0, workers=0, progress=False)
    more = infcomp.compile(gaussian, observe="y", num_traces=64, seed=0, workers=0, progress=False,
                           families=[ExponentialRate])
    shapes = lambda g: {k: tuple(v.shape) for k, v in g.network.state_dict().items() if torch.is_tensor(v)}  # noqa: E731
    assert shapes(plain) == shapes(more)
    assert all(k.startswith("family_embedding.") is False or k == "family_embedding.normal_mixture"
               for k in shapes(plain))  # only the families the guide uses have an embedding


def test_register_family_adds_a_family_for_every_guide(monkeypatch):
    monkeypatch.setattr(proposals, "_REGISTERED", {})
    assert infcomp.register_family(ExponentialRate) is ExponentialRate
    guide = infcomp.compile(exponential_model, observe="y", num_traces=64, seed=0, workers=0, progress=False)
    assert guide.network.specs["x"].family == "exponential_rate"

    class Clash(ExponentialRate):
        pass

    with pytest.raises(ValueError, match="a proposal family named 'exponential_rate' exists already"):
        infcomp.register_family(Clash)
    with pytest.raises(TypeError, match="subclass of infcomp.ProposalFamily"):
        infcomp.register_family(dict)


# -- hygiene --------------------------------------------------------------------------------
def library_files():
    return sorted(LIBRARY.rglob("*.py"))


def test_the_library_knows_nothing_of_captchas():
    words = ("captcha", "infcomp_models", "font", "glyph", "letter")
    hits = [f"{p.relative_to(LIBRARY)}:{i}: {line.strip()}" for p in library_files()
            for i, line in enumerate(p.read_text().splitlines(), 1) if any(w in line.lower() for w in words)]
    assert not hits, "\n".join(hits)


def test_import_infcomp_loads_neither_pillow_nor_matplotlib():
    code = "import sys, infcomp; print(sorted({m.split('.')[0] for m in sys.modules} & {'PIL', 'matplotlib'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_no_function_in_the_library_is_longer_than_60_lines():
    lengths = []
    for path in library_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lengths.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(LIBRARY)}:{node.lineno} {node.name}"))
    too_long = [f"{where}: {n} lines" for n, where in lengths if n > 60]
    assert not too_long, "\n".join(too_long)


def test_plotting_never_switches_matplotlibs_backend(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    previous = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        post = infcomp.infer(gaussian, None, torch.tensor([8.0, 9.0]), num_samples=200, observe="y", seed=0)
        post.marginal("mu").plot(tmp_path / "mu.png")
        assert matplotlib.get_backend() == "svg"
        assert (tmp_path / "mu.png").stat().st_size > 0
    finally:
        matplotlib.use(previous)


def test_a_guide_of_a_registered_family_saves_its_name_and_loads_by_the_registry(monkeypatch, tmp_path):
    monkeypatch.setattr(proposals, "_REGISTERED", {})
    infcomp.register_family(ExponentialRate)
    guide = infcomp.compile(exponential_model, observe="y", num_traces=64, seed=0, workers=0, progress=False)
    guide.save(tmp_path / "exp.pt")
    assert infcomp.load(tmp_path / "exp.pt", model=exponential_model).network.specs["x"].family == "exponential_rate"
    monkeypatch.setattr(proposals, "_REGISTERED", {})  # a new process that has not registered it
    with pytest.raises(ValueError, match="uses the proposal family 'exponential_rate'"):
        infcomp.load(tmp_path / "exp.pt")
    assert infcomp.load(tmp_path / "exp.pt", families=[ExponentialRate]).addresses == ["x"]


class AnotherNormal(proposals.NormalMixtureProposal):
    name = "another_normal"


def test_a_family_registered_later_leaves_a_trained_guides_addresses_as_they_are(monkeypatch, tmp_path):
    guide = infcomp.compile(gaussian, observe="y", num_traces=64, seed=0, workers=0, progress=False)
    guide.save(tmp_path / "g.pt")
    monkeypatch.setattr(proposals, "_REGISTERED", {})
    infcomp.register_family(AnotherNormal)  # it fits mu's Normal prior, and is tried first from now on
    loaded = infcomp.load(tmp_path / "g.pt", model=gaussian)
    assert loaded.network.specs["mu"].family == "normal_mixture"
    infcomp.compile(gaussian, observe="y", num_traces=64, guide=loaded, workers=0, progress=False)
    assert loaded.network.specs["mu"].family == "normal_mixture" and loaded.traces_trained == 128
    fresh = infcomp.compile(gaussian, observe="y", num_traces=64, seed=0, workers=0, progress=False)
    assert fresh.network.specs["mu"].family == "another_normal"


def test_family_names_must_be_identifiers_and_not_a_builtins():
    class Dotted(ExponentialRate):
        name = "my.family"

    class Categorical2(ExponentialRate):
        name = "categorical"

    with pytest.raises(ValueError, match="a Python identifier"):
        infcomp.compile(exponential_model, observe="y", num_traces=64, workers=0, progress=False, families=[Dotted])
    with pytest.raises(ValueError, match="'categorical' is a built-in family's"):
        infcomp.compile(exponential_model, observe="y", num_traces=64, workers=0, progress=False,
                        families=[Categorical2])


def test_load_refuses_an_encoder_it_cannot_use(tmp_path):
    guide = infcomp.compile(gaussian, observe="y", num_traces=64, seed=0, workers=0, progress=False)
    guide.save(tmp_path / "g.pt")
    with pytest.raises(TypeError, match="encoder= takes a torch.nn.Module, got CNNConfig"):
        infcomp.load(tmp_path / "g.pt", encoder=infcomp.CNNConfig())
    with pytest.raises(ValueError, match="compiled with the default observation encoder: load it without encoder="):
        infcomp.load(tmp_path / "g.pt", encoder=nn.Linear(2, 4))
