"""Compatibility: StylEx training moved to the package :mod:`stylexlib.gan.train`; these names stay importable here.
The loss curves moved to :func:`stylexlib.report.plots.loss_curves` (a figure: the report layer)."""
from stylexlib.gan.train import (PATH_MODES, StylexTrainer, TrainingDiverged, TrainSummary, adam, autocast_dtype,
                                 latest_preview, train_stylex)
from stylexlib.gan.train.batches import BatchSampler
from stylexlib.gan.train.callbacks import PREVIEW_COUNT
from stylexlib.gan.train.forward import Generated

__all__ = ["PATH_MODES", "PREVIEW_COUNT", "BatchSampler", "Generated", "StylexTrainer", "TrainSummary",
           "TrainingDiverged", "adam", "autocast_dtype", "latest_preview", "train_stylex"]
