import warnings

import pyro
import pytest


@pytest.fixture(autouse=True)
def _fresh_pyro():
    pyro.clear_param_store()
    yield


def pytest_configure(config):
    warnings.filterwarnings("ignore", message=".*tensor with requires_grad=True to a scalar.*")
