"""Inversion: real images -> (w, c = C(x)) -> StyleSpace, reconstruction quality.

StylEx (Lang et al., ICCV 2021) encodes an image with its encoder, w = E(x), and conditions the generator on the
classifier's output. With ``inversion.per_image_steps`` > 0 every inversion then optimises w per image from E(x)
(hybrid inversion, as in Zhu et al. 2020 "In-domain GAN inversion" and Abdal et al. 2019), minimising
LPIPS + L1 + KL(C(x) || C(G(w, c))): on real photographs the encoder alone keeps skin tone, pose and lighting but
loses who the person is (docs/experiments.md, "Real photographs").
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor, nn

from stylexlib.classifier.predict import classify
from stylexlib.core.progress import tqdm
from stylexlib.gan.losses import classifier_kl_loss, load_lpips, lpips_distance
from stylexlib.gan.models import StylexModels


@dataclass
class Inverted:
    """Images encoded into the generator: latents, class inputs, StyleSpace and the classifier's logits on x."""

    w: Tensor  # (N, latent_dim)
    c: Tensor  # (N, classes): the generator's class input (probabilities or logits of C(x))
    styles: Tensor  # (N, S)
    logits: Tensor  # (N, classes): C(x)


def invert(models: StylexModels, images: Tensor, batch_size: int = 64, refine: bool = True,
           progress: bool = True, lpips_model: nn.Module | None = None) -> Inverted:
    """Invert uint8 or [-1, 1] images: w = E(x), refined for ``models.inversion.per_image_steps`` when ``refine``
    (with ``lpips_model``, loaded when needed and not given); c from C(x); styles = G.styles(w, c) (all on CPU)."""
    steps = models.inversion.per_image_steps if refine else 0
    if steps and lpips_model is None:
        lpips_model = load_lpips(models.cfg.lpips_net, models.device)
    batches = images.split(batch_size)
    parts: list[tuple[Tensor, ...]] = []
    for batch in tqdm(batches, desc=f"invert (E(x) + {steps} refinement steps)", disable=not (steps and progress)):
        x = models.prepare(batch)
        with torch.no_grad():
            logits = models.classifier(x).float()
            w, c = models.encoder(x), models.condition(logits)
        if steps:
            w, _ = refine_latents(models, x, steps, models.inversion.per_image_lr, models.inversion.weight_kl,
                                  lpips_model, progress=False, start=w)
            w = w.to(models.device)
        with torch.no_grad():
            parts.append((w.cpu(), c.cpu(), models.generator.styles(w, c).cpu(), logits.cpu()))
    return Inverted(*(torch.cat(column) for column in zip(*parts)))


@torch.no_grad()
def render_inverted(models: StylexModels, inverted: Inverted, batch_size: int = 64) -> Tensor:
    """The reconstructions G(w, c) of inverted images, in [-1, 1] on the CPU."""
    return torch.cat([models.generator(w.to(models.device), c.to(models.device), noise_mode="const").clamp(-1, 1).cpu()
                      for w, c in zip(inverted.w.split(batch_size), inverted.c.split(batch_size))])


def reconstruct(models: StylexModels, images: Tensor, batch_size: int = 64) -> Tensor:
    """Reconstructions of uint8 or [-1, 1] images through :func:`invert` (refined as the models say), on the CPU."""
    return render_inverted(models, invert(models, images, batch_size), batch_size)


