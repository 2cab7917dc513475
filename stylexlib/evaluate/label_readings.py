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

from stylexlib.data.labels import attribute_table
from stylexlib.evaluate.label_columns import OracleColumns
from stylexlib.explain.attfind.editor import AttributeEditor
from stylexlib.explain.attfind.effects import DIRECTIONS
from stylexlib.explain.attfind.search import AttFindResult

CHANGED = 0.1  # a column whose oracle probability moves at least this much counts as changed (MNAC)
READING_COLUMNS = ["class", "rank", "attribute", "layer", "channel", "direction", "images", "class_change",
                   "main_label", "main_before", "main_after", "main_change", "second_label", "second_change", "mnac"]


def label_changes(columns: list[str], before: torch.Tensor, after: torch.Tensor) -> pd.DataFrame:
    """Per column: the oracle's mean probability ``before`` and ``after`` an edit (images x ``columns``, from
    the oracle's ``read`` of the same images), their difference, and the share of image pairs whose probability
    moves by at least ``CHANGED``."""
    delta = after - before
    return pd.DataFrame({"column": columns, "before": before.mean(0).numpy(), "after": after.mean(0).numpy(),
                         "change": delta.mean(0).numpy(),
                         "pairs_changed": (delta.abs() >= CHANGED).float().mean(0).numpy()})


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
def attribute_label_readings(editor: AttributeEditor, result: AttFindResult, oracle: OracleColumns,
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
        before = oracle.read(lpips_model, editor.render(styles))
        for row in group.sort_values("rank").itertuples():
            after = oracle.read(lpips_model, editor.render(editor.edit(styles, int(row.flat), row.direction)))
            changes = label_changes(oracle.trusted, before, after)
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


def label_reliance(changes: pd.DataFrame, readings: pd.DataFrame, class_names: list[str],
                   class_correlation: dict[str, float], top: int = 3, exclude: list[str] = ()) -> pd.DataFrame:
    """Which labels do the explanation's top attributes follow? Per trusted column, the largest signed change of its
    probability among each class's ``top`` attributes (``toward_<class>``; ``rank_<class>``: that attribute's rank, where
    the changes carry one), and ``follows``: half the change toward the second class minus the change toward the first,
    in [-1, 1] like a correlation (large when the attributes raise the label for one class and lower it for the other;
    near 0 when both raise it, as an artefact would).
    ``class_correlation`` is each label's correlation with the class in the data (two classes: the phi coefficient),
    ``unexplained`` |follows| minus |correlation|. Columns in ``exclude`` (the class's own) are left out. Sorted by
    ``unexplained``. Candidate shortcuts are named from the classifier itself (:mod:`.label_slices`), which reads
    this table to say whether the attributes show each one."""
    shown = readings[readings["rank"] <= top]
    moved = changes[changes["attribute"].isin(shown["attribute"]) & ~changes["column"].isin(list(exclude))]
    rows = []
    for column, group in moved.groupby("column", sort=False):
        toward, ranks = {}, {}
        for name in class_names:
            values = group[group["class"] == name]["change"]
            largest = values.abs().idxmax() if len(values) else None
            toward[name] = float(values.loc[largest]) if largest is not None else 0.0
            if "rank" in group and largest is not None:
                ranks[f"rank_{name}"] = int(group.loc[largest, "rank"])
        first, second = (toward[n] for n in class_names[:2]) if len(class_names) >= 2 else (0.0, 0.0)
        follows = (second - first) / 2
        correlation = class_correlation.get(column, float("nan"))
        rows.append({"column": column, **{f"toward_{n}": v for n, v in toward.items()}, **ranks, "follows": follows,
                     "class_correlation": correlation,
                     "unexplained": abs(follows) - abs(correlation) if np.isfinite(correlation) else abs(follows)})
    table = pd.DataFrame(rows)
    return table.sort_values("unexplained", ascending=False, ignore_index=True) if len(table) else table


def oracle_class_correlation(oracle: OracleColumns, data) -> dict[str, float]:
    """:func:`class_label_correlation` of the oracle's trusted labels with a two-class dataset's labels ({} for more
    classes)."""
    if data.num_classes != 2:
        return {}
    return class_label_correlation(attribute_table(data, oracle.trusted), data.labels.numpy())


def class_label_correlation(labels: pd.DataFrame, classes: np.ndarray) -> dict[str, float]:
    """Each binary label column's Pearson correlation with a two-class label (the phi coefficient), over the rows
    where both are known."""
    out = {}
    for column in labels.columns:
        values = pd.to_numeric(labels[column], errors="coerce")
        known = values.notna().to_numpy()
        if known.sum() > 2 and values[known].nunique() == 2 and len(np.unique(classes[known])) == 2:
            out[column] = float(np.corrcoef(values[known].to_numpy(float), classes[known].astype(float))[0, 1])
    return out


def flip_scores(before: np.ndarray, after: np.ndarray, columns: list[str], class_columns: list[str],
                data_correlation: dict[str, float] | None = None) -> dict[str, object]:
    """Counterfactuals scored by their oracle probabilities ``before`` and ``after`` (images x ``columns``) as ACE and
    DiME score them: ``label_mnac``, the mean number of non-class columns whose decision (probability > 0.5) flips
    per image (each image's count in ``per_image``); given each column's correlation with the class in the data,
    ``label_cd``: the sum over those columns of |the correlation over images of the column's flip with the class
    column's flip, minus the data's| (a column or class that never flips correlates 0, as ACE counts it)."""
    flips = (after > 0.5).astype(float) - (before > 0.5).astype(float)
    named = [j for j, c in enumerate(columns) if c not in class_columns]
    per_image = np.abs(flips[:, named]).sum(1)
    out: dict[str, object] = {"label_mnac": float(per_image.mean()) if len(per_image) else float("nan"),
                              "per_image": per_image}
    query = [j for j, c in enumerate(columns) if c in class_columns]
    if data_correlation and query:
        total = 0.0
        for j in (j for j in named if columns[j] in data_correlation):
            with np.errstate(invalid="ignore", divide="ignore"):
                together = np.corrcoef(flips[:, j], flips[:, query[0]])[0, 1] if len(flips) > 1 else np.nan
            total += abs((0.0 if np.isnan(together) else together) - data_correlation[columns[j]])
        out["label_cd"] = total
    return out


@torch.no_grad()
def counterfactual_label_scores(oracle: OracleColumns, lpips_model: torch.nn.Module, originals: torch.Tensor,
                                counterfactuals: torch.Tensor,
                                data_correlation: dict[str, float] | None = None) -> dict[str, object]:
    """:func:`flip_scores` of per-image counterfactuals (images in [-1, 1]) read by the oracle's trusted columns."""
    before, after = (oracle.read(lpips_model, images).numpy() for images in (originals, counterfactuals))
    return flip_scores(before, after, oracle.trusted, oracle.class_columns, data_correlation)


@torch.no_grad()
def edit_label_readings(oracle: OracleColumns, lpips_model: torch.nn.Module, explainer, styles: torch.Tensor,
                        predicted: torch.Tensor, selected: pd.DataFrame, top: int = 5) -> pd.DataFrame:
    """:func:`summarise_changes` for each class's ``top`` edits of a direction method (stage 09's ``selected``), over
    the ``styles`` whose ``predicted`` class is another: the same readings stage 06 makes of StylEx's attributes."""
    rows = []
    for class_index, group in selected[selected["rank"] <= top].groupby("class_index", sort=True):
        others = torch.nonzero(predicted != int(class_index)).flatten()
        if not len(others):
            continue
        before = oracle.read(lpips_model, explainer.render(styles[others]))
        for row in group.sort_values("rank").itertuples():
            picks = torch.full((len(others), 1), int(row.index))
            signs = torch.full_like(picks, DIRECTIONS.index(row.direction))
            after = oracle.read(lpips_model, explainer.render(explainer.pool.apply(styles[others], picks, signs,
                                                                                     explainer.step)))
            key = f"c{int(class_index)}_r{int(row.rank):02d}"
            rows.append({"class": row.class_name, "rank": int(row.rank), "attribute": key, "images": len(others),
                         **summarise_changes(label_changes(oracle.trusted, before, after), oracle.class_columns)})
    return pd.DataFrame(rows)
