"""A folder dataset's extra labels-CSV columns, row by row in the dataset's order, and weights that balance them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from stylexlib.data.dataset import DataError, ImageDataset


def attribute_table(data: ImageDataset, columns: list[str], key: str = "evaluate.attribute_columns") -> pd.DataFrame:
    """The labels CSV's ``columns`` for every image of a folder dataset, in the dataset's order (errors name the
    config ``key`` that asked for them)."""
    csv, file_column = data.info.get("labels_csv"), data.info.get("file_column", "file")
    if not columns:
        return pd.DataFrame(index=range(len(data)))
    if not csv or data.files is None:
        raise DataError(f"{key} {columns} needs folder data with a labels CSV (data.labels_csv)")
    table = pd.read_csv(csv)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"{key}: {missing} not in {csv}; its columns: {', '.join(table.columns)}")
    if file_column not in table.columns:
        raise DataError(f"{csv} has no '{file_column}' column to match images by (data.file_column)")
    by_file = table.drop_duplicates(file_column).set_index(table.drop_duplicates(file_column)[file_column].astype(str))
    return by_file.reindex([Path(f).as_posix() for f in data.files])[columns].reset_index(drop=True)


def binary_values(values: pd.Series) -> list | None:
    """A column's two values, the positive one last (numbers sorted, text sorted), or None when it has not two."""
    distinct = values.dropna().unique()
    return sorted(distinct.tolist()) if len(distinct) == 2 else None


def has_label(values: pd.Series) -> np.ndarray | None:
    """Where a binary column holds its positive value (:func:`binary_values`; False where missing), or None when the
    column has not two values."""
    positive = binary_values(values)
    return (values == positive[1]).to_numpy() if positive is not None else None


def balancing_weights(data: ImageDataset, columns: list[str], positions: Tensor) -> Tensor:
    """A weight per position (summing to 1) under which each column's two values are equally likely: the mean over
    the columns of 1 / (2 x the count of the image's value among ``positions``). An image with a column's value missing
    gets that column's mean weight. Raises DataError for a column without exactly two values there."""
    table = attribute_table(data, columns, "stylex.schedule.label_balance").iloc[positions.numpy()]
    for column in columns:
        values = table[column]
        if binary_values(values) is None:
            raise DataError(f"stylex.schedule.label_balance: column '{column}' needs exactly two values among the "
                            f"training images, found {sorted(map(str, values.dropna().unique()))[:5]}; name binary "
                            f"columns of {data.info.get('labels_csv')}")
    return table_balancing_weights(table)


def table_balancing_weights(table: pd.DataFrame) -> Tensor:
    """:func:`balancing_weights` of the rows of a labels table whose every column has two values."""
    weights = np.zeros(len(table))
    for column in table.columns:
        values = table[column].reset_index(drop=True)
        per_value = 1.0 / (2 * values.map(values.value_counts()).to_numpy(dtype=float))
        weights += np.where(values.isna(), np.nanmean(per_value), per_value)
    return torch.as_tensor(weights / weights.sum(), dtype=torch.float64)