@torch.no_grad()
def reconstruction_table(models: StylexModels, images: Tensor, lpips_model: nn.Module | None = None,
                         batch_size: int = 64, w: Tensor | None = None, refine: bool = True) -> pd.DataFrame:
    """Per image: L1, LPIPS, KL of C(x) vs C(x'), and whether C's decision agrees on x' = G(w, c).

    ``w`` defaults to :func:`invert`'s (E(x), refined as ``models.inversion`` says unless not ``refine``); pass latents
    to score them instead.
    """
    lpips_model = lpips_model if lpips_model is not None else load_lpips(models.cfg.lpips_net, models.device)
    if w is None:
        w = invert(models, images, batch_size, refine=refine, lpips_model=lpips_model).w
    rows: list[pd.DataFrame] = []
    start = 0
    for batch in images.split(batch_size):
        x = models.prepare(batch)
        logits = models.classifier(x).float()
        latents = w[start : start + len(x)].to(models.device)
        rec = models.generator(latents, models.condition(logits), noise_mode="const")
        rec_logits = models.classifier(rec).float()
        rows.append(pd.DataFrame({
            "l1": (x - rec).abs().flatten(1).mean(1).cpu().numpy(),
            "lpips": lpips_distance(lpips_model, x, rec).flatten().cpu().numpy(),
            "kl": classifier_kl_loss(logits, rec_logits, reduction="none").cpu().numpy(),
            "consistent": (logits.argmax(1) == rec_logits.argmax(1)).cpu().numpy(),
            "predicted": logits.argmax(1).cpu().numpy(),
            "predicted_reconstruction": rec_logits.argmax(1).cpu().numpy(),
        }))
        start += len(x)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def evaluate_reconstruction(models: StylexModels, images: Tensor, lpips_model: nn.Module | None = None,
                            batch_size: int = 64, refine: bool = True, w: Tensor | None = None) -> dict[str, float]:
    """Held-out reconstruction quality: classifier consistency, LPIPS, L1 and KL of C(x) vs C(x') (``w``: as in
    :func:`reconstruction_table`)."""
    table = reconstruction_table(models, images, lpips_model, batch_size, w=w, refine=refine)
    return {
        "recon_consistency": float(table["consistent"].mean()),
        "recon_lpips": float(table["lpips"].mean()),
        "recon_l1": float(table["l1"].mean()),
        "recon_kl": float(table["kl"].mean()),
    }


def refine_latents(models: StylexModels, images: Tensor, steps: int = 100, lr: float = 0.02,
                   weight_kl: float = 1.0, lpips_model: nn.Module | None = None, progress: bool = True,
                   start: Tensor | None = None) -> tuple[Tensor, list[dict[str, float]]]:
    """Optimise w per image (from ``start``, default E(x); c fixed to C(x)) for LPIPS + L1 + weight_kl * KL with Adam;
    returns (w on the CPU, per-step history of the batch means)."""
    lpips_model = lpips_model if lpips_model is not None else load_lpips(models.cfg.lpips_net, models.device)
    x = models.prepare(images)
    with torch.no_grad():
        logits = models.classifier(x).float()
        c = models.condition(logits)
        w = (models.encoder(x) if start is None else start.to(models.device)).detach().clone()
    w.requires_grad_(True)
    optimizer = torch.optim.Adam([w], lr=lr)
    history = []
    for step in tqdm(range(steps), desc="refine w", disable=not progress):
        with torch.enable_grad():  # also when called under no_grad
            rec = models.generator(w, c, noise_mode="const")
            terms = {
                "lpips": lpips_distance(lpips_model, x, rec).mean(),
                "l1": (x - rec).abs().mean(),
                "kl": classifier_kl_loss(logits, models.classifier(rec).float()),
            }
            loss = terms["lpips"] + terms["l1"] + weight_kl * terms["kl"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
        history.append({"step": step + 1, **{k: v.detach() for k, v in {"loss": loss, **terms}.items()}})
    return w.detach().cpu(), [{k: float(v) for k, v in row.items()} for row in history]


def refinement_comparison(models: StylexModels, images: Tensor, steps: int = 100, lr: float = 0.02,
                          weight_kl: float = 1.0, lpips_model: nn.Module | None = None
                          ) -> tuple[pd.DataFrame, list[dict]]:
    """The encoder's w = E(x) against w refined from it for ``steps`` by :func:`refine_latents` on the same images: mean
    L1, LPIPS, KL and classifier consistency (rows) of each (columns ``encoder``, ``refined``), and the refinement's
    history."""
    encoded = invert(models, images, refine=False).w
    refined, history = refine_latents(models, images, steps, lr, weight_kl, lpips_model, start=encoded)
    tables = {"encoder": reconstruction_table(models, images, lpips_model, w=encoded),
              "refined": reconstruction_table(models, images, lpips_model, w=refined)}
    rows = ["l1", "lpips", "kl", "consistent"]
    return pd.DataFrame({name: table[rows].astype(float).mean() for name, table in tables.items()}), history


def pair_titles(models: StylexModels, inputs: Tensor, reconstructions: Tensor) -> list[str]:
    """Titles 'in <class> p' / 'rec <class> p' for interleaved (input, reconstruction) image pairs."""
    probs = classify(models.classifier, torch.cat([models.prepare(inputs), models.prepare(reconstructions)])).softmax(1)
    top, which = probs.max(1)
    names = [f"{models.class_names[i]} {p:.2f}" for i, p in zip(which.tolist(), top.tolist())]
    half = len(inputs)
    return [title for i in range(half) for title in (f"in {names[i]}", f"rec {names[half + i]}")]
