"""The data-side audit: which labels move the classifier's decision within the true classes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from torch import nn

from stylexlib.data import ImageDataset
from stylexlib.evaluate.label_slices import (classifier_slices, explanation_shows, reconstructions_keep, slice_table,
                                             slice_verdict, welch)

NAMES = ["not smiling", "smiling"]


def _audit_data(count: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """A two-class task whose classifier reads the class, a facet of it (``cheeks``, tied to the class in the data)
    and a shortcut (``glasses``, independent of the class); ``coin`` it ignores; ``rare`` has too few images."""
    rng = np.random.default_rng(seed)
    classes = (rng.random(count) < 0.5).astype(int)
    cheeks = np.where(rng.random(count) < 0.8, classes, 1 - classes)
    glasses = (rng.random(count) < 0.15).astype(int)
    coin = (rng.random(count) < 0.5).astype(int)
    rare = np.zeros(count, int)
    rare[:5] = 1
    logit = 3.0 * (2 * classes - 1) + 1.0 * cheeks + 1.5 * glasses + rng.normal(0, 1, count)
    p = 1 / (1 + np.exp(-logit))
    labels = pd.DataFrame({"cheeks": cheeks, "glasses": glasses, "coin": coin, "rare": rare})
    labels.loc[rng.random(count) < 0.05, "coin"] = np.nan  # unknown labels are left out of both sides
    return np.stack([1 - p, p], axis=1), classes, labels


def test_welch_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.3, 1.0, 40), rng.normal(0.0, 2.0, 90)
    difference, error = welch(a, b)
    assert difference == pytest.approx(a.mean() - b.mean())
    assert difference / error == pytest.approx(stats.ttest_ind(a, b, equal_var=False).statistic)


def test_a_shortcut_is_a_candidate_a_facet_is_not_and_a_coin_is_silent() -> None:
    probabilities, classes, labels = _audit_data()
    table = slice_table(probabilities, classes, labels, NAMES).set_index("column")
    assert "rare" not in table.index  # 5 images: too few to compare
    glasses, cheeks, coin = table.loc["glasses"], table.loc["cheeks"], table.loc["coin"]
    assert glasses["candidate"] and glasses["toward"] == "smiling" and glasses["z"] > 5
    assert glasses["class_correlation"] < 0.1
    # within each class: the mean p(smiling) of glasses wearers minus that of the others, as the audit reports it
    for k, name in enumerate(NAMES):
        inside = classes == k
        expected = (probabilities[inside & (labels["glasses"] == 1).to_numpy(), 1].mean()
                    - probabilities[inside & (labels["glasses"] == 0).to_numpy(), 1].mean())
        assert glasses[f"within_{name}"] == pytest.approx(expected)
    assert glasses["push"] == pytest.approx((glasses["within_not smiling"] + glasses["within_smiling"]) / 2)
    assert cheeks["push"] > 0.05 and cheeks["class_correlation"] > 0.5 and not cheeks["candidate"]  # a facet
    assert abs(coin["push"]) < 0.05 and not coin["candidate"]
    assert coin["images_with"] == int((labels["coin"] == 1).sum())


def test_the_verdict_says_whether_the_explanation_shows_each_candidate() -> None:
    probabilities, classes, labels = _audit_data()
    table = slice_table(probabilities, classes, labels, NAMES)
    missed = pd.DataFrame({"column": ["glasses", "cheeks"], "toward_not smiling": [0.01, -0.3],
                           "toward_smiling": [0.03, 0.2]})
    read = explanation_shows(table, missed).set_index("column")
    assert read.loc["glasses", "shown"] == pytest.approx(0.03) and read.loc["cheeks", "shown"] == pytest.approx(0.3)
    assert np.isnan(read.loc["coin", "shown"])  # the oracle does not read it
    metrics, said = slice_verdict(explanation_shows(table, missed))
    assert metrics == {"label_slice_shortcut": "glasses", "label_slice_push": pytest.approx(read.loc["glasses", "push"]),
                       "label_slice_candidates": 1, "label_slice_missed": 1, "label_slice_shown": pytest.approx(0.03)}
    assert "glasses" in said and "MISSED" in said
    ranked = missed.assign(**{"rank_not smiling": [1, 1], "rank_smiling": [2, 3]})  # where the label_reliance has ranks
    read = explanation_shows(table, ranked).set_index("column")
    assert read.loc["glasses", "shown_by"] == "smiling #2" and read.loc["cheeks", "shown_by"] == "not smiling #1"
    assert "up to 0.03, smiling #2: MISSED" in slice_verdict(explanation_shows(table, ranked))[1]
    shown = missed.assign(**{"toward_not smiling": [-0.25, -0.3]})
    metrics, said = slice_verdict(explanation_shows(table, shown))
    assert metrics["label_slice_missed"] == 0 and "shown" in said and "MISSED" not in said
    assert "not read by the oracle" in slice_verdict(explanation_shows(table, missed[missed["column"] != "glasses"]))[1]
    assert "label_slice_missed" not in slice_verdict(table)[0]  # no oracle: nothing said of the explanation
    honest = slice_table(probabilities, classes, labels.drop(columns="glasses"), NAMES)
    assert slice_verdict(honest)[0] == {"label_slice_shortcut": "none", "label_slice_candidates": 0}


def test_the_verdict_says_when_the_reconstructions_lose_a_missed_candidate() -> None:
    probabilities, classes, labels = _audit_data()
    table = slice_table(probabilities, classes, labels, NAMES)
    missed = pd.DataFrame({"column": ["glasses", "cheeks"], "toward_not smiling": [0.01, -0.3],
                           "toward_smiling": [0.03, 0.2]})
    label_auc = pd.DataFrame({"column": ["glasses", "cheeks"], "mean_original": [0.44, 0.6],
                              "mean_reconstruction": [0.10, 0.55]})
    kept = reconstructions_keep(explanation_shows(table, missed), label_auc).set_index("column")["kept"]
    assert kept["glasses"] == pytest.approx(0.10 / 0.44) and np.isnan(kept["coin"])
    metrics, said = slice_verdict(reconstructions_keep(explanation_shows(table, missed), label_auc))
    assert metrics["label_slice_kept"] == pytest.approx(0.10 / 0.44)
    assert "keep 23% of it" in said and "the reconstructions lose glasses" in said
    assert "reconstruction_route.py --refine" in said and "label_balance: [glasses]" in said  # the levers, for it
    faithful = label_auc.assign(mean_reconstruction=[0.40, 0.55])  # kept, yet missed: the other hint
    said = slice_verdict(reconstructions_keep(explanation_shows(table, missed), faithful))[1]
    assert "keep 91% of it" in said and "lose" not in said and "the generator draws it" in said


def test_a_category_with_more_values_is_audited_value_by_value() -> None:
    probabilities, classes, labels = _audit_data()
    rng = np.random.default_rng(3)
    race = rng.integers(0, 3, len(classes))
    race[labels["glasses"].to_numpy() == 1] = 3  # the shortcut is one value of a category
    table = slice_table(probabilities, classes, pd.DataFrame({"race": race, "age": rng.integers(1, 90, len(race))}),
                        NAMES).set_index("column")
    assert list(table.index)[0] == "race=3" and table.loc["race=3", "candidate"]
    assert set(table.index) == {"race=0", "race=1", "race=2", "race=3"}  # a number with many values is left out


def test_classifier_slices_reads_the_test_split_in_the_datasets_class_order(tmp_path) -> None:
    """A classifier that says 'smiling' whenever the top rows are bright (the 'glasses' of these images)."""
    rng = np.random.default_rng(0)
    count = 400
    classes = (rng.random(count) < 0.5).astype(int)
    glasses = (rng.random(count) < 0.3).astype(int)
    images = rng.integers(0, 100, (count, 3, 8, 8)).astype(np.uint8)
    images[glasses == 1, :, :2] = 250
    files = [f"{i}.png" for i in range(count)]
    pd.DataFrame({"file": files, "glasses": glasses}).to_csv(tmp_path / "labels.csv", index=False)
    split = np.array(["train"] * 200 + ["test"] * 200)
    data = ImageDataset(torch.from_numpy(images), torch.from_numpy(classes), NAMES, split, files=files,
                        info={"labels_csv": str(tmp_path / "labels.csv")})

    class TopRows(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            bright = x[:, :, :2].mean(dim=(1, 2, 3))
            return torch.stack([-4 * bright, 4 * bright], dim=1)

    table = classifier_slices(TopRows(), data, ["glasses"]).set_index("column")
    test = split == "test"
    assert table.loc["glasses", "images_with"] == int(glasses[test].sum())
    assert table.loc["glasses", "toward"] == "smiling" and table.loc["glasses", "candidate"]


def test_with_three_classes_the_audit_names_the_class_a_label_pulls_toward() -> None:
    rng = np.random.default_rng(2)
    count = 3000
    classes = rng.integers(0, 3, count)
    hat = (rng.random(count) < 0.2).astype(int)
    logits = 3.0 * np.eye(3)[classes] + 2.0 * np.outer(hat, [0, 0, 1]) + rng.normal(0, 1, (count, 3))
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    table = slice_table(probabilities, classes, pd.DataFrame({"hat": hat}), ["a", "b", "c"]).set_index("column")
    assert table.loc["hat", "toward"] == "c" and table.loc["hat", "candidate"]
    assert {"within_a", "within_b", "within_c"} <= set(table.columns)
