"""What does each AttFind attribute change, read by the labelled-attribute oracle (:mod:`.label_oracle`)?

Per attribute (a class's top-ranked StyleSpace coordinate and direction), the oracle reads the trusted label columns
on the searched images the classifier does not already give to that class, before and after the edit: the mean
change of each column's probability. Its *main label* is the column whose probability changes most (the class
columns excluded: a smile attribute that changes ``Smiling`` says nothing new), and its MNAC (ACE's and DiME's "mean
number of attributes changed") how many columns change by at least ``CHANGED``. The metrics over each class's top 5
say whether the explanation is nameable (a large main change), specific (a low MNAC) and varied (distinct main
labels).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from stylexlib.evaluate.label_oracle import LabelOracle
from stylexlib.evaluate.quality import lpips_features
from stylexlib.explain.attfind.editor import AttributeEditor
from stylexlib.explain.attfind.search import AttFindResult

CHANGED = 0.1  # a column whose oracle probability moves at least this much counts as changed (MNAC)
READING_COLUMNS = ["class", "rank", "attribute", "layer", "channel", "direction", "images", "class_change",
                   "main_label", "main_before", "main_after", "main_change", "second_label", "second_change", "mnac"]


@torch.no_grad()
def label_changes(oracle: LabelOracle, lpips_model: torch.nn.Module, originals: torch.Tensor,
                  changed: torch.Tensor) -> pd.DataFrame:
    """Per trusted column: the oracle's mean probability before and after, their difference, and per image pair the
    share of pairs whose probability moves by at least ``CHANGED``."""
    before, after = (oracle.probabilities(lpips_features(lpips_model, images)) for images in (originals, changed))
    delta = after - before
    return pd.DataFrame({"column": oracle.trusted, "before": before.mean(0).numpy(), "after": after.mean(0).numpy(),
                         "change": delta.mean(0).numpy(), "pairs_changed": (delta.abs() >= CHANGED).float().mean(0).numpy()})


def summarise_changes(changes: pd.DataFrame, class_columns: list[str]) -> dict[str, object]:
    """An attribute's main and second label (largest |mean change| outside the class columns), its change, and MNAC
    (columns outside the class columns whose mean probability moves by at least ``CHANGED``)."""
    named = changes[~changes["column"].isin(class_columns)]
    order = named["change"].abs().sort_values(ascending=False).index
    main = named.loc[order[0]] if len(order) else None
    second = named.loc[order[1]] if len(order) > 1 else None
    cls = changes[changes["column"].isin(class_columns)]["change"]
    return {"class_change": float(cls.mean()) if len(cls) else float("nan"),
            "main_label": main["column"] if main is not None else "",
            "main_before": float(main["before"]) if main is not None else float("nan"),
            "main_after": float(main["after"]) if main is not None else float("nan"),
            "main_change": float(main["change"]) if main is not None else float("nan"),
            "second_label": second["column"] if second is not None else "",
            "second_change": float(second["change"]) if second is not None else float("nan"),
            "mnac": int((named["change"].abs() >= CHANGED).sum())}


@torch.no_grad()
def attribute_label_readings(editor: AttributeEditor, result: AttFindResult, oracle: LabelOracle,
                             lpips_model: torch.nn.Module, top: int = 5,
                             images: int = 64) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For each class's ``top`` attributes, :func:`label_changes` over up to ``images`` searched images the classifier
    gives to another class, and :func:`summarise_changes`. Returns the per-attribute table (``READING_COLUMNS``) and
    the long table of every attribute's change per column."""
    rows, long = [], []
    predicted = result.effects.predicted
    attributes = result.attributes[result.attributes["rank"] <= top]
    for class_index, group in attributes.groupby("class_index", sort=True):
        others = torch.nonzero(predicted != int(class_index)).flatten()[:images]
        if not len(others):
            continue
        styles = result.styles[others]
        originals = editor.render(styles)
        for row in group.sort_values("rank").itertuples():
            changed = editor.render(editor.edit(styles, int(row.flat), row.direction))
            changes = label_changes(oracle, lpips_model, originals, changed)
            key = f"c{int(class_index)}_r{int(row.rank):02d}"
            rows.append({"class": row.class_name, "rank": int(row.rank), "attribute": key, "layer": row.layer_name,
                         "channel": int(row.channel), "direction": row.direction, "images": len(others),
                         **summarise_changes(changes, oracle.class_columns)})
            long += [{"attribute": key, "class": row.class_name, "rank": int(row.rank), **r}
                     for r in changes.to_dict("records")]
    return (pd.DataFrame(rows, columns=READING_COLUMNS),
            pd.DataFrame(long, columns=["attribute", "class", "rank", "column", "before", "after", "change",
                                        "pairs_changed"]))


def reading_metrics(readings: pd.DataFrame, top: int = 5) -> dict[str, float]:
    """Over each class's ``top`` attributes: the mean |main change| (``attr_main_label_change_top5``), the smaller
    class's count of distinct main labels (``attr_distinct_labels_top5``) and the mean MNAC (``attr_mnac_top5``)."""
    shown = readings[readings["rank"] <= top]
    if shown.empty:
        return {}
    distinct = shown.groupby("class")["main_label"].nunique()
    return {f"attr_main_label_change_top{top}": float(shown["main_change"].abs().mean()),
            f"attr_distinct_labels_top{top}": int(distinct.min()),
            f"attr_mnac_top{top}": float(shown["mnac"].mean()),
            f"attr_class_label_change_top{top}": float(shown["class_change"].abs().mean())}


def reading_notes(readings: pd.DataFrame) -> dict[str, str]:
    """A line per attribute for the summary figure and the gallery: its main (and second) label and MNAC."""
    def signed(label: str, change: float) -> str:
        return f"{label} {change:+.2f}" if label and np.isfinite(change) else ""

    return {r.attribute: "; ".join(part for part in (f"main label: {signed(r.main_label, r.main_change)}",
                                                       signed(r.second_label, r.second_change),
                                                       f"MNAC {r.mnac}") if part)
            for r in readings.itertuples()}
