"""The benchmark's metrics against reference implementations on fixed inputs: Wilson intervals and bootstrap intervals
(scipy), KID (torchmetrics, with a fixed feature extractor: no Inception download), the localisation scores and
deletion (Quantus 0.6, a test extra)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from stylexlib.evaluate.quality import feature_kid, kernel_distance
from stylexlib.evaluate.scores import (bootstrap_interval, deletion_insertion_auc, deletion_insertion_curves,
                                       paired_bootstrap_interval, pointing_game, relevance_mass,
                                       relevance_rank_accuracy)
from stylexlib.report.study import wilson_interval


def test_wilson_interval_is_scipys() -> None:
    k, n = np.array([0, 1, 7, 19, 20, 3]), np.array([20, 20, 20, 20, 20, 4])
    low, high = wilson_interval(k, n)
    for i in range(len(k)):
        ci = stats.binomtest(int(k[i]), int(n[i])).proportion_ci(confidence_level=0.95, method="wilson")
        assert (low[i], high[i]) == pytest.approx((ci.low, ci.high), rel=1e-12, abs=1e-15)


def test_bootstrap_interval_is_scipys_percentile_bootstrap() -> None:
    """Same data, seed and number of resamples: scipy draws the same (resamples, n) indices, so the percentile
    intervals agree to rounding; NaNs are left out first."""
    values = np.random.default_rng(0).exponential(size=37)
    for level in (0.95, 0.8):
        mean, low, high = bootstrap_interval(np.r_[values, np.nan], samples=999, seed=3, level=level)
        ref = stats.bootstrap((values,), np.mean, n_resamples=999, method="percentile", confidence_level=level,
                              rng=np.random.default_rng(3))
        assert mean == pytest.approx(values.mean(), rel=1e-12)
        assert (low, high) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high), rel=1e-12)


def test_paired_bootstrap_is_scipys_paired_bootstrap_and_narrower_than_unpaired() -> None:
    """scipy's paired=True resamples one index array for both samples: the difference of means on the same draw."""
    rng = np.random.default_rng(1)
    hard = rng.normal(size=40)  # per-image difficulty both methods share
    a, b = hard + 0.3 + 0.1 * rng.normal(size=40), hard + 0.1 * rng.normal(size=40)
    diff, low, high = paired_bootstrap_interval(a, b, samples=999, seed=5)
    ref = stats.bootstrap((a, b), lambda x, y, axis: x.mean(axis) - y.mean(axis), paired=True, vectorized=True,
                          n_resamples=999, method="percentile", rng=np.random.default_rng(5))
    assert diff == pytest.approx(a.mean() - b.mean(), rel=1e-12)
    assert (low, high) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high), rel=1e-12)
    unpaired = stats.bootstrap((a, b), lambda x, y, axis: x.mean(axis) - y.mean(axis), vectorized=True,
                               n_resamples=999, method="percentile", rng=np.random.default_rng(5))
    assert high - low < (unpaired.confidence_interval.high - unpaired.confidence_interval.low) / 3
    b[3] = np.nan  # an image one method could not score leaves the pairs
    keep = np.arange(40) != 3
    assert paired_bootstrap_interval(a, b, 999, 5) == paired_bootstrap_interval(a[keep], b[keep], 999, 5)
    with pytest.raises(ValueError, match="one value per image"):
        paired_bootstrap_interval(a, b[:-1])


def test_paired_ratio_interval_is_scipys_paired_bootstrap_of_the_ratio_of_means() -> None:
    """Log-odds drop per unit of visible change, a ratio of means: all four per-image arrays on one draw."""
    from stylexlib.evaluate.scores import paired_ratio_interval

    rng = np.random.default_rng(2)
    hard = rng.uniform(0.5, 1.5, size=40)  # per-image difficulty both methods share
    drop_a, lpips_a = 2 * hard + 0.1 * rng.normal(size=40), hard * 0.5
    drop_b, lpips_b = hard + 0.1 * rng.normal(size=40), hard * 0.6

    def ratio(na, da, nb, db, axis=-1):
        return na.mean(axis) / da.mean(axis) - nb.mean(axis) / db.mean(axis)

    diff, low, high = paired_ratio_interval(drop_a, lpips_a, drop_b, lpips_b, samples=999, seed=4)
    ref = stats.bootstrap((drop_a, lpips_a, drop_b, lpips_b), ratio, paired=True, vectorized=True, n_resamples=999,
                          method="percentile", rng=np.random.default_rng(4))
    assert diff == pytest.approx(ratio(drop_a, lpips_a, drop_b, lpips_b), rel=1e-12)
    assert (low, high) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high), rel=1e-12)
    assert low > 0  # 4 - 1.67: clear on these images
    drop_b[0] = np.nan  # an image one method has no edit for leaves the pairs
    assert paired_ratio_interval(drop_a, lpips_a, drop_b, lpips_b, 999, 4) == paired_ratio_interval(
        drop_a[1:], lpips_a[1:], drop_b[1:], lpips_b[1:], 999, 4)
    with pytest.raises(ValueError, match="one value per image"):
        paired_ratio_interval(drop_a, lpips_a, drop_b[:-1], lpips_b)


class FixedFeatures(torch.nn.Module):
    """A feature extractor for torchmetrics that returns its inputs, (centred and scaled) fixed feature vectors."""

    def __init__(self, mean: torch.Tensor | float = 0.0, scale: torch.Tensor | float = 1.0) -> None:
        super().__init__()
        self.mean, self.scale = mean, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


