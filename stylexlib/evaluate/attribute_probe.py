"""Do labelled attributes survive reconstruction? Linear probes for a folder dataset's extra CSV columns.

For each column named in ``evaluate.attribute_columns`` (UTKFace: age, race), a linear probe on LPIPS-backbone
features (:func:`stylexlib.evaluate.quality.lpips_features`) is fitted on real training images and scored on held-out
originals and on their reconstructions: R^2 for numeric columns, accuracy for categorical ones (text, or integers with
at most ``CATEGORY_MAX_VALUES`` distinct values). A reconstruction that keeps age and race scores near the originals.
The same probes read what each AttFind attribute changes (:func:`attribute_readings`): real data's counterpart of the
synthetic data's factor probe.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from stylexlib.data import DataError, ImageDataset, to_float
from stylexlib.data.labels import attribute_table
from stylexlib.evaluate.quality import lpips_features
from stylexlib.stylespace.inversion import reconstruct

CATEGORY_MAX_VALUES = 10
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # L2 penalties tried per row of standardised features


def is_categorical(values: pd.Series) -> bool:
    """Text or boolean columns, and integer columns with few distinct values, are categories."""
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return True
    clean = values.dropna()
    return bool((clean == clean.round()).all() and clean.nunique() <= CATEGORY_MAX_VALUES)


@dataclass
class LinearProbe:
    """A fitted linear read-out of one column from standardised features."""

    column: str
    categorical: bool
    mean: Tensor
    scale: Tensor
    weight: Tensor  # (F + 1, outputs): bias row last
    classes: list

    def _design(self, features: Tensor) -> Tensor:
        x = (features.double() - self.mean) / self.scale
        return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)

    def predict(self, features: Tensor) -> np.ndarray:
        """Predicted values (numeric) or class labels (categorical)."""
        out = self._design(features) @ self.weight
        if self.categorical:
            return np.asarray(self.classes, dtype=object)[out.argmax(1).numpy()]
        return out[:, 0].numpy()

    def reading(self, features: Tensor) -> Tensor:
        """The probe's reading: predicted values (N,) for a numeric column, category probabilities (N, K) otherwise."""
        out = self._design(features) @ self.weight
        return out.softmax(1) if self.categorical else out[:, 0]

    def score(self, features: Tensor, values: pd.Series) -> float:
        """R^2 (numeric) or accuracy (categorical) against the true values; rows with a missing value are skipped."""
        keep = values.notna().to_numpy().copy()
        predicted, truth = self.predict(features[torch.as_tensor(keep)]), values[keep].to_numpy()
        if self.categorical:
            return float((predicted.astype(str) == truth.astype(str)).mean())
        truth = truth.astype(float)
        return float(1.0 - ((truth - predicted) ** 2).sum() / max(((truth - truth.mean()) ** 2).sum(), 1e-12))


