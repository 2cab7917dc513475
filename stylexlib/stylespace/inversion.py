"""Inversion: real images -> (w, c = C(x)) -> StyleSpace, reconstruction quality.

StylEx (Lang et al., ICCV 2021) encodes an image with its encoder, w = E(x), and conditions the generator on the
classifier's output. With ``inversion.per_image_steps`` > 0 every inversion then optimises per image from E(x)
(hybrid inversion, as in Zhu et al. 2020 "In-domain GAN inversion" and Abdal et al. 2019), minimising
LPIPS + L1 + KL(C(x) || C(x')): on real photographs the encoder alone keeps skin tone, pose and lighting but loses who
the person is (docs/experiments.md, "Real photographs"). ``inversion.per_image_space`` says what is optimised: w
(x' = G(w, c)), or the StyleSpace vector s that AttFind edits (x' = G.synthesize(s), starting from G.styles(E(x), c)),
which reaches finer detail than one w can.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor, nn

from stylexlib.classifier.predict import classify
from stylexlib.core.distributed import SINGLE, DistInfo
from stylexlib.core.progress import tqdm
from stylexlib.gan.losses import classifier_kl_loss, load_lpips, lpips_distance
from stylexlib.gan.models import StylexModels


@dataclass
class Inverted:
    """Images encoded into the generator: latents, class inputs, StyleSpace and the classifier's logits on x."""

    w: Tensor  # (N, latent_dim): E(x), refined when inversion.per_image_space is "w"
    c: Tensor  # (N, classes): the generator's class input (probabilities or logits of C(x))
    styles: Tensor  # (N, S): what the reconstruction renders, G.styles(w, c) or refined itself
    logits: Tensor  # (N, classes): C(x)


def invert(models: StylexModels, images: Tensor, batch_size: int = 64, refine: bool = True,
           progress: bool = True, lpips_model: nn.Module | None = None, weight_kl: float | None = None,
           dist: DistInfo = SINGLE) -> Inverted:
    """Invert uint8 or [-1, 1] images: w = E(x); c from C(x); styles = G.styles(w, c); when ``refine``, w or the styles
    (``models.inversion.per_image_space``) refined for ``models.inversion.per_image_steps`` (with ``lpips_model``,
    loaded when needed and not given; ``weight_kl`` in place of ``models.inversion.weight_kl``), on the models' device.

    Refined inversions are read from and added to ``models.store`` when it is set (a run's
    :class:`~stylexlib.gan.inversion_store.InversionStore`): each image is refined once per run; under
    ``torch.distributed`` the missing ones are shared out over the ranks (``dist``)."""
    steps = models.inversion.per_image_steps if refine else 0
    if steps and lpips_model is None:
        lpips_model = load_lpips(models.cfg.model.lpips_net, models.device)
    kl = models.inversion.weight_kl if weight_kl is None else weight_kl

    def compute(batch: Tensor) -> tuple[Tensor, ...]:
        return _invert_batch(models, batch, steps, kl, lpips_model)

    desc = f"invert (E(x) + {steps} refinement steps)"
    if steps and weight_kl is None and models.store is not None:
        return Inverted(*models.store.invert(images, compute, batch_size, dist, desc=desc, progress=progress))
    parts = [compute(batch) for batch in tqdm(images.split(batch_size), desc=desc, disable=not (steps and progress))]
    if not parts:
        return Inverted(*(torch.empty(0) for _ in range(4)))
    return Inverted(*(torch.cat(column) for column in zip(*parts)))


