"""Bad inputs, through the command line and the Posterior API: each refused early, in one line naming the
argument or the file, or flagged; never a silent wrong answer or a traceback."""

import json
import math
import re
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from infcomp.posterior import Posterior
from infcomp_models.captcha import breaker as breaker_module
from infcomp_models.captcha import get_style
from infcomp_models.captcha.breaker import load_breaker, load_image, read_posterior
from infcomp_models.captcha import cli
from infcomp_models.captcha.cli import main

STYLE = get_style("baidu2011")


@pytest.fixture(scope="module")
def tiny(baidu2011_breaker):
    return baidu2011_breaker(64)


def _run(argv, capsys):
    """``(exit status, stdout, stderr lines)`` of the command line, argparse's exits included; a progress bar's
    carriage-return updates stay on their line, as in a log."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, [line for line in err.strip().split("\n") if line]


def _png(array, path):
    Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8)).save(path)
    return path


def _draw(seed, folder, name=None):
    image, text = STYLE.sample(seed)
    return _png(image.numpy(), folder / f"{name or text}.png"), image, text


def _huge_png(path, width, height):
    """A PNG header claiming ``width x height`` pixels, with next to no data: what a decompression bomb opens as."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


# ---------------------------------------------------------------- the command line: one line, naming what is wrong

def _bad_guide(tmp):
    (tmp / "notes.pt").write_text("not a guide")
    return tmp / "notes.pt"


def _file_in_the_way(tmp):
    (tmp / "file").write_text("")
    return tmp / "file" / "gallery.png"


CLI_ROWS = [
    # (id, argv with {model} {tmp}, exit status, the one stderr line's pattern)
    ("evaluate -n 0", ["evaluate", "{model}", "-n", "0"], 2, r"argument -n: must be an integer of at least 1, got '0'"),
    ("samples -n 0", ["samples", "--style", "baidu2011", "-n", "0", "--out", "{tmp}/s.png"], 2,
     r"argument -n: must be an integer of at least 1, got '0'"),
    ("samples --cols 0", ["samples", "--style", "baidu2011", "--cols", "0", "--out", "{tmp}/s.png"], 2, r"--cols"),
    ("evaluate --show -1", ["evaluate", "{model}", "--show", "-1"], 2, r"argument --show: must be 0 or a positive"),
    ("evaluate -n x", ["evaluate", "{model}", "-n", "x"], 2, r"argument -n: .*'x'"),
    ("--particles -1", ["break", "{model}", "{draw}", "--particles", "-1"], 2,
     r"argument --particles: must be 0 \(greedy reads only\) or a positive count of particles, got '-1'"),
    ("--min-probability 1.5", ["break", "{model}", "{draw}", "--min-probability", "1.5"], 2,
     r"argument --min-probability: must be a probability between 0 and 1, got '1.5'"),
    ("--min-probability without posterior reads", ["break", "{model}", "{draw}", "--min-probability", "0.5",
                                                    "--particles", "0"], 2,
     r"^error: --min-probability needs posterior reads"),
    ("--bandwidth without --weighted", ["break", "{model}", "{draw}", "--bandwidth", "0.3"], 2,
     r"^error: --bandwidth changes only importance-weighted reads: add --weighted"),
    ("unknown option", ["break", "{model}", "{draw}", "--partikles", "3"], 2,
     r"unrecognized arguments: --partikles"),
    ("missing breaker", ["break", "{tmp}/missing.pt", "{draw}"], 2, r"^error: .*missing\.pt"),
    ("unreadable breaker", ["break", "{bad_guide}", "{draw}"], 2, r"^error: .*notes\.pt is not a usable infcomp guide"),
    ("breaker is a folder", ["evaluate", "{tmp}", "-n", "1"], 2, r"^error: .*"),
    ("missing image", ["break", "{model}", "{tmp}/nothere.png", "--json"], 1, r"^error: .*nothere\.png"),
    ("20000 x 20000 image", ["break", "{model}", "{bomb}", "--json"], 1, r"^error: .*bomb\.png: too large to read"),
    ("gallery path through a file", ["break", "{model}", "{draw}", "--particles", "0", "--json", "--gallery",
                                     "{in_the_way}"], 2, r"^error: .*/file'"),
]


@pytest.mark.parametrize("argv, status, pattern", [row[1:] for row in CLI_ROWS], ids=[row[0] for row in CLI_ROWS])
def test_a_bad_input_is_one_line_naming_it(argv, status, pattern, tiny, tmp_path, capsys):
    names = {"model": tiny, "tmp": tmp_path, "draw": _draw(1, tmp_path)[0], "bad_guide": _bad_guide(tmp_path),
             "bomb": _huge_png(tmp_path / "bomb.png", 20_000, 20_000), "in_the_way": _file_in_the_way(tmp_path)}
    rc, _, err = _run([a.format(**names) for a in argv], capsys)
    assert rc == status and len(err) == 1, err
    assert "Traceback" not in err[0]
    assert re.search(pattern, err[0]), err[0]


