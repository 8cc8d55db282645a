"""The ``infcomp`` command line: CAPTCHA breakers from generative models.

    infcomp styles
    infcomp samples --style S -n 64 --out grid.png
    infcomp compile --style S --minutes M --out S.pt      (resumes if S.pt exists)
    infcomp traces --style S -n N --out DIR               (a trace dataset; resumes if DIR holds its start)
    infcomp compile --style S --from-traces DIR --epochs E --out S.pt
    torchrun --nproc_per_node R -m infcomp_models.captcha.cli compile ...   (R ranks, data-parallel)
    infcomp break S.pt FILE... [--json]
    infcomp evaluate S.pt -n 1000 [--json]
    infcomp calibrate S.pt -n 1000 [--plot calibration.png] [--json]
"""

from __future__ import annotations

import argparse
import builtins
import hashlib
import json
import math
import signal
import sys
from pathlib import Path

import infcomp
from infcomp import CNNConfig
from infcomp.data import ModelFailureError
from infcomp.devices import checked_device
from infcomp.distributed import join, main_lock
from infcomp.files import check_writable
from infcomp_models import captcha

from . import breaker

__all__ = ["main"]


def cmd_styles(args):
    for name, style in captcha.STYLES.items():
        n = f"{style.min_letters}-{style.max_letters}" if style.variable_length else str(style.min_letters)
        print(f"{name:22s} {n:>5s} letters  {style.width}x{style.height}  alphabet {style.alphabet}")


def cmd_samples(args):
    style = captcha.get_style(args.style)
    images, titles = [], []
    for i in range(args.n):
        image, text = style.sample(args.seed + i)
        images.append(image)
        titles.append(text)
    captcha.save_gallery(images, titles, args.out, ncols=args.cols)
    print(f"wrote {args.n} prior draws of style {style.name!r} to {args.out}")


def save_loss_curve(guide, path):
    from matplotlib.figure import Figure  # no pyplot: no backend switched

    if not guide.history:
        return None
    traces, train, val = zip(*guide.history)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(traces, train, label="training batch", alpha=0.6)
    ax.plot(traces, val, label="validation", lw=2)
    ax.set_xlabel("traces")
    ax.set_ylabel("-log q(latents | image)")
    ax.set_title(guide.metadata.get("style", "loss"))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _integer(minimum: int, message: str):
    """An argparse type: an integer of at least ``minimum``, else ``message`` with the text given."""
    def parse(text):
        try:
            n = int(text)
        except ValueError:
            n = minimum - 1
        if n < minimum:
            raise argparse.ArgumentTypeError(f"{message}, got {text!r}")
        return n

    return parse


_at_least_one = _integer(1, "must be an integer of at least 1")
_not_negative = _integer(0, "must be 0 or a positive integer")
_particles = _integer(0, "must be 0 (greedy reads only) or a positive count of particles")
_positive_int = _integer(1, "expected a positive integer")
_count = _integer(0, "expected 0 or a positive integer")


def _probability(text):
    try:
        p = float(text)
    except ValueError:
        p = math.nan
    if not 0.0 <= p <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a probability between 0 and 1, got {text!r}")
    return p


READ_DEVICE = "where the network reads: cpu, cuda or cuda:N (the style's model renders on the CPU)"


def _share(text):
    """A share in [0, 1): of the batches, say (1 would leave nothing of the dataset)."""
    p = _probability(text)
    if p >= 1.0:
        raise argparse.ArgumentTypeError(f"must be a share in [0, 1), got {text!r}")
    return p


def _check_read_options(args):
    """ValueError naming the first --weighted option given without --weighted, or --min-probability without
    posterior reads (either would change nothing)."""
    if args.min_probability is not None and (args.particles == 0 or getattr(args, "posterior_n", 1) == 0):
        raise ValueError("--min-probability needs posterior reads: give --particles (and --posterior-n) above 0")
    for option, given in (("--bandwidth", args.bandwidth is not None), ("--text-only", args.text_only),
                          ("--temperature", args.temperature != 1.0)):
        if given and not args.weighted:
            raise ValueError(f"{option} changes only importance-weighted reads: add --weighted, or leave it out")


def _temperature(text):
    t = float(text)
    if not t >= 1.0:
        raise argparse.ArgumentTypeError(f"must be at least 1 (1 leaves the proposals as they are), got {text}")
    return t


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (``infcomp break: error: ...``), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _channels(text):
    try:
        channels = tuple(int(c) for c in text.split(","))
    except ValueError:
        channels = ()
    if len(channels) != 3 or min(channels) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive integers like 16,32,64, got {text!r}")
    return channels


def _positive_float(text):
    try:
        x = float(text)
    except ValueError:
        x = 0.0
    if not x > 0 or x != x:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return x


#: CNNConfig field -> the ``infcomp compile`` option that sets it for a new breaker.
ENCODER_OPTIONS = {"channels": "--channels", "columns": "--memory-columns", "column_pixels": "--column-pixels",
                   "refine": "--conv-refine"}