def fit_probe(features: Tensor, values: pd.Series, column: str, steps: int = 100, seed: int = 0) -> LinearProbe:
    """Ridge regression (numeric) or L2-regularised softmax regression (categorical) of ``values`` on features; the
    penalty is chosen from ``RIDGE_GRID`` on a seeded fifth of the rows held out, then the probe is refitted on all."""
    keep = values.notna().to_numpy().copy()
    if keep.sum() < 10:
        raise DataError(f"attribute column '{column}' has fewer than 10 values on the training images")
    x, values = features[torch.as_tensor(keep)].double(), values[keep].reset_index(drop=True)
    categorical = is_categorical(values)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    held, fit = order[: len(x) // 5], order[len(x) // 5 :]
    best = max(RIDGE_GRID, key=lambda ridge: _solve(x[fit], values.iloc[fit.numpy()], column, categorical, ridge,
                                                    steps).score(x[held], values.iloc[held.numpy()]))
    return _solve(x, values, column, categorical, best, steps)


def _solve(x: Tensor, values: pd.Series, column: str, categorical: bool, ridge: float, steps: int) -> LinearProbe:
    """The probe at one penalty (``ridge`` x the number of rows, on standardised features)."""
    mean, scale = x.mean(0), x.std(0).clamp_min(1e-6)
    design = torch.cat([(x - mean) / scale, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    if not categorical:
        penalty = ridge * len(x) * torch.eye(design.shape[1], dtype=x.dtype)
        penalty[-1, -1] = 0.0  # the bias is not shrunk
        target = torch.tensor(values.to_numpy(dtype=float), dtype=x.dtype)[:, None]
        weight = torch.linalg.solve(design.T @ design + penalty, design.T @ target)
        return LinearProbe(column, False, mean, scale, weight, [])
    classes = sorted(values.astype(str).unique())
    target = torch.tensor(pd.Categorical(values.astype(str), categories=classes).codes, dtype=torch.long)
    weight = torch.zeros(design.shape[1], len(classes), dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(design @ weight, target) + 0.5 * ridge * weight[:-1].square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearProbe(column, True, mean, scale, weight.detach(), classes)


def attribute_scores(probes: dict[str, LinearProbe], originals: Tensor, reconstructions: Tensor,
                     heldout_table: pd.DataFrame) -> pd.DataFrame:
    """Per column: the probe's kind (``r2`` or ``accuracy``) and its score on the features of held-out originals and
    of their reconstructions."""
    return pd.DataFrame([{"column": column, "kind": "accuracy" if probe.categorical else "r2",
                          "original": probe.score(originals, heldout_table[column]),
                          "reconstruction": probe.score(reconstructions, heldout_table[column])}
                         for column, probe in probes.items()], columns=["column", "kind", "original", "reconstruction"])


@torch.no_grad()
def fit_attribute_probes(data: ImageDataset, lpips_model: torch.nn.Module, columns: list[str],
                         train_images: int = 2000, seed: int = 0) -> dict[str, LinearProbe]:
    """One :func:`fit_probe` per labels-CSV column, on the LPIPS features of up to ``train_images`` (seeded) real
    training images."""
    table = attribute_table(data, columns)
    train = np.sort(np.random.default_rng(seed).permutation(data.indices("train"))[:train_images])
    features = lpips_features(lpips_model, to_float(data.images[torch.as_tensor(train)]))
    return {column: fit_probe(features, table[column].iloc[train].reset_index(drop=True), column) for column in columns}


@torch.no_grad()
def reconstruction_attribute_scores(models, data: ImageDataset, heldout: np.ndarray, lpips_model, columns: list[str],
                                    train_images: int = 2000, seed: int = 0,
                                    reconstructions: Tensor | None = None) -> pd.DataFrame:
    """:func:`attribute_scores` of :func:`fit_attribute_probes` on the held-out images at positions ``heldout`` and on
    their ``reconstructions`` (default: inverted here with :func:`stylexlib.stylespace.inversion.reconstruct`)."""
    probes = fit_attribute_probes(data, lpips_model, columns, train_images, seed)
    table = attribute_table(data, columns).iloc[heldout].reset_index(drop=True)
    originals = data.images[torch.as_tensor(heldout)]
    if reconstructions is None:
        reconstructions = reconstruct(models, originals)
    return attribute_scores(probes, lpips_features(lpips_model, models.prepare(originals).cpu()),
                            lpips_features(lpips_model, reconstructions), table)


def reading_change(probe: LinearProbe, before: Tensor, after: Tensor) -> dict[str, object]:
    """What an edit does to a column, from features of the images ``before`` and ``after`` it: the mean reading
    before and after and its change; for a category, of the category whose mean probability rises most."""
    start, end = probe.reading(before).mean(0), probe.reading(after).mean(0)
    if not probe.categorical:
        return {"column": probe.column, "reading": probe.column, "before": float(start), "after": float(end),
                "change": float(end - start)}
    k = int((end - start).argmax())
    return {"column": probe.column, "reading": f"p({probe.column}={probe.classes[k]})", "before": float(start[k]),
            "after": float(end[k]), "change": float(end[k] - start[k])}


@torch.no_grad()
def attribute_readings(probes: dict[str, LinearProbe], lpips_model: torch.nn.Module, examples: list) -> pd.DataFrame:
    """What each AttFind attribute does to the labelled columns (real data's answer to the factor probe): per
    attribute (:class:`~stylexlib.explain.attfind.examples.AttributeExamples`) and column, :func:`reading_change`
    over its shown original | changed pairs."""
    rows = []
    for ex in examples:
        if not ex.num_examples:
            continue
        before, after = (lpips_features(lpips_model, images) for images in (ex.originals, ex.changed))
        rows += [{"attribute": ex.key, "class": ex.class_name, "rank": ex.rank, "label": ex.label,
                  "examples": ex.num_examples, **reading_change(probe, before, after)} for probe in probes.values()]
    return pd.DataFrame(rows, columns=["attribute", "class", "rank", "label", "examples", "column", "reading", "before",
                                       "after", "change"])


def reading_notes(readings: pd.DataFrame) -> dict[str, str]:
    """Row notes for the summary figure and the gallery, by attribute: each column's reading before -> after."""
    notes: dict[str, list[str]] = {}
    for r in readings.itertuples():
        digits = 2 if r.reading.startswith("p(") else 1  # probabilities, or the column's own units
        notes.setdefault(r.attribute, []).append(f"{r.reading} {r.before:.{digits}f}->{r.after:.{digits}f}")
    return {key: "; ".join(parts) for key, parts in notes.items()}
