"""A labelled-attribute oracle: what do an image's binary labels (CelebA's 40) read, and how far can that be trusted?

For each binary column of a folder dataset's labels CSV (``evaluate.attribute_columns``; ``all`` takes every column
but the file, split, group and class-label ones) a logistic probe on LPIPS-backbone features
(:func:`stylexlib.evaluate.attribute_probe.fit_probe`) is fitted on real training images and scored by its ROC AUC on
held-out real test images. Only columns with AUC >= ``MIN_AUC`` are *trusted*: they read reconstructions
(:func:`label_auc_ratio`) and edits (:mod:`stylexlib.evaluate.label_readings`). As ACE's and DiME's MNAC oracle, but
linear on features the project already has, fitted on the run's own images (no download).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from torch import Tensor

from stylexlib.core.config import DataConfig
from stylexlib.core.io import torch_load, torch_save, write_table
from stylexlib.core.provenance import accepts, data_fingerprint
from stylexlib.data import DataError, ImageDataset, to_float
from stylexlib.evaluate.attribute_probe import RIDGE_GRID, LinearProbe, attribute_table
from stylexlib.evaluate.quality import lpips_features

MIN_AUC = 0.75  # a column the oracle reads no better than this on real held-out images is not used
MIN_POSITIVES = 10  # a column needs this many images of each value among the training images to be fitted


def roc_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """The area under the ROC curve of ``scores`` for binary ``truth`` (ties count half); NaN without both values."""
    truth = np.asarray(truth).astype(bool)
    positives, negatives = int(truth.sum()), int((~truth).sum())
    if not positives or not negatives:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=float))
    return float((ranks[truth].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def csv_columns(data: ImageDataset) -> list[str]:
    """The columns of a folder dataset's labels CSV (none without one)."""
    csv = data.info.get("labels_csv")
    return list(pd.read_csv(csv, nrows=0).columns) if csv else []


def class_columns(cfg: DataConfig, columns: list[str]) -> list[str]:
    """The CSV columns that define the class: ``data.label_column`` and every column a ``data.label_queries`` query
    names."""
    named = {cfg.label_column} | {word for query in cfg.label_queries.values()
                                  for word in re.findall(r"[A-Za-z_]\w*", query)}
    return [c for c in columns if c in named]


def resolve_attribute_columns(requested: list[str] | str, cfg: DataConfig, data: ImageDataset) -> list[str]:
    """``evaluate.attribute_columns`` as a list: ``all`` is every CSV column but the file, split, group and
    class-label columns."""
    if requested != "all":
        return list(requested)
    columns = csv_columns(data)
    if not columns:
        raise DataError("evaluate.attribute_columns: all needs folder data with a labels CSV (data.labels_csv)")
    skip = {cfg.file_column, cfg.split_column, cfg.group_column, *class_columns(cfg, columns)}
    return [c for c in columns if c not in skip]


def binary_values(values: pd.Series) -> list | None:
    """A column's two values, the positive one last (numbers sorted, text sorted), or None when it has not two."""
    distinct = values.dropna().unique()
    return sorted(distinct.tolist()) if len(distinct) == 2 else None


@dataclass
class LabelOracle:
    """Logistic probes for binary label columns, with each one's held-out AUC on real images."""

    probes: dict[str, LinearProbe]
    auc: dict[str, float]  # ROC AUC on held-out real test images
    positive_rate: dict[str, float]  # share of the positive value on the training images
    class_columns: list[str] = field(default_factory=list)  # read, but never an attribute's main label
    min_auc: float = MIN_AUC

    @property
    def trusted(self) -> list[str]:
        """The columns whose held-out AUC reaches ``min_auc``, in CSV order."""
        return [c for c in self.probes if self.auc[c] >= self.min_auc]

    def probabilities(self, features: Tensor, columns: list[str] | None = None) -> Tensor:
        """(N, len(columns)) probability of each column's positive value (default: the trusted columns)."""
        columns = self.trusted if columns is None else columns
        return torch.stack([self.probes[c].reading(features)[:, 1].float() for c in columns], 1) if columns else (
            torch.zeros(len(features), 0))

    def read(self, lpips_model: torch.nn.Module, images: Tensor) -> Tensor:
        """:meth:`probabilities` of the trusted columns for images in [-1, 1]."""
        return self.probabilities(lpips_features(lpips_model, images))

    def table(self) -> pd.DataFrame:
        """Per column: held-out AUC, positive rate, trusted, and whether it defines the class."""
        return pd.DataFrame([{"column": c, "auc": self.auc[c], "positive_rate": self.positive_rate[c],
                              "trusted": self.auc[c] >= self.min_auc, "class_column": c in self.class_columns}
                             for c in self.probes], columns=["column", "auc", "positive_rate", "trusted", "class_column"])

    def to_dict(self) -> dict:
        """Plain tensors, numbers and strings (for ``torch_save`` / ``weights_only`` loading)."""
        return {"probes": {c: vars(p) for c, p in self.probes.items()}, "auc": self.auc,
                "positive_rate": self.positive_rate, "class_columns": self.class_columns, "min_auc": self.min_auc}

    @classmethod
    def from_dict(cls, d: dict) -> "LabelOracle":
        return cls({c: LinearProbe(**p) for c, p in d["probes"].items()}, d["auc"], d["positive_rate"],
                   d["class_columns"], d["min_auc"])


