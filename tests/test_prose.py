"""The code and docs say what the project is, not how it got there: no narration of earlier
runs of the work (the patterns below) in source, tests, docs or benchmark notes, and one short
page of current benchmark tables."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

GLOBS = (
    "infcomp/**/*.py",
    "models/**/*.py",
    "benchmarks/*.py",
    "benchmarks/README.md",
    "docs/*.md",
    "README.md",
    "CHANGELOG.md",
    "tests/*.py",
)

# a count of things after "run 3" is an amount ("run 100 steps"), not the name of a run
_AMOUNT = (r"(?:steps?|times?|traces?|seeds?|workers?|minutes?|seconds?|hours?|batch(?:es)?|particles?"
           r"|draws?|threads?|process(?:es)?|epochs?|passes|pass|samples?|iterations?|jobs?|tests?"
           r"|images?|captchas?)\b")

NARRATION = tuple(re.compile(p, re.IGNORECASE) for p in (
    r"\bsessions?[ -]\d+",
    r"\b(?:run|try|attempt)[ #]\d+\b(?![ \t]+" + _AMOUNT + ")",
    r"\bsince (?:the )?(?:first|second|third|fourth|last|previous) (?:try|run|session|attempt)\b",
    r"\bthe default since\b",
    r"\bin session\b",
    r"\b(?:in|on|from|than) (?:the )?(?:last|previous|earlier) (?:session|run|try|attempt)\b",
))


def text_files():
    files = {p for g in GLOBS for p in ROOT.glob(g) if p.is_file()}
    files.discard(Path(__file__).resolve())
    return sorted(files)


def narration_hits(text):
    """``[(line number, line)]`` of the lines of ``text`` that narrate earlier runs of the work."""
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)
            if any(p.search(line) for p in NARRATION)]


@pytest.mark.parametrize("text", [
    "the default since session 13", "(sessions 16-18)", "session-20 prose", "as in run 7,",
    "since the third try", "Since the previous run", "in session", "than the last attempt",
])
def test_the_patterns_catch_narration(text):
    assert narration_hits(text)


@pytest.mark.parametrize("text", [
    "pip install -e '.[captcha,plots,test]'", "run 100 steps", "try 3 seeds", "runs 4 workers",
    "make test runs the suite", "start_new_session=True", "the first run of the day's benchmark",
])
def test_the_patterns_leave_ordinary_prose(text):
    assert not narration_hits(text)


def test_no_narration_of_earlier_runs():
    files = text_files()
    assert any(p.name == "README.md" for p in files) and any(p.suffix == ".py" for p in files)
    hits = [f"{p.relative_to(ROOT)}:{n}: {line}" for p in files
            for n, line in narration_hits(p.read_text(encoding="utf-8"))]
    assert not hits, "narration of earlier runs (say what is, not how it got there):\n" + "\n".join(hits)


def test_benchmark_notes_stay_short():
    lines = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines < 250, f"benchmarks/README.md has {lines} lines: keep one current table per benchmark"
