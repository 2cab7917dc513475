"""What every labelled-attribute oracle shares (the LPIPS-feature probes of :mod:`.label_oracle`, the CNN of
:mod:`.cnn_oracle`): the binary targets of label columns, the rows they are fitted and scored on, ROC AUC and the
trust line."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from torch import Tensor

from stylexlib.data import DataError, ImageDataset
from stylexlib.data.labels import attribute_table, binary_values

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


class OracleColumns:
    """What every oracle kind shares: per column a held-out ``auc`` and a training ``positive_rate`` (dicts in CSV
    order), the ``class_columns`` and the trust line ``min_auc``."""

    auc: dict[str, float]
    positive_rate: dict[str, float]
    class_columns: list[str]
    min_auc: float

    @property
    def trusted(self) -> list[str]:
        """The columns whose held-out AUC reaches ``min_auc``, in CSV order."""
        return [c for c in self.auc if self.auc[c] >= self.min_auc]

    def read(self, lpips_model: torch.nn.Module, images: Tensor) -> Tensor:
        """(N, len(trusted)) probability of each trusted column's positive value for images in [-1, 1] (CPU)."""
        raise NotImplementedError

    def table(self) -> pd.DataFrame:
        """Per column: held-out AUC, positive rate, trusted, and whether it defines the class."""
        return pd.DataFrame([{"column": c, "auc": self.auc[c], "positive_rate": self.positive_rate[c],
                              "trusted": self.auc[c] >= self.min_auc, "class_column": c in self.class_columns}
                             for c in self.auc], columns=["column", "auc", "positive_rate", "trusted", "class_column"])


def oracle_rows(data: ImageDataset, seed: int, train_images: int | None,
                test_images: int) -> tuple[np.ndarray, np.ndarray]:
    """The (sorted) training rows an oracle is fitted on, up to ``train_images`` (None: all), and the held-out rows
    it is scored on, up to ``test_images`` of the test split (val when there is no test split); seeded."""
    rng = np.random.default_rng(seed)
    train = np.sort(rng.permutation(data.indices("train"))[:train_images])
    held_split = "test" if len(data.indices("test")) else "val"
    return train, np.sort(rng.permutation(data.indices(held_split))[:test_images])


def binary_targets(data: ImageDataset, columns: list[str], train: np.ndarray) -> dict[str, np.ndarray]:
    """Per column with two values and at least ``MIN_POSITIVES`` training rows of each: 1.0 for the positive value,
    0.0 for the other, NaN where unknown (every image's row); DataError when no column qualifies."""
    table = attribute_table(data, columns)
    positives = {}
    for column in columns:
        values = binary_values(table[column])
        if values is not None:
            positive = (table[column] == values[1]).astype(float).where(table[column].notna()).to_numpy()
            if min(np.nansum(positive[train]), np.sum(positive[train] == 0)) >= MIN_POSITIVES:
                positives[column] = positive
    if not positives:
        raise DataError(f"evaluate.attribute_columns {columns}: no binary column with at least {MIN_POSITIVES} "
                        "training images of each value")
    return positives
