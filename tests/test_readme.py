"""The README stays a user's guide: short, no experiment log (dated measurements, run folders, machine comparisons),
and it still documents what a user needs. The log lives in docs/experiments.md."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
EXPERIMENTS = REPO / "docs" / "experiments.md"
MAX_LINES = 200

MONTHS = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|"
          r"Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
DATES = [
    re.compile(r"\b(?:19|20)\d\d-\d\d(?:-\d\d)?\b"),                              # 2026-12-06, 2026-12
    re.compile(rf"\b{MONTHS}\.?\s+(?:\d{{1,2}}(?:st|nd|rd|th)?,?\s+)?(?:19|20)\d\d\b"),  # December 2026, Dec 6, 2026
    re.compile(rf"\b\d{{1,2}}\s+{MONTHS}\.?,?\s+(?:19|20)\d\d\b"),                 # 6 December 2026
]
MONTH_DAY = re.compile(r"(?<![\w.\-/])(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])(?![\w\-])")  # 12-06, as the log writes
STAGE_RANGE = re.compile(r"stages?\s*$")  # "stages 01-08" is a range of stages, not a date
MACHINES = re.compile(r"\b(?:slower|faster|busier|idle|another|same)\s+machine\b|\bon a \d+(?:\.\d+)?x slower\b", re.I)
RUN_FOLDER = re.compile(r"\bruns/([\w.-]+)")
CREATED = re.compile(r"--out\s+runs/([\w.-]+)")


def dated(text: str) -> list[str]:
    """The dates in a text: ISO dates, month names with a year, and month-day pairs that are not stage ranges."""
    found = [m.group(0) for pattern in DATES for m in pattern.finditer(text)]
    found += [m.group(0) for m in MONTH_DAY.finditer(text) if not STAGE_RANGE.search(text[max(0, m.start() - 12):m.start()])]
    return found


def measured_run_folders(text: str) -> list[str]:
    """Run folders a text names that none of its own commands creates (`--out runs/NAME`; `make demo` writes
    runs/demo): the name of a run someone measured, not a folder the reader will have."""
    created = set(CREATED.findall(text)) | {"demo"}
    return sorted({name for name in RUN_FOLDER.findall(text) if name not in created})


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower()))


def test_the_checks_find_an_experiment_log_and_pass_a_guide() -> None:
    log = ("a fresh run (12-05): 8413 steps; 2026-12-06 on a slower machine; in December 2026, `runs/utkface_s3` "
           "reached 1.00; 6 Dec 2026")
    assert {"2026-12-06", "December 2026", "6 Dec 2026", "12-05"} <= set(dated(log))
    assert MACHINES.search(log) and measured_run_folders(log) == ["utkface_s3"]
    guide = ("`make demo` (stages 01-08) takes 31-35 min; stage 04-08 reads it; 0.2-1.2 s per image; "
             "`stylex run c.yaml --out runs/mine`, then `stylex explain runs/mine x/`; `runs/demo/` holds it")
    assert dated(guide) == [] and not MACHINES.search(guide) and measured_run_folders(guide) == []


def test_the_readme_is_a_short_guide_without_an_experiment_log() -> None:
    text = README.read_text()
    lines = len(text.splitlines())
    assert lines <= MAX_LINES, f"README.md has {lines} lines (at most {MAX_LINES}): move measurements to docs/experiments.md"
    assert not dated(text), f"README.md has dated notes {dated(text)}: they belong in docs/experiments.md"
    machines = [m.group(0) for m in MACHINES.finditer(text)]
    assert not machines, f"README.md compares machines {machines}: that belongs in docs/experiments.md"
    runs = measured_run_folders(text)
    assert not runs, f"README.md names measured run folders {runs}: they belong in docs/experiments.md"


@pytest.mark.parametrize("needed", [
    "make demo", "make test", "make compare", "stylex run", "--set", "--only", "--force", "-p NAME=VALUE", "--out",
    "stylex params", "stylex explain", "stylex config", "recursively", "skipped and named", "fingerprint",
    "delete the file", "One `stylex run` at a time", "Ctrl-C", "checkpoint", "resumes",
    "<class>/<file>", "train/<class>/<file>", "val/<class>/<file>", "test/<class>/<file>", "imagefolder",
    "labels_csv", "label_column", "data.source: folder", "classifier.source", "class_names", "input_size", "mean:",
    "std:", "TorchScript", "Grad-CAM is left out", "attribute(inputs, target=None", "torchrun", "gallery/index.html",
    "study_runner.ipynb", "Lang et al., ICCV 2021", "Where we differ from the paper", "docs/experiments.md",
])
def test_the_readme_still_documents(needed: str) -> None:
    assert needed in README.read_text(), f"README.md no longer mentions {needed!r}"


def test_the_readme_time_table_names_the_device_of_every_row() -> None:
    text = README.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| job |"))
    assert "measured on" in header
    rows = [line for line in text.splitlines()[text.splitlines().index(header) + 2:]][:20]
    rows = rows[:next((i for i, row in enumerate(rows) if not row.startswith("|")), len(rows))]
    assert rows and all(("CPU cores" in row) or ("GPU" in row) for row in rows), rows


def test_the_readme_links_to_experiments_sections_that_exist() -> None:
    anchors = {slug(line.lstrip("#")) for line in EXPERIMENTS.read_text().splitlines() if line.startswith("#")}
    linked = re.findall(r"\]\(docs/experiments\.md#([^)]+)\)", README.read_text())
    assert linked and not set(linked) - anchors, f"README.md links to missing sections: {set(linked) - anchors}"
    figures = re.findall(r"\]\((docs/figures/[^)]+)\)", README.read_text())
    assert all((REPO / figure).exists() for figure in figures), figures
