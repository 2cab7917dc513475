"""Which labelled attributes move the classifier's decision on real images, within each class? A data-side audit.

StylEx explains a classifier through what its generator can draw; a shortcut the generator does not draw (a rare
accessory after an hour of training) cannot show in any attribute. The labels CSV can still show it: within each true
class, compare the classifier's probability of each class on the held-out images with a label against those without.
A label that moves the decision inside the classes is something the classifier reads. When the data ties the label to
the class (a smile and high cheekbones), it is a facet of the class; when it barely does (a smile and glasses), it is
a candidate shortcut. :func:`slice_verdict` then says whether the explanation's top attributes change that label,
or miss it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from torch import nn

from stylexlib.classifier.predict import classify
from stylexlib.data import ImageDataset
from stylexlib.data.labels import attribute_table, has_label
from stylexlib.evaluate.attribute_probe import is_categorical

MIN_IMAGES = 10  # a class's images with (and without) a label needed to compare them
MIN_PUSH = 0.1  # a candidate moves a class's mean probability by at least this much within the classes
MIN_Z = 3.5  # ... by this many standard errors (the 5% two-sided level over 40 columns, Bonferroni, is 3.2)
FACET_CORRELATION = 0.3  # a label correlated with a class at least this much in the data is a facet, not a shortcut
SHOWN = 0.1  # an explanation shows the label when one of its top attributes changes it by at least this much
KEPT = 0.5  # reconstructions that keep less of a label than this (the oracle's mean, on the images with it) lose it


def welch(with_label: np.ndarray, without: np.ndarray) -> tuple[float, float]:
    """The difference of two groups' means and its standard error (Welch's, unequal variances)."""
    difference = float(with_label.mean() - without.mean())
    error = float(np.sqrt(with_label.var(ddof=1) / len(with_label) + without.var(ddof=1) / len(without)))
    return difference, error


def label_slices(labels: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The binary slices of a labels table: (known, has) masks per binary column (its positive value), and per value
    of a categorical column with more values (``race=2``); numbers with many values (age) are left out."""
    slices = {}
    for column in labels.columns:
        values, known = labels[column], labels[column].notna().to_numpy()
        has = has_label(values)
        if has is not None:
            slices[column] = known, has
        elif is_categorical(values):
            for value in sorted(values.dropna().unique().tolist()):
                slices[f"{column}={value}"] = known, (values == value).to_numpy()
    return slices


def slice_table(probabilities: np.ndarray, classes: np.ndarray, labels: pd.DataFrame, class_names: list[str],
                min_images: int = MIN_IMAGES) -> pd.DataFrame:
    """Per slice of ``labels`` (:func:`label_slices`; one row per image of ``probabilities``, N x classes, and of
    ``classes``, the true ones): ``push``, the mean over true classes of the change of one class's probability between
    the images in the slice and the others (the class it raises most: ``toward``), its ``z`` (push over its standard
    error), ``within_<class>`` (that change inside each true class), ``images_with`` and ``class_correlation`` (the
    slice's largest |correlation| with one class in these images). ``candidate``: push >= MIN_PUSH, z >= MIN_Z and a
    class correlation under FACET_CORRELATION. Slices with fewer than ``min_images`` images in or out of them in a
    class are left out. Sorted by push."""
    rows, present = [], [k for k in range(len(class_names)) if (classes == k).any()]
    for name, (known, has) in label_slices(labels).items():
        groups = [(known & has & (classes == k), known & ~has & (classes == k)) for k in present]
        if not present or any(a.sum() < min_images or b.sum() < min_images for a, b in groups):
            continue
        pushes = np.array([[welch(probabilities[a, j], probabilities[b, j]) for a, b in groups]
                           for j in range(len(class_names))])  # (classes, true classes, difference / error)
        push = pushes[:, :, 0].mean(axis=1)
        error = np.sqrt((pushes[:, :, 1] ** 2).sum(axis=1)) / len(present)
        toward = int(np.argmax(push))
        correlation = max(abs(np.corrcoef(has[known], classes[known] == k)[0, 1]) for k in present)
        rows.append({"column": name, "toward": class_names[toward], "push": float(push[toward]),
                     "z": float(push[toward] / max(error[toward], 1e-12)),
                     **{f"within_{class_names[k]}": float(pushes[toward, n, 0]) for n, k in enumerate(present)},
                     "images_with": int((known & has).sum()), "class_correlation": float(correlation)})
    within = [f"within_{class_names[k]}" for k in present]
    table = pd.DataFrame(rows, columns=["column", "toward", "push", "z", *within, "images_with", "class_correlation"])
    table["candidate"] = ((table["push"] >= MIN_PUSH) & (table["z"] >= MIN_Z)
                          & (table["class_correlation"] < FACET_CORRELATION))
    return table.sort_values("push", ascending=False, ignore_index=True)


