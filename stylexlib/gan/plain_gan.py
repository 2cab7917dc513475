"""The classifier-free baseline GAN: StyleSpace without the classifier (Wu et al., CVPR 2021, as StylEx ran it).

The same trainer, sizes, losses and number of steps as the run's StylEx model, with the classifier taken out: the
generator's class input is a constant zero, the discriminator's class heads are averaged (unconditional), and the
KL terms are off. The encoder is still trained, so real images can be inverted into its StyleSpace.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from stylexlib.core.config import StylexConfig
from stylexlib.core.provenance import stylex_fingerprint
from stylexlib.core.run import Run
from stylexlib.core.stylex_config import replace_keys
from stylexlib.data import ImageDataset
from stylexlib.gan.checkpoint import CHECKPOINT_FILE
from stylexlib.gan.models import StylexModels, load_models
from stylexlib.gan.train import StylexTrainer, TrainSummary

PLAIN_GAN_DIR = ("baselines", "plain_gan")


def plain_gan_config(cfg: StylexConfig, steps: int) -> StylexConfig:
    """StylEx's config with the classifier taken out, trained for exactly ``steps`` steps (no time limit)."""
    return replace_keys(cfg, condition_on="none", loss={**cfg.loss, "kl": 0.0, "sample_kl": 0.0}, steps=steps,
                               time_limit_minutes=None)


def plain_gan_dir(run: Run) -> Path:
    return run.path(*PLAIN_GAN_DIR)


def plain_gan_fingerprint(run: Run, steps: int) -> str:
    return stylex_fingerprint(dataclasses.replace(run.cfg, stylex=plain_gan_config(run.cfg.stylex, steps)))


def train_plain_gan(run: Run, data: ImageDataset, classifier: nn.Module, steps: int,
                    device: torch.device | None = None, progress: bool = True) -> TrainSummary:
    """Train (or resume) the baseline GAN into ``baselines/plain_gan`` for ``steps`` steps (StylEx's: the budget); its
    ``stats.jsonl`` plots with :func:`stylexlib.report.plots.loss_curves`."""
    out = plain_gan_dir(run)
    trainer = StylexTrainer(plain_gan_config(run.cfg.stylex, steps), data, classifier, out_dir=out, device=device,
                            fingerprint=plain_gan_fingerprint(run, steps))
    trainer.resume()
    return trainer.train(progress=progress)


def load_plain_gan(run: Run, classifier: nn.Module, steps: int, device: torch.device | str | None = None
                   ) -> StylexModels:
    """The baseline GAN trained for ``steps`` steps: EMA generator and encoder, with the run's classifier (not in its
    loop)."""
    return load_models(plain_gan_dir(run).joinpath(*CHECKPOINT_FILE), classifier, plain_gan_fingerprint(run, steps),
                       "09", device)
