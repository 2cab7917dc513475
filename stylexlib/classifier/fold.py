"""A frozen classifier with its eval-mode BatchNorms folded into the convolutions before them: the same function (to
float rounding) in fewer passes over the activations, for the many classifier calls of StylEx training."""
from __future__ import annotations

import copy

import torch
from torch import nn


def folded_copy(classifier: nn.Module) -> nn.Module:
    """A frozen eval-mode copy of ``classifier`` where each ``Conv2d -> BatchNorm2d`` pair inside an ``nn.Sequential``
    becomes one convolution (the BatchNorm an ``nn.Identity``); other modules are copied as they are."""
    folded = copy.deepcopy(classifier).eval().requires_grad_(False)
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = module._modules[first], module._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats:
                fold_into(conv, norm)
                module._modules[second] = nn.Identity()
    return folded


@torch.no_grad()
def fold_into(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    """Make ``conv`` compute ``norm(conv(x))`` (``norm`` in eval mode: its running statistics)."""
    scale = norm.running_var.add(norm.eps).rsqrt()
    if norm.weight is not None:
        scale = scale * norm.weight
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    shift = (bias - norm.running_mean) * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter(shift, requires_grad=False)