#: NetworkConfig field -> the ``infcomp compile`` option that sets it for a new breaker.
NETWORK_OPTIONS = {"column_rnn": "--column-rnn"}


def _value(value):
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def _shown(key, value):
    """A network setting as its ``infcomp compile`` option: ``"--column-pixels 4"``, ``"--no-conv-refine"``;
    ``"key=value"`` for a field the command line does not set."""
    option = {**ENCODER_OPTIONS, **NETWORK_OPTIONS}.get(key)
    if option is None:
        return f"{key}={_value(value)}"
    if isinstance(value, bool):
        return option if value else "--no-" + option[2:]
    return f"{option} {_value(value)}"


def _built_with(key, built, wanted):
    """``"--column-pixels 4, not 8"``, or for a switch ``"--no-conv-refine, not --conv-refine"``."""
    if isinstance(built, bool):
        return f"{_shown(key, built)}, not {_shown(key, wanted)}"
    return f"{_shown(key, built)}, not {_value(wanted)}"


def _options(args, options) -> dict:
    """The fields that the given command-line ``options`` set (those not left at None)."""
    values = {key: getattr(args, option[2:].replace("-", "_")) for key, option in options.items()}
    return {key: value for key, value in values.items() if value is not None}


def cmd_compile(args):
    style = captcha.get_style(args.style)
    if args.from_traces is None and (args.epochs != 1 or args.fresh_share != 0):
        raise ValueError("--epochs and --fresh-share are settings of training on a trace dataset: "
                         "give --from-traces DIR too")
    out = Path(args.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot create its directory {out.parent} ({e.strerror})") from None
    check_writable(out, "--out")
    group = join(args.device)  # under torchrun: this rank's place; rank 0 alone writes --out and prints
    # held from the resume's load to the last save: one compile per file
    with main_lock(group, out, "--out"):  # every rank stops where rank 0 may not write --out
        return _compile_locked(args, style, out, group.is_main)


def _silent(*args, **kwargs):
    pass


def cmd_traces(args):
    style = captcha.get_style(args.style)
    shards = infcomp.save_traces(style.model, args.out, args.n, observe="image", shard_size=args.shard_size,
                                 seed=args.seed, workers=args.workers, observations=args.observations,
                                 progress=not args.quiet)
    size = sum(Path(f).stat().st_size for f in shards.files)
    print(f"wrote {shards.num_traces} prior traces of style {style.name!r} to {args.out} "
          f"({len(shards.files)} shards, {size / 2**20:.1f} MiB)")


def _compile_locked(args, style, out, main=True):
    """The compile, once ``out`` is locked; ``main``: this process is rank 0 (or the only one), which
    prints and writes the loss curve and the calibration (another rank returns 0 once trained)."""
    print = builtins.print if main else _silent
    guide = None
    config, cnn = _options(args, NETWORK_OPTIONS), _options(args, ENCODER_OPTIONS)
    encoder = None
    if out.exists() and not args.fresh:
        guide, saved_style = breaker.load_breaker(out)
        if saved_style.name != style.name:
            sys.exit(f"error: {out} is a breaker for style {saved_style.name!r}, not {style.name!r} (use --fresh to overwrite)")
        built = {**guide.network.encoder.cnn.to_dict(), **guide.network.cfg.to_dict()}
        for key, wanted in {**cnn, **config}.items():
            if built[key] != wanted:
                sys.exit(f"error: {out} was built with {_built_with(key, built[key], wanted)} "
                         "(use --fresh to start over with it)")
        print(f"resuming {out}: {guide.traces_trained} traces so far" + (f"; --traces {args.traces} more" if args.traces else ""))
    else:
        encoder = style.encoder.replace(**cnn)
        own = [(key, value) for key, _, value in CNNConfig().differences(style.encoder) if key not in cnn]
        if own:
            print(f"new breaker with the style's {', '.join(_shown(key, value) for key, value in own)}")
    if args.minutes is None and args.traces is None and args.from_traces is None:
        args.minutes = 5.0
    # a scheduler's or `kill`'s SIGTERM ends the run like Ctrl-C: saved, resumable
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        guide = breaker.compile_breaker(
            style, minutes=args.minutes, num_traces=args.traces, guide=guide, seed=args.seed, workers=args.workers,
            batch_size=args.batch_size, lr=args.lr, threads=args.threads, progress=not args.quiet, checkpoint=out,
            checkpoint_every=args.checkpoint_every, echo=breaker.ECHO if args.echo is None else args.echo,
            config=config or None, encoder=encoder, overwrite=True,  # resumed from out, or --fresh, or new
            max_failure_rate=args.max_failure_rate, trace_timeout=args.trace_timeout, device=args.device,
            traces=args.from_traces, epochs=args.epochs, fresh_share=args.fresh_share, amp=args.amp,
        )
    except KeyboardInterrupt:
        print(f"interrupted: the breaker trained so far is saved in {out} (compile again to resume)", file=sys.stderr)
        return 130
    except ModelFailureError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not main:
        return 0
    run = guide.last_run
    curve = save_loss_curve(guide, out.with_suffix(".loss.png"))
    note = f" ({run.budget_note})" if run.budget_note else ""
    failed = f", {run.failed_traces} failed traces skipped" if run.failed_traces else ""
    waited = " (the time ran out waiting for traces)" if run.stopped_waiting else ""
    print(
        f"compiled {style.name}: {run.traces} more traces{note} ({run.steps} steps{failed}) in {run.seconds:.0f} s"
        f"{waited} ({run.traces_per_second:.0f} traces/s, "
        f"{100 * run.waiting_for_data_seconds / max(run.seconds, 1e-9):.0f}% "
        f"of it waiting for traces), validation loss {run.validation_loss:.2f}; "
        f"total {guide.traces_trained} traces -> {run.saved_to or 'NOT SAVED'}"
        + (f"; loss curve {curve}" if curve else "")
    )
    if run.saved_to and args.calibration_draws:
        _save_calibration(style, guide, out, args.calibration_draws)
    return 0 if run.saved_to else 1


def _save_calibration(style, guide, out, draws):
    """Fit the reading probabilities' recalibration (:func:`breaker.reading_calibration`) and save it with the
    breaker; a failed save leaves the breaker as compiled (its reads then fit it themselves)."""
    fit, dt = breaker.timed(breaker.reading_calibration, style, guide, draws)
    try:
        guide.save(out)
    except OSError as e:
        print(f"warning: the reading calibration could not be saved in {out} ({e}); reads will fit it again",
              file=sys.stderr)
        return
    print(f"reading probabilities recalibrated on {fit.num_draws} fresh draws in {dt:.0f} s "
          f"(logit slope {fit.slope:.2f}, intercept {fit.intercept:+.2f}) -> {out}")


def _reliability_plot(probs, correct, path, title):
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no backend switched

    probs, correct = np.asarray(probs), np.asarray(correct, dtype=float)
    edges = np.linspace(0, 1, 11)
    centres, accs, counts = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (probs >= lo) & ((probs < hi) if hi < 1 else (probs <= hi))
        if sel.any():
            centres.append(probs[sel].mean())
            accs.append(correct[sel].mean())
            counts.append(int(sel.sum()))
    fig = Figure(figsize=(4.2, 4))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.plot(centres, accs, "o-", label="breaker")
    for x, y, c in zip(centres, accs, counts):
        ax.annotate(str(c), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("posterior probability of the reading")
    ax.set_ylabel("share read right")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


#: The shares of the readings (the most probable first) whose accuracy the summaries report.
COVERAGES = (0.9, 0.5)


def _accuracy_by_coverage(probs, correct):
    """``(coverage [n], accuracy [n])``: the accuracy on the ``k`` most probable readings, over ``n``, for each ``k``."""
    import numpy as np

    order = np.argsort(-np.asarray(probs, dtype=float), kind="stable")
    right = np.asarray(correct, dtype=float)[order]
    k = np.arange(1, len(right) + 1)
    return k / len(right), np.cumsum(right) / k


def _at_coverage(probs, correct) -> dict:
    """``{"90%": accuracy, ...}`` on the most probable share of the readings, for each of :data:`COVERAGES`."""
    cover, acc = _accuracy_by_coverage(probs, correct)
    return {f"{c:.0%}": float(acc[max(0, math.ceil(c * len(acc)) - 1)]) for c in COVERAGES}


def _coverage_plot(probs, correct, path, title):
    from matplotlib.figure import Figure

    cover, acc = _accuracy_by_coverage(probs, correct)
    fig = Figure(figsize=(4.2, 4))
    ax = fig.subplots()
    ax.plot(100 * cover, 100 * acc, "-", label="answer the most probable first")
    ax.axhline(100 * acc[-1], color="k", ls="--", lw=1, label="answer all")
    ax.set_xlabel("share answered (%)")
    ax.set_ylabel("share of the answers right (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 101)
    ax.set_title(title, size=9)
    ax.legend(loc="lower left", prop={"size": 8})
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _abstain(rows, p_min) -> dict:
    """Mark the rows whose posterior reading's probability is below ``p_min`` unanswered; the share answered,
    and the accuracy on the answered labelled rows."""
    read = [r for r in rows if "probability" in r]
    for r in read:
        r["answered"] = r["probability"] >= p_min
    answered = [r for r in read if r["answered"]]
    labelled = [r for r in answered if r.get("label") is not None]
    return {"min_probability": p_min, "answered_share": len(answered) / len(read) if read else None,
            "accuracy_answered": sum(r["posterior"] == r["label"] for r in labelled) / len(labelled) if labelled else None}


def _summary(rows, greedy_ms, posterior_ms):
    labelled = [r for r in rows if r.get("label") is not None]
    out = {"n": len(rows), "ms_per_captcha": {"greedy": greedy_ms, "posterior": posterior_ms}}
    weighed = tuple(r["weights"] for r in rows if "weights" in r)  # the importance-weighted reads
    if weighed:
        out["weights"] = infcomp.weights.WeightTally(weighed)
    if labelled:
        post = [r for r in labelled if "posterior" in r]
        out["recognition_rate"] = sum(r["reading"] == r["label"] for r in labelled) / len(labelled)
        out["recognition_rate_greedy"] = sum(r["greedy"] == r["label"] for r in labelled) / len(labelled)
        if post:
            out["recognition_rate_posterior"] = sum(r["posterior"] == r["label"] for r in post) / len(post)
        out["char_accuracy"] = sum(r["char_accuracy"] for r in labelled) / len(labelled)
        out["char_confusions"] = breaker.char_confusions((r["reading"], r["label"]) for r in labelled)
        confident = [r for r in post if r["probability"] > 0.9]
        out["confident_share"] = len(confident) / len(post) if post else None
        out["accuracy_when_confident"] = (
            sum(r["posterior"] == r["label"] for r in confident) / len(confident) if confident else None
        )
        if post:
            scored = _scored(rows)
            out.update(_calibration(*scored), accuracy_at_coverage=_at_coverage(*scored))
    return out


def _scored(rows):
    """``(probabilities, right or not)`` of the labelled rows that got a posterior read."""
    post = [r for r in rows if "probability" in r and r.get("label") is not None]
    return [r["probability"] for r in post], [r["posterior"] == r["label"] for r in post]


def _calibration(probs, correct, bins=10):
    """Brier score of the reading's probability, and expected calibration error (ECE):
    the mean |probability - share right| over ten equal-width bins, weighted by count."""
    import numpy as np

    p, c = np.asarray(probs, dtype=float), np.asarray(correct, dtype=float)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    ece = sum(abs(p[idx == b].mean() - c[idx == b].mean()) * (idx == b).sum() for b in range(bins) if (idx == b).any())
    return {"brier": float(np.mean((p - c) ** 2)), "calibration_error": float(ece / len(p))}


#: Seconds between the reading bar's updates when stderr is not a terminal (a log file, a pipe).
LOG_INTERVAL = 5.0
GREEDY_CHUNK = 256  # images read together by a greedy pass


def file_seed(path, seed: int) -> int:
    """The posterior read's seed for an image file: from a hash of its bytes, plus ``seed`` (``--seed``), so that
    a file reads the same wherever it comes in the argument list."""
    digest = hashlib.sha256(Path(path).read_bytes()).digest()
    return (int.from_bytes(digest[:4], "big") + int(seed)) % (2**31 - 1)


def _read_all(style, guide, images, labels, names, particles, posterior_n, seeds, progress, temperature=1.0,
              unlike=None, weighted=False):
    """Read each image; ``seeds[i]`` seeds image i's posterior read; ``unlike[i]``, where given and not None,
    says why image i is unlike the style: its reading is then given probability 0.  The posterior read is
    :func:`breaker.read_posterior` with ``particles`` draws, or with ``weighted`` :func:`breaker.read_weighted`,
    whose row keeps its ``weights`` (a WeightDiagnostics: ``json.dumps`` it with :func:`infcomp.weights.figures`)."""
    from tqdm.auto import tqdm

    rows, t_post, n_post = [], 0.0, 0
    unlike = unlike or [None] * len(images)
    bar = {} if sys.stderr.isatty() else {"mininterval": LOG_INTERVAL, "maxinterval": LOG_INTERVAL}
    greedy, t_greedy = [], 0.0
    with tqdm(total=len(images), disable=not progress, desc="reading (greedy)", unit="captcha", **bar) as shown:
        for start in range(0, len(images), GREEDY_CHUNK):  # read together: one network step per address per chunk
            texts, dt = breaker.timed(breaker.read_greedy, style, guide, images[start:start + GREEDY_CHUNK])
            greedy.extend(texts)
            t_greedy += dt
            shown.update(len(texts))
    reads = sum(particles > 0 and i < posterior_n and unlike[i] is None for i in range(len(images)))
    if reads and not weighted:  # fitted here once (unless the breaker file holds it), not timed per read
        if "calibration_slope" not in guide.metadata and progress:
            print(f"fitting the reading probabilities' recalibration on {breaker.CALIBRATION_DRAWS} fresh draws "
                  "(infcomp compile saves it with the breaker)", file=sys.stderr)
        breaker.reading_calibration(style, guide)
    shown = tqdm(total=reads, disable=not progress or not reads, desc="reading (posterior)", unit="captcha", **bar)
    for i, (image, label, name) in enumerate(zip(images, labels, names)):
        text = greedy[i]
        row = {"file": name, "greedy": text, "reading": text, "label": label}
        if unlike[i] is not None:
            row.update(unlike_style=unlike[i])
            if particles > 0 and i < posterior_n:
                row.update(posterior=text, probability=0.0, alternatives=[])
        elif particles > 0 and i < posterior_n:
            if weighted:
                reading, dt = breaker.timed(breaker.read_weighted, style, guide, image, particles, seeds[i], temperature,
                                            warn=False)  # the summary counts the unreliable ones
            else:
                reading, dt = breaker.timed(breaker.read_posterior, style, guide, image, particles, seeds[i])
            t_post += dt
            n_post += 1
            shown.update(1)
            row.update(posterior=reading.text, reading=reading.text, probability=reading.probability,
                       alternatives=reading.alternatives)
            row.update({"ess": reading.ess, "weights": reading.weights} if weighted else {"found": reading.found})
        if label is not None:
            row["char_accuracy"] = breaker.char_accuracy(row["reading"], label)
        rows.append(row)
    shown.close()
    greedy_ms = 1000 * t_greedy / max(len(rows), 1)
    posterior_ms = 1000 * t_post / n_post if n_post else None
    return rows, greedy_ms, posterior_ms


def _print_rows(rows):
    for r in rows:
        mark = "" if r.get("label") is None else ("  ok" if r["reading"] == r["label"] else f"  WRONG (label {r['label']})")
        p = f"  p={r['probability']:.3f}" if "probability" in r else ""
        unlike = "  (unlike the style's images)" if r.get("unlike_style") else ""
        unanswered = "  (no answer: below --min-probability)" if r.get("answered") is False else ""
        weights = f"  [weights: {r['weights'].describe()}]" if "weights" in r else ""
        print(f"{r['file']}: {r['reading']}{p}{weights}{unlike}{unanswered}{mark}")


def _print_summary(s):
    print(f"n = {s['n']}; time per CAPTCHA: greedy {s['ms_per_captcha']['greedy']:.1f} ms"
          + (f", posterior {s['ms_per_captcha']['posterior']:.0f} ms" if s["ms_per_captcha"]["posterior"] else ""))
    if "weights" in s:
        print(s["weights"].describe("images"))
    if "recognition_rate" in s:
        print(f"recognition rate (whole string): {100 * s['recognition_rate']:.1f}%"
              f"  [greedy {100 * s['recognition_rate_greedy']:.1f}%"
              + (f", posterior {100 * s['recognition_rate_posterior']:.1f}%" if "recognition_rate_posterior" in s else "")
              + f"]; per-character accuracy {100 * s['char_accuracy']:.1f}%")
        if s["char_confusions"]:
            print(f"most frequent character errors (label -> read): {breaker.describe_confusions(s['char_confusions'])}")
        if s.get("accuracy_when_confident") is not None:
            print(f"readings with probability > 0.9: {100 * s['confident_share']:.0f}% of them, "
                  f"{100 * s['accuracy_when_confident']:.1f}% right")
        if "brier" in s:
            print(f"calibration: Brier score {s['brier']:.3f}, expected calibration error {s['calibration_error']:.3f}")
            print("accuracy answering only the most probable readings: "
                  + ", ".join(f"{acc:.1%} of {share}" for share, acc in s["accuracy_at_coverage"].items()))
    a = s.get("abstain")
    if a and a["answered_share"] is not None:
        print(f"answered where p >= {a['min_probability']:g}: {a['answered_share']:.1%} of the readings"
              + (f", {a['accuracy_answered']:.1%} of them right" if a["accuracy_answered"] is not None else ""))


def _gallery(rows, images, path, n=16):
    sel = list(range(min(n, len(rows))))
    titles = []
    for i in sel:
        r = rows[i]
        p = f" p={r['probability']:.2f}" if "probability" in r else ""
        mark = "" if r.get("label") is None else (" ok" if r["reading"] == r["label"] else f" (is {r['label']})")
        titles.append(f"{r['reading']}{p}{mark}")
    captcha.save_gallery([images[i] for i in sel], titles, path, ncols=4)


def _warn(message):
    print(f"warning: {message}", file=sys.stderr)


def _label(stem, style):
    return stem if stem and all(c in style.alphabet for c in stem) else None


def _unlabelled_note(names, labels, style) -> str | None:
    """A line saying how many of the file names are not labels, when some are and some are not."""
    stems = [Path(n).stem for n, label in zip(names, labels) if label is None]
    if not stems or len(stems) == len(names):
        return None
    cased = next((s for s in stems if _label(s.upper(), style) or _label(s.lower(), style)), None)
    hint = f" (the alphabet is case-sensitive: {cased!r})" if cased else f", e.g. {stems[0]!r}"
    return (f"{len(stems)} of {len(names)} file names are not labels in the style's alphabet {style.alphabet!r}"
            f"{hint}: the scores are over the other {len(names) - len(stems)}")


def _load_files(files, style, seed):
    """``(images, labels, names, seeds, unlike, errors)`` of the readable files; a one-line error on stderr for
    each file that is not, and a warning for each whose size or look is far from the style's."""
    images, labels, names, seeds, unlike, errors = [], [], [], [], [], []
    for f in files:
        try:
            image = breaker.load_image(f, style, warn=_warn)
        except (ValueError, OSError) as e:
            errors.append({"file": str(f), "error": str(e)})
            print(f"error: {e}", file=sys.stderr)
            continue
        why = breaker.unlike_style(image, style)
        if why:
            _warn(f"{f}: unlike the {style.name} style's images ({why}): its reading gets probability 0")
        images.append(image)
        names.append(str(f))
        labels.append(_label(Path(f).stem, style))
        seeds.append(file_seed(f, seed))
        unlike.append(why)
    return images, labels, names, seeds, unlike, errors


def _plots(args, rows, title):
    """The reliability and coverage plots asked for (of the labelled posterior reads), and the abstention figures."""
    probs, correct = _scored(rows)
    for option, plot in (("reliability", _reliability_plot), ("coverage", _coverage_plot)):
        if getattr(args, option) and probs:
            plot(probs, correct, getattr(args, option), title(len(probs)))
        elif getattr(args, option):
            _warn(f"no --{option} plot: no image with a label got a posterior read")
    return {} if args.min_probability is None else {"abstain": _abstain(rows, args.min_probability)}


def cmd_break(args):
    _check_read_options(args)
    guide, style = breaker.load_breaker(args.model, args.bandwidth, args.text_only, args.device)
    images, labels, names, seeds, unlike, errors = _load_files(args.files, style, args.seed)
    rows, greedy_ms, post_ms = _read_all(style, guide, images, labels, names, args.particles, len(images),
                                         seeds, not args.json, args.temperature, unlike, args.weighted)
    note = _unlabelled_note(names, labels, style)
    summary = {"style": style.name, **_summary(rows, greedy_ms, post_ms)}
    summary.update(_plots(args, rows, lambda n: f"{style.name}: {n} images"))
    summary.update(read="weighted" if args.weighted else "guide", bandwidth=style.bandwidth, text_only=style.text_only,
                   temperature=args.temperature, image_rule=breaker.IMAGE_RULE,
                   unlabelled=sum(label is None for label in labels),
                   unlike_style=sum(why is not None for why in unlike), errors=errors, readings=rows)
    if args.gallery and rows:
        _gallery(rows, images, args.gallery)
    if args.json:
        print(json.dumps(summary, default=infcomp.weights.figures))
    else:
        print(f"breaker for style {style.name!r}: {_letters(style)} letters from {style.alphabet!r}, "
              f"{style.width}x{style.height} images")
        _print_rows(rows)
        if note:
            print(note)
        _print_summary(summary)
    return 1 if errors and not rows else 0


def cmd_calibrate(args):
    """Simulation-based calibration of a breaker on fresh draws of its style (``infcomp.diagnostics``)."""
    from infcomp import diagnostics

    guide, style = breaker.load_breaker(args.model, device=args.device)
    if args.plot:
        check_writable(args.plot, "--plot")
    cal = diagnostics.calibration(style.model, guide, args.n, args.particles, functions={"text": style.reading},
                                  seed=args.seed)
    summary = {"style": style.name, "draws": args.n, "particles": args.particles, "checks": cal.summary(),
               "failures": {read: cal.failures(read) for read in diagnostics.READS},
               "weights": {**infcomp.weights.figures(cal.weights), "per_draw": cal.weights.diagnostics}}
    if args.plot:
        first = ["text"] + [n for n in cal.checks if n != "text"]
        cal.plot(args.plot, names=first[:8])
    if args.json:
        print(json.dumps(summary, default=infcomp.weights.figures))
        return 0
    print(f"breaker for style {style.name!r}: {args.n} draws of its prior, {args.particles} particles each")
    for name, figures in summary["checks"].items():
        line = [f"{name:14s} {figures['kind']:10s}"]
        for read in diagnostics.READS:
            f = figures[read]
            p = f["rank_p_value"]
            extra = (f"ECE {f['ece']:.3f} Brier {f['brier']:.3f}" if "ece" in f
                     else " ".join(f"{level:.0%}->{share:.0%}" for level, share in f["coverage"].items()))
            line.append(f"{read}: ranks p={'-' if p is None else format(p, '.2g')} {extra}")
        print("  ".join(line))
    for read, fails in summary["failures"].items():
        print(f"{read}: {'passes' if not fails else str(len(fails)) + ' failed: ' + '; '.join(fails[:5])}")
    print(cal.weights.describe("draws") + (": the posterior read rests on a few particles there"
                                           if cal.weights.unreliable else ""))
    return 0


def _letters(style):
    return f"{style.min_letters}-{style.max_letters}" if style.variable_length else str(style.min_letters)


def cmd_evaluate(args):
    if args.coverage == "" and args.gallery:
        args.coverage = str(Path(args.gallery).with_suffix("")) + "-coverage.png"
    _check_read_options(args)
    guide, style = breaker.load_breaker(args.model, args.bandwidth, args.text_only, args.device)
    images, labels = [], []
    drawn = captcha.get_style(style.name)  # draws come from the style as compiled, whatever it reads with
    for i in range(args.n):
        image, text = drawn.sample(args.seed + 1_000_003 + i)  # draws the training stream never starts from
        images.append(image)
        labels.append(text)
    names = [f"draw {i}" for i in range(args.n)]
    rows, greedy_ms, post_ms = _read_all(style, guide, images, labels, names, args.particles, args.posterior_n,
                                         [args.seed + i for i in range(args.n)], not args.json, args.temperature,
                                         weighted=args.weighted)
    summary = _summary(rows, greedy_ms, post_ms)
    summary.update(_plots(args, rows, lambda n: f"{style.name}: {n} fresh draws"))
    summary.update(style=style.name, read="weighted" if args.weighted else "guide", bandwidth=style.bandwidth,
                   text_only=style.text_only, temperature=args.temperature, traces_trained=guide.traces_trained)
    if args.coverage and "accuracy_at_coverage" in summary:
        summary["coverage_plot"] = args.coverage
    if args.gallery:
        _gallery(rows, images, args.gallery)
        summary["gallery"] = args.gallery
    if args.json:
        summary["readings"] = rows[: args.show]
        print(json.dumps(summary, default=infcomp.weights.figures))
    else:
        _print_rows(rows[: args.show])
        _print_summary(summary)
        if args.gallery:
            print(f"gallery: {args.gallery}")


def build_parser():
    p = _Parser(prog="infcomp", description="Inference compilation for Pyro: CAPTCHA breakers.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("styles", help="list the CAPTCHA styles")
    s.set_defaults(fn=cmd_styles)

    s = sub.add_parser("samples", help="a gallery of prior draws of a style")
    s.add_argument("--style", required=True)
    s.add_argument("-n", type=_at_least_one, default=64, help="how many draws (at least 1)")
    s.add_argument("--out", default="samples.png")
    s.add_argument("--cols", type=_at_least_one, default=8)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_samples)

    s = sub.add_parser("compile", help="train a breaker on a style's prior draws (resumes an existing --out)")
    s.add_argument("--style", required=True)
    s.add_argument("--minutes", type=_positive_float,
                   help="wall-clock budget, a positive number (default 5 if --traces is not given); it also "
                        "ends a run whose model stalls while the workers draw traces")
    s.add_argument("--traces", type=_positive_int,
                   help="number of training traces, a positive integer; on resume, this many more. "
                        "Trained in whole batches: the count is rounded up to a multiple of --batch-size")
    s.add_argument("--out", required=True)
    s.add_argument("--fresh", action="store_true", help="start over even if --out exists")
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--batch-size", type=_positive_int, default=64)
    s.add_argument("--max-failure-rate", type=float, default=0.1,
                   help="a draw of the style that raises is skipped and counted; above this share of the latest "
                        "1000 draws compile stops (saved) with the last error (default 0.1)")
    s.add_argument("--trace-timeout", type=_positive_float, default=None, metavar="SECONDS",
                   help="a draw that takes longer in a worker counts as failed (default: no limit)")
    s.add_argument("--lr", type=float, default=None, help="Adam's learning rate (default: infcomp.compile's)")
    s.add_argument("--echo", type=float, default=None,
                   help="train on each batch this many times in all, repeats at random later steps "
                        "(data echoing; default: the breaker's, 3)")
    s.add_argument("--threads", type=int, default=None,
                   help="torch threads for the gradient steps (default: the cores the workers leave, at least one)")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--channels", type=_channels, default=None, metavar="C1,C2,C3",
                   help="the image embedding's convolution channels, first to last, for a new breaker "
                        "(default: the style's, else CNNConfig's)")
    s.add_argument("--column-rnn", type=_count, default=None, metavar="N",
                   help="width per direction of the bidirectional GRU along the image's columns that attention "
                        "keys on, for a new breaker; 0 for none (default: NetworkConfig's)")
    s.add_argument("--memory-columns", type=_count, default=None, metavar="N",
                   help="how many image columns attention reads (the features pooled to this width), for a new "
                        "breaker; 0 for the convolutions' own width, the image's over the column pixels "
                        "(default: the style's, else CNNConfig's: 0)")
    s.add_argument("--column-pixels", type=int, choices=CNNConfig.COLUMN_PIXELS, default=None,
                   help="pixels per image column that attention reads, for a new breaker: 8, or 4 "
                        "with the last stride-2 convolution keeping the width (default: the style's, else CNNConfig's)")
    s.add_argument("--conv-refine", action=argparse.BooleanOptionalAction, default=None,
                   help="a fourth convolution (the last channels, stride 1) before the image columns are pooled, "
                        "for a new breaker (default: the style's, else CNNConfig's)")
    s.add_argument("--checkpoint-every", type=float, default=5.0,
                   help="minutes between saves of --out while compiling (it is also saved at the end and on Ctrl-C)")
    s.add_argument("--calibration-draws", type=_not_negative, default=breaker.CALIBRATION_DRAWS, metavar="N",
                   help="fit the reading probabilities' recalibration on N fresh draws of the style once compiled, "
                        "and save it with the breaker (0: every read fits it anew)")
    s.add_argument("--device", default="cpu", help="where the network trains: cpu, cuda (under torchrun: each "
                   "rank its own GPU) or cuda:N")
    s.add_argument("--from-traces", metavar="DIR", default=None,
                   help="train on a trace dataset from 'infcomp traces' (its epochs are the budget unless "
                        "--minutes or --traces is given)")
    s.add_argument("--epochs", type=_positive_int, default=1, help="with --from-traces: passes over the dataset")
    s.add_argument("--fresh-share", type=_share, default=0.0, metavar="P",
                   help="with --from-traces: this share of the batches drawn fresh from the style instead")
    s.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 autocast of the image encoder (default: on a CUDA --device that computes it natively)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_compile)

    s = sub.add_parser("traces", help="write a dataset of a style's prior traces (resumes a DIR cut short)")
    s.add_argument("--style", required=True)
    s.add_argument("-n", type=_at_least_one, required=True, help="how many traces (at least 1)")
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--shard-size", type=_at_least_one, default=1024, help="traces per shard file")
    s.add_argument("--observations", choices=infcomp.shards.OBSERVATIONS, default="uint8",
                   help="images as drawn (exact, float32) or quantised to 256 levels per shard (uint8, the default)")
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_traces)

    s = sub.add_parser("calibrate", help="simulation-based calibration of a breaker on fresh draws of its style")
    s.add_argument("model", help="a breaker file from 'infcomp compile'")
    s.add_argument("-n", type=_at_least_one, default=1000, help="how many fresh draws to infer (at least 1)")
    s.add_argument("--particles", type=_at_least_one, default=100,
                   help="importance samples per draw (at least 1); each draw's weights are diagnosed (ESS, Pareto "
                        "k-hat) and the draws whose weights are unreliable counted")
    s.add_argument("--plot", help="write rank histograms and coverage or reliability plots (PNG)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true", help="print one JSON object with the figures")
    s.add_argument("--device", default="cpu", help=READ_DEVICE)
    s.set_defaults(fn=cmd_calibrate)

    for name, fn, help_ in (("break", cmd_break, "read CAPTCHA image files"),
                            ("evaluate", cmd_evaluate, "recognition rate on fresh draws from the style")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("model", help="a breaker file from 'infcomp compile'")
        s.add_argument("--device", default="cpu", help=READ_DEVICE)
        if name == "break":
            s.add_argument("files", nargs="+")
            s.add_argument("--reliability", help="write a reliability plot (PNG) when file names are labels")
            s.add_argument("--gallery", help="write a gallery PNG of the first images with their readings")
        else:
            s.add_argument("-n", type=_at_least_one, default=1000, help="how many fresh draws to read (at least 1)")
            s.add_argument("--posterior-n", type=_not_negative, default=100,
                           help="how many of the n get a posterior read too")
            s.add_argument("--gallery", default="evaluate.png")
            s.add_argument("--show", type=_not_negative, default=10, help="print this many readings")
            s.add_argument("--reliability", help="write a reliability plot (PNG) of the posterior reads")
        s.add_argument("--particles", type=_particles, default=breaker.READ_SAMPLES,
                       help="the guide's draws per posterior read, the first its greedy pass (0: greedy reads "
                            "only); with --weighted, importance samples")
        s.add_argument("--min-probability", type=_probability, default=None, metavar="P",
                       help="answer only where the reading's probability is at least P; report the share "
                            "answered and the accuracy on it")
        s.add_argument("--coverage", default=None if name == "break" else "",
                       help="write an accuracy-against-coverage plot (PNG) of the posterior reads"
                            + ("" if name == "break" else " (default: beside the gallery, -coverage.png)"))
        s.add_argument("--weighted", action="store_true",
                       help="read by importance sampling under the style's ABC kernel instead of the guide's "
                            "own posterior (over-confident: its weights rest on clutter no guide can infer); each "
                            "read reports its weights' ESS and Pareto k-hat, and the summary how many were "
                            "unreliable (the guide's own posterior has no importance weights: nothing to report)")
        s.add_argument("--bandwidth", type=float, default=None,
                       help="with --weighted: read with this ABC kernel bandwidth instead of the style's own")
        s.add_argument("--text-only", action="store_true",
                       help="with --weighted: weigh the particles by their text alone, rendered without the "
                            "style's clutter and pixel noise")
        s.add_argument("--temperature", type=_temperature, default=1.0,
                       help="with --weighted: flatten the guide's letter and font proposals q to q^(1/T)")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--json", action="store_true", help="print one JSON object with the figures")
        s.set_defaults(fn=fn)
    return p


#: The exceptions that are the user's errors (a missing or unreadable file, a value out of range, a model that
#: fails in too many of its runs): main() prints
#: them as one line and returns 2.  Anything else is a bug and shows its traceback.
USER_ERRORS = (ValueError, OSError, ModelFailureError)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "device", None) is not None:
            checked_device(args.device, "--device")  # before any work
        return args.fn(args) or 0
    except USER_ERRORS as e:
        message = " ".join(str(e).split()) or type(e).__name__
        if isinstance(e, OSError) and e.filename is not None and str(e.filename) not in message:
            message = f"{e.filename}: {message}"
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