def explanation_shows(slices: pd.DataFrame, reliance: pd.DataFrame) -> pd.DataFrame:
    """``slices`` with ``shown``: the largest |change| of each label's probability among the explanation's top
    attributes (:func:`stylexlib.evaluate.label_readings.label_reliance`; NaN where the oracle does not read it), and
    ``shown_by``: which attribute changes it most (``<class> #<rank>``; empty where the table has no ranks)."""
    if not len(reliance):
        return slices.assign(shown=np.nan, shown_by="")
    table = reliance.set_index("column")
    changes = table.filter(regex="^toward_").abs()
    largest = changes.max(axis=1)
    by_class = changes.idxmax(axis=1).str.removeprefix("toward_")
    shown_by = {column: f"{name} #{int(table.loc[column, f'rank_{name}'])}"
                for column, name in by_class.items()
                if f"rank_{name}" in table and pd.notna(table.loc[column, f"rank_{name}"])}
    return slices.assign(shown=slices["column"].map(largest).astype(float),
                         shown_by=slices["column"].map(shown_by).fillna(""))


def reconstructions_keep(slices: pd.DataFrame, label_auc: pd.DataFrame) -> pd.DataFrame:
    """``slices`` with ``kept``: how much of each label the held-out reconstructions keep, the oracle's mean
    probability of it on the reconstructions of the images that have it over the same on the originals (stage 04's
    :func:`~stylexlib.evaluate.label_oracle.label_auc_ratio` table; NaN where it has no row). A shortcut the
    reconstructions lose is one the generator does not draw (or the refinement stops short of): the classifier's
    decision on those images is then drawn through other features, and no attribute can show it."""
    table = label_auc.set_index("column")
    kept = table["mean_reconstruction"] / table["mean_original"].where(table["mean_original"] > 0)
    return slices.assign(kept=slices["column"].map(kept).astype(float))


def classifier_slices(classifier: nn.Module, data: ImageDataset, columns: list[str], split: str = "test") -> pd.DataFrame:
    """:func:`slice_table` of ``classifier`` (its outputs in the dataset's class order) on a split of a folder dataset
    with a labels CSV, for its ``columns``."""
    rows = data.indices(split)
    probabilities = classify(classifier, data.images[rows]).softmax(1).numpy()
    labels = attribute_table(data, columns).iloc[rows].reset_index(drop=True)
    return slice_table(probabilities, data.labels[rows].numpy(), labels, list(data.class_names))


def slice_verdict(slices: pd.DataFrame, listed: int = 5) -> tuple[dict[str, object], str]:
    """The metrics (``label_slice_shortcut``: the candidate that moves the decision most, or ``none``;
    ``label_slice_push``; ``label_slice_candidates``; with :func:`explanation_shows`' column, ``label_slice_shown``
    for the lead and ``label_slice_missed``: candidates the oracle reads that no top attribute changes by SHOWN) and a
    sentence naming up to ``listed`` candidates and whether the explanation shows each."""
    candidates = slices[slices["candidate"]] if not slices.empty else slices
    if candidates.empty:
        lead = slices.iloc[0] if not slices.empty else None
        most = f" (the most: {lead['column']}, {lead['push']:+.2f} toward {lead['toward']})" if lead is not None else ""
        return ({"label_slice_shortcut": "none", "label_slice_candidates": 0},
                f"no label moves the decision within the classes unlike the class{most}")
    lead = candidates.iloc[0]
    metrics = {"label_slice_shortcut": lead["column"], "label_slice_push": float(lead["push"]),
               "label_slice_candidates": len(candidates)}
    read = "shown" in candidates.columns  # the oracle read the explanation (explanation_shows)
    if read:
        metrics["label_slice_missed"] = int((candidates["shown"] < SHOWN).sum())
        if np.isfinite(lead["shown"]):
            metrics["label_slice_shown"] = float(lead["shown"])
    if np.isfinite(lead.get("kept", np.nan)):
        metrics["label_slice_kept"] = float(lead["kept"])

    def said_of(row) -> str:
        shown, kept, by = row.get("shown", np.nan), row.get("kept", np.nan), row.get("shown_by", "")
        seen = ("" if not read else " (not read by the oracle)" if not np.isfinite(shown) else
                f" (the top attributes change it by up to {shown:.2f}" + (f", {by}" if by else "")
                + f": {'shown' if shown >= SHOWN else 'MISSED'}"
                + (f"; the reconstructions keep {kept:.0%} of it" if np.isfinite(kept) else "") + ")")
        return f"{row['column']} {row['push']:+.2f} toward {row['toward']} (z {row['z']:.1f}){seen}"

    said = ("candidate shortcuts, labels that move the decision within the classes though the data barely ties them "
            "to the class: " + "; ".join(said_of(row) for _, row in candidates.head(listed).iterrows()))
    if read and metrics["label_slice_missed"]:
        missed = candidates[candidates["shown"] < SHOWN]
        lost = missed["column"][missed.get("kept", pd.Series(np.nan, index=missed.index)) < KEPT].tolist()
        said += (f". A MISSED one is read by the classifier but no top attribute changes it by {SHOWN} (the one that "
                 "changes it most, named beside it, is where to look in the gallery)" + (
            f"; the reconstructions lose {', '.join(lost)} (they keep under {KEPT:.0%} of the oracle's reading): the "
            "generator does not draw it, or the per-image refinement stops short of it, so the classifier's decision "
            "on those images is kept through other features and no attribute can show it (which of the two: "
            "benchmarks/reconstruction_route.py --refine; to draw it more often in training: "
            f"stylex.schedule.label_balance: [{', '.join(lost)}]; both measured in docs/experiments.md)" if lost else
            ": the reconstructions keep it, so the generator draws it, but no top attribute changes it much on average "
            "(it may be drawn on some faces only, or bundled with the class: open the attribute named)"))
    return metrics, said
