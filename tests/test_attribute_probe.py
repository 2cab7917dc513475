"""Labelled attributes on real data: the CSV columns per image and the linear probes' scores."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from stylexlib.data import DataError, ImageDataset
from stylexlib.data.labels import attribute_table
from stylexlib.evaluate.attribute_probe import (attribute_scores, fit_probe, is_categorical,
                                               reading_change, reading_notes)


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
    probes = {column: fit_probe(features[train], table[column][train], column) for column in table.columns}
    heldout = table.iloc[test].reset_index(drop=True)
    scores = attribute_scores(probes, features[test], noise, heldout).set_index("column")
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


def test_a_reading_change_says_which_way_an_edit_moves_a_number_and_a_category() -> None:
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(600, 6, generator=gen)
    age = pd.Series((40 + 10 * features[:, 0]).numpy())
    group = pd.Series(np.where(features[:, 1].numpy() > 0, "b", "a"))
    age_probe, group_probe = fit_probe(features, age, "age"), fit_probe(features, group, "group")
    assert np.allclose(age_probe.reading(features[:5]).numpy(), age_probe.predict(features[:5]))
    assert list(np.asarray(group_probe.classes)[group_probe.reading(features[:5]).argmax(1).numpy()]) == \
        list(group_probe.predict(features[:5]))
    before = features[:50]
    after = before + torch.tensor([0.5, -2.0, 0, 0, 0, 0])  # older by about 5 years, from group b towards a
    aged = reading_change(age_probe, before, after)
    assert aged["reading"] == "age" and aged["change"] == pytest.approx(5.0, abs=0.3)
    assert aged["after"] - aged["before"] == pytest.approx(aged["change"])
    moved = reading_change(group_probe, before, after)
    assert moved["reading"] == "p(group=a)" and moved["change"] > 0.3
    readings = pd.DataFrame([{"attribute": "c0_r01", **aged}, {"attribute": "c0_r01", **moved}])
    assert reading_notes(readings)["c0_r01"] == (f"age {aged['before']:.1f}->{aged['after']:.1f}; "
                                                 f"p(group=a) {moved['before']:.2f}->{moved['after']:.2f}")


def test_attribute_readings_read_the_shown_pairs_through_lpips_features() -> None:
    from stylexlib.evaluate.attribute_probe import attribute_readings
    from stylexlib.evaluate.quality import lpips_features
    from stylexlib.explain.attfind.examples import AttributeExamples
    from stylexlib.gan.losses import load_lpips

    lpips_model = load_lpips("squeeze")
    gen = torch.Generator().manual_seed(0)
    level = torch.rand(300, generator=gen) * 1.6 - 0.8  # brightness of flat grey images with a little texture
    images = (level[:, None, None, None] + 0.05 * torch.randn(300, 3, 16, 16, generator=gen)).clamp(-1, 1)
    probe = fit_probe(lpips_features(lpips_model, images), pd.Series(level.numpy()), "brightness")
    dark = images[level < -0.2][:4]
    probs = torch.full((4, 2), 0.5)
    example = AttributeExamples(0, "a", 1, 7, "b4.conv0[7] up", 1.0, 1.0, [0, 1, 2, 3], dark, (dark + 0.8).clamp(-1, 1),
                                probs, probs, ["a", "b"])
    readings = attribute_readings({"brightness": probe}, lpips_model, [example])
    assert list(readings["attribute"]) == [example.key] and readings["examples"].item() == 4
    assert readings["before"].item() < -0.2 and readings["change"].item() > 0.4  # brighter, as edited
