"""Scores of an explanation against the answer key: which factor, where, and how faithful (with 95% intervals).

- factor identification: a map's score for a factor is its relevance rank accuracy in the factor's region; the top
  factor should be the one the classifier is most sensitive to (top-1 hit), and the ranking should follow the true
  sensitivities (Spearman).
- localisation: relevance mass and rank accuracy (Arras et al. 2022: the share of positive relevance inside the truly
  used factor's region; the share of its K pixels among the map's K most relevant) and the pointing game (Zhang et al.
  2018: is the most relevant pixel inside it).
- faithfulness: deletion and insertion AUC (Petsiuk et al. 2018): p(target) as pixels are removed (set to the
  baseline, gray) most relevant first, or inserted into the baseline most relevant first.
- counterfactuals: COUT (Khorram & Fuxin 2022, as ACE evaluates it): how fast pasting a counterfactual's pixels into
  the original, most changed first, moves the classifier from the source class to the target class.

``tests/test_metric_references.py`` checks these against Quantus 0.6 (``PointingGame``, ``RelevanceMassAccuracy``,
``RelevanceRankAccuracy``, ``PixelFlipping``) and the intervals against scipy; each function's docstring says where
the definitions part.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from torch import Tensor, nn

from stylexlib.classifier.predict import model_device


def map_factor_scores(maps: Tensor, masks: dict[str, Tensor]) -> pd.DataFrame:
    """(N images x factors): each factor's relevance rank accuracy (:func:`relevance_rank_accuracy` of |maps|). Unlike
    the share of relevance mass, it does not favour the largest regions (background, face) over small ones (mouth,
    glasses)."""
    magnitude = maps.abs()
    return pd.DataFrame({name: relevance_rank_accuracy(magnitude, mask).numpy() for name, mask in masks.items()})


def factor_identification(scores: pd.DataFrame, sensitivity: pd.DataFrame) -> pd.DataFrame:
    """Per image: whether the method's top factor is the truly most used one (``factor_top1``); that factor's true
    sensitivity as a share of the image's largest (``factor_share``: 1 for a hit, near 1 for a near tie, where the
    classifier uses two factors almost equally; NaN where the classifier uses none); and the Spearman correlation of
    the method's factor ranking with the true sensitivities (NaN where either is constant)."""
    scores, truth = scores[sensitivity.columns].to_numpy(), sensitivity.to_numpy()
    named = scores.argmax(1)
    hit = named == truth.argmax(1)
    largest = truth.max(1)
    share = np.divide(truth[np.arange(len(truth)), named], largest, out=np.full(len(truth), np.nan),
                      where=largest > 0)
    rho = [spearmanr(a, b).statistic if np.ptp(a) > 0 and np.ptp(b) > 0 else np.nan for a, b in zip(scores, truth)]
    return pd.DataFrame({"factor_top1": hit.astype(float), "factor_share": share, "factor_spearman": rho})


def relevance_mass(maps: Tensor, region: Tensor) -> Tensor:
    """(N,) the share of each map's positive relevance inside the (N, H, W) region (Arras et al. 2022). Quantus'
    ``RelevanceMassAccuracy`` sums the map as given (negative relevance included); here negative relevance is set to
    0 first, as Arras et al. define it, so both agree on maps of non-negative relevance."""
    positive = maps.clamp(min=0).flatten(1)
    return (positive * region.flatten(1).float()).sum(1) / positive.sum(1).clamp_min(1e-12)


def relevance_rank_accuracy(maps: Tensor, region: Tensor) -> Tensor:
    """(N,) of the K pixels of each (N, H, W) region, the share among the map's K most relevant pixels (Arras et al.
    2022). As Quantus' ``RelevanceRankAccuracy`` on maps without ties, except that pixels of no positive relevance
    never count (Quantus ranks ties and negative relevance in an arbitrary order)."""
    relevance = maps.flatten(1)
    order = relevance.argsort(dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order).contiguous())
    inside = region.flatten(1).bool()
    size = inside.sum(1, keepdim=True)
    return (inside & (relevance > 0) & (ranks < size)).sum(1) / size[:, 0].clamp_min(1)


def pointing_game(maps: Tensor, region: Tensor) -> Tensor:
    """(N,) 1 where the most relevant pixel lies inside the region (Zhang et al. 2018). Where several pixels share the
    maximum, the share of them inside the region (the hit rate of a random pick among them; a constant map scores
    the region's area): Quantus' ``PointingGame`` counts a hit when any of them is inside."""
    relevance = maps.flatten(1)
    peak = relevance == relevance.max(1, keepdim=True).values
    return (peak & region.flatten(1).bool()).sum(1) / peak.sum(1)


