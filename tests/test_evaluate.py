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
from stylexlib.evaluate import (bootstrap_interval, cout, deletion_insertion_auc, factor_identification, factor_masks,
                                factor_sensitivity, map_factor_scores, pointing_game, relevance_mass)
from stylexlib.evaluate.ground_truth import (factor_visibility, mirrored, truth_yardstick, yardstick_caption,
                                             yardstick_metrics)
from stylexlib.explain.attfind.visibility import FIXED_LPIPS
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
    assert lpips_distance(lpips_model, before, after).mean() < FIXED_LPIPS <= visible_change(
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


class RedShare(torch.nn.Module):
    """Class 1 exactly when more than a quarter of the red channel is lit (mean red > 0.25); a hard threshold."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1e4))

    def forward(self, images):
        lit = images[:, 0].mean(dim=(1, 2)) - 0.25
        return torch.stack([torch.zeros_like(lit), lit * self.scale], 1)


def test_cout_integrates_the_transition_from_source_to_target() -> None:
    """10x10 images, 2 pixels per step: the counterfactual lights 50 red pixels (and faintly tints 50 others in the
    channels the classifier ignores). Pasted most changed first, p(1) turns 1 after 13 steps: the area under p(1) is
    (0.5 + 37) / 50 = 0.75, under p(0) 0.25, COUT 0.5; pasted least changed first it would be -0.5."""
    original = torch.zeros(2, 3, 10, 10)
    counterfactual = original.clone()
    counterfactual.view(2, 3, 100)[:, :, :50] = 1.0
    counterfactual.view(2, 3, 100)[:, 1:, 50:] = 0.01
    classifier = RedShare()
    assert torch.allclose(cout(classifier, original, counterfactual, 0, 1), torch.tensor([0.5, 0.5]), atol=1e-6)
    assert torch.allclose(cout(classifier, original, counterfactual, torch.tensor([1, 1]), 0), torch.tensor([-0.5] * 2),
                          atol=1e-6)  # source and target swapped
    assert torch.allclose(cout(classifier, original, original, 0, 1), torch.tensor([-1.0, -1.0]))  # p(1|x) - p(0|x)
    undecided = torch.full_like(original, 0.25)
    assert torch.allclose(cout(classifier, undecided, undecided, 0, 1), torch.zeros(2))
    flat = cout(classifier, original, counterfactual, 0, 1, steps=10)  # 10 px a step: p(1) = 1 from step 3 on
    assert torch.allclose(flat, torch.tensor([2 * (0.5 + 7) / 10 - 1] * 2), atol=1e-6)


def test_bootstrap_interval_brackets_the_mean() -> None:
    mean, low, high = bootstrap_interval(np.r_[np.linspace(0, 1, 50), np.nan])
    assert low < mean < high and mean == pytest.approx(0.5) and high - low < 0.25


def test_the_benchmark_scores_every_method_against_the_key(factors) -> None:
    from stylexlib.data import to_float
    from stylexlib.data.synthetic import render
    from stylexlib.evaluate import COLUMNS, explanation_maps, paired_bootstrap_interval, score_maps
    from stylexlib.evaluate.benchmark import paired_differences

    classifier, images = CornerRed(), to_float(render(factors, 32))
    target = torch.ones(6, dtype=torch.long)
    maps = explanation_maps(classifier, images, target, ("gradient", "occlusion", "integrated_gradients"))
    masks = factor_masks(factors, 32)
    per_image = {}
    table = score_maps(classifier, images, target, maps, "corner", masks,
                       factor_sensitivity(classifier, factors, 32, target), per_image=per_image).set_index("method")
    assert list(table.reset_index().columns[:len(COLUMNS)]) == COLUMNS
    assert table.loc["gradient", "factor_top1"] == 1.0 and table.loc["gradient", "relevance_mass"] == pytest.approx(1.0)
    assert table.loc["integrated_gradients", "pointing_game"] == 1.0
    assert 0 < table.loc["gradient", "relevance_rank_accuracy"] < 1  # 9 pixels lit of the large background region
    assert (table["factor_top1_low"] <= table["factor_top1"]).all() and (table["task"] == "corner").all()
    guess = table.loc["constant_guess"]  # CornerRed reads only the background: naming it always is right
    assert guess["family"] == "baseline" and guess["factor_top1"] == 1.0 and guess["relevance_mass"] == 1.0
    assert set(per_image) == set(table.index) and len(per_image["gradient"]) == 6
    assert per_image["occlusion"]["deletion_auc"].mean() == pytest.approx(table.loc["occlusion", "deletion_auc"])
    paired = paired_differences(per_image, reference="gradient", task="corner").set_index(["method", "score"])
    assert set(paired.index.get_level_values(0)) == set(table.index) - {"gradient"}
    row = paired.loc[("occlusion", "deletion_auc")]
    a, b = per_image["gradient"]["deletion_auc"], per_image["occlusion"]["deletion_auc"]
    assert (row["difference"], row["low"], row["high"]) == pytest.approx(paired_bootstrap_interval(a, b))
    assert row["images"] == 6 and row["difference"] == pytest.approx(a.mean() - b.mean())
    assert paired_differences(per_image).empty  # no StylEx among these methods
    real = score_maps(classifier, images, target, maps, "folder")  # no key: faithfulness only
    assert real["factor_top1"].isna().all() and real["deletion_auc"].notna().all() and "constant_guess" not in set(
        real["method"])


def test_factor_share_gives_a_near_tie_almost_full_credit() -> None:
    sensitivity = pd.DataFrame({"mouth_curve": [5.0, 5.0, 1.0, 0.0], "glasses": [4.5, 1.0, 5.0, 0.0],
                                "eye_size": [0.5, 0.2, 0.1, 0.0]})
    named = pd.DataFrame({"eye_size": [0.0, 0.0, 0.1, 0.0], "glasses": [0.9, 0.1, 0.0, 0.0],  # other column order
                          "mouth_curve": [0.1, 0.9, 0.9, 1.0]})
    ident = factor_identification(named, sensitivity)
    assert ident["factor_top1"].tolist() == [0.0, 1.0, 0.0, 1.0]
    # the glasses for a near tie (4.5 of 5), the mouth where it is used most, the mouth where the glasses are; no use
    assert np.allclose(ident["factor_share"], [0.9, 1.0, 0.2, np.nan], equal_nan=True)


def test_the_constant_guess_names_the_most_often_used_factor_everywhere(factors) -> None:
    from stylexlib.evaluate.benchmark import constant_guess

    masks = factor_masks(factors, 32)
    top = ["hat", "glasses", "hat", "hat", "mouth_curve", "hat"]  # the factor the classifier uses most, per image
    sensitivity = pd.DataFrame({name: [1.0 if name == t else 0.0 for t in top] for name in masks})
    region, scores = constant_guess(masks, sensitivity)
    assert torch.equal(region, masks["hat"].float())
    assert factor_identification(scores, sensitivity)["factor_top1"].mean() == pytest.approx(4 / 6)
    assert scores.loc[0, "hat"] == pytest.approx(4 / 6) and scores.loc[5, "glasses"] == pytest.approx(1 / 6)
