"""Attribute names people give: ``attfind/attribute_names.csv``, made by stage 05 with empty names, edited by hand,
read by the gallery, the attribute browser and the studies (an attribute is a coordinate ``flat`` and a direction)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from stylexlib.core.io import write_table

NAMES_FILE = "attribute_names.csv"
COLUMNS = ["class_name", "rank", "flat", "direction", "attribute", "name"]


def write_name_template(path: str | Path, attributes: pd.DataFrame) -> Path:
    """Create ``path`` with one row per attribute and an empty name, or add the attributes it lacks (names kept)."""
    path = Path(path)
    existing = _read(path) if path.exists() else pd.DataFrame(columns=COLUMNS)
    known = set(zip(existing["flat"].astype(int), existing["direction"]))
    rows = [{"class_name": r.class_name, "rank": int(r.rank), "flat": int(r.flat), "direction": r.direction,
             "attribute": f"{r.layer_name}[{int(r.channel)}] {r.direction}", "name": ""}
            for r in attributes.itertuples() if (int(r.flat), r.direction) not in known]
    if rows or not path.exists():
        write_table(path, pd.concat([existing, pd.DataFrame(rows, columns=COLUMNS)], ignore_index=True))
    return path


def read_attribute_names(path: str | Path) -> dict[tuple[int, str], str]:
    """The non-empty names of ``path`` by (flat, direction); {} when there is no such file."""
    path = Path(path)
    if not path.exists():
        return {}
    table = _read(path)
    return {(int(f), str(d)): str(n).strip() for f, d, n in zip(table["flat"], table["direction"], table["name"])
            if str(n).strip()}


def with_names(attributes: pd.DataFrame, names: dict[tuple[int, str], str]) -> pd.DataFrame:
    """The attributes table with a ``name`` column ("" where nobody named the attribute)."""
    return attributes.assign(name=[names.get((int(f), str(d)), "") for f, d in
                                   zip(attributes["flat"], attributes["direction"])])


def named_label(label: str, name: str | None) -> str:
    """``name: label`` when the attribute has a name (the label, which ends in its direction, stays last)."""
    return f"{name}: {label}" if name else label


def _read(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype={"name": str, "direction": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}; fix it or delete it (stage 05 writes it again)") from None
    missing = [c for c in ("flat", "direction", "name") if c not in table.columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}; keep the columns {COLUMNS} and edit only 'name' "
                         "(or delete the file: stage 05 writes it again)")
    return table
