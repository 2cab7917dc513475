"""Edits of a GAN's StyleSpace as explanations: pools of candidate edits and the explainer that picks among them.

Every method of the GAN-direction comparison reduces to a *pool* of P candidate edits, each a StyleSpace vector: the
change of the styles for one step of the edit's own standard deviation over real images.

- coordinates (StylEx's AttFind, Wu et al.'s StyleSpace): vector p moves coordinate c_p by its std;
- directions in W (GANSpace, SeFa, Voynov & Babenko, random): a unit direction d in W, scaled by the std of the
  encoded latents along d, mapped through the generator's affine style layers (linear, so one vector per direction);
- labelled directions (:func:`label_pool`, where a labels CSV names attributes): each label's change of the styles
  with the other labels held, whose unit step turns the label on.

:class:`DirectionExplainer` answers ``attribute(inputs, target=None, k)`` like every explainer: per image, the k
edits (of its pool, in either sign, ``step`` stds) that lower the target's log-odds most.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from stylexlib.data.labels import has_label
from stylexlib.explain.attfind.effects import (DIRECTIONS, StyleStats, edited_logits_fast, predict_styles,
                                               searched_coordinates)
from stylexlib.explain.stylex import StylEx
from stylexlib.gan import Generator
from stylexlib.gan.models import StylexModels


@dataclass
class EditPool:
    """P candidate StyleSpace edits: ``vectors`` (P, S), the style change of one own-std step of each."""

    name: str
    vectors: Tensor
    labels: list[str]
    coords: Tensor | None = None  # (P,) when vector p moves only coordinate coords[p] (the prefix-cached fast path)

    def __len__(self) -> int:
        return len(self.vectors)

    def apply(self, styles: Tensor, picks: Tensor, signs: Tensor, step: float) -> Tensor:
        """Styles (N, S) with the edits ``picks`` (N, k) applied together, each ``step`` stds in ``signs`` (N, k)
        (0: minus, 1: plus)."""
        sign = 2.0 * signs.float() - 1.0
        return styles + step * (sign[..., None] * self.vectors[picks]).sum(1)


def coordinate_pool(name: str, generator: Generator, stats: StyleStats, coords: Tensor) -> EditPool:
    """Single StyleSpace coordinates, each moved by its std over real images."""
    coords = torch.as_tensor(coords).long()
    vectors = torch.zeros(len(coords), generator.style_dim)
    vectors[torch.arange(len(coords)), coords] = stats.std[coords].float()
    index = generator.style_index
    labels = [f"{index.locate(int(c)).name}:{index.locate(int(c)).channel}" for c in coords]
    return EditPool(name, vectors, labels, coords)


@torch.no_grad()
def latent_pool(name: str, generator: Generator, directions: Tensor, latents: Tensor) -> EditPool:
    """Directions (P, D) in W, made unit, each scaled by the std of ``latents`` (N, D) along it, as style vectors."""
    unit = directions.float() / directions.float().norm(dim=1, keepdim=True)
    spread = (latents.float() @ unit.T).std(0)  # (P,) the latents' own std along each direction
    affine = generator.affine
    device = affine.weight.device
    shifts = torch.cat([unit * spread[:, None], torch.zeros(len(unit), generator.num_classes)], 1).to(device)
    zero = torch.zeros(1, shifts.shape[1], device=device)
    vectors = (affine(shifts) - affine(zero)).cpu()  # the affine maps are linear: one style vector per direction
    return EditPool(name, vectors, [f"{name} {p}" for p in range(len(unit))])


@torch.no_grad()
def label_pool(styles: Tensor, labels: pd.DataFrame, held: Tensor | None = None, name: str = "labels") -> EditPool:
    """Labelled directions in StyleSpace (as InterFaceGAN fits them, here on what the generator renders): one
    least-squares fit of ``styles`` (N, S) on every binary column of ``labels`` at once (each as 0 / 1, its positive
    value last), the ``held`` covariates (N, H; e.g. the generator's class input) and an intercept; rows with a missing
    value are left out. Each column's coefficient is the change of the styles with that label on and the other columns
    and the covariates held: a label that comes with the class, with another label, or with what the classifier says
    does not carry it. The pool's unit step turns the label on, as the data has it. ValueError names a column that is
    not binary or has too few images of either value."""
    columns, known = list(labels.columns), labels.notna().all(axis=1).to_numpy()
    design = []
    for column in columns:
        on = has_label(labels[column][known])
        if on is None:
            raise ValueError(f"label direction '{column}' needs a column with two values, found "
                             f"{sorted(map(str, labels[column].dropna().unique()))[:5]}")
        if min(on.sum(), (~on).sum()) < 2:
            raise ValueError(f"label direction '{column}': {int(on.sum())} of {len(on)} images have it; it needs at "
                             "least 2 with and 2 without")
        design.append(on.astype(float)[:, None])
    rows = torch.from_numpy(known.copy())
    if held is not None:
        design.append(held[rows].double().numpy())
    x = torch.as_tensor(np.concatenate(design + [np.ones((int(known.sum()), 1))], 1))
    fit = torch.linalg.lstsq(x, styles[rows].double(), driver="gelsd").solution
    return EditPool(name, fit[: len(columns)].float(), columns)


@torch.no_grad()
def pool_logits(generator: Generator, classifier: torch.nn.Module, styles: Tensor, pool: EditPool, step: float,
                batch_size: int = 64) -> Tensor:
    """The classifier's logits (N, P, 2, C) on every edit of the pool, in both signs, on every image."""
    if pool.coords is not None:  # single coordinates: the prefix-cached AttFind path
        delta = step * pool.vectors.abs().sum(0)
        targets = torch.stack([styles - delta, styles + delta])
        return edited_logits_fast(generator, classifier, styles, targets, pool.coords, batch_size)
    device = next(generator.parameters()).device
    edits = step * torch.stack([-pool.vectors, pool.vectors], 1).flatten(0, 1)  # (2P, S), order (p, sign)
    out = []
    for s in styles:
        batch = (s[None] + edits).to(device)
        out.append(predict_styles(generator, classifier, batch, batch_size))
    return torch.stack(out).view(len(styles), len(pool), 2, -1)


class DirectionExplainer(StylEx):
    """A GAN's encoder, generator and the classifier, explaining with the edits of one :class:`EditPool`; its
    ``attribute`` is StylEx's, over the pool's edits instead of single coordinates. Images are inverted with E(x)
    alone, on every GAN alike (stage 09's protocol: a per-image refinement would pull the classifier-free GAN's
    inversion toward C(x) through its KL term)."""

    def __init__(self, models: StylexModels, stats: StyleStats, pool: EditPool, step: float = 3.0,
                 batch_size: int = 64) -> None:
        super().__init__(models.generator, models.encoder, models.classifier, stats, models.class_names,
                         models.cfg.model.condition_on, batch_size=batch_size, device=models.device)
        self.pool, self.step = pool, step

    def _candidates(self, styles: Tensor, target: Tensor) -> tuple[Tensor, Callable, Callable]:
        """The pool's edits in either sign, ``step`` stds each (see :meth:`StylEx._candidates`)."""
        logits = pool_logits(self.generator, self.models.classifier, styles, self.pool, self.step, self.batch_size)
        return (self.log_odds_change(logits, styles, target),
                lambda picks, signs: self.pool.apply(styles, picks, signs, self.step),
                lambda position: dict(index=position, label=self.pool.labels[position]))

    def edit(self, images: Tensor, index: int, direction: str | int = "up", strength: float = 1.0) -> Tensor:
        """The images with edit ``index`` of the pool applied, ``strength`` x ``step`` stds in ``direction``."""
        styles, _ = self.encode(images)
        sign = DIRECTIONS.index(direction) if isinstance(direction, str) else int(direction)
        picks = torch.full((len(styles), 1), int(index))
        return self.render(self.pool.apply(styles, picks, torch.full_like(picks, sign), strength * self.step))


# ---------------------------------------------------------------------------- the directions of each method
@torch.no_grad()
def ganspace_directions(generator: Generator, count: int, samples: int = 10000, seed: int = 0) -> Tensor:
    """GANSpace (Härkönen et al., NeurIPS 2020): the ``count`` principal axes (count, D) of W = mapping(z)."""
    z = torch.randn(samples, generator.latent_dim, generator=torch.Generator().manual_seed(seed))
    device = next(generator.parameters()).device
    w = torch.cat([generator.mapping(b.to(device)).cpu() for b in z.split(2048)])
    _, _, vh = torch.linalg.svd(w - w.mean(0), full_matrices=False)
    return vh[:count]


@torch.no_grad()
def sefa_directions(generator: Generator, count: int, include_torgb: bool = False) -> Tensor:
    """SeFa (Shen & Zhou, CVPR 2021): the top eigenvectors (count, D) of A^T A, A the style affine weights of the
    searched layers w.r.t. w, each output's weight row normalised to unit length (symmetric eigensolver, sorted)."""
    weight = (generator.affine.weight * generator.affine.weight_gain)[:, : generator.latent_dim].float().cpu()
    if not include_torgb:
        weight = weight[generator.style_index.exclude_torgb_mask()]
    weight = weight / weight.norm(dim=1, keepdim=True)
    values, vectors = torch.linalg.eigh(weight.T @ weight)
    return vectors[:, values.argsort(descending=True)[:count]].T


def random_directions(dim: int, count: int, seed: int = 0) -> Tensor:
    """``count`` directions (count, D) drawn uniformly on the sphere: the control for the direction methods."""
    return torch.randn(count, dim, generator=torch.Generator().manual_seed(seed))


def random_coordinates(generator: Generator, count: int, include_torgb: bool = False, seed: int = 0) -> Tensor:
    """``count`` StyleSpace coordinates drawn at random from the searched ones: the control for the coordinates."""
    candidates = searched_coordinates(generator, include_torgb)
    return candidates[torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))[:count]].sort()[0]


def wu_positive_ranking(styles: Tensor, stats: StyleStats, positives: Tensor, coords: Tensor) -> pd.DataFrame:
    """Wu et al.'s channel ranking for a class (CVPR 2021, Sec. 4): over the images the classifier labels positive,
    the styles normalised by the dataset mean and std; relevance |mean| / std; the edit towards the positives moves
    a channel in the sign of the mean. Rows sorted by relevance: position (in ``coords``), flat, direction,
    relevance."""
    z = (styles[positives][:, coords] - stats.mean[coords]) / stats.std[coords].clamp_min(1e-8)
    relevance = z.mean(0).abs() / z.std(0).clamp_min(1e-8)
    order = relevance.argsort(descending=True)
    return pd.DataFrame({"position": order.numpy(), "flat": coords[order].numpy(),
                         "direction": [DIRECTIONS[int(m > 0)] for m in z.mean(0)[order]],
                         "relevance": relevance[order].numpy()})
