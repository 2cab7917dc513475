"""Does the classifier follow a label when the generator draws it? The audit's candidates as labelled directions.

The audit (:mod:`.label_slices`) compares real images with and without a label. The generator can put the same
question as a counterfactual: move searched images along the label's direction in StyleSpace
(:func:`stylexlib.explain.directions.label_pool`, the class input held), render, and read the classifier and the label
oracle. A label the classifier reads moves its decision toward the class the audit names when drawn on (``add``, on
images the classifier gives to another class) and away when taken off (``remove``, on images with the label that it
gives to that class). The oracle says whether the edit draws the label at all: a generator that does not draw it
cannot show it, however the classifier reads it.
"""
from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import Tensor

from stylexlib.core.figures import image_grid
from stylexlib.data import ImageDataset
from stylexlib.data.labels import attribute_table, binary_values, has_label, table_balancing_weights
from stylexlib.evaluate.label_slices import MIN_IMAGES, MIN_PUSH, MIN_Z, SHOWN
from stylexlib.explain.attfind.editor import AttributeEditor
from stylexlib.explain.directions import EditPool, label_pool
from stylexlib.gan.models import StylexModels
from stylexlib.stylespace.inversion import invert

FIT_IMAGES = 256  # training images whose refined inversions the directions are fitted on
EDITS = {"add": "drawn on", "remove": "taken off"}
COLUMNS = ["column", "edit", "toward", "images", "p_before", "p_after", "push", "push_z", "decided_before",
           "decided_after", "label_before", "label_after", "drawn"]


@torch.no_grad()
def fit_label_pool(models: StylexModels, data: ImageDataset, columns: list[str], drawn: list[str],
                   count: int = FIT_IMAGES, seed: int = 0) -> EditPool:
    """:func:`~stylexlib.explain.directions.label_pool` of the binary ones among the labels-CSV ``columns`` (give them
    all, the class's too, so that each direction holds the others; a column with fewer than 10 images of a value among
    these is left out), with the generator's class input held, on the refined inversions (what the stages render; kept
    in the run's store) of ``count`` seeded training images. Half of the draw makes the two values of each binary
    column among ``drawn`` equally likely (:func:`~stylexlib.data.labels.table_balancing_weights`): a rare label gets
    images enough to fit."""
    train = torch.as_tensor(data.indices("train"))
    table = attribute_table(data, columns)
    trained_on = table.iloc[train.numpy()]
    balanced = [c for c in drawn if c in table.columns and binary_values(trained_on[c]) is not None]
    weights = torch.full((len(train),), 0.5 / len(train), dtype=torch.float64)
    if balanced:
        weights += 0.5 * table_balancing_weights(trained_on[balanced])
    chosen = torch.multinomial(weights, min(count, len(train)), generator=torch.Generator().manual_seed(seed))
    positions = train[chosen.sort()[0]]
    labels = table.iloc[positions.numpy()].reset_index(drop=True)
    labels = labels[[c for c in columns if binary_values(labels[c]) is not None
                     and labels[c].value_counts().min() >= MIN_IMAGES]]
    inverted = invert(models, data.images[positions])
    return label_pool(inverted.styles.cpu(), labels, held=inverted.c[:, 1:].cpu())


