"""StylEx training (Lang et al., ICCV 2021): G, its EMA copy, encoder E, conditional D, frozen classifier C.

One step: a seeded real batch x and C(x) (:mod:`.batches`); the encoder path x' = G(E(x), C(x)) and/or the random path
G(mapping(z), C(shuffled x)) as :mod:`.schedule` says (warm-up, "mix", "alternate"), rendered by :mod:`.forward`; then
the phases (:mod:`.phases`: D, lazy R1, G+E, lazy path length, the mapping match), each minimising its weighted terms
from the registry (:mod:`.loss_terms`); the EMA update (:mod:`.state`). :mod:`.loop` runs the steps with the time limit
and calls :mod:`.callbacks` (checkpoints, previews, the collapse check); :mod:`.stats` reads the losses once per log
tick. Where a change goes: a new loss term, :mod:`.loss_terms`; a new path, :mod:`.schedule` and :mod:`.forward`;
another encoder fit, a module of ``gan/`` called from :mod:`.stage` after training; a new setting, a field of its
group in :mod:`stylexlib.core.stylex_config`.
Single process, or data parallel under ``torchrun`` (see :mod:`stylexlib.core.distributed`)::

    torchrun --nproc_per_node=4 -m stylexlib train runs/demo
"""
from stylexlib.gan.train.loop import TrainSummary
from stylexlib.gan.train.loss_terms import LOSS_TERMS, LossTerm, loss_weights, register
from stylexlib.gan.train.schedule import PATH_MODES
from stylexlib.gan.train.stage import latest_preview, train_stylex
from stylexlib.gan.train.state import adam, autocast_dtype
from stylexlib.gan.train.stats import TrainingDiverged
from stylexlib.gan.train.trainer import StylexTrainer

__all__ = ["LOSS_TERMS", "PATH_MODES", "LossTerm", "StylexTrainer", "TrainSummary", "TrainingDiverged", "adam",
           "autocast_dtype", "latest_preview", "loss_weights", "register", "train_stylex"]
