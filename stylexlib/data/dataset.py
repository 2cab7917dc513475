"""The in-memory image dataset every stage consumes."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch


class DataError(ValueError):
    """Bad dataset input; the message names the file or field and how to fix it."""


SPLITS = ("train", "val", "test")


@dataclass
class ImageDataset:
    """Images (uint8, N x 3 x H x W), integer labels, class names, a split per image, optional factors."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    split: np.ndarray  # array of "train" / "val" / "test", one per image
    factors: pd.DataFrame | None = None  # ground-truth factors (synthetic data), one row per image
    files: list[str] | None = None  # source file per image (folder data)
    info: dict = field(default_factory=dict)  # provenance: skipped files, rule, cache path, ...

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise DataError(f"ImageDataset.images must be uint8 RGB images shaped (N, 3, H, W), got "
                            f"{self.images.dtype} {tuple(self.images.shape)}; convert with stylexlib.data.to_uint8")
        sizes = {"labels": len(self.labels), "split": len(self.split)}
        if self.factors is not None:
            sizes["factors"] = len(self.factors)
        wrong = {name: size for name, size in sizes.items() if size != n}
        if wrong:
            raise DataError(f"ImageDataset has {n} images but {wrong}: give one entry per image")
        unknown = sorted(set(np.asarray(self.split).tolist()) - {"train", "val", "test"})
        if unknown:
            raise DataError(f"ImageDataset.split holds {unknown}; use 'train', 'val' and 'test'")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])

    def indices(self, split: str) -> np.ndarray:
        """Positions of the images in one split."""
        if split not in SPLITS:
            raise DataError(f"unknown split '{split}'; use one of {SPLITS}")
        return np.flatnonzero(self.split == split)

    def heldout(self, count: int, split: str = "val") -> tuple[torch.Tensor, np.ndarray]:
        """The first ``count`` images of a split (falling back to train when it is empty) and their positions."""
        rows = self.indices(split)
        rows = (rows if len(rows) else self.indices("train"))[:count]
        return self.images[torch.as_tensor(rows)], rows

    def tensors(self, split: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(float images in [-1, 1], labels) for one split, or all images."""
        idx = slice(None) if split is None else torch.as_tensor(self.indices(split))
        return to_float(self.images[idx]), self.labels[idx]

    def class_counts(self, split: str | None = None) -> dict[str, int]:
        """Number of images per class name."""
        labels = self.labels if split is None else self.labels[torch.as_tensor(self.indices(split))]
        counts = torch.bincount(labels, minlength=self.num_classes).tolist()
        return dict(zip(self.class_names, counts))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255]."""
    return images.detach().add(1.0).mul(127.5).round_().clamp_(0, 255).to(torch.uint8)


def random_split(n: int, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Seeded assignment of n items to train/val/test."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(
            f"data.val_fraction ({val_fraction}) + data.test_fraction ({test_fraction}) must be in [0, 1)"
        )
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = int(round(n * val_fraction)), int(round(n * test_fraction))
    split = np.full(n, "train", dtype=object)
    split[order[:n_val]] = "val"
    split[order[n_val : n_val + n_test]] = "test"
    return split.astype(str)


def group_split(groups: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Seeded assignment of items to train/val/test that keeps each group (e.g. a patient) in one split: groups in a
    random order fill val, then test, up to their fractions of the items."""
    random_split(0, val_fraction, test_fraction, seed)  # the fractions' check
    names, inverse, counts = np.unique(np.asarray(groups).astype(str), return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(names))
    before = np.cumsum(counts[order]) - counts[order]  # items in the groups drawn earlier
    n_val, n_test = round(len(groups) * val_fraction), round(len(groups) * test_fraction)
    of_group = np.full(len(names), "train", dtype=object)
    of_group[order[before < n_val]] = "val"
    of_group[order[(before >= n_val) & (before < n_val + n_test)]] = "test"
    return of_group[inverse].astype(str)


def summary_table(data: ImageDataset) -> pd.DataFrame:
    """Images per class and split, with totals."""
    table = pd.DataFrame({split: data.class_counts(split) for split in SPLITS})
    table["all"] = table.sum(axis=1)
    table.loc["all"] = table.sum(axis=0)
    return table
