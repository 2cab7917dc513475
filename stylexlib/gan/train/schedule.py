"""The path schedule: which paths run on a step (warm-up, "mix", "alternate") and when the lazy regularisers are due.

A new path (another way to make the images a step trains on) goes here (when it runs) and in
:func:`stylexlib.gan.train.forward.generate` (what it renders)."""
from __future__ import annotations

from dataclasses import dataclass

from stylexlib.core.config import StylexConfig

PATH_MODES = ("mix", "alternate")


@dataclass(frozen=True)
class Paths:
    """The paths a step runs: the encoder path x -> E -> G and the random path z -> mapping -> G."""

    encoder: bool
    random: bool


class PathSchedule:
    """The first ``warmup_steps`` train E and G as an autoencoder (encoder path only, no D); then both paths every step
    ("mix") or one per step ("alternate": the encoder path when ``step % encoder_every == 0``)."""

    def __init__(self, cfg: StylexConfig) -> None:
        if cfg.schedule.path_mode not in PATH_MODES:
            raise ValueError(f"stylex.schedule.path_mode must be one of {PATH_MODES}, got '{cfg.schedule.path_mode}'")
        self.cfg = cfg

    def warming_up(self, step: int) -> bool:
        """True during the reconstruction-first warm-up (``stylex.schedule.warmup_steps``)."""
        return step < self.cfg.schedule.warmup_steps

    def paths(self, step: int) -> Paths:
        """The paths of ``step`` (counted from 0)."""
        if self.warming_up(step):
            return Paths(encoder=True, random=False)
        if self.cfg.schedule.path_mode == "mix":
            return Paths(encoder=True, random=True)
        encoder = step % self.cfg.schedule.encoder_every == 0
        return Paths(encoder=encoder, random=not encoder)

    def r1_due(self, step: int) -> bool:
        """Lazy R1 on every ``r1_every``-th step (D trains on every step after the warm-up)."""
        reg = self.cfg.regularise
        return reg.r1_gamma > 0 and not self.warming_up(step) and step % reg.r1_every == 0

    def path_length_due(self, step: int) -> bool:
        """Lazy path-length regularisation on every ``pl_every``-th step after the warm-up."""
        reg = self.cfg.regularise
        return reg.pl_weight > 0 and not self.warming_up(step) and step % reg.pl_every == 0
