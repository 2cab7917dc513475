"""Lossless speed-ups of the StylEx training step, each with a switch: all on by default; all off is the plain step
(what ``benchmarks/train_step.py --variants`` measures against, and what the equivalence test compares with)."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import nn


@dataclass(frozen=True)
class StepOptions:
    """What ``StylexTrainer.train_step`` may do faster without changing what is learned (beyond float rounding)."""

    cached_real_logits: bool = True  # C(x) of each training image computed once, when first drawn (C is frozen)
    batched_classifier: bool = True  # one classifier pass over reconstructions and samples (the KL terms)
    batched_discriminator: bool = True  # the D step's real and generated images share one pass of D's trunk
    folded_classifier: bool = True  # the frozen classifier's eval-mode BatchNorms folded into its convolutions
    fused_adam: bool = True  # Adam's fused kernel (CPU and CUDA) instead of a loop over parameters
    foreach_ema: bool = True  # the EMA update as one torch._foreach_lerp_ over all parameters

    @classmethod
    def none(cls) -> StepOptions:
        """Every speed-up off: the plain step."""
        return cls(**{f.name: False for f in fields(cls)})

    def without(self, name: str) -> StepOptions:
        """These options with one switched off."""
        return replace(self, **{name: False})


def option_names() -> list[str]:
    return [f.name for f in fields(StepOptions)]


@torch.no_grad()
def update_ema(averaged: nn.Module, net: nn.Module, weight: float, foreach: bool) -> None:
    """``averaged``'s parameters move ``weight`` of the way to ``net``'s (lerp); its buffers become ``net``'s."""
    targets, sources = list(averaged.parameters()), list(net.parameters())
    if foreach:
        torch._foreach_lerp_(targets, sources, weight)
        buffers = list(averaged.buffers())
        if buffers:
            torch._foreach_copy_(buffers, list(net.buffers()))
        return
    for ema, param in zip(targets, sources):
        ema.lerp_(param, weight)
    for ema, buffer in zip(averaged.buffers(), net.buffers()):
        ema.copy_(buffer)
