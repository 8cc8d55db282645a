"""The tutorials' code runs as written (in a scratch folder), at the sizes the page states
unless the page marks a ``# test size:`` override."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def shrink(code):
    """``X = big  # test size: small`` -> ``X = small``: tutorials state real sizes, tests run tiny ones."""
    return re.sub(r"^(\s*\w+\s*=\s*)[^#\n]+#\s*test size:\s*(.+)$", r"\1\2", code, flags=re.M)


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("[0-9][0-9]-*.md")))
def test_tutorial_runs(page, tmp_path, monkeypatch):
    text = (DOCS / page).read_text()
    shared = DOCS.parent.parent / "shared" / "data" / "real-captchas"
    if "real-captchas" in text and not shared.is_dir():
        pytest.skip(f"{page} reads the real CAPTCHAs in {shared}, which is absent")
    monkeypatch.setenv("INFCOMP_REAL_CAPTCHAS", str(shared))
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(DOCS / page)
    assert blocks, f"{page} has no code"
    namespace = {"__name__": "__tutorial__"}
    for block in blocks:
        exec(compile(shrink(block), f"{page}", "exec"), namespace)
    assert any(p.suffix == ".png" for p in tmp_path.iterdir()), "every tutorial saves a picture"
