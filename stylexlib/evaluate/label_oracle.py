"""A labelled-attribute oracle: what do an image's binary labels (CelebA's 40) read, and how far can that be trusted?

For each binary column of a folder dataset's labels CSV (``evaluate.attribute_columns``; ``all`` takes every column
but the file, split, group and class-label ones) a logistic probe on LPIPS-backbone features
(:func:`stylexlib.evaluate.attribute_probe.fit_probe`) is fitted on real training images and scored by its ROC AUC on
held-out real test images. Only columns with AUC >= ``MIN_AUC`` are *trusted*: they read reconstructions
(:func:`label_auc_ratio`) and edits (:mod:`stylexlib.evaluate.label_readings`). As ACE's and DiME's MNAC oracle, but
linear on features the project already has, fitted on the run's own images (no download). ``evaluate.oracle: cnn``
reads them with a multi-label CNN trained on the real training images instead (:mod:`.cnn_oracle`).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from stylexlib.core.config import DataConfig
from stylexlib.core.io import torch_load, torch_save, write_table
from stylexlib.core.provenance import DATA_MARK, accepts, data_fingerprint, fingerprint
from stylexlib.data import DataError, ImageDataset, to_float
from stylexlib.data.cache import cache_root
from stylexlib.data.labels import attribute_table, binary_values
from stylexlib.evaluate.attribute_probe import RIDGE_GRID, LinearProbe
from stylexlib.evaluate.cnn_oracle import CNN_ORACLE_FILE, CNN_SETTINGS, CNNLabelOracle, fit_cnn_oracle
from stylexlib.evaluate.label_columns import MIN_AUC, OracleColumns, binary_targets, oracle_rows, roc_auc
from stylexlib.evaluate.quality import lpips_features

log = logging.getLogger(__name__)


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


@dataclass
class LabelOracle(OracleColumns):
    """Logistic probes for binary label columns, with each one's held-out AUC on real images."""

    probes: dict[str, LinearProbe]
    auc: dict[str, float]  # ROC AUC on held-out real test images
    positive_rate: dict[str, float]  # share of the positive value on the training images
    class_columns: list[str] = field(default_factory=list)  # read, but never an attribute's main label
    min_auc: float = MIN_AUC

    def probabilities(self, features: Tensor, columns: list[str] | None = None) -> Tensor:
        """(N, len(columns)) probability of each column's positive value (default: the trusted columns)."""
        columns = self.trusted if columns is None else columns
        return torch.stack([self.probes[c].reading(features)[:, 1].float() for c in columns], 1) if columns else (
            torch.zeros(len(features), 0))

    def read(self, lpips_model: torch.nn.Module, images: Tensor) -> Tensor:
        """:meth:`probabilities` of the trusted columns for images in [-1, 1]."""
        return self.probabilities(lpips_features(lpips_model, images))

    def to_dict(self) -> dict:
        """Plain tensors, numbers and strings (for ``torch_save`` / ``weights_only`` loading)."""
        return {"kind": "probes", "probes": {c: vars(p) for c, p in self.probes.items()}, "auc": self.auc,
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
    train, held = oracle_rows(data, seed, train_images, test_images)
    positives = binary_targets(data, list(dict.fromkeys([*columns, *class_cols])), train)
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
def label_auc_ratio(oracle: OracleColumns, lpips_model: torch.nn.Module, originals: Tensor, reconstructions: Tensor,
                    truth: pd.DataFrame) -> tuple[float, pd.DataFrame]:
    """Do reconstructions keep what the labels say? Per trusted column with both values among the images, the
    oracle's AUC on the originals and on their reconstructions (both in [-1, 1]), and its mean probability of the
    label on the images that have it (``mean_original``, ``mean_reconstruction``: an AUC can hold while a label fades
    from every reconstruction); returns the ratio of the mean AUCs (``recon_label_auc_ratio``) and the table."""
    before, after = (oracle.read(lpips_model, images).numpy() for images in (originals, reconstructions))
    rows = []
    for j, column in enumerate(oracle.trusted):
        values = binary_values(truth[column]) if column in truth else None
        if values is None:
            continue
        positive = (truth[column] == values[1]).to_numpy()
        rows.append({"column": column, "positives": int(positive.sum()), "original": roc_auc(positive, before[:, j]),
                     "reconstruction": roc_auc(positive, after[:, j]), "mean_original": float(before[positive, j].mean()),
                     "mean_reconstruction": float(after[positive, j].mean())})
    scores = pd.DataFrame(rows, columns=["column", "positives", "original", "reconstruction", "mean_original",
                                         "mean_reconstruction"]).dropna()
    ratio = float(scores["reconstruction"].mean() / scores["original"].mean()) if len(scores) else float("nan")
    return ratio, scores


ORACLE_FILE = ("evaluate", "label_oracle.pt")  # the probes; the CNN oracle: cnn_oracle.CNN_ORACLE_FILE
SHARED_ORACLES = "label-oracles"  # in the cache folder: CNN oracles shared by every run on the same data


def _device(model: torch.nn.Module | None) -> torch.device:
    return next(model.parameters()).device if model is not None else torch.device("cpu")


def shared_oracle_path(cfg, key: dict) -> Path | None:
    """Where the CNN oracle made under ``key`` is kept for every run on the same data (``$STYLEX_CACHE/label-oracles/``,
    named by the key's fingerprint); None when folder data cannot be identified (its folder is not here)."""
    if cfg.data.source == "folder" and DATA_MARK not in key["data"]:
        return None
    return cache_root() / SHARED_ORACLES / f"cnn-{fingerprint(key)}.pt"


def _read_shared(path: Path, key: dict) -> dict | None:
    """The shared oracle file at ``path`` when it was made under ``key``."""
    try:
        saved = torch_load(path) if path.exists() else None
    except Exception as exc:  # a damaged file: trained again
        log.warning("ignoring %s (%s)", path, exc)
        return None
    return saved if saved is not None and saved.get("key") == key else None


def run_label_oracle(run, data: ImageDataset, lpips_model: torch.nn.Module | None) -> OracleColumns | None:
    """The run's oracle (``evaluate.oracle``: LPIPS-feature probes or the multi-label CNN of :mod:`.cnn_oracle`) for
    ``evaluate.attribute_columns`` (None when they name no binary column): fitted once and kept in
    ``evaluate/label_oracle.pt`` (the CNN: ``label_oracle_cnn.pt``; refitted when the data, the columns or the
    settings change), its per-column table beside it (``.csv``) and metrics ``oracle_*``. The CNN is trained once per
    data set: it is kept in the cache folder too (:func:`shared_oracle_path`) and copied into every run on the same
    data, columns and settings. The CNN needs no ``lpips_model`` (it trains on its device when given)."""
    columns = resolve_attribute_columns(run.cfg.evaluate.attribute_columns, run.cfg.data, data)
    if not columns:
        return None
    class_cols = class_columns(run.cfg.data, csv_columns(data))
    key = {"data": data_fingerprint(run.cfg), "columns": columns, "class_columns": class_cols, "min_auc": MIN_AUC,
           "version": 1}
    cnn = run.cfg.evaluate.oracle == "cnn"
    if cnn:
        key |= {"oracle": "cnn", "settings": CNN_SETTINGS, "cnn_version": 1}
    path = run.path(*(CNN_ORACLE_FILE if cnn else ORACLE_FILE))
    saved = torch_load(path) if path.exists() else None
    kept = saved is not None and accepts(saved.get("key"), key)  # the run's own copy
    shared = shared_oracle_path(run.cfg, key) if cnn else None
    if not kept:
        saved = _read_shared(shared, key) if shared is not None else None
    if saved is not None:
        oracle = (CNNLabelOracle if cnn else LabelOracle).from_dict(saved["oracle"])
    else:
        table = attribute_table(data, columns)
        binary = [c for c in columns if binary_values(table[c]) is not None]
        if not binary:
            return None
        if cnn:
            oracle = fit_cnn_oracle(data, binary, class_cols, run.cfg.data.seed, device=_device(lpips_model),
                                    **CNN_SETTINGS)
        else:
            oracle = fit_label_oracle(data, lpips_model, binary, class_cols, seed=run.cfg.data.seed)
    if not kept:
        torch_save(path, {"key": key, "oracle": oracle.to_dict()})  # the run keeps its own copy
    if shared is not None and not shared.exists() and (saved is None or saved.get("key") == key):
        try:  # the data set's copy, for the next run on it (an oracle a run made before is shared too)
            torch_save(shared, {"key": key, "oracle": oracle.to_dict()})
        except OSError as exc:  # a read-only cache costs the next run a training, never correctness
            log.warning("cannot keep the label oracle in %s (%s)", shared, exc)
    write_table(path.with_suffix(".csv"), oracle.table())
    named = [c for c in oracle.trusted if c not in oracle.class_columns]
    run.log_metrics(oracle_columns=len(oracle.auc), oracle_columns_trusted=len(named),
                    oracle_mean_auc=float(np.mean(list(oracle.auc.values()))))
    return oracle
