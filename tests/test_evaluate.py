"""The synthetic answer key (factor regions, classifier sensitivity) and the scores of explanations against it."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from stylexlib.core.config import DataConfig
from stylexlib.data import to_float
from stylexlib.data.synthetic import intervene, make_synthetic_dataset, render, sample_factors
from stylexlib.evaluate import (bootstrap_interval, deletion_insertion_auc, factor_identification, factor_masks,
                                factor_sensitivity, map_factor_scores, pointing_game, relevance_mass)
from stylexlib.evaluate.ground_truth import (factor_visibility, mirrored, truth_yardstick, yardstick_caption,
                                             yardstick_metrics)
from stylexlib.evaluate.quality import INVISIBLE_LPIPS
from stylexlib.gan.losses import load_lpips, lpips_distance, visible_change


class CornerRed(torch.nn.Module):
    """A classifier that only reads the red of the top-left 3x3 pixels (background there)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(8.0))

    def forward(self, images):
        red = images[:, 0, :3, :3].mean(dim=(1, 2))
        return torch.stack([-red, red], 1) * self.scale


@pytest.fixture(scope="module")
def factors() -> pd.DataFrame:
    frame = sample_factors(6, 0)
    frame["hat"], frame["glasses"] = [0, 1, 0, 1, 0, 1], [1, 0, 1, 0, 1, 0]
    return frame


def test_factor_regions_lie_where_the_renderer_draws_them(factors) -> None:
    masks = factor_masks(factors, 32)
    assert masks["background_hue"][:, 0, 0].all() and not masks["glasses"][:, 0, 0].any()
    rows = lambda m: m.float().mean(dim=(0, 2))  # noqa: E731  share of each row inside the region
    glasses, hat, mouth = rows(masks["glasses"]), rows(masks["hat"]), rows(masks["mouth_curve"])
    assert hat.argmax() < glasses.argmax() < mouth.argmax()  # top to bottom: hat, eyes, mouth
    assert all(masks[name].any(dim=(1, 2)).all() for name in masks)  # every factor can change every image
    assert not masks["glasses"][:, 28:].any() and not masks["hat"][:, 24:].any()


def test_sensitivity_finds_the_one_factor_a_classifier_reads(factors) -> None:
    table = factor_sensitivity(CornerRed(), factors, 32, torch.ones(6, dtype=torch.long))
    assert (table.idxmax(axis=1) == "background_hue").all()
    assert (table.drop(columns="background_hue").to_numpy() < 1e-6).all()


def test_the_truths_visibility_yardstick_mirrors_one_factor_at_a_time(factors) -> None:
    assert mirrored("mouth_curve", np.array([0.6, -0.2])).tolist() == [-0.6, 0.2]  # a smile becomes the frown
    assert mirrored("glasses", np.array([1, 0])).tolist() == [0, 1]
    lpips_model = load_lpips("squeeze")
    table = factor_visibility(CornerRed(), factors, 32, lpips_model, ["background_hue", "glasses", "hat"])
    table = table.set_index("factor")
    changed = factors.assign(hat=1 - factors["hat"])
    expected = visible_change(lpips_model, to_float(render(factors, 32)), to_float(render(changed, 32))).mean()
    assert table.loc["hat", "mean_lpips"] == pytest.approx(float(expected), rel=1e-5)
    assert table.loc["hat", "mean_lpips"] > table.loc["glasses", "mean_lpips"] > 0  # the hat is the larger change
    assert table.loc["glasses", "mean_prob_change"] < 1e-6 < table.loc["background_hue", "mean_prob_change"]
    assert table.loc["background_hue", "prob_change_per_lpips"] == pytest.approx(
        table.loc["background_hue", "mean_prob_change"] / table.loc["background_hue", "mean_lpips"])


def test_the_labels_own_change_is_visible_by_the_invisibility_threshold() -> None:
    """At 32 px LPIPS calls the true frown-to-smile change invisible; judged enlarged (visible_change) it is not."""
    faces = sample_factors(128, 1)
    smiles = intervene(faces, "mouth_curve", mirrored("mouth_curve", faces["mouth_curve"].to_numpy()))
    lpips_model = load_lpips("squeeze")
    before, after = to_float(render(faces, 32)), to_float(render(smiles, 32))
    assert lpips_distance(lpips_model, before, after).mean() < INVISIBLE_LPIPS <= visible_change(
        lpips_model, before, after).mean()


