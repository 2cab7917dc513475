"""Quality metrics: KID against a direct computation, the 1-D Wasserstein distance, invisible attributes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import wasserstein_distance

from stylexlib.evaluate.quality import (invisible_attributes, kernel_distance, kid_name, lpips_features,
                                       wasserstein_1d)
from stylexlib.gan.losses import load_lpips


def direct_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel, written out element by element."""
    d, m = x.shape[1], len(x)
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kernel_distance_matches_the_direct_formula_and_separates_distributions() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(12, 5, generator=gen), torch.randn(12, 5, generator=gen) + 0.5
    assert kernel_distance(a, b, subsets=1, subset_size=12) == pytest.approx(direct_mmd(a.numpy(), b.numpy()), rel=1e-9)
    same = kernel_distance(torch.randn(400, 5, generator=gen), torch.randn(400, 5, generator=gen))
    shifted = kernel_distance(torch.randn(400, 5, generator=gen), torch.randn(400, 5, generator=gen) + 0.5)
    assert abs(same) < 0.01 < shifted
    with pytest.raises(ValueError, match="at least 2"):
        kernel_distance(a[:1], b)


def test_wasserstein_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=2000), rng.normal(0.3, 1.5, size=2000)
    assert wasserstein_1d(a, b, quantiles=2001) == pytest.approx(wasserstein_distance(a, b), abs=0.02)


def test_lpips_features_tell_images_apart() -> None:
    model = load_lpips("squeeze")
    gen = torch.Generator().manual_seed(0)
    smooth = torch.rand(8, 3, 1, 1, generator=gen).expand(8, 3, 16, 16) * 2 - 1
    noisy = torch.rand(8, 3, 16, 16, generator=gen) * 2 - 1
    fs, fn = lpips_features(model, smooth), lpips_features(model, noisy)
    assert fs.shape == fn.shape and fs.shape[0] == 8
    assert kernel_distance(fs, fn, subset_size=8) > 10 * abs(kernel_distance(fs[:4], fs[4:], subset_size=4))
    assert kid_name(model) == "kid_lpips_squeeze"  # the realism score names its features


def test_invisible_attributes_flags_large_classifier_changes_without_visible_change() -> None:
    examples = pd.DataFrame({
        "attribute": ["a", "a", "b", "b", "c", "c"],
        "prob_change": [0.5, -0.6, 0.5, 0.4, 0.1, 0.05],
        "lpips": [0.01, 0.015, 0.10, 0.08, 0.001, 0.002],
    })
    table = invisible_attributes(examples).set_index("attribute")
    assert table["invisible"].to_dict() == {"a": True, "b": False, "c": False}
    assert table.loc["a", "mean_prob_change"] == pytest.approx(0.55)
    assert table.loc["b", "prob_change_per_lpips"] == pytest.approx(0.45 / 0.09)


def test_visibility_of_examples_reaches_the_table_the_metrics_and_the_gallery(tmp_path) -> None:
    from stylexlib.evaluate.quality import measure_visibility, visibility_metrics
    from stylexlib.explain.attfind.examples import AttributeExamples
    from stylexlib.report.gallery import write_gallery

    gen = torch.Generator().manual_seed(0)
    faces = torch.rand(3, 3, 16, 16, generator=gen) * 2 - 1
    probs = lambda p: torch.tensor([[1 - p, p]] * 3)  # noqa: E731
    hidden = AttributeExamples(1, "b", 1, 7, "b8.conv1[7] up", 1.0, 0.5, [0, 1, 2], faces, faces + 0.001,
                               probs(0.1), probs(0.8), ["a", "b"])  # p jumps by 0.7, the image does not change
    visible = AttributeExamples(1, "b", 2, 9, "b8.conv1[9] up", 1.0, 0.5, [0, 1, 2], faces, -faces,
                                probs(0.1), probs(0.8), ["a", "b"])
    rows = measure_visibility([hidden, visible], load_lpips("squeeze"))
    assert len(rows) == 6 and rows["prob_change"].tolist() == pytest.approx([0.7] * 6)
    table = invisible_attributes(rows).set_index("attribute")
    assert table["invisible"].to_dict() == {"c1_r01": True, "c1_r02": False}
    assert table.loc["c1_r01", "mean_lpips"] < 0.02 < table.loc["c1_r02", "mean_lpips"]
    assert visibility_metrics(table.reset_index())["attributes_invisible"] == 1
    page = write_gallery([hidden, visible], tmp_path / "gallery").read_text()
    shown = f"LPIPS {float(visible.lpips[0]):.3f}"  # the visible edit's LPIPS, in its own section only
    assert page.count("invisible change</b>") == 2  # the legend and one flag
    assert shown not in page.split('id="c1_r02"')[0] and shown in page.split('id="c1_r02"')[1]
