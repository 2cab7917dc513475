"""The stages' figures: confusion matrix, calibration, the synthetic factors and their interventions, sufficiency,
explanation maps side by side, the explainer comparison."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from stylexlib.core.figures import image_grid, save_figure, to_hwc
from stylexlib.data.synthetic import FACTORS, render_interventions
from stylexlib.evaluate.ground_truth import intervention_values
from stylexlib.evaluate.label_slices import FACET_CORRELATION
from stylexlib.gan.checkpoint import read_stats


def confusion_matrix(counts: np.ndarray, class_names: Sequence[str], title: str = "confusion matrix") -> plt.Figure:
    """Heat map of counts[true, predicted] with the numbers written in."""
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2, 1.2 * k + 1.5))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", color="black" if counts[i, j] < counts.max() / 2 else "white")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def reliability_diagram(confidence: np.ndarray, accuracy: np.ndarray, count: np.ndarray, ece: float) -> plt.Figure:
    """Calibration: accuracy against confidence per bin, with the bin sizes."""
    fig, ax = plt.subplots(figsize=(4, 4))
    bins = len(count)
    centers = (np.arange(bins) + 0.5) / bins
    used = count > 0
    ax.bar(centers[used], accuracy[used], width=1 / bins, edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.plot(confidence[used], accuracy[used], "o", color="C1", label="bin mean confidence")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {ece:.3f})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def intervention_figure(factors: pd.DataFrame, resolution: int) -> plt.Figure:
    """One synthetic face (the first row of ``factors``) re-rendered with each factor set to each of its
    intervention values: a row per factor, the values left to right."""
    rows = [render_interventions(factors.iloc[[0]], spec.name, intervention_values(spec.name), resolution)
            for spec in FACTORS]
    width = max(len(row) for row in rows)
    blank = torch.full((1, 3, resolution, resolution), 255, dtype=torch.uint8)
    grid = torch.cat([torch.cat([row, blank.expand(width - len(row), -1, -1, -1)]) for row in rows])
    titles = [spec.name if j == 0 else "" for spec in FACTORS for j in range(width)]
    return image_grid(grid, titles, ncols=width, size=1.1)


def histograms(columns: dict[str, np.ndarray], ncols: int = 4) -> plt.Figure:
    """One histogram per named column (e.g. the synthetic factors)."""
    names = list(columns)
    nrows = int(np.ceil(len(names) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3 * ncols, 2.3 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        ax.hist(np.asarray(columns[name], dtype=float), bins=30, color="C0")
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def flip_rate_curve(table, title: str = "sufficiency: top-k attributes applied together") -> plt.Figure:
    """Flip rate against k for the class attributes (on held-out images), for each image's own top-k (where the
    table has ``image_flip_rate``) and for k random coordinates (mean +- std of the draws)."""
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    ax.plot(table["k"], table["flip_rate"], marker="o", label="class top-k (held-out images)")
    if "image_flip_rate" in table:
        ax.plot(table["k"], table["image_flip_rate"], marker="^", label="each image's own top-k")
    ax.errorbar(table["k"], table["random_flip_rate"], yerr=table["random_flip_std"], marker="s", capsize=3,
                label="k random coordinates")
    ax.set_xlabel("k (attributes applied together)")
    ax.set_ylabel("flip rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def explanation_figure(images: torch.Tensor, maps: dict[str, torch.Tensor], class_names: Sequence[str],
                       target: torch.Tensor, changed: torch.Tensor | None = None,
                       reconstructed: torch.Tensor | None = None, size: float = 1.25) -> plt.Figure:
    """One row per image: the input, StylEx's original | changed pair (when given: its reconstruction and its top
    attribute applied), then every method's map (|relevance|, each scaled to its own maximum) for the same image and
    target class."""
    pictures = {"input": images, "StylEx: original": reconstructed, "StylEx: changed": changed}
    pictures = {name: to_hwc(p) for name, p in pictures.items() if p is not None}
    columns = list(pictures) + list(maps)
    fig, axes = plt.subplots(len(images), len(columns), figsize=(len(columns) * size, len(images) * size * 1.1),
                             squeeze=False)
    for r in range(len(images)):
        panels = [p[r] for p in pictures.values()] + [m[r].abs().numpy() for m in maps.values()]
        for c, (ax, panel) in enumerate(zip(axes[r], panels)):
            ax.axis("off")
            ax.imshow(panel, cmap=None if panel.ndim == 3 else "inferno", interpolation="nearest")
            if r == 0:
                ax.set_title(columns[c].replace("_", " "), fontsize=7)
        axes[r][0].set_ylabel(class_names[int(target[r])], fontsize=7)
    fig.suptitle("what each explainer points at, for the predicted class", fontsize=9)
    fig.tight_layout()
    return fig


def methods_figure(table, metrics: Sequence[str]) -> plt.Figure:
    """Bars per method for each metric, with the 95% intervals in ``<metric>_low`` / ``<metric>_high``."""
    metrics = [m for m in metrics if m in table and table[m].notna().any()]
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(3.2 * max(len(metrics), 1), 3.4), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        values = table[metric].to_numpy(float)
        low, high = table[f"{metric}_low"].to_numpy(float), table[f"{metric}_high"].to_numpy(float)
        colours = ["tab:red" if m == "stylex" else "tab:blue" for m in table["method"]]
        ax.barh(range(len(values)), values, xerr=[values - low, high - values], color=colours, capsize=2)
        ax.set_yticks(range(len(values)), [m.replace("_", " ") for m in table["method"]], fontsize=7)
        ax.set_title(metric.replace("_", " "), fontsize=9)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def oracle_auc_figure(table: pd.DataFrame, min_auc: float) -> plt.Figure:
    """The labelled-attribute oracle's held-out AUC per column (``LabelOracle.table()``), the trust line drawn."""
    table = table.sort_values("auc")
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.18 * len(table)))
    colours = ["tab:blue" if t else "lightgrey" for t in table["trusted"]]
    ax.barh(range(len(table)), table["auc"], color=colours)
    ax.axvline(min_auc, color="black", lw=1, ls="--")
    ax.set_yticks(range(len(table)), [f"{c} (class)" if k else c for c, k in zip(table["column"], table["class_column"])],
                  fontsize=7)
    ax.set_xlim(0.5, 1.0)
    ax.set_xlabel(f"ROC AUC on held-out real images (used when >= {min_auc})")
    ax.set_title(f"The labelled-attribute oracle: {int(table['trusted'].sum())} of {len(table)} columns trusted")
    fig.tight_layout()
    return fig


