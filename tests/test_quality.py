"""Quality metrics: KID against a direct computation, the 1-D Wasserstein distance."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import wasserstein_distance

from stylexlib.evaluate.quality import kernel_distance, kid_name, lpips_features, wasserstein_1d
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