def test_a_real_bug_still_shows_its_traceback(tiny, monkeypatch):
    monkeypatch.setattr(breaker_module, "load_breaker", lambda *a, **k: (_ for _ in ()).throw(KeyError("a bug")))
    with pytest.raises(KeyError, match="a bug"):
        main(["evaluate", str(tiny), "-n", "1"])


# ---------------------------------------------------------------- the Posterior API: the argument named

@pytest.fixture
def posterior():
    g = torch.Generator().manual_seed(0)
    return Posterior(torch.randn(5, generator=g, dtype=torch.float64),
                     {"x": (torch.arange(5), torch.randn(5, generator=g)),
                      "k": (torch.arange(5), torch.tensor([0, 1, 1, 2, 0]))})


API_ROWS = [
    ("quantile 1.5", lambda p: p.marginal("x").quantile(1.5), ValueError, r"q must be in \[0, 1\], got 1\.5"),
    ("quantile -0.1", lambda p: p.marginal("x").quantile(-0.1), ValueError, r"q must be in \[0, 1\], got -0\.1"),
    ("quantile nan", lambda p: p.marginal("x").quantile(math.nan), ValueError, r"q must be in \[0, 1\], got nan"),
    ("quantile [0.5, 2]", lambda p: p.marginal("x").quantile([0.5, 2.0]), ValueError, r"q must be in \[0, 1\]"),
    ("quantile 'a'", lambda p: p.marginal("x").quantile("a"), TypeError, r"q must be a probability .* got 'a'"),
    ("values 10**6", lambda p: p.values(10**6), IndexError, r"i=1000000 is out of range.* 5 samples, indices 0 \.\. 4"),
    ("values -6", lambda p: p.values(-6), IndexError, r"i=-6 is out of range"),
    ("values 1.5", lambda p: p.values(1.5), TypeError, r"sample index i must be an integer, got 1\.5"),
    ("probs continuous", lambda p: p.marginal("x").probs(), ValueError,
     r"probs is for discrete sites; 'x' takes continuous values: use histogram\(\) or quantile\(\)"),
]


@pytest.mark.parametrize("call, error, pattern", [row[1:] for row in API_ROWS], ids=[row[0] for row in API_ROWS])
def test_a_bad_posterior_argument_is_named(call, error, pattern, posterior):
    with pytest.raises(error, match=pattern):
        call(posterior)


def test_good_posterior_arguments_still_work(posterior):
    m = posterior.marginal("x")
    assert float(m.quantile(0.0)) == float(m.values.min()) and float(m.quantile(1.0)) == float(m.values.max())
    assert m.quantile([0.25, 0.75]).shape == (2,)
    assert set(posterior.marginal("k").probs()) == {0, 1, 2}
    assert posterior.values(-1) == posterior.values(4)


# ---------------------------------------------------------------- images: read right, warned about, or flagged

def test_16_bit_and_palette_images_read_like_the_8_bit_one(tmp_path):
    path, image, _ = _draw(3, tmp_path)
    eight = load_image(path, STYLE)
    pixels = image.clamp(0, 1).numpy()
    Image.fromarray((pixels * 65535).round().astype(np.uint16)).save(tmp_path / "sixteen.png")
    Image.fromarray((pixels * 65535).round().astype(np.int32), "I").save(tmp_path / "int32.tiff")
    Image.open(path).convert("P").save(tmp_path / "palette.png")
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I")
    for name in ("sixteen.png", "int32.tiff", "palette.png"):
        assert torch.allclose(load_image(tmp_path / name, STYLE), eight, atol=1.5 / 255), name


def test_sizes_far_from_the_styles_warn_naming_the_file(tmp_path):
    warnings = []
    for name, size in (("square.png", (4000, 4000)), ("dot.png", (1, 1)), ("tall.png", (32, 96)),
                       ("small.png", (12, 4)), ("fine.png", (150, 50))):
        Image.new("L", size, 255).save(tmp_path / name)
        image = load_image(tmp_path / name, STYLE, warn=warnings.append)
        assert image.shape == STYLE.shape
    assert [w.split(":")[0].rsplit("/", 1)[-1] for w in warnings] == ["square.png", "dot.png", "tall.png", "small.png"]
    assert all("\n" not in w for w in warnings)


def test_break_says_which_style_its_breaker_reads(tiny, tmp_path, capsys):
    draw = str(_draw(1, tmp_path)[0])
    rc, out, _ = _run(["break", str(tiny), draw, "--particles", "0"], capsys)
    assert rc == 0 and out.splitlines()[0].startswith("breaker for style 'baidu2011'")
    rc, out, _ = _run(["break", str(tiny), draw, "--particles", "0", "--json"], capsys)
    assert next(iter(json.loads(out))) == "style" and json.loads(out)["style"] == "baidu2011"