@torch.no_grad()
def label_direction_effects(editor: AttributeEditor, pool: EditPool, styles: Tensor, labels: pd.DataFrame,
                            toward: Mapping[str, int], oracle=None, lpips_model: torch.nn.Module | None = None,
                            strength: float = 1.0, images: int = 64,
                            probabilities: Tensor | None = None) -> pd.DataFrame:
    """Per column of ``toward`` (the class index the audit says it pushes toward) and per edit: ``add`` moves up to
    ``images`` of the searched ``styles`` that lack the label and that the classifier gives to another class
    ``strength`` steps along the label's direction; ``remove`` moves back those with the label that it gives to that
    class (``labels``: the searched images' rows). Columns: ``p_before`` / ``p_after`` (mean probability of the
    class), ``push`` (their difference, with ``push_z`` over its paired standard error), ``decided_before`` /
    ``decided_after`` (the share the classifier gives to the class), and the oracle's mean probability of the label
    before and after (``drawn``: the change; NaN where the oracle does not read the column). ``probabilities``: the
    classifier's on the searched images' reconstructions, where known (``Effects.base_logits.softmax(1)``)."""
    probabilities = _reconstructed_probabilities(editor, styles, probabilities)
    trusted = list(oracle.trusted) if oracle is not None else []
    rows = []
    for column, k in toward.items():
        vector = pool.vectors[pool.labels.index(column)]
        given = (probabilities.argmax(1) == k).numpy()
        for edit, sign in zip(EDITS, (1.0, -1.0)):
            chosen = _editable(labels[column], given, sign > 0)[:images]
            row = {"column": column, "edit": edit, "toward": editor.class_names[k], "images": len(chosen)}
            if len(chosen):
                before = editor.render(styles[chosen])
                after = editor.render(styles[chosen] + sign * strength * vector)
                p_before, p_after = editor.probabilities(before), editor.probabilities(after)
                push = p_after[:, k] - p_before[:, k]
                error = float(push.std()) / np.sqrt(len(push)) if len(push) > 1 else float("nan")
                row.update(p_before=float(p_before[:, k].mean()), p_after=float(p_after[:, k].mean()),
                           push=float(push.mean()), push_z=float(push.mean()) / error if error > 0 else float("nan"),
                           decided_before=float((p_before.argmax(1) == k).float().mean()),
                           decided_after=float((p_after.argmax(1) == k).float().mean()))
                if column in trusted:
                    j = trusted.index(column)
                    label_before = oracle.read(lpips_model, before)[:, j]
                    label_after = oracle.read(lpips_model, after)[:, j]
                    row.update(label_before=float(label_before.mean()), label_after=float(label_after.mean()),
                               drawn=float((label_after - label_before).mean()))
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def direction_verdict(effects: pd.DataFrame) -> tuple[dict[str, object], str]:
    """Metrics for the first column of ``effects`` (the audit's lead: ``label_direction_drawn``, the oracle's change
    of the label where it is drawn on; ``label_direction_push`` and ``label_direction_push_remove``, the classifier's
    change toward the class) and a sentence per column: drawn or not (the oracle's change of at least ``SHOWN``), and
    whether the classifier follows it (a push toward the class of at least ``MIN_PUSH`` at ``push_z`` >= ``MIN_Z``)."""
    if effects.empty:
        return {}, "no candidate shortcut to draw"
    lead = effects[effects["column"] == effects["column"].iloc[0]].set_index("edit")
    metrics = {"label_direction_column": effects["column"].iloc[0]}
    for edit, key in (("add", "label_direction_push"), ("remove", "label_direction_push_remove")):
        if edit in lead.index and np.isfinite(lead.loc[edit, "push"]):
            metrics[key] = float(lead.loc[edit, "push"])
    if "add" in lead.index and np.isfinite(lead.loc["add", "drawn"]):
        metrics["label_direction_drawn"] = float(lead.loc["add", "drawn"])
    said = []
    for column, rows in effects.groupby("column", sort=False):
        parts = []
        for row in rows.itertuples():
            if not row.images:
                parts.append(f"no searched image to {row.edit} it on")
                continue
            drawn = ("" if not np.isfinite(row.drawn) else
                     f", the oracle reads it {row.label_before:.2f} -> {row.label_after:.2f}")
            parts.append(f"{EDITS[row.edit]} {row.images} images{drawn}: p({row.toward}) {row.p_before:.2f} -> "
                         f"{row.p_after:.2f} (z {row.push_z:.1f}), decided {row.toward} {row.decided_before:.0%} -> "
                         f"{row.decided_after:.0%}")
        add = rows[rows["edit"] == "add"].iloc[0]
        read, drawn_on = np.isfinite(add["drawn"]), add["drawn"] >= SHOWN
        follows = add["images"] > 0 and add["push"] >= MIN_PUSH and add["push_z"] >= MIN_Z
        verdict = ("no searched image to draw it on" if not add["images"] else
                   "drawn, and the classifier follows it" if drawn_on and follows else
                   "drawn, but the classifier does not follow it" if drawn_on else
                   "not drawn at this strength: the generator does not show it" if read else
                   "the classifier follows the edit (the oracle does not read the label)" if follows else
                   "the classifier does not follow the edit (the oracle does not read the label)")
        said.append(f"{column} ({verdict}): " + "; ".join(parts))
    return metrics, " | ".join(said)


def label_direction_figure(editor: AttributeEditor, pool: EditPool, styles: Tensor, labels: pd.DataFrame,
                           column: str, k: int, strength: float = 1.0, shown: int = 6,
                           probabilities: Tensor | None = None) -> plt.Figure | None:
    """Up to ``shown`` searched images without ``column`` that the classifier gives to another class, and the same
    with the label drawn on (``strength`` steps of its direction), each titled with p(class ``k``); None when no
    searched image is such. ``probabilities`` as for :func:`label_direction_effects`."""
    probabilities = _reconstructed_probabilities(editor, styles, probabilities)
    chosen = _editable(labels[column], (probabilities.argmax(1) == k).numpy(), add=True)[:shown]
    if not len(chosen):
        return None
    vector = pool.vectors[pool.labels.index(column)]
    before = editor.render(styles[chosen])
    after = editor.render(styles[chosen] + strength * vector)
    name = editor.class_names[k]
    titles = ([f"p({name}) {p:.2f}" for p in editor.probabilities(before)[:, k]]
              + [f"+{column}\np({name}) {p:.2f}" for p in editor.probabilities(after)[:, k]])
    return image_grid(torch.cat([before, after]), titles, ncols=len(chosen), size=1.6,
                      suptitle=f"{column} drawn on by its labelled direction ({strength:g} x the label's change)")


def _reconstructed_probabilities(editor: AttributeEditor, styles: Tensor, probabilities: Tensor | None) -> Tensor:
    """The classifier's probabilities on the rendered ``styles``: the ones given, else rendered and read."""
    return probabilities.cpu() if probabilities is not None else editor.probabilities(editor.render(styles))


def _editable(values: pd.Series, given: np.ndarray, add: bool) -> np.ndarray:
    """Positions a label can be drawn on (``add``: known to lack it and not ``given`` to the class it pushes toward)
    or taken off (known to have it and ``given`` to that class)."""
    has = has_label(values)
    has = has if has is not None else np.zeros(len(values), bool)
    return np.flatnonzero(values.notna().to_numpy() & (~has & ~given if add else has & given))
