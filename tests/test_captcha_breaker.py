"""A tiny CAPTCHA breaker compiled and used end to end through the command line."""

import dataclasses
import json

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch
from PIL import Image

import infcomp
from infcomp_models.captcha.cli import main
from infcomp_models.captcha import get_style
from infcomp.nn.network import NetworkConfig
from infcomp_models.captcha.breaker import (char_accuracy, char_confusions, compile_breaker, describe_confusions,
                                            load_image, read_greedy)


@pytest.fixture(scope="module")
def breaker(baidu2011_breaker):
    return baidu2011_breaker(256)


def test_compile_writes_a_breaker_and_a_loss_curve(breaker):
    assert breaker.exists() and breaker.with_suffix(".loss.png").exists()


def test_compile_resumes(breaker, capsys):
    assert main(["compile", "--calibration-draws", "40", "--style", "baidu2011", "--traces", "64", "--out", str(breaker), "--workers", "0",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "total 320 traces" in out


def test_compile_refuses_another_styles_file(breaker, capsys):
    with pytest.raises(SystemExit, match="is a breaker for style 'baidu2011', not 'ebay'"):
        main(["compile", "--calibration-draws", "0", "--style", "ebay", "--traces", "64", "--out", str(breaker), "--quiet"])


def test_compile_network_options_build_the_network_and_a_resume_keeps_them(tmp_path, capsys):
    path = tmp_path / "wide.pt"
    assert main(["compile", "--calibration-draws", "0", "--style", "baidu2011", "--traces", "64", "--out", str(path), "--workers", "0",
                 "--channels", "8,16,24", "--column-rnn", "4", "--memory-columns", "0", "--column-pixels", "4",
                 "--no-conv-refine", "--seed", "0", "--quiet"]) == 0
    guide = infcomp.load(path)
    convs = [m for m in guide.network.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 24]  # no fourth convolution
    assert guide.network.encoder.memory_dim == 24 * 4
    assert guide.network.attention.columns.hidden_size == 4
    assert guide.network.encoder.memory_len == 24  # the convolutions' own width: 96 pixels over 4
    with pytest.raises(SystemExit, match="was built with --channels 8,16,24, not 16,32,64"):
        main(["compile", "--calibration-draws", "0", "--style", "baidu2011", "--traces", "64", "--out", str(path), "--channels", "16,32,64",
              "--quiet"])
    with pytest.raises(SystemExit, match="was built with --column-rnn 4, not 0"):
        main(["compile", "--calibration-draws", "0", "--style", "baidu2011", "--traces", "64", "--out", str(path), "--column-rnn", "0", "--quiet"])
    with pytest.raises(SystemExit, match="was built with --column-pixels 4, not 8"):
        main(["compile", "--calibration-draws", "0", "--style", "baidu2011", "--traces", "64", "--out", str(path), "--column-pixels", "8", "--quiet"])
    with pytest.raises(SystemExit, match="was built with --no-conv-refine, not --conv-refine"):
        main(["compile", "--calibration-draws", "0", "--style", "baidu2011", "--traces", "64", "--out", str(path), "--conv-refine", "--quiet"])
    assert main(["compile", "--calibration-draws", "0", "--style", "baidu2011", "--traces", "64", "--out", str(path), "--workers", "0",
                 "--column-rnn", "4", "--quiet"]) == 0  # the same options resume
    assert infcomp.load(path).traces_trained == 128
    with pytest.raises(SystemExit):
        main(["compile", "--calibration-draws", "0", "--style", "baidu2011", "--traces", "64", "--out", str(path), "--channels", "8,16"])
    assert "expected three positive integers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compile", "--calibration-draws", "0", "--style", "baidu2011", "--traces", "64", "--out", str(path), "--column-rnn", "-3"])
    assert "--column-rnn: expected 0 or a positive integer, got '-3'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compile", "--calibration-draws", "0", "--style", "baidu2011", "--traces", "64", "--out", str(path), "--column-pixels", "5"])
    assert "--column-pixels: invalid choice: 5" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"channels \(12, 16, 24\): with norm each must be a multiple of 8"):
        infcomp.CNNConfig(channels=(12, 16, 24))
    with pytest.raises(ValueError, match="columns must be 0 .* got -2"):
        infcomp.CNNConfig(columns=-2)
    with pytest.raises(ValueError, match=r"column_pixels must be one of \(8, 4\), got 2"):
        infcomp.CNNConfig(column_pixels=2)
    with pytest.raises(ValueError, match="column_rnn must be 0 .* got -1"):
        infcomp.compile(get_style("baidu2011").model, "image", 64, workers=0, progress=False, config={"column_rnn": -1})