def label_change_heatmap(changes: pd.DataFrame, readings: pd.DataFrame) -> plt.Figure:
    """Attributes (rows, with their main label) x trusted label columns: the mean change of the oracle's probability
    (``label_readings.attribute_label_readings``'s two tables), red up, blue down."""
    matrix = changes.pivot_table(index="attribute", columns="column", values="change", sort=False)
    matrix = matrix.loc[readings["attribute"]]
    limit = max(float(np.nanmax(np.abs(matrix.to_numpy()))), 1e-6)
    fig, ax = plt.subplots(figsize=(max(6.0, 3.5 + 0.24 * matrix.shape[1]), 1.2 + 0.26 * len(matrix)))
    image = ax.imshow(matrix.to_numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(matrix)), [f"{r['class']} #{r['rank']} {r['direction']}: {r['main_label']} "
                                       f"{r['main_change']:+.2f}" for _, r in readings.iterrows()], fontsize=7)
    fig.colorbar(image, ax=ax, label="mean change of p(label)", shrink=0.6)
    ax.set_title("What each attribute changes (the label oracle)", fontsize=10)
    fig.tight_layout()
    return fig


def label_slice_bars(slices: pd.DataFrame, top: int = 12) -> plt.Figure:
    """The ``top`` labels of :func:`stylexlib.evaluate.label_slices.slice_table` that move the classifier most within
    the classes: mean change of p(class) with a 95% interval, candidate shortcuts red, facets of the class grey."""
    shown = slices.head(top).iloc[::-1]
    colours = ["tab:red" if c else ("0.6" if r >= FACET_CORRELATION else "tab:blue")
               for c, r in zip(shown["candidate"], shown["class_correlation"])]
    fig, ax = plt.subplots(figsize=(6.5, 1.0 + 0.3 * len(shown)))
    ax.barh(range(len(shown)), shown["push"], xerr=1.96 * shown["push"] / shown["z"].clip(lower=1e-6), color=colours)
    ax.set_yticks(range(len(shown)), [f"{c} (toward {t}, |r| {r:.2f})" for c, t, r in
                                      zip(shown["column"], shown["toward"], shown["class_correlation"])], fontsize=7)
    ax.axvline(0, color="k", lw=0.5)
    ax.set_xlabel("change of p(the class named) with the label, within the true classes (95% interval)")
    ax.set_title("Which labels move the decision on real images (red: candidate shortcut; grey: a facet of the class)",
                 fontsize=8)
    fig.tight_layout()
    return fig


LOSS_GROUPS = {  # the panels of loss_curves: StylEx's loss terms by kind (stats.jsonl's names)
    "adversarial": ("d", "adv", "r1"),
    "reconstruction": ("l1", "lpips", "latent"),
    "classifier KL": ("kl",),
    "path length": ("pl",),
}


def loss_curves(history: list[dict]) -> plt.Figure:
    """StylEx losses (``stats.jsonl`` records) against the training step, one panel per group of terms."""
    groups = {title: [k for k in keys if any(k in h for h in history)] for title, keys in LOSS_GROUPS.items()}
    groups = {title: keys for title, keys in groups.items() if keys}
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.2), squeeze=False)
    for ax, (title, keys) in zip(axes.flat, groups.items()):
        for key in keys:
            points = [(h["step"], h[key]) for h in history if key in h]
            ax.plot(*zip(*points), label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def save_loss_curves(stats_dir: str | Path, path: str | Path) -> Path | None:
    """Save :func:`loss_curves` of a training folder's ``stats.jsonl`` to ``path`` (None when it has no records)."""
    history = read_stats(stats_dir)
    if not history:
        return None
    fig = loss_curves(history)
    saved = save_figure(fig, path)
    plt.close(fig)
    return saved
