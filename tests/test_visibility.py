"""The visibility rule: calibrated on the generator's own class change; the table, the metrics, the gallery's flags
and warning, and AttFind's visible-only check."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from stylexlib.classifier.model import build_classifier
from stylexlib.core.stylex_config import stylex_config
from stylexlib.explain.attfind.visibility import (VisibilityRule, class_swap_yardstick, invisible_attributes,
                                                  measure_visibility, saved_rule, swapped_top_two, visibility_metrics,
                                                  visibility_rule)
from stylexlib.explain.attfind.examples import AttributeExamples
from stylexlib.gan import Encoder, Generator
from stylexlib.gan.losses import load_lpips
from stylexlib.gan.models import StylexModels
from stylexlib.report.gallery import write_gallery

SWAP = {"mean_prob_change": 0.81, "mean_lpips": 0.050, "prob_change_per_lpips": 16.2}  # runs/demo_now's class swap


def test_the_calibrated_rule_fixes_both_misfires_of_the_fixed_thresholds() -> None:
    """The demo's cases (docs/experiments.md): a mouth edit a person sees (Δp 0.31 at LPIPS 0.0096) and a coordinate
    nobody sees change anything (Δp 0.14 at LPIPS 0.0013)."""
    fixed, calibrated = VisibilityRule(), visibility_rule(SWAP)
    assert calibrated == VisibilityRule(16.2, "the generator's class change")
    assert "3x 16.2 per unit of LPIPS" in calibrated.describe()
    assert fixed.invisible(0.31, 0.0096) and not calibrated.invisible(0.31, 0.0096)
    assert not fixed.invisible(0.14, 0.0013) and calibrated.invisible(0.14, 0.0013)
    assert not calibrated.invisible(0.05, 0.0001)  # moves the classifier too little to explain anything
    assert not calibrated.invisible(0.81, 0.050)  # the class change itself


def test_without_a_class_change_the_rule_falls_back_to_the_fixed_thresholds() -> None:
    assert visibility_rule(None) == VisibilityRule()
    assert visibility_rule({**SWAP, "mean_lpips": 0.0}) == VisibilityRule()  # a class input that changes nothing
    assert saved_rule({}) is None and saved_rule({"visibility_yardstick": 16.2}).prob_change_per_lpips == 16.2


def test_swapped_top_two_exchanges_the_predicted_and_runner_up_classes() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, -1.0]])
    assert swapped_top_two(logits).tolist() == [[2.0, 1.0, 3.0], [5.0, 0.0, -1.0]]


def tiny_models(condition_on: str = "probs") -> StylexModels:
    torch.manual_seed(0)
    cfg = stylex_config(latent_dim=16, mapping_layers=2, channel_base=128, channel_max=8, condition_on=condition_on)
    G = Generator(16, 2, cfg).eval().requires_grad_(False)
    E = Encoder(16, cfg.model.latent_dim, cfg).eval().requires_grad_(False)
    C = build_classifier(2, 16, width=4).eval().requires_grad_(False)
    return StylexModels(G, E, C, cfg, ["a", "b"], 0, torch.device("cpu"))


def test_the_class_swap_yardstick_measures_what_the_class_input_changes() -> None:
    images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    lpips_model = load_lpips("squeeze")
    models = tiny_models()
    with torch.no_grad():
        models.generator.affine.weight[:, models.generator.latent_dim:] *= 30  # a strong class pathway
    strong = class_swap_yardstick(models, images, lpips_model)
    assert strong["mean_lpips"] > 0 and strong["mean_prob_change"] > 0
    assert strong["prob_change_per_lpips"] == pytest.approx(strong["mean_prob_change"] / strong["mean_lpips"])
    with torch.no_grad():
        models.generator.affine.weight[:, models.generator.latent_dim:] = 0  # the class input reaches nothing
    silent = class_swap_yardstick(models, images, lpips_model)
    assert silent["mean_lpips"] == pytest.approx(0, abs=1e-6) and silent["mean_prob_change"] == pytest.approx(0, abs=1e-6)
    assert visibility_rule(silent) == VisibilityRule()
    assert class_swap_yardstick(tiny_models("none"), images, lpips_model) is None  # a GAN without the classifier


def test_invisible_attributes_flags_large_classifier_changes_without_visible_change() -> None:
    examples = pd.DataFrame({
        "attribute": ["a", "a", "b", "b", "c", "c"],
        "prob_change": [0.5, -0.6, 0.5, 0.4, 0.1, 0.05],
        "lpips": [0.01, 0.015, 0.10, 0.08, 0.001, 0.002],
    })
    table = invisible_attributes(examples).set_index("attribute")  # the fixed thresholds
    assert table["invisible"].to_dict() == {"a": True, "b": False, "c": False}
    assert table.loc["a", "mean_prob_change"] == pytest.approx(0.55)
    assert table.loc["b", "prob_change_per_lpips"] == pytest.approx(0.45 / 0.09)
    calibrated = invisible_attributes(examples, VisibilityRule(10.0, "truth")).set_index("attribute")
    assert calibrated["invisible"].to_dict() == {"a": True, "b": False, "c": False}  # 44 and 5 per LPIPS against 30; c too weak
    assert visibility_metrics(calibrated.reset_index(), VisibilityRule(10.0))["visibility_yardstick"] == 10.0


def test_visibility_of_examples_reaches_the_table_the_metrics_and_the_gallery(tmp_path) -> None:
    gen = torch.Generator().manual_seed(0)
    faces = torch.rand(3, 3, 16, 16, generator=gen) * 2 - 1
    probs = lambda p: torch.tensor([[1 - p, p]] * 3)  # noqa: E731
    hidden = AttributeExamples(1, "b", 1, 7, "b8.conv1[7] up", 1.0, 0.5, [0, 1, 2], faces, faces + 0.001,
                               probs(0.1), probs(0.8), ["a", "b"])  # p jumps by 0.7, the image does not change
    visible = AttributeExamples(1, "b", 2, 9, "b8.conv1[9] up", 1.0, 0.5, [0, 1, 2], faces, -faces,
                                probs(0.1), probs(0.8), ["a", "b"])
    rows = measure_visibility([hidden, visible], load_lpips("squeeze"))
    assert len(rows) == 6 and rows["prob_change"].tolist() == pytest.approx([0.7] * 6)
    rule = VisibilityRule(20.0, "the truth's mouth_curve change")
    table = invisible_attributes(rows, rule).set_index("attribute")
    assert table["invisible"].to_dict() == {"c1_r01": True, "c1_r02": False}
    assert visibility_metrics(table.reset_index(), rule)["attributes_invisible"] == 1
    page = write_gallery([hidden, visible], tmp_path / "gallery", rule=rule).read_text()
    shown = f"LPIPS {float(visible.lpips[0]):.3f}"  # the visible edit's LPIPS, in its own section only
    assert page.count("invisible change</b>") == 2  # the legend and one flag
    assert "3x 20.0 per unit of LPIPS" in page and "No attribute of this class" not in page
    assert shown not in page.split('id="c1_r02"')[0] and shown in page.split('id="c1_r02"')[1]
    only_hidden = write_gallery([hidden], tmp_path / "hidden", rule=rule).read_text()
    assert "No attribute of this class changes the image visibly" in only_hidden  # said plainly, above the edits
    assert "AttFind selected no attribute for this class" in only_hidden.split('id="class1"')[0]  # class "a": none


def test_visible_only_rejects_exactly_the_edits_the_rule_calls_invisible_on_the_gallery_images() -> None:
    from stylexlib.core.config import AttFindConfig
    from stylexlib.explain.attfind.effects import StyleStats, apply_attributes, compute_effects, shift_targets
    from stylexlib.explain.attfind.selection import class_attributes
    from stylexlib.explain.attfind.visibility import visibility_check
    from stylexlib.gan.losses import visible_change
    from stylexlib.stylespace.inversion import invert

    models = tiny_models()
    images = torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    inverted = invert(models, images)
    styles, stats = inverted.styles, StyleStats.of(inverted.styles)
    effects = compute_effects(models, styles, inverted.logits, torch.arange(12), stats, AttFindConfig(), progress=False)
    target = int(effects.predicted.float().mean() < 0.5)  # the minority class: its pool holds most images
    targets, lpips_model = shift_targets(styles, stats), load_lpips("squeeze")
    gain = effects.toward(target, "probs")
    gain[effects.predicted == target] = float("-inf")
    judged = {}
    for position in range(0, len(effects.coords), 7):  # a sample of edits, measured the long way round
        for direction in (0, 1):
            chosen = gain[:, position, direction].topk(3).indices
            flat = int(effects.coords[position])
            column = torch.full((3, 1), flat)
            edited = apply_attributes(styles[chosen], targets[:, chosen], column, torch.full_like(column, direction))
            with torch.no_grad():
                before, after = (models.generator.synthesize(s).clamp(-1, 1) for s in (styles[chosen], edited))
                moved = (models.classifier(after).softmax(1) - models.classifier(before).softmax(1))[:, target].abs()
                seen = visible_change(lpips_model, before, after)
            judged[flat, direction] = (float(moved.mean()), float(seen.mean()))
    ratios = sorted(p / v for p, v in judged.values() if v > 0)
    rule = VisibilityRule(ratios[len(ratios) // 2] / 3, "a test yardstick", min_prob_change=0.0)  # splits them
    accept = visibility_check(models.generator, models.classifier, lpips_model, styles, targets, effects, target, rule,
                              examples=3)
    verdicts = {edit: accept(*edit) for edit in judged}
    assert verdicts == {edit: not rule.invisible(*measured) for edit, measured in judged.items()}
    assert any(verdicts.values()) and not all(verdicts.values())
    picked = class_attributes(effects, target, k=5, output="probs", accept=accept)
    assert all(accept(int(row.flat), ("down", "up").index(row.direction)) for row in picked.itertuples())