def test_a_style_sets_its_breakers_network_unless_the_compile_asks_for_another(tmp_path, capsys):
    ebay = get_style("ebay")
    assert ebay.encoder == infcomp.CNNConfig(column_pixels=4)
    assert compile_breaker(ebay, num_traces=64, workers=0, progress=False).network.encoder.cnn.column_pixels == 4
    guide = compile_breaker(ebay, num_traces=64, workers=0, progress=False, config={"column_rnn": 4},
                            encoder=ebay.encoder.replace(column_pixels=8))
    assert (guide.network.encoder.cnn.column_pixels, guide.network.cfg.column_rnn) == (8, 4)
    guide = compile_breaker(ebay, num_traces=64, workers=0, progress=False, config=NetworkConfig(column_rnn=4))
    assert guide.network.encoder.cnn.column_pixels == 4  # a NetworkConfig sizes the LSTM and heads, not the encoder
    assert compile_breaker("baidu2011", num_traces=64, workers=0, progress=False).network.encoder.cnn.column_pixels == 8

    path = tmp_path / "ebay.pt"
    assert main(["compile", "--calibration-draws", "0", "--style", "ebay", "--traces", "64", "--out", str(path), "--workers", "0", "--quiet"]) == 0
    assert "new breaker with the style's --column-pixels 4" in capsys.readouterr().out
    assert infcomp.load(path).network.encoder.cnn.column_pixels == 4
    with pytest.raises(SystemExit, match="was built with --column-pixels 4, not 8"):
        main(["compile", "--calibration-draws", "0", "--style", "ebay", "--traces", "64", "--out", str(path), "--column-pixels", "8", "--quiet"])
    assert main(["compile", "--calibration-draws", "0", "--style", "ebay", "--traces", "64", "--out", str(path), "--workers", "0", "--fresh",
                 "--column-pixels", "8", "--quiet"]) == 0
    assert "the style's" not in capsys.readouterr().out
    assert infcomp.load(path).network.encoder.cnn.column_pixels == 8
    with pytest.raises(TypeError, match="style 'ebay': encoder must be an infcomp.CNNConfig"):
        dataclasses.replace(ebay, encoder={"column_pixels": 4})


def test_break_files_named_by_their_labels(breaker, tmp_path, capsys):
    style = get_style("baidu2011")
    files = []
    for i in range(3):
        image, text = style.sample(100 + i)
        f = tmp_path / f"{text}.png"
        Image.fromarray((image.clamp(0, 1).numpy() * 255).astype(np.uint8)).resize((150, 50)).save(f)
        files.append(str(f))
    junk = tmp_path / "notes.png"
    junk.write_text("not an image")
    rc = main(["break", str(breaker), *files, str(junk), "--particles", "8", "--json",
               "--reliability", str(tmp_path / "rel.png")])
    captured = capsys.readouterr()
    assert rc == 0
    assert "not a readable image" in captured.err
    result = json.loads(captured.out)
    assert result["n"] == 3 and len(result["readings"]) == 3
    assert 0.0 <= result["recognition_rate"] <= 1.0 and 0.0 <= result["char_accuracy"] <= 1.0
    assert result["errors"][0]["file"].endswith("notes.png")
    for r in result["readings"]:
        assert len(r["reading"]) == 4 and all(c in style.alphabet for c in r["reading"])
        assert 0.0 < r["probability"] <= 1.0
    assert (tmp_path / "rel.png").exists()
    expected = char_confusions((r["reading"], r["label"]) for r in result["readings"])
    assert [tuple(c) for c in result["char_confusions"]] == expected


