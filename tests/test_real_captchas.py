"""The real-CAPTCHA evaluation end to end, on a few shared images, with a tiny breaker.

The images live in ../shared/data/real-captchas (evaluation data, never in the repo and
never trained on); the test skips with a message where that folder is absent.
"""

import json
from pathlib import Path

import pytest

from infcomp_models.captcha.cli import main

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-captchas"


@pytest.mark.parametrize("scheme", ["really_simple_captcha", "captcha_images_v2", "colour_arcs"])
def test_break_real_images_end_to_end(scheme, tmp_path, capsys):
    folder = SHARED / scheme
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: the real CAPTCHAs come from ../shared beside the checkout")
    files = sorted(folder.glob("*.png"))[:4]
    model = tmp_path / f"{scheme}.pt"
    assert main(["compile", "--calibration-draws", "40", "--style", scheme, "--traces", "128", "--out", str(model), "--workers", "0",
                 "--seed", "0", "--quiet"]) == 0
    capsys.readouterr()
    reliability = tmp_path / "reliability.png"
    assert main(["break", str(model), *map(str, files), "--particles", "4", "--json",
                 "--reliability", str(reliability)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 4 and result["style"] == scheme
    labels = [r["label"] for r in result["readings"]]
    assert labels == [f.stem for f in files]  # file names are the labels
    for key in ("recognition_rate", "char_accuracy", "confident_share"):
        assert 0.0 <= result[key] <= 1.0
    assert reliability.exists()