def test_images_unlike_the_style_get_probability_zero_and_style_draws_read_as_usual(tiny, tmp_path, capsys):
    h, w = STYLE.shape
    junk = {"blank.png": np.ones((h, w)), "black.png": np.zeros((h, w)),
            "noise.png": np.random.default_rng(0).random((h, w))}
    files = [str(_png(a, tmp_path / name)) for name, a in junk.items()]
    Image.new("RGBA", (w, h), (0, 0, 0, 0)).save(tmp_path / "transparent.png")
    Image.new("L", (1, 1), 0).save(tmp_path / "one.png")
    files += [str(tmp_path / "transparent.png"), str(tmp_path / "one.png")]
    draws = [str(_draw(20 + i, tmp_path)[0]) for i in range(2)]
    rc, out, err = _run(["break", str(tiny), *files, *draws, "--particles", "6", "--json"], capsys)
    assert rc == 0
    rows = {r["file"]: r for r in json.loads(out)["readings"]}
    guide, style = load_breaker(tiny)
    for f in files:
        assert rows[f]["probability"] == 0.0 and rows[f]["unlike_style"], f
        assert sum(f in line and "unlike the baidu2011 style's images" in line for line in err) == 1, (f, err)
    for f in draws:
        assert "unlike_style" not in rows[f]
        usual = read_posterior(style, guide, load_image(f, style), 6, cli.file_seed(f, 0))
        assert (rows[f]["reading"], rows[f]["probability"]) == (usual.text, usual.probability)
    assert json.loads(out)["unlike_style"] == len(files)


# ---------------------------------------------------------------- scores: kept, and independent of the file order

def test_unlabelled_file_names_leave_the_labelled_ones_scored(tiny, tmp_path, capsys):
    labelled = [str(_draw(30 + i, tmp_path)[0]) for i in range(2)]
    lower = str(_draw(32, tmp_path, name=STYLE.sample(32)[1].lower())[0])
    other = str(_draw(33, tmp_path, name="scan_01")[0])
    files = labelled + [lower, other]
    rc, out, _ = _run(["break", str(tiny), *files, "--particles", "0", "--json"], capsys)
    result = json.loads(out)
    assert rc == 0 and result["unlabelled"] == 2 and "recognition_rate" in result
    rows = {r["file"]: r for r in result["readings"]}
    assert [rows[f]["label"] is not None for f in files] == [True, True, False, False]
    right = [rows[f]["reading"] == rows[f]["label"] for f in labelled]
    assert result["recognition_rate"] == sum(right) / 2
    rc, out, _ = _run(["break", str(tiny), *files, "--particles", "0"], capsys)
    assert "2 of 4 file names are not labels" in out and "the scores are over the other 2" in out


def test_a_files_reading_does_not_depend_on_its_place_in_the_list(tiny, tmp_path, capsys):
    files = [str(_draw(40 + i, tmp_path)[0]) for i in range(2)]
    reads = []
    for order in (files, files[::-1]):
        rc, out, _ = _run(["break", str(tiny), *order, "--particles", "6", "--weighted", "--bandwidth", "50", "--json"], capsys)
        assert rc == 0
        reads.append({r["file"]: (r["reading"], r["probability"], r["ess"]) for r in json.loads(out)["readings"]})
    assert reads[0] == reads[1]
    _, out, _ = _run(["break", str(tiny), files[0], "--particles", "6", "--weighted", "--bandwidth", "50", "--seed", "1", "--json"],
                     capsys)
    assert json.loads(out)["readings"][0]["ess"] != reads[0][files[0]][2]  # --seed still changes the particles


def test_the_reading_bar_off_a_terminal_updates_every_few_seconds(tiny, tmp_path, capsys, monkeypatch):
    files = [str(_draw(50 + i, tmp_path)[0]) for i in range(8)]

    def slow_read(style, guide, images):
        time.sleep(0.15 * len(images))
        return ["AAAA"] * len(images)

    monkeypatch.setattr(breaker_module, "read_greedy", slow_read)
    rc, _, err = _run(["break", str(tiny), *files, "--particles", "0"], capsys)
    assert rc == 0
    updates = "\n".join(err).count("\r")
    assert updates <= 3, updates


def test_calibrate_checks_a_breaker_on_its_styles_draws(tiny, tmp_path, capsys):
    plot = tmp_path / "calibration.png"
    rc, out, _ = _run(["calibrate", str(tiny), "-n", "4", "--particles", "5", "--plot", str(plot), "--json"], capsys)
    assert rc == 0 and plot.stat().st_size > 10_000
    summary = json.loads(out)
    text = summary["checks"]["text"]
    assert text["kind"] == "discrete" and 0 <= text["posterior"]["ece"] <= 1 and 0 <= text["q"]["brier"] <= 1
    assert set(summary["failures"]) == {"q", "posterior"}
    weights = summary["weights"]  # each draw's importance weights, and how many were unreliable
    assert len(weights["per_draw"]) == weights["weighted"] == 4 and weights["ess_floor"] == 0.5
    assert weights["unreliable"] == sum(not d["reliable"] for d in weights["per_draw"])
    assert all(d["num_samples"] == 5 and d["ess"] >= 1 for d in weights["per_draw"])
    rc, out, _ = _run(["calibrate", str(tiny), "-n", "2", "--particles", "5"], capsys)
    assert rc == 0 and out.splitlines()[-1] == "weights unreliable on 0 of 2 draws (k-hat > 0.00 or ESS < 0.5)"
    rc, _, err = _run(["calibrate", str(tiny), "-n", "0"], capsys)
    assert rc == 2 and "-n" in " ".join(err)
