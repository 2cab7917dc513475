"""Every explainer on the same classifier and images, scored against the answer key: ``benchmark/methods.csv``.

Saliency methods give maps directly; StylEx's map is |G(s + delta) - G(s)| of each image's top attribute (where
its explanation changes the image). On synthetic data each map is scored for factor identification, localisation
and faithfulness (:mod:`stylexlib.evaluate.scores`); on a folder of real images only faithfulness is scored.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from stylexlib.classifier.predict import classify
from stylexlib.core.io import write_table
from stylexlib.data import to_float
from stylexlib.evaluate.scores import (bootstrap_interval, deletion_insertion_auc, factor_identification,
                                       map_factor_scores, paired_bootstrap_interval, paired_ratio_interval,
                                       pointing_game, relevance_mass, relevance_rank_accuracy)
from stylexlib.explain import METHODS, SaliencyExplainer, StylEx, StylexAttribution

COLUMNS = ["method", "family", "task", "images", "factor_top1", "factor_share", "factor_spearman", "relevance_mass",
           "relevance_rank_accuracy", "pointing_game", "deletion_auc", "insertion_auc", "seconds_per_image"]


def explanation_maps(classifier: nn.Module, images: Tensor, target: Tensor, methods: tuple[str, ...] | None = None,
                     layer: str | None = None) -> dict[str, tuple[Tensor, float]]:
    """Per saliency method, its (N, H, W) relevance maps for ``target`` and the seconds it took per image; by default
    every method that applies to this classifier (:func:`available_methods`)."""
    methods = available_methods(classifier, METHODS, layer) if methods is None else methods
    out = {}
    for method in methods:
        maps = SaliencyExplainer(classifier, method, layer=layer).attribute(images, target)
        out[method] = (maps.maps, maps.seconds_per_image)
    return out


def stylex_map(stylex: StylEx, images: Tensor, target: Tensor) -> tuple[Tensor, float, StylexAttribution]:
    """StylEx's map: |G(s + delta) - G(s)| of each image's top attribute (N, H, W); seconds per image; the attribution."""
    started = time.perf_counter()
    result = stylex.attribute(images, target, k=1)
    change = (result.edited[:, 0] - result.reconstructions).abs().sum(1)
    return change, (time.perf_counter() - started) / len(images), result


def available_methods(classifier: nn.Module, methods: tuple[str, ...] = METHODS, layer: str | None = None
                      ) -> tuple[str, ...]:
    """The methods that apply to this classifier: without a convolution Grad-CAM can use (a TorchScript model hides
    its modules; ``classifier.gradcam_layer`` not set) the Grad-CAM methods are left out, with a warning."""
    from stylexlib.explain.saliency import gradcam_layer

    try:
        gradcam_layer(classifier, layer)
    except ValueError as exc:
        logging.getLogger(__name__).warning("Grad-CAM and Guided Grad-CAM left out: %s", exc)
        return tuple(m for m in methods if m not in ("gradcam", "guided_gradcam"))
    return methods


@torch.no_grad()
def saliency_by_image(classifier: nn.Module, images: Tensor, indices: list[int], methods: tuple[str, ...] = METHODS,
                      layer: str | None = None) -> dict[int, Tensor]:
    """Dataset index -> (M, H, W) maps of every method for the classifier's predicted class (the gallery's strips)."""
    x = images.float() if images.dtype != torch.uint8 else to_float(images)
    target = classify(classifier, x).argmax(1)
    with torch.enable_grad():
        maps = explanation_maps(classifier, x, target, methods, layer)
    return {int(index): torch.stack([maps[m][0][j] for m in methods]) for j, index in enumerate(indices)}


def constant_guess(masks: dict[str, Tensor], sensitivity: pd.DataFrame) -> tuple[Tensor, pd.DataFrame]:
    """The answer that ignores the image: the factor the classifier uses most often (over these images) named on every
    image, as a map (its region) and as factor scores (each factor's share of images it is the most used on)."""
    used = np.bincount(sensitivity.to_numpy().argmax(1), minlength=sensitivity.shape[1]) / len(sensitivity)
    region = masks[sensitivity.columns[int(used.argmax())]].float()
    return region, pd.DataFrame(np.repeat(used[None], len(sensitivity), 0), columns=sensitivity.columns)


def score_maps(classifier: nn.Module, images: Tensor, target: Tensor, maps: dict[str, tuple[Tensor, float]],
               task: str, masks: dict[str, Tensor] | None = None, sensitivity: pd.DataFrame | None = None,
               factor_scores: dict[str, pd.DataFrame] | None = None, baseline: bool = True,
               per_image: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """One row per method: means over images (95% bootstrap intervals in ``*_low`` / ``*_high``).

    A map's factor scores are its rank accuracy in each factor's region; ``factor_scores`` (per method, images x
    factors) replaces them for explainers that say *what* changes: StylEx and the GAN edits, whose changes the factor
    probe reads. With the answer key and ``baseline``, a last row ``constant_guess`` (:func:`constant_guess`, family
    "baseline") is scored the same way: what naming the usual factor without looking at the image achieves. A dict
    passed as ``per_image`` receives each method's per-image scores (images x scores; :func:`paired_differences`)."""
    if masks is not None and sensitivity is not None and baseline:
        region, guessed = constant_guess(masks, sensitivity)
        maps = {**maps, "constant_guess": (region, 0.0)}
        factor_scores = {**(factor_scores or {}), "constant_guess": guessed}
    rows = []
    for method, (relevance, seconds) in maps.items():
        scores_of = {}
        deletion, insertion = deletion_insertion_auc(classifier, images, relevance, target)
        scores_of["deletion_auc"], scores_of["insertion_auc"] = deletion.numpy(), insertion.numpy()
        if masks is not None and sensitivity is not None:
            scores = (factor_scores or {}).get(method)
            ident = factor_identification(map_factor_scores(relevance, masks) if scores is None
                                          else scores.reset_index(drop=True), sensitivity)
            used = sensitivity.to_numpy().argmax(1)  # the factor this classifier uses most on each image
            region = torch.stack([masks[sensitivity.columns[f]][i] for i, f in enumerate(used)])
            scores_of.update(factor_top1=ident["factor_top1"].to_numpy(), factor_share=ident["factor_share"].to_numpy(),
                             factor_spearman=ident["factor_spearman"].to_numpy(),
                             relevance_mass=relevance_mass(relevance, region).numpy(),
                             relevance_rank_accuracy=relevance_rank_accuracy(relevance.abs(), region).numpy(),
                             pointing_game=pointing_game(relevance, region).numpy())
        family = {"stylex": "attribute", "constant_guess": "baseline"}.get(method, "saliency")
        row = {"method": method, "family": family, "task": task,
               "images": len(images), "seconds_per_image": seconds}
        for name, values in scores_of.items():
            row[name], row[f"{name}_low"], row[f"{name}_high"] = bootstrap_interval(values)
        rows.append(row)
        if per_image is not None:
            per_image[method] = pd.DataFrame(scores_of)
    table = pd.DataFrame(rows)
    for column in COLUMNS:
        if column not in table:
            table[column] = np.nan
    return table[COLUMNS + [c for c in table.columns if c not in COLUMNS]]


PAIRED_COLUMNS = ["task", "reference", "method", "score", "images", "difference", "low", "high"]


def paired_differences(per_image: dict[str, pd.DataFrame], reference: str = "stylex", task: str = "",
                       ratios: dict[str, tuple[str, str]] | None = None) -> pd.DataFrame:
    """``benchmark/paired.csv``: per other method and score, the mean over images of ``reference`` minus that method
    with its paired 95% bootstrap interval (:func:`paired_bootstrap_interval`: both scored on the same resampled
    images); an interval that excludes 0 is a difference these images support.

    Every method's table must have the same index (the same images, one row each; NaN where a method has no score):
    ``images`` counts the images both scored, the only ones paired. ``ratios`` adds scores that are a ratio of two
    columns' means (name -> (numerator, denominator)), paired by :func:`paired_ratio_interval`."""
    rows = []
    if reference in per_image:
        ours = per_image[reference]
        for method, theirs in per_image.items():
            if method == reference:
                continue
            if not ours.index.equals(theirs.index):
                raise ValueError(f"'{method}' was scored on other images than '{reference}': pairs need the same "
                                 f"images (index) in both per-image tables")
            for score in [c for c in ours.columns if c in theirs.columns]:
                a, b = ours[score].to_numpy(float), theirs[score].to_numpy(float)
                difference, low, high = paired_bootstrap_interval(a, b)
                rows.append({"task": task, "reference": reference, "method": method, "score": score,
                             "images": int((np.isfinite(a) & np.isfinite(b)).sum()), "difference": difference,
                             "low": low, "high": high})
            for score, (num, den) in (ratios or {}).items():
                if not {num, den} <= set(ours.columns) & set(theirs.columns):
                    continue
                arrays = [t[c].to_numpy(float) for t in (ours, theirs) for c in (num, den)]
                difference, low, high = paired_ratio_interval(*arrays)
                rows.append({"task": task, "reference": reference, "method": method, "score": score,
                             "images": int(np.logical_and.reduce([np.isfinite(x) for x in arrays]).sum()),
                             "difference": difference, "low": low, "high": high})
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def benchmark_metrics(table: pd.DataFrame, scores: tuple[str, ...] = ("factor_top1", "relevance_mass",
                                                                      "deletion_auc", "insertion_auc")) -> dict:
    """Flat ``compare_<method>_<score>`` metrics of a methods table (scores that were measured)."""
    return {f"compare_{row['method']}_{score}": float(row[score]) for _, row in table.iterrows()
            for score in scores if pd.notna(row[score])}


def combine(out: str | Path, run_dirs: list[str | Path], table: str = "methods.csv") -> pd.DataFrame:
    """Concatenate the ``benchmark/<table>`` of several run folders (one task each; ``methods.csv``, ``paired.csv``,
    ``paired_gan.csv``) into ``out``."""
    combined = pd.concat([pd.read_csv(Path(d) / "benchmark" / table) for d in run_dirs], ignore_index=True)
    write_table(out, combined)
    return combined
