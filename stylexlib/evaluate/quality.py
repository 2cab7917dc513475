"""How good a trained StylEx model is: held-out reconstructions and random samples (how visible its edits are:
:mod:`stylexlib.explain.attfind.visibility`).

Reconstructions: L1, LPIPS, classifier consistency and, on synthetic data, which ground-truth factors survive the
round trip (the factor probe). Samples ``G_ema(mapping(z), c)`` with ``c = C(x)`` of held-out images: the kernel
distance (KID, Binkowski et al. 2018) between LPIPS-backbone features of samples and real images (centred and scaled
by the real features' spread; reported as ``kid_lpips_<net>``, e.g. ``kid_lpips_squeeze``: not Inception features, so
not comparable with published KIDs), whether the classifier agrees with the conditioning, and the probe's per-factor
distributions against the data's.
"""
from __future__ import annotations

import lpips as lpips_package
import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from stylexlib.classifier.predict import classify
from stylexlib.gan.collapse import COLLAPSE_IMAGES, collapse_metrics
from stylexlib.gan.losses import lpips_input, unbiased_mmd2
from stylexlib.gan.models import StylexModels
from stylexlib.stylespace.inversion import evaluate_reconstruction, invert, render_inverted


@torch.no_grad()
def lpips_features(lpips_model: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """(N, F) features of images in [-1, 1]: each LPIPS backbone layer unit-normalised per position, then averaged
    over space, all layers concatenated (the representation LPIPS compares)."""
    parts = []
    for batch in images.split(batch_size):
        x = lpips_input(batch.to(next(lpips_model.parameters()).device))
        layers = lpips_model.net(lpips_model.scaling_layer(x))
        parts.append(torch.cat([lpips_package.normalize_tensor(f).mean(dim=(2, 3)) for f in layers], dim=1).cpu())
    return torch.cat(parts)


def kernel_distance(a: Tensor, b: Tensor, subsets: int = 20, subset_size: int = 256, seed: int = 0) -> float:
    """KID: the unbiased MMD^2 between feature sets with the kernel (x.y / d + 1)^3, averaged over random subsets."""
    a, b = a.double(), b.double()
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise ValueError(f"kernel_distance needs at least 2 features per set, got {len(a)} and {len(b)}")
    gen = torch.Generator().manual_seed(seed)
    dim, total = a.shape[1], 0.0
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=gen)[:size]]
        y = b[torch.randperm(len(b), generator=gen)[:size]]
        total += float(unbiased_mmd2(*((p @ q.T / dim + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))))
    return total / subsets


def kid_name(lpips_model: nn.Module) -> str:
    """The name of a KID on this LPIPS model's features: ``kid_lpips_<its backbone>`` (``kid_lpips_squeeze``)."""
    return f"kid_lpips_{lpips_model.pnet_type}"


def feature_kid(fake: Tensor, real: Tensor) -> float:
    """KID between LPIPS features of generated and real images, both centred on the real features and scaled to unit
    mean variance (so that x.y / d is O(1) for the cubic kernel); comparable across runs of one feature extractor."""
    mean = real.mean(0)
    scale = real.var(0).mean().sqrt().clamp_min(1e-8)
    return kernel_distance((fake - mean) / scale, (real - mean) / scale)


@torch.no_grad()
def random_samples(models: StylexModels, real: Tensor, seed: int = 0, batch_size: int = 128) -> tuple[Tensor, Tensor]:
    """One sample ``G(mapping(z), C(x))`` per real image x (the conditioning drawn from real images, as in training);
    returns (samples, the conditioning's class)."""
    gen = torch.Generator().manual_seed(seed)
    samples, wanted = [], []
    for batch in real.split(batch_size):
        c = models.condition(models.classifier(models.prepare(batch)).float())
        z = torch.randn(len(batch), models.generator.latent_dim, generator=gen).to(models.device)
        samples.append(models.generator(models.generator.mapping(z), c).cpu())
        wanted.append(c.argmax(1).cpu())
    return torch.cat(samples), torch.cat(wanted)


@torch.no_grad()
def sample_quality(models: StylexModels, real: Tensor, lpips_model: nn.Module, probe: nn.Module | None = None,
                   seed: int = 0) -> dict[str, float]:
    """Random samples against held-out real images: KID on LPIPS features (``sample_kid_lpips_<net>``, and under its
    old name ``sample_kid``), the classifier's agreement with the conditioning and, given the factor probe, per factor
    the 1-D Wasserstein distance between the probe's readings of samples and of real images (binary factors also: the
    samples' rate minus the real images' rate)."""
    samples, wanted = random_samples(models, real, seed)
    real_float = models.prepare(real).cpu()
    predicted = classify(models.classifier, samples).argmax(1)
    fake_features, real_features = lpips_features(lpips_model, samples), lpips_features(lpips_model, real_float)
    kid = feature_kid(fake_features, real_features)
    out = {f"sample_{kid_name(lpips_model)}": kid, "sample_kid": kid,
           "sample_agreement": float((predicted == wanted).float().mean())}
    if probe is not None:
        read_fake, read_real = probe.read(samples).numpy(), probe.read(real_float).numpy()
        for k, name in enumerate(probe.names):
            if probe.binary[k]:
                out[f"sample_{name}_rate_gap"] = float((read_fake[:, k] > 0.5).mean() - (read_real[:, k] > 0.5).mean())
            out[f"sample_{name}_w1"] = wasserstein_1d(read_fake[:, k], read_real[:, k])
    return out


def wasserstein_1d(a: np.ndarray, b: np.ndarray, quantiles: int = 101) -> float:
    """The 1-D Wasserstein-1 distance between two samples, from their quantile functions."""
    q = np.linspace(0.0, 1.0, quantiles)
    return float(np.abs(np.quantile(a, q) - np.quantile(b, q)).mean())


def reconstruction_quality(models: StylexModels, images: Tensor, lpips_model: nn.Module,
                           probe: nn.Module | None = None, factors: pd.DataFrame | None = None) -> dict[str, float]:
    """Held-out reconstructions: consistency, LPIPS, L1, KL and, with the probe and true factors, each factor's
    score on the reconstructions (R^2, or accuracy for binary factors) as ``recon_factor_<name>``."""
    from stylexlib.evaluate.factor_probe import \
        factor_scores  # the probe module imports the editor; keep this import local

    inverted = invert(models, images, lpips_model=lpips_model)
    out = evaluate_reconstruction(models, images, lpips_model, styles=inverted.styles)
    if probe is not None and factors is not None:
        for row in factor_scores(probe, render_inverted(models, inverted), factors).itertuples():
            out[f"recon_factor_{row.factor}"] = row.score
    return out


def collapse_check(models: StylexModels, images: Tensor, lpips_model: nn.Module, seed: int = 0,
                   styles: Tensor | None = None) -> dict[str, float]:
    """The encoder-collapse detector (:mod:`stylexlib.gan.collapse`) on the first 64 of uint8 or [-1, 1] images,
    reconstructed from their StyleSpace vectors ``styles`` when given (e.g. refined ones), else from E(x)."""
    x = models.prepare(images[:COLLAPSE_IMAGES])
    return collapse_metrics(models.generator, models.encoder, models.classifier, x, lpips_model, models.condition,
                            seed=seed, styles=None if styles is None else styles[:COLLAPSE_IMAGES].to(x.device))
