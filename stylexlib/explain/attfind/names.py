"""Attribute names people give: ``attfind/attribute_names.csv``, made by stage 05 with empty names, edited by hand,
read by the gallery, the attribute browser and the studies (an attribute is a coordinate ``flat`` and a direction).

A coordinate means something only in the generator it was found in, so the file records that generator (its
fingerprint, core.provenance.stylex_fingerprint): names given for another generator are set aside, never applied."""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from stylexlib.core.io import write_table
from stylexlib.core.provenance import accepts

log = logging.getLogger(__name__)

NAMES_FILE = "attribute_names.csv"
COLUMNS = ["class_name", "rank", "flat", "direction", "attribute", "name", "generator"]


def write_name_template(path: str | Path, attributes: pd.DataFrame, generator: str | None = None) -> Path:
    """Create ``path`` with one row per attribute and an empty name, or add the attributes it lacks (names kept).

    Names belong to the ``generator`` (a fingerprint) they were given for: a file written for another one is set aside
    as ``attribute_names.<its generator>.csv`` and a fresh one started; a file that records none is taken as this
    generator's. ``generator=None``: not checked."""
    path = Path(path)
    existing = _read(path) if path.exists() else pd.DataFrame(columns=COLUMNS)
    recorded = _made_for(existing)
    others = {made for made in recorded if not accepts(made, generator)} if generator else set()
    if others:
        aside = _set_aside(path, sorted(others)[0])
        log.warning("%s names the attributes of another generator (%s, not this run's %s): set aside as %s; "
                    "a fresh file is started", path, ", ".join(sorted(recorded)), generator, aside.name)
        existing, recorded = pd.DataFrame(columns=COLUMNS), set()
    adopt = bool(generator) and recorded != {generator} and len(existing) > 0  # none recorded, or an earlier record
    if adopt:
        existing = existing.assign(generator=generator)
    known = set(zip(existing["flat"].astype(int), existing["direction"]))
    rows = [{"class_name": r.class_name, "rank": int(r.rank), "flat": int(r.flat), "direction": r.direction,
             "attribute": f"{r.layer_name}[{int(r.channel)}] {r.direction}", "name": "", "generator": generator or ""}
            for r in attributes.itertuples() if (int(r.flat), r.direction) not in known]
    if rows or adopt or not path.exists():
        write_table(path, pd.concat([existing, pd.DataFrame(rows, columns=COLUMNS)], ignore_index=True))
    return path


def read_attribute_names(path: str | Path, generator: str | None = None) -> dict[tuple[int, str], str]:
    """The non-empty names of ``path`` by (flat, direction), only those given for ``generator`` (or recording none)
    when it is given; {} when there is no such file."""
    path = Path(path)
    if not path.exists():
        return {}
    table = _read(path)
    made = table["generator"] if "generator" in table.columns else [""] * len(table)
    return {(int(f), str(d)): str(n).strip()
            for f, d, n, g in zip(table["flat"], table["direction"], table["name"], made)
            if str(n).strip() and (generator is None or str(g) == "" or accepts(str(g), generator))}


def _made_for(table: pd.DataFrame) -> set[str]:
    """The generators a names table records (empty for a file from before names recorded them)."""
    return {str(g) for g in table["generator"] if str(g).strip()} if "generator" in table.columns else set()


def with_names(attributes: pd.DataFrame, names: dict[tuple[int, str], str]) -> pd.DataFrame:
    """The attributes table with a ``name`` column ("" where nobody named the attribute)."""
    return attributes.assign(name=[names.get((int(f), str(d)), "") for f, d in
                                   zip(attributes["flat"], attributes["direction"])])


def named_label(label: str, name: str | None) -> str:
    """``name: label`` when the attribute has a name (the label, which ends in its direction, stays last)."""
    return f"{name}: {label}" if name else label


def _set_aside(path: Path, generator: str) -> Path:
    """Rename ``path`` to ``<stem>.<generator>.csv`` (numbered when that exists)."""
    aside, number = path.with_name(f"{path.stem}.{generator}{path.suffix}"), 1
    while aside.exists():
        aside, number = path.with_name(f"{path.stem}.{generator}.{number}{path.suffix}"), number + 1
    return path.rename(aside)


def _read(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype={"name": str, "direction": str, "generator": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}; fix it or delete it (stage 05 writes it again)") from None
    missing = [c for c in ("flat", "direction", "name") if c not in table.columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}; keep the columns {COLUMNS} and edit only 'name' "
                         "(or delete the file: stage 05 writes it again)")
    return table
