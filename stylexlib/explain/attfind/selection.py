"""AttFind's selection: class attributes (greedy coverage or ranking), per-image attributes, the realism filter,
and sufficiency (flip rate of the top-k attributes applied together, against random coordinates).

A class's attributes are the edits that most increase that class's output on images the classifier assigns to
other classes (Lang et al., ICCV 2021, Alg. 1); an image's attributes are the edits that most lower its class.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from stylexlib.core.config import AttFindConfig
from stylexlib.explain.attfind.effects import DIRECTIONS, Effects, apply_attributes, predict_styles, top_edits
from stylexlib.gan.generator import Generator
from stylexlib.gan.models import StylexModels

log = logging.getLogger(__name__)

METHODS = ("greedy", "ranking")


def default_thresholds(cfg: AttFindConfig) -> tuple[float, float]:
    """(max_image_effect, affected_threshold) for the configured output, defaults filled in."""
    probs = cfg.output == "probs"
    max_effect = cfg.max_image_effect if cfg.max_image_effect is not None else (0.2 if probs else 1.0)
    affected = cfg.affected_threshold if cfg.affected_threshold is not None else (0.05 if probs else 0.25)
    return max_effect, affected


def class_attributes(effects: Effects, target: int, k: int = 10, output: str = "probs", method: str = "greedy",
                     max_image_effect: float = 0.2, affected_threshold: float = 0.05,
                     accept: Callable[[int, int], bool] | None = None) -> pd.DataFrame:
    """The top-``k`` (coordinate, direction) edits that move images of other classes toward class ``target``.

    "greedy" is the paper's coverage procedure: pick the edit with the largest mean effect over the images
    still in the pool, add its effect to each image's tally, and drop images whose tally reaches
    ``max_image_effect``. "ranking" ranks the edits by their mean effect alone. A coordinate is picked in one
    direction at most. ``accept(flat, direction)``, when given, vets each pick (e.g. :func:`realism_check`); a
    rejected edit is skipped for good.
    """
    if method not in METHODS:
        raise ValueError(f"attfind.method must be one of {METHODS}, got '{method}'")
    pool = effects.predicted != target
    if not pool.any():
        raise ValueError(f"no image is classified as another class than {target}: AttFind needs images of other classes")
    scores = effects.toward(target, output)[pool].flatten(1)  # (M, K*2), column = coord_position * 2 + direction
    flips = (effects.edited_logits[pool].argmax(-1) == target).flatten(1)
    positive = scores.clamp(min=0)
    picked: list[int] = []
    tally = torch.zeros(len(scores))
    for _ in range(scores.shape[1]):
        if len(picked) == k:
            break
        active = tally < max_image_effect if method == "greedy" else torch.ones(len(scores), dtype=torch.bool)
        rows = positive[active] if active.any() else positive
        column = int(rows.mean(0).argmax())
        usable = accept is None or accept(int(effects.coords[column // 2]), column % 2)
        if usable:
            picked.append(column)
            tally += positive[:, column].clamp(min=0)
            positive[:, column ^ 1] = -1.0  # one direction per coordinate (together, the second would undo the first)
        positive[:, column] = -1.0  # never again
    return pd.DataFrame([
        dict(rank=rank + 1, flat=int(effects.coords[column // 2]), direction=DIRECTIONS[column % 2],
             mean_effect=float(scores[:, column].mean()),
             fraction_affected=float((scores[:, column] > affected_threshold).float().mean()),
             flip_fraction=float(flips[:, column].float().mean()), pool_images=len(scores))
        for rank, column in enumerate(picked)
    ])


@torch.no_grad()
def realism_scores(generator: Generator, discriminator: nn.Module, classifier: nn.Module, styles: Tensor,
                   batch_size: int = 256) -> Tensor:
    """The discriminator's logit (N,) on G(styles), conditioned on the classifier's probabilities for it."""
    device = next(generator.parameters()).device
    scores = []
    for chunk in styles.split(batch_size):
        images = generator.synthesize(chunk.to(device))
        scores.append(discriminator(images, classifier(images).float().softmax(1)).float().cpu())
    return torch.cat(scores)


def realism_check(models: StylexModels, styles: Tensor, targets: Tensor, quantile: float = 0.05,
                  max_fraction: float = 0.5, batch_size: int = 256) -> Callable[[int, int], bool]:
    """A vetting function for :func:`class_attributes`: rejects an edit that looks unreal to the discriminator.

    An edit is rejected when more than ``max_fraction`` of the edited images score below the ``quantile``
    of the unedited reconstructions' scores (both from StylEx's own discriminator).
    """
    if models.discriminator is None:
        raise ValueError("the realism filter needs the discriminator: load the models with load_stylex")
    score = lambda s: realism_scores(models.generator, models.discriminator, models.classifier, s, batch_size)  # noqa: E731
    floor = score(styles).quantile(quantile)

    def accept(flat: int, direction: int) -> bool:
        column = torch.full((len(styles), 1), flat)
        edited = apply_attributes(styles, targets, column, torch.full_like(column, direction))
        unreal = (score(edited) < floor).float().mean().item()
        if unreal > max_fraction:
            log.info("realism filter: coordinate %d %s rejected (%.0f%% of edits below the floor)", flat,
                     DIRECTIONS[direction], 100 * unreal)
        return unreal <= max_fraction

    return accept


def image_attributes(effects: Effects, image: int, k: int = 5, output: str = "probs",
                     target: int | None = None) -> pd.DataFrame:
    """Per-image top-``k``: the edits that most lower the image's predicted class (or raise ``target``), one
    direction per coordinate.

    ``image`` is a position in ``effects`` (see ``effects.image_indices`` for the dataset index).
    """
    one = effects.subset(torch.arange(len(effects.base_logits)) == image)
    predicted = int(one.predicted[0])
    score = one.toward(target, output) if target is not None else -one.toward(predicted, output)
    values, positions, directions = (t[0].tolist() for t in top_edits(score, k))
    flipped = one.edited_logits[0].argmax(-1) != predicted
    return pd.DataFrame([
        dict(image_index=int(one.image_indices[0]), predicted=predicted, rank=rank + 1,
             flat=int(one.coords[position]), direction=DIRECTIONS[direction], effect=float(value),
             flips=bool(flipped[position, direction]))
        for rank, (value, position, direction) in enumerate(zip(values, positions, directions))
    ])


def image_sufficiency(generator: Generator, classifier: nn.Module, styles: Tensor, targets: Tensor, effects: Effects,
                      max_k: int = 10, output: str = "logits", batch_size: int = 256) -> pd.DataFrame:
    """Flip rate when each image's own top-k attributes (:func:`image_attributes`, the per-image explanation) are
    applied together, k = 1..max_k, on the searched images (``styles`` (N, S) and ``targets`` (2, N, S) in the order
    of ``effects``)."""
    predicted = effects.predicted
    _, positions, directions = top_edits(-effects.toward(predicted, output), max_k)
    rows = []
    for k in range(1, positions.shape[1] + 1):
        edited = apply_attributes(styles, targets, effects.coords[positions[:, :k]], directions[:, :k])
        flips = predict_styles(generator, classifier, edited, batch_size).argmax(1) != predicted
        rows.append(dict(k=k, image_flip_rate=float(flips.float().mean())))
    return pd.DataFrame(rows)


def describe(attributes: pd.DataFrame, generator: Generator) -> pd.DataFrame:
    """Add layer, layer name, channel, resolution and is_torgb columns for the ``flat`` column."""
    located = pd.DataFrame([generator.style_index.locate(f)._asdict() for f in attributes["flat"]])
    located = located.drop(columns="flat").rename(columns={"name": "layer_name"})
    return pd.concat([attributes.reset_index(drop=True), located], axis=1)


def sufficiency(generator: Generator, classifier: nn.Module, styles: Tensor, targets: Tensor,
                attributes: pd.DataFrame, candidates: Tensor, max_k: int = 10, random_trials: int = 5,
                seed: int = 0, batch_size: int = 256) -> pd.DataFrame:
    """Flip rate when the top-k attributes are applied together, k = 1..max_k, next to k random coordinates.

    For an image the classifier assigns to class y, the attributes of the class it is pushed toward
    (the other class; with several classes the runner-up) are applied at once; the flip rate is the
    fraction of images whose predicted class changes. The baseline applies k random searched coordinates
    (``candidates``), each in a random direction, averaged over ``random_trials`` draws.
    """
    base = predict_styles(generator, classifier, styles, batch_size)
    predicted = base.argmax(1)
    toward = base.scatter(1, predicted[:, None], float("-inf")).argmax(1)
    by_class = {int(c): group.sort_values("rank") for c, group in attributes.groupby("class_index")}
    generator_ = torch.Generator().manual_seed(seed)
    rows = []
    for k in range(1, max_k + 1):
        flats = torch.zeros(len(styles), k, dtype=torch.long)
        directions = torch.zeros(len(styles), k, dtype=torch.long)
        usable = torch.zeros(len(styles), dtype=torch.bool)
        for c, group in by_class.items():
            if len(group) < k:
                continue
            mine = toward == c
            usable |= mine
            flats[mine] = torch.tensor(group["flat"].to_numpy()[:k])
            directions[mine] = torch.as_tensor([DIRECTIONS.index(d) for d in group["direction"].to_numpy()[:k]])
        if not usable.any():
            break
        edited = apply_attributes(styles[usable], targets[:, usable], flats[usable], directions[usable])
        flip = (predict_styles(generator, classifier, edited, batch_size).argmax(1) != predicted[usable]).float().mean()
        random_rates = []
        for _ in range(random_trials):
            pick = torch.stack([candidates[torch.randperm(len(candidates), generator=generator_)[:k]]
                                for _ in range(int(usable.sum()))])
            dirs = torch.randint(0, 2, pick.shape, generator=generator_)
            edited = apply_attributes(styles[usable], targets[:, usable], pick, dirs)
            random_rates.append((predict_styles(generator, classifier, edited, batch_size).argmax(1)
                                 != predicted[usable]).float().mean().item())
        rows.append(dict(k=k, flip_rate=float(flip), random_flip_rate=float(np.mean(random_rates)),
                         random_flip_std=float(np.std(random_rates)), images=int(usable.sum())))
    return pd.DataFrame(rows)


def sufficiency_metrics(scores: pd.DataFrame, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """flip_rate_topK, random_flip_rate_topK and (where measured) image_flip_rate_topK for the given k."""
    metrics = {}
    for k in ks:
        row = scores[scores["k"] == k]
        for column in ("flip_rate", "random_flip_rate", "image_flip_rate"):
            if len(row) and column in row and pd.notna(row[column].iloc[0]):
                metrics[f"{column}_top{k}"] = float(row[column].iloc[0])
    return metrics
