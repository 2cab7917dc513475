"""The encoder's second stage: E alone, fitted to the frozen EMA generator that every later stage renders with.

During the adversarial game G moves quickly and E co-adapts with the live G, while inversion, AttFind and the
galleries render with the averaged G_ema: on photographs the pair drifts apart (UTKFace at 32 px: LPIPS 0.15 with
G + E against 0.25 with G_ema + E, and reconstructions turn into one average face; docs/experiments.md, "Real
photographs"). As the inversion encoders pSp, e4e and ReStyle do, this stage trains E against a frozen generator:
L1 + LPIPS + KL(C(x) || C(x')) on real images, plus the latent cycle |E(G(w, c)) - w| on fresh samples
(``stylex.encoder_fit.weight_sample_cycle``). Adam with momentum (beta1 0.9), at ``stylex.encoder_fit.lr``.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from stylexlib.core.config import StylexConfig
from stylexlib.core.io import torch_save
from stylexlib.core.progress import tqdm
from stylexlib.data import ImageDataset, to_float
from stylexlib.gan.checkpoint import load_checkpoint
from stylexlib.gan.losses import classifier_kl_loss, lpips_distance
from stylexlib.gan.models import class_input

log = logging.getLogger(__name__)


@dataclass
class FitSummary:
    """What :func:`fit_encoder` did."""

    steps: int
    seconds: float
    losses: dict[str, float]  # the last 50 steps' mean of each term
    encoder: nn.Module  # the fitted encoder (frozen)


class EncoderFitter:
    """Trains a copy of an encoder against a frozen generator and classifier (both left untouched)."""

    def __init__(self, cfg: StylexConfig, generator: nn.Module, encoder: nn.Module, classifier: nn.Module,
                 lpips_model: nn.Module, data: ImageDataset, device: torch.device, seed: int = 0) -> None:
        self.cfg, self.device = cfg, device
        self.generator = generator.eval().requires_grad_(False)
        self.classifier = classifier.eval().requires_grad_(False)
        self.encoder = copy.deepcopy(encoder).train().requires_grad_(True)
        self.lpips = lpips_model
        self.train_positions = torch.as_tensor(data.indices("train"))
        if len(self.train_positions) == 0:
            raise ValueError("no training images: the train split is empty")
        self.images = data.images
        self.rng = torch.Generator().manual_seed(seed * 1000 + 17)
        params = [p for p in self.encoder.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=cfg.encoder_fit.lr, betas=(0.9, 0.99))
        self.step = 0

    def _batch(self) -> Tensor:
        count = len(self.train_positions)
        picks = self.train_positions[torch.randint(count, (self.cfg.optim.batch_size,), generator=self.rng)]
        return to_float(self.images[picks]).to(self.device)

    def train_step(self) -> dict[str, Tensor]:
        """One Adam step of E on a real batch (reconstruction) and a batch of fresh samples (latent cycle)."""
        cfg, x = self.cfg, self._batch()
        with torch.no_grad():
            logits = self.classifier(x).float()
        condition = class_input(logits, cfg.model.condition_on)
        rec = self.generator(self.encoder(x), condition, noise_mode="const")
        terms = {"l1": (x - rec).abs().mean(), "lpips": lpips_distance(self.lpips, x, rec).mean()}
        loss = cfg.weight("l1") * terms["l1"] + cfg.weight("lpips") * terms["lpips"]
        if cfg.weight("kl") > 0:
            terms["kl"] = classifier_kl_loss(logits, self.classifier(rec))
            loss = loss + cfg.weight("kl") * terms["kl"]
        if cfg.encoder_fit.weight_sample_cycle > 0:
            with torch.no_grad():
                z = torch.randn(len(x), cfg.model.latent_dim, generator=self.rng).to(self.device)
                w = self.generator.mapping(z)
                samples = self.generator(w, condition[torch.randperm(len(x), generator=self.rng)], noise_mode="const")
            terms["sample_cycle"] = (self.encoder(samples) - w).abs().mean()
            loss = loss + cfg.encoder_fit.weight_sample_cycle * terms["sample_cycle"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return {name: value.detach() for name, value in terms.items()}

    def fit(self, steps: int | None = None, minutes: float | None = None, progress: bool = True) -> FitSummary:
        """Train until ``steps`` or ``minutes`` (whichever comes first; at least one must be given)."""
        if steps is None and minutes is None:
            raise ValueError("fit needs steps or minutes")
        total, limit = steps if steps is not None else math.inf, (minutes or math.inf) * 60
        started, recent = time.perf_counter(), []
        bar = tqdm(total=None if steps is None else steps, desc="fit encoder to G_ema", disable=not progress)
        try:
            while self.step < total and time.perf_counter() - started < limit:
                terms = self.train_step()
                recent = (recent + [terms])[-50:]
                bar.update(1)
                if self.step % 50 == 0:
                    bar.set_postfix({k: f"{float(v):.3g}" for k, v in terms.items()})
        finally:
            bar.close()
        losses = {k: float(torch.stack([t[k] for t in recent]).mean()) for k in (recent[-1] if recent else {})}
        for name, value in losses.items():
            if not math.isfinite(value):
                raise RuntimeError(f"fitting the encoder diverged: '{name}' is {value}; lower stylex.encoder_fit.lr")
        self.encoder.eval().requires_grad_(False)
        return FitSummary(self.step, time.perf_counter() - started, losses, self.encoder)


def fit_checkpoint_encoder(trainer, data: ImageDataset, minutes: float, progress: bool = True) -> FitSummary | None:
    """Fit the trainer's encoder to its G_ema for ``minutes`` and store it in the checkpoint as ``E_fit`` (which
    :func:`stylexlib.gan.models.load_models` prefers); skipped when the checkpoint already holds a fit of this step with
    these minutes and ``encoder_fit_lr`` (keys outside the GAN's fingerprint: a change fits again, never retrains G)."""
    path, lr = trainer.checkpoint_file, trainer.cfg.encoder_fit.lr
    state = load_checkpoint(path)
    done = state.get("encoder_fit", {})
    same = done.get("minutes", minutes) == minutes and done.get("lr", lr) == lr  # (fits recorded before: as now)
    if done.get("step") == state["step"] and "E_fit" in state and same:
        log.info("the encoder fit of step %d is in %s already", state["step"], path)
        return None
    models = trainer.models()
    fitter = EncoderFitter(trainer.cfg, models.generator, models.encoder, trainer.classifier, trainer.lpips, data,
                           trainer.device, trainer.cfg.seed)
    summary = fitter.fit(minutes=minutes, progress=progress)
    state["E_fit"] = fitter.encoder.state_dict()
    state["encoder_fit"] = {"step": state["step"], "minutes": minutes, "lr": lr, "steps": summary.steps,
                            "seconds": summary.seconds, **summary.losses}
    torch_save(path, state)
    log.info("fitted the encoder to G_ema for %d steps (%.1f min): %s", summary.steps, summary.seconds / 60,
             summary.losses)
    return summary
