"""Encoder-collapse detector: are reconstructions still recognisable, and does E(x) spread like mapping(z)?

An encoder that collapses returns nearly one latent for every image: reconstructions become one average face
(tinted per image through the class input), while random samples stay diverse. Two numbers catch it:

- ``recon_self_retrieval``: the share of held-out images whose reconstruction is nearer (LPIPS, judged at 64 px) to
  its own input than to every other input of the set (1.0: each reconstruction recognisable; 1/N: collapse).
- ``encoder_spread_ratio``: the per-dimension standard deviation of E(x) over the images divided by that of
  mapping(z), averaged over dimensions (about 1 when E(x) covers W like the random path; near 0 on collapse).
"""
from __future__ import annotations

import logging

import lpips as lpips_package
import torch
from torch import Tensor, nn

from stylexlib.gan.losses import lpips_input

log = logging.getLogger(__name__)

COLLAPSE_IMAGES = 64  # held-out images the detector scores
RETRIEVAL_SIZE = 64  # LPIPS resolution of the retrieval test (where its weights were fitted to people)
RETRIEVAL_WARNING = 0.5  # recon_self_retrieval under this: the warning fires
SPREAD_WARNING = 0.25  # encoder_spread_ratio under this: the warning fires


@torch.no_grad()
def pairwise_lpips(lpips_model: nn.Module, inputs: Tensor, reconstructions: Tensor,
                   size: int = RETRIEVAL_SIZE) -> Tensor:
    """(N, N) LPIPS between every reconstruction (rows) and every input (columns), images enlarged to ``size``."""
    model_device = next(lpips_model.parameters()).device
    x, rec = (lpips_input(t.to(model_device), size) for t in (inputs, reconstructions))
    # one trunk pass per image set; LPIPS's distance is then a weighted sum over normalised features
    feats_x = lpips_model.net(lpips_model.scaling_layer(x))
    feats_r = lpips_model.net(lpips_model.scaling_layer(rec))
    total = torch.zeros(len(rec), len(x), device=model_device)
    for k, (fx, fr) in enumerate(zip(feats_x, feats_r)):
        fx, fr = lpips_package.normalize_tensor(fx), lpips_package.normalize_tensor(fr)
        weight = lpips_model.lins[k].model[-1].weight.flatten()  # (C,) non-negative channel weights
        for i in range(len(fr)):  # row i: reconstruction i against all inputs
            diff = (fr[i : i + 1] - fx).square()
            total[i] += (diff * weight[None, :, None, None]).sum(1).mean(dim=(1, 2))
    return total.cpu()


def self_retrieval(distances: Tensor) -> float:
    """Share of rows whose diagonal entry is strictly the smallest in the row (reconstruction nearest its input)."""
    own = distances.diagonal()
    others = distances + torch.diag(torch.full((len(distances),), float("inf")))
    return float((own < others.min(dim=1).values).float().mean())


def spread_ratio(w_encoded: Tensor, w_sampled: Tensor) -> float:
    """Mean over dimensions of std(E(x)) / std(mapping(z))."""
    return float((w_encoded.float().std(dim=0) / w_sampled.float().std(dim=0).clamp_min(1e-8)).mean())


@torch.no_grad()
def collapse_metrics(generator: nn.Module, encoder: nn.Module, classifier: nn.Module, images: Tensor,
                     lpips_model: nn.Module, condition, samples: int = 1024, seed: int = 0,
                     styles: Tensor | None = None) -> dict[str, float]:
    """``recon_self_retrieval`` and ``encoder_spread_ratio`` (of E(x)) of float images in [-1, 1] (on the models'
    device); ``condition`` maps classifier logits to the generator's class input; ``styles``: the images' StyleSpace
    vectors to reconstruct from (default: those of E(x))."""
    w = encoder(images)
    if styles is None:
        styles = generator.styles(w, condition(classifier(images).float()))
    reconstructions = generator.synthesize(styles)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(samples, generator.latent_dim, generator=gen).to(images.device)
    return {"recon_self_retrieval": self_retrieval(pairwise_lpips(lpips_model, images, reconstructions)),
            "encoder_spread_ratio": spread_ratio(w, generator.mapping(z))}


def collapse_warning(metrics: dict[str, float], refit: bool = False) -> str | None:
    """A one-line warning when the detector fires, else None. ``refit``: the encoder is fitted to G_ema again after
    training (``stylex.encoder_fit.minutes``), so while training only a collapsed spread warns: the training pair's
    reconstructions are rarely recognisable on real photographs (self-retrieval 0.2-0.5 on CelebA), and the fit
    repairs that (1.00 at stage 04, which checks the reconstructions later stages use, without ``refit``)."""
    retrieval, spread = metrics.get("recon_self_retrieval"), metrics.get("encoder_spread_ratio")
    unrecognisable = retrieval is not None and retrieval < RETRIEVAL_WARNING and not refit
    if not unrecognisable and (spread is None or spread >= SPREAD_WARNING):
        return None
    return (f"encoder collapse: recon_self_retrieval {retrieval:.2f} (1.0: every reconstruction recognisable; "
            f"warns under {RETRIEVAL_WARNING}), encoder_spread_ratio {spread:.2f} (warns under {SPREAD_WARNING}): "
            "reconstructions are turning into one average image; see docs/experiments.md 'Real photographs' for the "
            "settings that keep the encoder path on real images (stylex.preset=real)")
