"""Labelled attributes on real data: the CSV columns per image and the linear probes' scores."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from stylexlib.data import DataError, ImageDataset
from stylexlib.evaluate.attribute_probe import attribute_scores, attribute_table, fit_probe, is_categorical


def test_columns_are_read_in_the_datasets_order(tmp_path) -> None:
    csv = tmp_path / "labels.csv"
    pd.DataFrame({"file": ["a/1.png", "b/2.png", "a/3.png"], "age": [30, 51, 18], "race": [0, 2, 1]}).to_csv(csv)
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    data = ImageDataset(images, torch.tensor([0, 1]), ["a", "b"], np.array(["train", "val"]),
                        files=["a/3.png", "a/1.png"], info={"labels_csv": str(csv)})
    assert attribute_table(data, ["age", "race"]).to_dict("list") == {"age": [18, 30], "race": [1, 0]}
    with pytest.raises(DataError, match="'height'"):
        attribute_table(data, ["height"])
    no_csv = ImageDataset(images, torch.tensor([0, 1]), ["a", "b"], np.array(["train", "val"]))
    with pytest.raises(DataError, match="labels CSV"):
        attribute_table(no_csv, ["age"])


def test_kinds_of_column() -> None:
    assert is_categorical(pd.Series([0, 1, 2, 4, 1])) and is_categorical(pd.Series(["x", "y"]))
    assert not is_categorical(pd.Series(np.arange(40))) and not is_categorical(pd.Series([0.5, 1.5, 2.0]))


def test_probes_read_a_linear_number_and_a_category_and_lose_them_on_noise() -> None:
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(600, 12, generator=gen)
    age = pd.Series((20 + 10 * features[:, 0] - 5 * features[:, 3]).numpy())
    group = pd.Series(np.where(features[:, 1].numpy() > 0.3, "b", np.where(features[:, 2].numpy() > 0, "a", "c")))
    train, test = slice(0, 400), slice(400, 600)
    table = pd.DataFrame({"age": age, "group": group})
    noise = torch.randn(200, 12, generator=gen)
    scores = attribute_scores(features[train], table.iloc[train].reset_index(drop=True), features[test], noise,
                              table.iloc[test].reset_index(drop=True)).set_index("column")
    assert scores.loc["age", "kind"] == "r2" and scores.loc["group", "kind"] == "accuracy"
    assert scores.loc["age", "original"] > 0.98 and scores.loc["group", "original"] > 0.85
    assert scores.loc["age", "reconstruction"] < 0.2 and scores.loc["group", "reconstruction"] < 0.7
    reference = np.polyfit(features[train, 0].numpy(), age[train].to_numpy(), 1)  # one feature: ordinary least squares
    single = fit_probe(features[train, :1], age[train], "age")  # a tiny penalty wins on clean data
    assert np.allclose(single.predict(features[test, :1]), np.polyval(reference, features[test, 0].numpy()), atol=0.5)


def test_the_penalty_is_chosen_so_that_wide_features_do_not_overfit() -> None:
    from stylexlib.evaluate.attribute_probe import RIDGE_GRID, _solve

    gen = torch.Generator().manual_seed(2)
    features = torch.randn(400, 240, generator=gen)  # about as many features as training rows, as on UTKFace
    age = pd.Series((3 * features[:, :5].sum(1) + 4 * torch.randn(400, generator=gen)).numpy())
    train, test = slice(0, 250), slice(250, 400)
    chosen = fit_probe(features[train], age[train], "age").score(features[test], age[test].reset_index(drop=True))
    weakest = _solve(features[train].double(), age[train], "age", False, min(RIDGE_GRID), 10)
    assert chosen > 0.15 and weakest.score(features[test], age[test].reset_index(drop=True)) < -1  # unpenalised: noise
