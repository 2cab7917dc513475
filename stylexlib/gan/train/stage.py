"""Stage 03: train StylEx into a run folder, then (post-training step) fit the encoder to the frozen G_ema.

Another post-training encoder fit goes here, after :meth:`StylexTrainer.train`, as a module of ``gan/`` beside
:mod:`stylexlib.gan.encoder_fit`."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from stylexlib.classifier.training import load_run_classifier
from stylexlib.core.distributed import SINGLE, DistInfo
from stylexlib.core.provenance import stylex_fingerprint
from stylexlib.core.run import Run
from stylexlib.core.stylex_config import replace_keys
from stylexlib.data import ImageDataset
from stylexlib.gan import encoder_fit
from stylexlib.gan.train.loop import TrainSummary
from stylexlib.gan.train.trainer import StylexTrainer


def train_stylex(run: Run, data: ImageDataset, classifier: nn.Module | None = None, device: torch.device | None = None,
                 dist: DistInfo = SINGLE, progress: bool = True) -> TrainSummary:
    """Stage 03: train StylEx into the run folder, resuming from its checkpoint; then, with
    ``stylex.encoder_fit.minutes``, fit the encoder to the frozen G_ema (:mod:`stylexlib.gan.encoder_fit`) in the last
    minutes of the time limit. The loss curves are :func:`stylexlib.report.plots.loss_curves` of ``stats.jsonl``."""
    classifier = classifier if classifier is not None else load_run_classifier(run, data)
    cfg = run.cfg.stylex
    fit_minutes = cfg.encoder_fit.minutes
    if fit_minutes and cfg.schedule.time_limit_minutes:
        if fit_minutes >= cfg.schedule.time_limit_minutes:
            raise ValueError(f"stylex.encoder_fit.minutes ({fit_minutes}) must be less than "
                             f"stylex.schedule.time_limit_minutes ({cfg.schedule.time_limit_minutes}): the fit takes "
                             "its minutes from the time limit")
        cfg = replace_keys(cfg, time_limit_minutes=cfg.schedule.time_limit_minutes - fit_minutes)
    trainer = StylexTrainer(cfg, data, classifier, out_dir=run.dir, device=device, dist=dist,
                            fingerprint=stylex_fingerprint(run.cfg))
    trainer.resume()
    summary = trainer.train(progress=progress)
    if fit_minutes and dist.is_main:
        encoder_fit.fit_checkpoint_encoder(trainer, data, fit_minutes, progress)
    return summary


def latest_preview(run_dir: str | Path, kind: str) -> Path | None:
    """The newest ``figures/{kind}_STEP.png`` of a run ("samples" or "reconstructions"), or None."""
    found = sorted((Path(run_dir) / "figures").glob(f"{kind}_[0-9]*.png"))
    return found[-1] if found else None
