"""Scores of an explanation against the answer key: which factor, where, and how faithful (with 95% intervals).

- factor identification: a map's score for a factor is its relevance rank accuracy in the factor's region; the top
  factor should be the one the classifier is most sensitive to (top-1 hit), and the ranking should follow the true
  sensitivities (Spearman).
- localisation: relevance mass (Arras et al. 2022: the share of positive relevance inside the truly used factor's
  region) and the pointing game (Zhang et al. 2018: is the most relevant pixel inside it).
- faithfulness: deletion and insertion AUC (Petsiuk et al. 2018): p(target) as pixels are removed (set to the
  baseline, gray) most relevant first, or inserted into the baseline most relevant first.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from torch import Tensor, nn


def map_factor_scores(maps: Tensor, masks: dict[str, Tensor]) -> pd.DataFrame:
    """(N images x factors): each factor's relevance rank accuracy (Arras et al. 2022): of the K pixels of its region,
    the share that are among the map's K most relevant pixels (|relevance|). Unlike the share of relevance mass, it
    does not favour the largest regions (background, face) over small ones (mouth, glasses)."""
    magnitude = maps.abs().flatten(1)
    order = magnitude.argsort(dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order).contiguous())
    relevant = magnitude > 0  # pixels of no relevance never count, whatever order their ties fall in
    scores = {}
    for name, mask in masks.items():
        region = mask.flatten(1)
        size = region.sum(1, keepdim=True)
        scores[name] = ((region & relevant & (ranks < size)).sum(1) / size[:, 0].clamp_min(1)).numpy()
    return pd.DataFrame(scores)


def factor_identification(scores: pd.DataFrame, sensitivity: pd.DataFrame) -> pd.DataFrame:
    """Per image: whether the method's top factor is the truly most used one, and the Spearman correlation of its
    factor ranking with the true sensitivities (NaN where either is constant)."""
    scores, sensitivity = scores[sensitivity.columns], sensitivity
    hit = scores.to_numpy().argmax(1) == sensitivity.to_numpy().argmax(1)
    rho = [spearmanr(a, b).statistic if np.ptp(a) > 0 and np.ptp(b) > 0 else np.nan
           for a, b in zip(scores.to_numpy(), sensitivity.to_numpy())]
    return pd.DataFrame({"factor_top1": hit.astype(float), "factor_spearman": rho})


def relevance_mass(maps: Tensor, region: Tensor) -> Tensor:
    """(N,) the share of each map's positive relevance inside the (N, H, W) region."""
    positive = maps.clamp(min=0).flatten(1)
    return (positive * region.flatten(1).float()).sum(1) / positive.sum(1).clamp_min(1e-12)


def pointing_game(maps: Tensor, region: Tensor) -> Tensor:
    """(N,) 1 where the most relevant pixel lies inside the region."""
    peak = maps.flatten(1).argmax(1)
    return region.flatten(1).gather(1, peak[:, None])[:, 0].float()


@torch.no_grad()
def deletion_insertion_auc(classifier: nn.Module, images: Tensor, maps: Tensor, target: Tensor, steps: int = 16,
                           baseline: float = 0.0) -> tuple[Tensor, Tensor]:
    """(N,) deletion and (N,) insertion AUC of p(target) over the fraction of pixels changed, most relevant first.
    Lower deletion and higher insertion AUC: the map ranks the pixels the classifier needs first."""
    n, h, w = maps.shape
    order = maps.flatten(1).argsort(dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(h * w).expand(n, -1).contiguous())
    fractions = torch.linspace(0, 1, steps + 1)
    device = next(classifier.parameters()).device
    curves = {"deletion": [], "insertion": []}
    for f in fractions:
        chosen = (ranks < int(round(float(f) * h * w))).view(n, 1, h, w)
        for kind, keep in (("deletion", ~chosen), ("insertion", chosen)):
            x = torch.where(keep, images, torch.full_like(images, baseline))
            p = classifier(x.to(device)).float().softmax(1).gather(1, target[:, None].to(device))[:, 0].cpu()
            curves[kind].append(p)
    auc = {kind: torch.trapezoid(torch.stack(c, 1), fractions, dim=1) for kind, c in curves.items()}
    return auc["deletion"], auc["insertion"]


def bootstrap_interval(values, samples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap ``level`` interval over images (NaNs ignored)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(samples, len(values)), replace=True).mean(1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(values.mean()), float(low), float(high)