def torchmetrics_kid(real: torch.Tensor, fake: torch.Tensor, subsets: int, subset_size: int, seed: int,
                     extractor: torch.nn.Module | None = None) -> float:
    from torchmetrics.image.kid import KernelInceptionDistance

    kid = KernelInceptionDistance(feature=extractor or FixedFeatures(), subsets=subsets, subset_size=subset_size)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    torch.manual_seed(seed)  # torchmetrics draws its subsets from the global generator
    return float(kid.compute()[0])


def test_kernel_distance_is_torchmetrics_kid() -> None:
    """Same features, kernel (x.y / d + 1)^3 and subset draws (the same seeded randperm, real first): the same KID."""
    gen = torch.Generator().manual_seed(0)
    real, fake = torch.randn(30, 6, generator=gen).double(), (torch.randn(25, 6, generator=gen) * 1.3 + 0.4).double()
    ours = kernel_distance(real, fake, subsets=4, subset_size=12, seed=7)
    assert ours == pytest.approx(torchmetrics_kid(real, fake, 4, 12, seed=7), rel=1e-10)
    assert ours != pytest.approx(kernel_distance(real, fake, subsets=4, subset_size=12, seed=8), rel=1e-3)
    # feature_kid (our report's kid_lpips_*): KID after centring on the real features and scaling to unit variance;
    # as many real as fake features, so every subset holds them all and the draws do not matter
    real = real[: len(fake)]
    extractor = FixedFeatures(real.mean(0), real.var(0).mean().sqrt())
    assert feature_kid(fake, real) == pytest.approx(torchmetrics_kid(real, fake, 1, len(fake), 0, extractor), rel=1e-10)


@pytest.fixture(scope="module")
def localisation_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(12, 10, 10, generator=gen).double() + 1e-3  # positive, no ties
    regions = torch.rand(12, 10, 10, generator=gen) < torch.linspace(0.05, 0.7, 12)[:, None, None]
    regions[:, 0, 0] = True  # no empty region
    return maps, regions


def quantus_scores(metric, maps: torch.Tensor, regions: torch.Tensor) -> np.ndarray:
    x = np.zeros((len(maps), 3, *maps.shape[1:]))
    return np.asarray(metric(disable_warnings=True)(model=None, x_batch=x, y_batch=np.zeros(len(maps), int),
                                                    a_batch=maps[:, None].numpy(),
                                                    s_batch=regions[:, None].numpy().astype(float)), dtype=float)


def test_localisation_scores_are_quantus(localisation_inputs) -> None:
    import quantus  # the test extra installs it
    maps, regions = localisation_inputs
    hits = pointing_game(maps, regions).numpy()
    assert np.array_equal(hits, quantus_scores(quantus.PointingGame, maps, regions)) and 0 < hits.mean() < 1
    assert np.allclose(relevance_mass(maps, regions).numpy(),
                       quantus_scores(quantus.RelevanceMassAccuracy, maps, regions), rtol=1e-10)
    signed = maps - 0.5  # Quantus sums signed relevance; ours (Arras et al.) only the positive part
    assert np.allclose(relevance_mass(signed, regions).numpy(),
                       quantus_scores(quantus.RelevanceMassAccuracy, signed.clamp(min=0), regions), rtol=1e-10)
    rank = relevance_rank_accuracy(maps, regions).numpy()
    assert np.allclose(rank, quantus_scores(quantus.RelevanceRankAccuracy, maps, regions), rtol=1e-6)
    assert len(set(rank.round(6))) > 5  # the inputs tell definitions apart


def test_ties_and_empty_relevance(localisation_inputs) -> None:
    _, regions = localisation_inputs
    flat = torch.ones(12, 10, 10)
    assert torch.allclose(pointing_game(flat, regions), regions.flatten(1).float().mean(1))  # chance, not a hit
    assert (relevance_rank_accuracy(torch.zeros(12, 10, 10), regions) == 0).all()  # no relevance: no rank accuracy


def test_deletion_is_quantus_pixel_flipping() -> None:
    """12 steps of 12 of 144 pixels (36 features: 3 channels each), gray (0) baseline, softmax: Quantus' curve is ours
    without its first point (the unchanged image); our AUC integrates over the fraction of pixels."""
    import quantus
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 12, 12, generator=gen) * 2 - 1
    maps = torch.rand(4, 12, 12, generator=gen)
    target = torch.tensor([0, 1, 2, 1])
    torch.manual_seed(0)
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 144, 3)).eval()
    fractions, deletion, _ = deletion_insertion_curves(classifier, images, maps, target, steps=12)
    flipping = quantus.PixelFlipping(features_in_step=36, perturb_baseline=0.0, disable_warnings=True)
    reference = np.asarray(flipping(model=classifier, x_batch=images.numpy(), y_batch=target.numpy(),
                                    a_batch=maps[:, None].numpy(), device="cpu", softmax=True, channel_first=True))
    assert reference.shape == (4, 12) and np.allclose(deletion[:, 1:].numpy(), reference, atol=1e-6)
    auc, _ = deletion_insertion_auc(classifier, images, maps, target, steps=12)
    full = np.concatenate([deletion[:, :1].numpy(), reference], axis=1)
    assert np.allclose(auc.numpy(), ((full[:, 1:] + full[:, :-1]) / 2).sum(1) / 12, atol=1e-6)