def _invert_batch(models: StylexModels, batch: Tensor, steps: int, weight_kl: float,
                  lpips_model: nn.Module | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(w, c, styles, logits) of one batch on the CPU, refined for ``steps`` (each image on its own: the objective is
    a sum over images, so an image's inversion does not depend on its batch)."""
    x = models.prepare(batch)
    with torch.no_grad():
        logits = models.classifier(x).float()
        w, c = models.encoder(x), models.condition(logits)
    fit = dict(models=models, x=x, logits=logits, steps=steps, lr=models.inversion.per_image_lr, weight_kl=weight_kl,
               lpips_model=lpips_model, progress=False)
    in_stylespace = models.inversion.per_image_space == "stylespace"
    if steps and not in_stylespace:
        w = _fit(lambda latents: models.generator(latents, c, noise_mode="const"), w, **fit)[0].to(models.device)
    with torch.no_grad():
        styles = models.generator.styles(w, c)
    if steps and in_stylespace:
        styles = _fit(models.generator.synthesize, styles, **fit)[0]
    return w.cpu(), c.cpu(), styles.cpu(), logits.cpu()


@torch.no_grad()
def render_inverted(models: StylexModels, inverted: Inverted, batch_size: int = 64) -> Tensor:
    """The reconstructions G.synthesize(styles) of inverted images, in [-1, 1] on the CPU."""
    return torch.cat([models.generator.synthesize(styles.to(models.device)).clamp(-1, 1).cpu()
                      for styles in inverted.styles.split(batch_size)])


def reconstruct(models: StylexModels, images: Tensor, batch_size: int = 64) -> Tensor:
    """Reconstructions of uint8 or [-1, 1] images through :func:`invert` (refined as the models say), on the CPU."""
    return render_inverted(models, invert(models, images, batch_size), batch_size)


@torch.no_grad()
def reconstruction_table(models: StylexModels, images: Tensor, lpips_model: nn.Module | None = None,
                         batch_size: int = 64, styles: Tensor | None = None, refine: bool = True) -> pd.DataFrame:
    """Per image: L1, LPIPS, KL of C(x) vs C(x'), and whether C's decision agrees on x' = G.synthesize(styles).

    ``styles`` default to :func:`invert`'s (refined as ``models.inversion`` says unless not ``refine``); pass
    StyleSpace vectors to score them instead.
    """
    lpips_model = lpips_model if lpips_model is not None else load_lpips(models.cfg.model.lpips_net, models.device)
    if styles is None:
        styles = invert(models, images, batch_size, refine=refine, lpips_model=lpips_model).styles
    rows: list[pd.DataFrame] = []
    start = 0
    for batch in images.split(batch_size):
        x = models.prepare(batch)
        logits = models.classifier(x).float()
        rec = models.generator.synthesize(styles[start : start + len(x)].to(models.device))
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
                            batch_size: int = 64, refine: bool = True, styles: Tensor | None = None
                            ) -> dict[str, float]:
    """Held-out reconstruction quality: classifier consistency, LPIPS, L1 and KL of C(x) vs C(x') (``styles``: as in
    :func:`reconstruction_table`)."""
    table = reconstruction_table(models, images, lpips_model, batch_size, styles=styles, refine=refine)
    return {
        "recon_consistency": float(table["consistent"].mean()),
        "recon_lpips": float(table["lpips"].mean()),
        "recon_l1": float(table["l1"].mean()),
        "recon_kl": float(table["kl"].mean()),
    }


def consistency_variants(models: StylexModels, images: Tensor, lpips_model: nn.Module | None = None,
                         batch_size: int = 64, styles: Tensor | None = None) -> dict[str, float]:
    """How much of the classifier consistency the refinement's own KL term buys: consistency (C's decision on x
    kept on x') of E(x) alone (``recon_consistency_encoder``) and of the refinement without its KL term
    (``recon_consistency_no_kl``), beside the one every stage uses (``recon_consistency_refined``; ``styles``: its
    StyleSpace vectors when already inverted), on ``images``."""
    out = {"recon_consistency_encoder": reconstruction_table(models, images, lpips_model, batch_size, refine=False),
           "recon_consistency_refined": reconstruction_table(models, images, lpips_model, batch_size, styles=styles)}
    if models.inversion.per_image_steps:
        no_kl = invert(models, images, batch_size, lpips_model=lpips_model, weight_kl=0.0).styles
        out["recon_consistency_no_kl"] = reconstruction_table(models, images, lpips_model, batch_size, styles=no_kl)
    return {key: float(table["consistent"].mean()) for key, table in out.items()}


def refine_latents(models: StylexModels, images: Tensor, steps: int = 100, lr: float = 0.02,
                   weight_kl: float = 1.0, lpips_model: nn.Module | None = None, progress: bool = True,
                   start: Tensor | None = None) -> tuple[Tensor, list[dict[str, float]]]:
    """Optimise w per image (from ``start``, default E(x); c fixed to C(x)) for LPIPS + L1 + weight_kl * KL with Adam;
    returns (w on the CPU, per-step history of the batch means)."""
    x = models.prepare(images)
    with torch.no_grad():
        logits = models.classifier(x).float()
        c = models.condition(logits)
        w = models.encoder(x) if start is None else start.to(models.device)
    return _fit(lambda latents: models.generator(latents, c, noise_mode="const"), w, models, x, logits, steps, lr,
                weight_kl, lpips_model, progress, "refine w")


def _fit(render, start: Tensor, models: StylexModels, x: Tensor, logits: Tensor, steps: int, lr: float,
         weight_kl: float, lpips_model: nn.Module | None, progress: bool, desc: str = "refine"
         ) -> tuple[Tensor, list[dict[str, float]]]:
    """Adam on ``start`` (w or StyleSpace vectors) per image, minimising LPIPS + L1 + weight_kl * KL(C(x) ||
    C(render(variable))) for prepared images ``x`` with logits C(x); returns (the variable on the CPU, history)."""
    lpips_model = lpips_model if lpips_model is not None else load_lpips(models.cfg.model.lpips_net, models.device)
    variable = start.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([variable], lr=lr)
    history = []
    for step in tqdm(range(steps), desc=desc, disable=not progress):
        with torch.enable_grad():  # also when called under no_grad
            rec = render(variable)
            terms = {  # per image, summed below: each image's gradient is its own, whatever its batch
                "lpips": lpips_distance(lpips_model, x, rec).flatten(),
                "l1": (x - rec).abs().flatten(1).mean(1),
                "kl": classifier_kl_loss(logits, models.classifier(rec).float(), reduction="none"),
            }
            loss = terms["lpips"] + terms["l1"] + weight_kl * terms["kl"]
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
        optimizer.step()
        history.append({"step": step + 1, **{k: v.detach().mean() for k, v in {"loss": loss, **terms}.items()}})
    return variable.detach().cpu(), [{k: float(v) for k, v in row.items()} for row in history]


def refinement_comparison(models: StylexModels, images: Tensor, steps: int = 100, lr: float = 0.02,
                          weight_kl: float = 1.0, lpips_model: nn.Module | None = None
                          ) -> tuple[pd.DataFrame, list[dict]]:
    """The encoder's w = E(x) against w refined from it for ``steps`` by :func:`refine_latents` on the same images: mean
    L1, LPIPS, KL and classifier consistency (rows) of each (columns ``encoder``, ``refined``), and the refinement's
    history."""
    encoded = invert(models, images, refine=False)
    refined, history = refine_latents(models, images, steps, lr, weight_kl, lpips_model, start=encoded.w)
    with torch.no_grad():
        refined_styles = models.generator.styles(refined.to(models.device), encoded.c.to(models.device))
    tables = {"encoder": reconstruction_table(models, images, lpips_model, styles=encoded.styles),
              "refined": reconstruction_table(models, images, lpips_model, styles=refined_styles)}
    rows = ["l1", "lpips", "kl", "consistent"]
    return pd.DataFrame({name: table[rows].astype(float).mean() for name, table in tables.items()}), history


def pair_titles(models: StylexModels, inputs: Tensor, reconstructions: Tensor) -> list[str]:
    """Titles 'in <class> p' / 'rec <class> p' for interleaved (input, reconstruction) image pairs."""
    probs = classify(models.classifier, torch.cat([models.prepare(inputs), models.prepare(reconstructions)])).softmax(1)
    top, which = probs.max(1)
    names = [f"{models.class_names[i]} {p:.2f}" for i, p in zip(which.tolist(), top.tolist())]
    half = len(inputs)
    return [title for i in range(half) for title in (f"in {names[i]}", f"rec {names[half + i]}")]
