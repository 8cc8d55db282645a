import warnings

import pyro
import pytest


@pytest.fixture(autouse=True)
def _fresh_pyro():
    pyro.clear_param_store()
    yield


@pytest.fixture(scope="session")
def baidu2011_breaker(tmp_path_factory):
    """``make(traces)``: a baidu2011 breaker file compiled by the command line on that many prior
    traces (no workers, seed 0), in a folder of its own."""
    from infcomp_models.captcha.cli import main

    def make(traces):
        path = tmp_path_factory.mktemp("breaker") / "baidu2011.pt"
        assert main(["compile", "--style", "baidu2011", "--traces", str(traces), "--out", str(path), "--workers", "0",
                     "--seed", "0", "--calibration-draws", "40", "--quiet"]) == 0
        return path

    return make


def pytest_configure(config):
    warnings.filterwarnings("ignore", message=".*tensor with requires_grad=True to a scalar.*")