@torch.no_grad()
def deletion_insertion_curves(classifier: nn.Module, images: Tensor, maps: Tensor, target: Tensor, steps: int = 16,
                              baseline: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """(steps + 1,) fractions of pixels changed, most relevant first, and p(target) at each of them (N, steps + 1):
    deleted (set to ``baseline``) and inserted (into an image of ``baseline``).

    Deletion is Quantus' ``PixelFlipping`` with ``perturb_baseline=baseline`` and H * W / steps pixels per step (all
    channels of a pixel at once), ``softmax=True``, plus the unchanged image as its first point. Insertion has no
    Quantus counterpart; its canvas is the same constant (not a blurred image as in Petsiuk et al. 2018)."""
    n, h, w = maps.shape
    order = maps.flatten(1).argsort(dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(h * w).expand(n, -1).contiguous())
    fractions = torch.linspace(0, 1, steps + 1)
    device = model_device(classifier)  # a user's model may have no parameters
    curves = {"deletion": [], "insertion": []}
    for f in fractions:
        chosen = (ranks < int(round(float(f) * h * w))).view(n, 1, h, w)
        for kind, keep in (("deletion", ~chosen), ("insertion", chosen)):
            x = torch.where(keep, images, torch.full_like(images, baseline))
            p = classifier(x.to(device)).float().softmax(1).gather(1, target[:, None].to(device))[:, 0].cpu()
            curves[kind].append(p)
    return fractions, torch.stack(curves["deletion"], 1), torch.stack(curves["insertion"], 1)


def deletion_insertion_auc(classifier: nn.Module, images: Tensor, maps: Tensor, target: Tensor, steps: int = 16,
                           baseline: float = 0.0) -> tuple[Tensor, Tensor]:
    """(N,) deletion and (N,) insertion AUC of p(target) over the fraction of pixels changed, most relevant first
    (trapezoids over :func:`deletion_insertion_curves`; Quantus integrates over step numbers, not fractions).
    Lower deletion and higher insertion AUC: the map ranks the pixels the classifier needs first."""
    fractions, deletion, insertion = deletion_insertion_curves(classifier, images, maps, target, steps, baseline)
    return torch.trapezoid(deletion, fractions, dim=1), torch.trapezoid(insertion, fractions, dim=1)


@torch.no_grad()
def cout(classifier: nn.Module, originals: Tensor, counterfactuals: Tensor, source: Tensor | int,
         target: Tensor | int, steps: int = 50) -> Tensor:
    """(N,) counterfactual transition (COUT): the counterfactual's pixels pasted into the original in order of
    |x' - x| (summed over channels), ``H * W // steps`` pixels at a time; the area under p(target) minus the area
    under p(source) over the fraction of pixels pasted, in [-1, 1]. A counterfactual equal to the original scores
    p(target | x) - p(source | x); one whose first changed pixels already flip the class scores near 1.

    As ACE's evaluation (from C3LT's code), except that the last, partial step counts for its true share of the
    pixels (there every step counts as full, so the area can exceed 1 slightly)."""
    n, _, h, w = originals.shape
    source, target = (torch.as_tensor(c).expand(n).long()[:, None] for c in (source, target))
    change = (counterfactuals - originals).abs().sum(1).flatten(1)
    order = change.argsort(dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(h * w).expand(n, -1).contiguous())
    counts = list(range(0, h * w, max(1, h * w // steps))) + [h * w]
    device = model_device(classifier)
    curve = []
    for count in counts:
        pasted = torch.where((ranks < count).view(n, 1, h, w), counterfactuals, originals)
        p = classifier(pasted.to(device)).float().softmax(1).cpu()
        curve.append(p.gather(1, target)[:, 0] - p.gather(1, source)[:, 0])
    return torch.trapezoid(torch.stack(curve, 1), torch.tensor(counts) / (h * w), dim=1)


def bootstrap_interval(values, samples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap ``level`` interval over images (NaNs ignored); the same interval as
    ``scipy.stats.bootstrap(..., method="percentile", rng=np.random.default_rng(seed))``."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    return _percentile_interval(values, _resample_indices(len(values), samples, seed), level)


def paired_bootstrap_interval(a, b, samples: int = 2000, seed: int = 0, level: float = 0.95
                              ) -> tuple[float, float, float]:
    """Mean of ``a - b`` over images scored by two methods, and its percentile-bootstrap ``level`` interval: image
    indices resampled once, both methods scored on the same draw (images where either is NaN left out). The same
    interval as ``scipy.stats.bootstrap((a, b), mean(a) - mean(b), paired=True, method="percentile")``."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need one value per image from each method, got {a.shape} and {b.shape}")
    both = np.isfinite(a) & np.isfinite(b)
    if not both.any():
        return float("nan"), float("nan"), float("nan")
    return _percentile_interval(a[both] - b[both], _resample_indices(int(both.sum()), samples, seed), level)


def paired_ratio_interval(num_a, den_a, num_b, den_b, samples: int = 2000, seed: int = 0, level: float = 0.95,
                          floor: float = 1e-6) -> tuple[float, float, float]:
    """A ratio of means (``mean(num) / max(mean(den), floor)``, e.g. log-odds change per unit of visible change) of
    method a minus method b, and its paired percentile-bootstrap ``level`` interval: image indices resampled once,
    all four per-image arrays taken on the same draw (images where any is NaN left out). The same interval as
    ``scipy.stats.bootstrap((num_a, den_a, num_b, den_b), ratio(a) - ratio(b), paired=True, method="percentile")``."""
    arrays = [np.asarray(x, dtype=float) for x in (num_a, den_a, num_b, den_b)]
    if len({x.shape for x in arrays}) != 1:
        raise ValueError(f"paired scores need one value per image from each method, got {[x.shape for x in arrays]}")
    both = np.logical_and.reduce([np.isfinite(x) for x in arrays])
    if not both.any():
        return float("nan"), float("nan"), float("nan")
    na, da, nb, db = (x[both] for x in arrays)

    def difference(idx):
        return (na[idx].mean(-1) / np.maximum(da[idx].mean(-1), floor)
                - nb[idx].mean(-1) / np.maximum(db[idx].mean(-1), floor))

    draws = difference(_resample_indices(int(both.sum()), samples, seed))
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(difference(np.arange(int(both.sum())))), float(low), float(high)


def _resample_indices(n: int, samples: int, seed: int) -> np.ndarray:
    """(samples, n) image indices drawn with replacement (the draw scipy.stats.bootstrap makes)."""
    return np.random.default_rng(seed).integers(0, n, (samples, n))


def _percentile_interval(values: np.ndarray, draws: np.ndarray, level: float) -> tuple[float, float, float]:
    means = values[draws].mean(1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(values.mean()), float(low), float(high)
