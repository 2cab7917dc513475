"""The answer key of the synthetic faces: each factor's pixel region and the classifier's true sensitivity to it
(per image, and as the share of predictions that flip when only one factor changes).

Both come from interventions on the renderer: a factor's region on an image is the set of pixels that change when
only that factor is set to other values; the classifier's sensitivity to a factor on an image is the largest change
of the target's one-vs-rest log-odds over those re-renders. Nuisance jitter (head offsets) is no concept and left out.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from stylexlib.classifier.predict import classify
from stylexlib.core.config import DataConfig
from stylexlib.data import ImageDataset, to_float
from stylexlib.data.synthetic import FACTORS, factor_spec, intervene, render, render_interventions
from stylexlib.evaluate.factor_probe import factor_groups
from stylexlib.explain.attfind.effects import class_score
from stylexlib.gan.losses import visible_change

CONCEPT_FACTORS = [f.name for f in FACTORS if not f.nuisance]


def intervention_values(name: str) -> list[float]:
    """Values a factor is set to: 0 and 1 (binary), or its low end, middle and high end (either side of a gap)."""
    spec = factor_spec(name)
    if spec.kind == "binary":
        return [0.0, 1.0]
    if spec.gap:
        return [float(spec.low), -float(spec.gap), float(spec.gap), float(spec.high)]
    return [float(spec.low), (spec.low + spec.high) / 2, float(spec.high)]


def factor_masks(factors: pd.DataFrame, resolution: int, names: list[str] | None = None,
                 threshold: float = 2.0) -> dict[str, Tensor]:
    """Per factor, a boolean (N, H, W) mask: the pixels that change (by more than ``threshold`` of 255 in some channel)
    when only that factor is set to its other values on each image."""
    masks = {}
    for name in names or CONCEPT_FACTORS:
        values = intervention_values(name)
        renders = render_interventions(factors, name, values, resolution).float()
        renders = renders.view(len(factors), len(values), 3, resolution, resolution)
        spread = renders.amax(1) - renders.amin(1)  # (N, 3, H, W)
        masks[name] = spread.amax(1) > threshold
    return masks


@torch.no_grad()
def factor_sensitivity(classifier: nn.Module, factors: pd.DataFrame, resolution: int, target: Tensor,
                       names: list[str] | None = None, batch_size: int = 256) -> pd.DataFrame:
    """(N images x factors): the largest |change of the target's log-odds| when one factor is re-rendered at its
    other values, each image against its own render (the classifier's true use of the factor on that image)."""
    names = names or CONCEPT_FACTORS

    def scores(images: Tensor, targets: Tensor) -> Tensor:
        return class_score(classify(classifier, images, batch_size), targets, "logits")

    base = scores(render(factors, resolution), target)
    table = {}
    for name in names:
        values = intervention_values(name)
        changed = scores(render_interventions(factors, name, values, resolution), target.repeat_interleave(len(values)))
        table[name] = (changed.view(len(factors), len(values)) - base[:, None]).abs().amax(1).numpy()
    return pd.DataFrame(table)


def mirrored(name: str, values: np.ndarray) -> np.ndarray:
    """Each value of factor ``name`` reflected across its range: 0 <-> 1 (binary), low + high - v (continuous; a smile
    of the demo's mouth becomes the matching frown)."""
    spec = factor_spec(name)
    return 1 - values if spec.kind == "binary" else spec.low + spec.high - values


@torch.no_grad()
def factor_visibility(classifier: nn.Module, factors: pd.DataFrame, resolution: int, lpips_model: nn.Module,
                      names: list[str], batch_size: int = 256) -> pd.DataFrame:
    """The true change of each factor as a yardstick for edits: per factor, the faces re-rendered with that factor
    :func:`mirrored`, the mean LPIPS (:func:`visible_change`) between each face and its re-render, the mean |change
    of p(predicted class)| and their ratio. An attribute that moves p(class) far more per unit of LPIPS than the
    label rule's own factor does hides the class in changes the truth does not make."""
    device = next(lpips_model.parameters()).device
    original = render(factors, resolution)
    probs = classify(classifier, original, batch_size).softmax(1)
    predicted = probs.argmax(1, keepdim=True)
    rows = []
    for name in names:
        changed = render(intervene(factors, name, mirrored(name, factors[name].to_numpy())), resolution)
        distance = torch.cat([visible_change(lpips_model, a.to(device), b.to(device)).cpu() for a, b in
                              zip(to_float(original).split(batch_size), to_float(changed).split(batch_size))])
        moved = (classify(classifier, changed, batch_size).softmax(1).gather(1, predicted) - probs.gather(1, predicted))
        rows.append({"factor": name, "mean_prob_change": float(moved.abs().mean()), "mean_lpips": float(distance.mean()),
                     "prob_change_per_lpips": float(moved.abs().mean() / distance.mean().clamp(min=1e-6))})
    return pd.DataFrame(rows)


YARDSTICK_KEYS = ("mean_prob_change", "mean_lpips", "prob_change_per_lpips")


def truth_yardstick(classifier: nn.Module, data: ImageDataset, data_cfg: DataConfig, lpips_model: nn.Module,
                    images: int = 256) -> pd.DataFrame | None:
    """:func:`factor_visibility` of the label rule's factors and the planted shortcut on the first ``images`` test
    faces; None for data without ground-truth factors."""
    if data.factors is None:
        return None
    names = [name for group in factor_groups(data_cfg.label_rule, data_cfg.spurious_factor).values() for name in group]
    test = data.indices("test")[:images]
    return factor_visibility(classifier, data.factors.iloc[test], data.resolution, lpips_model, names)


def yardstick_metrics(truth: pd.DataFrame | None) -> dict[str, float]:
    """``truth_<factor>_<key>`` for each row of :func:`truth_yardstick` (empty without one)."""
    if truth is None:
        return {}
    return {f"truth_{row.factor}_{key}": float(getattr(row, key)) for row in truth.itertuples() for key in YARDSTICK_KEYS}


def yardstick_caption(truth: pd.DataFrame | None) -> str:
    """One line for a figure or page: each true factor change's Δp and LPIPS (empty without a yardstick)."""
    if truth is None:
        return ""
    return "the truth's own changes: " + ", ".join(
        f"{row.factor} Δp {row.mean_prob_change:.2f} at LPIPS {row.mean_lpips:.3f}" for row in truth.itertuples())


@torch.no_grad()
def intervention_flip_rate(
    classifier: torch.nn.Module,
    factors: pd.DataFrame,
    factor: str,
    resolution: int,
    value: float | np.ndarray | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> float:
    """Fraction of images whose predicted class changes when only ``factor`` is changed.

    Binary factors are flipped (0 <-> 1) unless ``value`` is given; continuous factors need ``value``.
    """
    current = factors[factor].to_numpy()
    if value is None:
        if not set(np.unique(current)) <= {0, 1}:
            raise ValueError(f"factor '{factor}' is not binary: pass the value to set it to")
        value = 1 - current
    before = classify(classifier, render(factors, resolution), batch_size, device).argmax(1)
    after = classify(classifier, render(intervene(factors, factor, value), resolution), batch_size, device).argmax(1)
    return (before != after).sum().item() / max(len(factors), 1)


__all__ = ["CONCEPT_FACTORS", "factor_masks", "factor_sensitivity", "factor_visibility", "intervention_flip_rate",
           "intervention_values", "mirrored", "truth_yardstick", "yardstick_caption", "yardstick_metrics"]