def test_the_yardstick_measures_the_label_and_shortcut_factors_on_test_faces(tmp_path) -> None:
    cfg = DataConfig(num_images=40, label_rule="mouth_curve > 0", spurious_factor="glasses")
    data = make_synthetic_dataset(cfg, cache_dir=tmp_path)
    lpips_model = load_lpips("squeeze")
    truth = truth_yardstick(CornerRed(), data, cfg, lpips_model, images=5)
    assert truth["factor"].tolist() == ["mouth_curve", "glasses"]
    test = data.factors.iloc[data.indices("test")[:5]]
    expected = factor_visibility(CornerRed(), test, data.resolution, lpips_model, ["mouth_curve", "glasses"])
    pd.testing.assert_frame_equal(truth, expected)  # the test split's first faces, not the train split's
    metrics = yardstick_metrics(truth)
    assert metrics["truth_glasses_mean_lpips"] == pytest.approx(truth.loc[1, "mean_lpips"]) and len(metrics) == 6
    assert yardstick_caption(truth).count("Δp") == 2
    assert truth_yardstick(CornerRed(), dataclasses.replace(data, factors=None), cfg, lpips_model) is None
    assert yardstick_metrics(None) == {} and yardstick_caption(None) == ""


def test_a_map_on_the_used_region_scores_on_every_measure(factors) -> None:
    masks = factor_masks(factors, 32)
    sensitivity = pd.DataFrame({name: [1.0 if name == "glasses" else 0.1 * i for _ in range(6)]
                                for i, name in enumerate(masks)})
    graded = 1 + 0.01 * torch.rand(6, 32, 32, generator=torch.Generator().manual_seed(0))  # no ties among pixels
    exact = masks["glasses"].float() * graded
    wrong = masks["hat"].float() * graded
    scores = map_factor_scores(exact, masks)
    assert (scores.idxmax(axis=1) == "glasses").all() and np.allclose(scores["glasses"], 1.0)
    assert factor_identification(scores, sensitivity)["factor_top1"].mean() == 1.0
    assert factor_identification(map_factor_scores(wrong, masks), sensitivity)["factor_top1"].mean() == 0.0
    assert torch.allclose(relevance_mass(exact, masks["glasses"]), torch.ones(6))
    assert relevance_mass(wrong, masks["glasses"]).max() < 0.5
    assert pointing_game(exact, masks["glasses"]).mean() == 1.0


def test_deletion_and_insertion_prefer_the_pixels_the_classifier_uses() -> None:
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5  # red corners high
    target = torch.ones(4, dtype=torch.long)
    right = torch.zeros(4, 16, 16)
    right[:, :3, :3] = 1.0
    random = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(1))
    deletion_right, insertion_right = deletion_insertion_auc(CornerRed(), images, right, target)
    deletion_random, insertion_random = deletion_insertion_auc(CornerRed(), images, random, target)
    assert (deletion_right < deletion_random).all() and (insertion_right > insertion_random).all()


def test_bootstrap_interval_brackets_the_mean() -> None:
    mean, low, high = bootstrap_interval(np.r_[np.linspace(0, 1, 50), np.nan])
    assert low < mean < high and mean == pytest.approx(0.5) and high - low < 0.25


def test_the_benchmark_scores_every_method_against_the_key(factors) -> None:
    from stylexlib.data import to_float
    from stylexlib.data.synthetic import render
    from stylexlib.evaluate import COLUMNS, explanation_maps, score_maps

    classifier, images = CornerRed(), to_float(render(factors, 32))
    target = torch.ones(6, dtype=torch.long)
    maps = explanation_maps(classifier, images, target, ("gradient", "occlusion", "integrated_gradients"))
    masks = factor_masks(factors, 32)
    table = score_maps(classifier, images, target, maps, "corner", masks,
                       factor_sensitivity(classifier, factors, 32, target)).set_index("method")
    assert list(table.reset_index().columns[:len(COLUMNS)]) == COLUMNS
    assert table.loc["gradient", "factor_top1"] == 1.0 and table.loc["gradient", "relevance_mass"] == pytest.approx(1.0)
    assert table.loc["integrated_gradients", "pointing_game"] == 1.0
    assert 0 < table.loc["gradient", "relevance_rank_accuracy"] < 1  # 9 pixels lit of the large background region
    assert (table["factor_top1_low"] <= table["factor_top1"]).all() and (table["task"] == "corner").all()
    real = score_maps(classifier, images, target, maps, "folder")  # no key: faithfulness only
    assert real["factor_top1"].isna().all() and real["deletion_auc"].notna().all()