def fit_logistic_columns(features: Tensor, targets: Tensor, ridge: Tensor, steps: int = 200) -> Tensor:
    """(F + 1, K) weights (bias row last) of K independent L2-regularised logistic regressions on standardised
    ``features`` (N, F), solved together by L-BFGS; ``targets`` (N, K) is 0/1 with NaN where unknown, ``ridge`` (K,)
    each column's penalty times its number of known rows."""
    design = torch.cat([features, torch.ones(len(features), 1, dtype=features.dtype)], dim=1)
    known = ~targets.isnan()
    target = targets.nan_to_num(0.0)
    weight = torch.zeros(design.shape[1], targets.shape[1], dtype=features.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        logits = design @ weight
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
        loss = ((loss * known).sum(0) / known.sum(0).clamp_min(1)).sum()
        loss = loss + 0.5 * (ridge * weight[:-1].square().sum(0)).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach()


def _probe(column: str, mean: Tensor, scale: Tensor, weight: Tensor) -> LinearProbe:
    """A column's logistic weights as a two-class :class:`LinearProbe` (softmax of [0, logit] is the sigmoid)."""
    return LinearProbe(column, True, mean, scale, torch.stack([torch.zeros_like(weight), weight], 1), ["0", "1"])


@torch.no_grad()
def fit_label_oracle(data: ImageDataset, lpips_model: torch.nn.Module, columns: list[str], class_cols: list[str],
                     train_images: int = 4000, test_images: int = 1000, seed: int = 0,
                     min_auc: float = MIN_AUC) -> LabelOracle:
    """A logistic probe per binary column (and per class column, read but never named), fitted on up to
    ``train_images`` real training images (each column's penalty from ``RIDGE_GRID`` by AUC on a seeded fifth of
    them), its AUC on up to ``test_images`` real test images (val when there is no test split). Columns without two
    values, or with fewer than ``MIN_POSITIVES`` of either on the training images, are left out."""
    wanted = list(dict.fromkeys([*columns, *class_cols]))
    table = attribute_table(data, wanted)
    rng = np.random.default_rng(seed)
    train = np.sort(rng.permutation(data.indices("train"))[:train_images])
    held_split = "test" if len(data.indices("test")) else "val"
    held = np.sort(rng.permutation(data.indices(held_split))[:test_images])
    positives = {}
    for column in wanted:
        values = binary_values(table[column])
        if values is not None:
            positive = (table[column] == values[1]).astype(float).where(table[column].notna()).to_numpy()
            counts = np.nansum(positive[train]), np.sum(positive[train] == 0)
            if min(counts) >= MIN_POSITIVES:
                positives[column] = positive
    if not positives:
        raise DataError(f"evaluate.attribute_columns {columns}: no binary column with at least {MIN_POSITIVES} "
                        "training images of each value")
    kept = list(positives)
    targets = torch.tensor(np.stack([positives[c] for c in kept], 1), dtype=torch.float64)
    x = lpips_features(lpips_model, to_float(data.images[torch.as_tensor(train)])).double()
    mean, scale = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / scale
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    inner, fit = order[: len(x) // 5], order[len(x) // 5:]
    inner_auc = []
    for ridge in RIDGE_GRID:
        weight = fit_logistic_columns(x[fit], targets[train][fit], torch.full((len(kept),), ridge, dtype=x.dtype))
        logits = (torch.cat([x[inner], torch.ones(len(inner), 1, dtype=x.dtype)], 1) @ weight).numpy()
        truth = targets[train][inner].numpy()
        inner_auc.append([roc_auc(truth[~np.isnan(truth[:, k]), k] > 0.5, logits[~np.isnan(truth[:, k]), k])
                          for k in range(len(kept))])
    best = np.nan_to_num(np.asarray(inner_auc), nan=0.0).argmax(0)
    weight = fit_logistic_columns(x, targets[train], torch.tensor([RIDGE_GRID[b] for b in best], dtype=x.dtype))
    probes = {c: _probe(c, mean, scale, weight[:, k]) for k, c in enumerate(kept)}
    held_features = lpips_features(lpips_model, to_float(data.images[torch.as_tensor(held)]))
    auc = {}
    for c, probe in probes.items():
        truth = positives[c][held]
        known = ~np.isnan(truth)
        auc[c] = roc_auc(truth[known] > 0.5, probe.reading(held_features[torch.as_tensor(known)])[:, 1].numpy())
    rate = {c: float(np.nanmean(positives[c][train])) for c in kept}
    return LabelOracle(probes, auc, rate, [c for c in class_cols if c in probes], min_auc)


@torch.no_grad()
def label_auc_ratio(oracle: LabelOracle, lpips_model: torch.nn.Module, originals: Tensor, reconstructions: Tensor,
                    truth: pd.DataFrame) -> tuple[float, pd.DataFrame]:
    """Do reconstructions keep what the labels say? Per trusted column with both values among the images, the
    oracle's AUC on the originals and on their reconstructions (both in [-1, 1]); returns the ratio of their means
    (``recon_label_auc_ratio``) and the per-column table."""
    before, after = (oracle.read(lpips_model, images).numpy() for images in (originals, reconstructions))
    rows = []
    for j, column in enumerate(oracle.trusted):
        values = binary_values(truth[column]) if column in truth else None
        if values is None:
            continue
        positive = (truth[column] == values[1]).to_numpy()
        rows.append({"column": column, "positives": int(positive.sum()), "original": roc_auc(positive, before[:, j]),
                     "reconstruction": roc_auc(positive, after[:, j])})
    scores = pd.DataFrame(rows, columns=["column", "positives", "original", "reconstruction"]).dropna()
    ratio = float(scores["reconstruction"].mean() / scores["original"].mean()) if len(scores) else float("nan")
    return ratio, scores


ORACLE_FILE = ("evaluate", "label_oracle.pt")


def run_label_oracle(run, data: ImageDataset, lpips_model: torch.nn.Module) -> LabelOracle | None:
    """The run's oracle for ``evaluate.attribute_columns`` (None when they name no binary column): fitted once and
    kept in ``evaluate/label_oracle.pt`` (refitted when the data or the columns change), its per-column table in
    ``evaluate/label_oracle.csv`` and metrics ``oracle_*``."""
    columns = resolve_attribute_columns(run.cfg.evaluate.attribute_columns, run.cfg.data, data)
    if not columns:
        return None
    class_cols = class_columns(run.cfg.data, csv_columns(data))
    key = {"data": data_fingerprint(run.cfg), "columns": columns, "class_columns": class_cols, "min_auc": MIN_AUC,
           "version": 1}
    path = run.path(*ORACLE_FILE)
    saved = torch_load(path) if path.exists() else None
    if saved is not None and accepts(saved.get("key"), key):
        oracle = LabelOracle.from_dict(saved["oracle"])
    else:
        table = attribute_table(data, columns)
        binary = [c for c in columns if binary_values(table[c]) is not None]
        if not binary:
            return None
        oracle = fit_label_oracle(data, lpips_model, binary, class_cols, seed=run.cfg.data.seed)
        torch_save(path, {"key": key, "oracle": oracle.to_dict()})
    write_table(path.with_suffix(".csv"), oracle.table())
    named = [c for c in oracle.trusted if c not in oracle.class_columns]
    run.log_metrics(oracle_columns=len(oracle.probes), oracle_columns_trusted=len(named),
                    oracle_mean_auc=float(np.mean(list(oracle.auc.values()))))
    return oracle