def test_evaluate_json(breaker, tmp_path, capsys):
    gallery = tmp_path / "gallery.png"
    assert main(["evaluate", str(breaker), "-n", "6", "--posterior-n", "2", "--particles", "4", "--json",
                 "--gallery", str(gallery)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 6 and set(result["ms_per_captcha"]) == {"greedy", "posterior"}
    assert 0.0 <= result["recognition_rate"] <= 1.0
    assert gallery.exists()


def test_weighted_reads_say_how_far_their_weights_can_be_trusted(breaker, tmp_path, capsys):
    """Per image the weights' figures, in the summary how many were unreliable, and no warning per image; the
    guide's own posterior has no importance weights, and says nothing of them."""
    import warnings

    from infcomp.weights import UnreliableWeightsWarning, diagnose

    files = []
    for i in range(2):
        image, text = get_style("baidu2011").sample(110 + i)
        files.append(str(tmp_path / f"{text}.png"))
        Image.fromarray((image.clamp(0, 1).numpy() * 255).astype(np.uint8)).save(files[-1])
    limits = diagnose(torch.zeros(16))  # the limits for 16 particles
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreliableWeightsWarning)
        assert main(["break", str(breaker), *files, "--weighted", "--particles", "16", "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        weights = [r["weights"] for r in result["readings"]]
        assert set(weights[0]) == set(limits.to_dict()) and [w["num_samples"] for w in weights] == [16, 16]
        # the compiled kernel's weights go to one particle: an ESS near 1, under the floor of 1.6
        assert not any(w["reliable"] for w in weights) and all(w["ess"] < limits.ess_floor for w in weights)
        assert result["weights"] == {"weighted": 2, "unreliable": 2, "khat_threshold": limits.khat_threshold,
                                     "ess_floor": 1.6}
        assert main(["break", str(breaker), *files, "--weighted", "--particles", "16"]) == 0
    out = capsys.readouterr().out
    assert sum("[weights: ESS " in line and ": UNRELIABLE]" in line for line in out.splitlines()) == 2
    assert f"weights unreliable on 2 of 2 images (k-hat > {limits.khat_threshold:.2f} or ESS < 1.6)" in out
    assert main(["break", str(breaker), *files, "--particles", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "weights" not in result and not any("weights" in r for r in result["readings"])


def test_a_posterior_read_is_the_guides_text_marginal_recalibrated(breaker, monkeypatch):
    from infcomp_models.captcha import breaker as app

    guide, style = app.load_breaker(breaker)
    saved = app.reading_calibration(style, guide)  # compile fitted it and saved it with the breaker: no refit here
    assert guide.metadata["calibration_traces"] == guide.traces_trained and saved.num_draws == 40
    images, texts = zip(*[style.sample(500 + i) for i in range(8)])
    readings = app.read_posterior(style, guide, list(images), samples=8, seed=2)
    marginals = infcomp.guide_marginal(style.model, guide, list(images), stop_before=style.after_text,
                                       function=style.reading, num_samples=8, seed=2)
    greedy = app.read_greedy(style, guide, list(images))
    for r, m, g in zip(readings, marginals, greedy):
        assert r.text == m.top[0] and r.probability == pytest.approx(saved(m.top[1]))
        assert r.alternatives == list(m.probabilities.items())[:5] and r.found == m.found
        assert g in m.probabilities  # the greedy reading is among those found
    # an under-trained breaker says it is unsure: it reads next to nothing right, and says so
    assert sum(r.text == t for r, t in zip(readings, texts)) <= 2 and max(r.probability for r in readings) < 0.3
    monkeypatch.setattr(guide, "traces_trained", guide.traces_trained + 1)  # trained on: the map is fitted again
    monkeypatch.setattr(app, "CALIBRATION_DRAWS", 3)
    monkeypatch.setattr(infcomp, "fit_recalibration", lambda p, right: infcomp.Recalibration(2.0, 0.5, len(p)))
    assert app.reading_calibration(style, guide) == infcomp.Recalibration(2.0, 0.5, 3)
    assert guide.metadata["calibration_traces"] == guide.traces_trained and guide.metadata["calibration_slope"] == 2.0
    with pytest.raises(ValueError, match="draws must be a positive int, got 0"):
        app.reading_calibration(style, guide, draws=0)


def test_abstaining_and_the_coverage_plot(breaker, tmp_path, capsys):
    gallery = tmp_path / "g.png"
    for p_min, answered in ((0.0, 1.0), (1.0, 0.0)):
        assert main(["evaluate", str(breaker), "-n", "5", "--posterior-n", "5", "--particles", "4", "--json",
                     "--gallery", str(gallery), "--min-probability", str(p_min)]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["abstain"]["answered_share"] == answered and set(result["accuracy_at_coverage"]) == {"90%", "50%"}
        assert result["coverage_plot"] == str(tmp_path / "g-coverage.png") and (tmp_path / "g-coverage.png").exists()
    image, text = get_style("baidu2011").sample(3)
    f = tmp_path / f"{text}.png"
    Image.fromarray((image.clamp(0, 1).numpy() * 255).astype(np.uint8)).save(f)
    assert main(["break", str(breaker), str(f), "--particles", "4", "--min-probability", "0.999",
                 "--coverage", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert "(no answer: below --min-probability)" in out and "answered where p >= 0.999: 0.0% of the readings" in out
    assert (tmp_path / "c.png").exists()


def test_accuracy_at_coverage():
    from infcomp_models.captcha.cli import _at_coverage

    # most probable first: right, right, wrong, right, wrong, ... (ten readings)
    probs = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
    right = [True, True, False, True, False, False, True, False, False, False]
    assert _at_coverage(probs, right) == {"90%": pytest.approx(4 / 9), "50%": pytest.approx(3 / 5)}


def test_a_text_only_read_reweighs_the_same_particles_by_the_text_alone(breaker, capsys):
    """Same seed, same particles; each weight changes by exactly the kernel's log density of the
    text-only rendering less that of the full one, and the clutter latents still get drawn."""
    from infcomp_models.captcha.breaker import load_breaker
    from infcomp_models.captcha.style import latent_values

    guide, style = load_breaker(breaker)
    _, text = load_breaker(breaker, text_only=True)
    assert text.text_only and not style.text_only and text.addresses(4) == style.addresses(4)
    image, _ = get_style("baidu2011").sample(7)
    full = infcomp.infer(style.model, guide, image, num_samples=6, seed=3)
    only = infcomp.infer(text.model, guide, image, num_samples=6, seed=3)
    for j in range(6):
        v = full.values(j)
        assert {k: float(x) for k, x in v.items()} == {k: float(x) for k, x in only.values(j).items()}
        change = (text.make_kernel(torch.from_numpy(text.render_values(v))).log_prob(image)
                  - style.make_kernel(torch.from_numpy(style.render_values(v))).log_prob(image))
        assert float(only.log_weights[j] - full.log_weights[j]) == pytest.approx(float(change), abs=1e-3)
    pyro.set_rng_seed(0)
    draws = (latent_values(poutine.trace(text.model).get_trace()) for _ in range(100))
    values = next(v for v in draws if int(v["num_arcs"]) > 0)  # the clutter latents are drawn, and render nothing
    assert not np.array_equal(style.render_values(values), text.render_values(values))
    assert np.array_equal(text.render_values(values), text.render_values(dict(values, num_arcs=torch.tensor(0))))
    assert main(["evaluate", str(breaker), "-n", "2", "--posterior-n", "2", "--particles", "4", "--weighted", "--text-only",
                 "--json", "--gallery", ""]) == 0
    assert json.loads(capsys.readouterr().out)["text_only"] is True


def test_read_time_bandwidth_spreads_the_weights(breaker, tmp_path, capsys):
    """A wider read-time kernel changes only the image's log density: on the same particles
    (same seed) the weights tend to p/q as the bandwidth grows, far flatter than the pixel
    kernel's at the compiled bandwidth, where one particle takes nearly all the weight."""
    from infcomp_models.captcha.breaker import load_breaker, read_weighted

    image, _ = get_style("baidu2011").sample(7)
    ess = []
    for bw in (None, 50.0):
        guide, style = load_breaker(breaker, bw)
        ess.append(read_weighted(style, guide, image, particles=16, seed=3).ess)
    assert ess[0] < 2 < 8 < ess[1]
    rel = tmp_path / "rel.png"
    assert main(["evaluate", str(breaker), "-n", "3", "--posterior-n", "3", "--particles", "4", "--weighted", "--bandwidth", "0.4",
                 "--temperature", "2", "--json", "--gallery", "", "--reliability", str(rel)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bandwidth"] == 0.4 and result["temperature"] == 2.0 and rel.exists()
    assert 0.0 <= result["brier"] <= 1.0 and 0.0 <= result["calibration_error"] <= 1.0
    weights = [r["weights"] for r in result["readings"]]  # every posterior read is weighted: each says how far
    assert [w["num_samples"] for w in weights] == [4, 4, 4] and [w["ess"] for w in weights] == [r["ess"] for r in result["readings"]]
    assert result["weights"] == {"weighted": 3, "unreliable": sum(not w["reliable"] for w in weights),
                                 "khat_threshold": 0.0, "ess_floor": 0.4}
    assert main(["evaluate", str(breaker), "-n", "1", "--weighted", "--bandwidth", "0"]) == 2
    assert "bandwidth must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad:
        main(["evaluate", str(breaker), "-n", "1", "--temperature", "0.5"])
    assert bad.value.code == 2 and "--temperature: must be at least 1" in capsys.readouterr().err


def test_calibration_scores():
    from infcomp_models.captcha.cli import _calibration

    # two bins: p=0.95 twice (one right), p=0.25 twice (none right)
    c = _calibration([0.95, 0.95, 0.25, 0.25], [True, False, False, False])
    assert c["brier"] == pytest.approx((0.05**2 + 0.95**2 + 2 * 0.25**2) / 4)
    assert c["calibration_error"] == pytest.approx(0.5 * 0.45 + 0.5 * 0.25)


def test_samples_gallery(tmp_path):
    out = tmp_path / "s.png"
    assert main(["samples", "--style", "ebay", "-n", "4", "--out", str(out)]) == 0
    assert out.exists()


def test_images_of_another_size_and_mode_are_converted(tmp_path):
    style = get_style("baidu2011")
    f = tmp_path / "x.png"
    Image.new("RGBA", (40, 10), (0, 0, 0, 0)).save(f)  # transparent: reads as white paper
    image = load_image(f, style)
    assert image.shape == (32, 96) and float(image.min()) == pytest.approx(1.0)


def test_unknown_style_and_foreign_guide(tmp_path, capsys):
    assert main(["samples", "--style", "myspace", "-n", "1", "--out", str(tmp_path / "a.png")]) == 2
    assert "myspace" in capsys.readouterr().err
    import infcomp
    from infcomp_models.examples import gaussian

    g = infcomp.compile(gaussian, observe="y", num_traces=64, workers=0, progress=False)
    g.save(tmp_path / "g.pt")
    assert main(["evaluate", str(tmp_path / "g.pt"), "-n", "1"]) == 2
    assert "not compiled for a CAPTCHA style" in capsys.readouterr().err


def test_char_accuracy():
    assert char_accuracy("ABCD", "ABCD") == 1.0
    assert char_accuracy("ABXD", "ABCD") == 0.75
    assert char_accuracy("ABC", "ABCD") == 0.75


def test_char_confusions():
    pairs = [("nn5", "mn5"), ("n4x", "m4x"), ("abd", "abc"), ("ab", "abc"), ("xyz", "xyz")]
    assert char_confusions(pairs) == [("m", "n", 2), ("c", "d", 1)]  # the short reading is left out
    assert char_confusions(pairs, top=1) == [("m", "n", 2)]
    assert describe_confusions(char_confusions(pairs)) == "m -> n 2x, c -> d 1x"
    assert describe_confusions([]) == "none"


@pytest.mark.parametrize("workers, whole_group", [(0, False), (1, True)], ids=["process", "process-group"])
def test_compile_saves_and_stops_on_sigterm(tmp_path, workers, whole_group):
    """SIGTERM to the compile, or to its whole process group with its trace worker (as a batch
    scheduler's time limit sends it), saves the breaker and stops."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    import infcomp

    path = tmp_path / "term.pt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "infcomp_models.captcha.cli", "compile", "--calibration-draws", "0", "--style", "baidu2011", "--traces", "100000000",
         "--out", str(path), "--workers", str(workers), "--batch-size", "16", "--checkpoint-every", "60"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=whole_group,
    )
    seen, deadline = b"", time.time() + 120
    while not re.search(rb"compiling[^\r\n]*\| [1-9]\d*/", seen) and time.time() < deadline:  # some batches trained
        seen += proc.stderr.read1(4096) or b""
    if whole_group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (seen + err)[-2000:]
    assert b"interrupted" in err
    saved = infcomp.load(path)
    assert saved.traces_trained > 0 and saved.last_run.interrupted


@pytest.mark.parametrize("name", ["wikipedia", "captcha_images_v2"])  # variable length; a font per letter
def test_greedy_read_stops_after_the_letters_and_reads_what_the_full_pass_reads(name):
    style = get_style(name)
    guide = infcomp.compile(style.model, "image", 64, validation_size=64, workers=0, seed=0, progress=False)
    for seed in range(3):
        image, _ = style.sample(seed)
        full = infcomp.greedy(style.model, guide, image)
        short = infcomp.greedy(style.model, guide, image, stop_before=style.after_text)
        assert style.after_text in full
        assert set(short) == {k for k in full if k == "num_letters" or k.startswith("letter_")}
        assert all(torch.equal(short[k], full[k]) for k in short)
        assert read_greedy(style, guide, image) == style.reading(full)


def test_a_resume_with_an_encoder_field_in_config_compares_that_field_alone():
    from infcomp_models.captcha.breaker import compile_breaker

    guide = compile_breaker("ebay", num_traces=64, workers=0, progress=False)
    assert guide.network.encoder.cnn.column_pixels == 4
    with pytest.warns(FutureWarning):
        compile_breaker("ebay", num_traces=64, workers=0, progress=False, guide=guide, config={"conv_refine": True})
    assert guide.traces_trained == 128
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match=r"built with refine=True, not False"):
        compile_breaker("ebay", num_traces=64, workers=0, progress=False, guide=guide, config={"conv_refine": False})
