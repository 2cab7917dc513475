"""Conditional residual StyleGAN2 discriminator (Karras et al. 2020), weighted by class probabilities.

StylEx (Lang et al., ICCV 2021) makes D class-conditional: one logit per class, summed with the
classifier's probabilities as weights.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stylexlib.core.config import StylexConfig
from stylexlib.gan.generator import EqualConv2d, EqualLinear, channels_at, check_resolution


class ResidualDownBlock(nn.Module):
    """Two 3x3 convs with 2x average-pool downsampling between them, plus a 1x1 skip; sum / sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, activate=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv1(F.avg_pool2d(self.conv0(x), 2))
        return torch.add(y, self.skip(F.avg_pool2d(x, 2))).mul_(1 / math.sqrt(2.0))


class DownsamplingTrunk(nn.Module):
    """fromRGB (1x1) at the input resolution, then residual blocks down to 4x4 features."""

    def __init__(self, resolution: int, cfg: StylexConfig):
        super().__init__()
        log2 = check_resolution(resolution)
        self.from_rgb = EqualConv2d(3, channels_at(resolution, cfg), 1)
        self.blocks = nn.Sequential(*[
            ResidualDownBlock(channels_at(2**i, cfg), channels_at(2 ** (i - 1), cfg))
            for i in range(log2, 2, -1)
        ])
        self.out_channels = channels_at(4, cfg)

    def forward(self, images: Tensor) -> Tensor:
        return self.blocks(self.from_rgb(images))


def minibatch_stddev(x: Tensor, group_size: int = 4) -> Tensor:
    """Append one channel: the feature std across a group of samples (StyleGAN2's minibatch-stddev)."""
    n, c, h, w = x.shape
    group = max(g for g in range(1, min(group_size, n) + 1) if n % g == 0)
    y = x.float().reshape(group, -1, c, h, w)
    y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))
    y = y.reshape(-1, 1, 1, 1).repeat(group, 1, h, w).to(x.dtype)
    return torch.cat([x, y], dim=1)


class Discriminator(nn.Module):
    """``D(images, class_probs) -> (N,)``: sum over classes of probability * per-class logit."""

    def __init__(self, resolution: int, num_classes: int, cfg: StylexConfig):
        super().__init__()
        self.resolution = resolution
        self.num_classes = num_classes
        self.trunk = DownsamplingTrunk(resolution, cfg)
        ch = self.trunk.out_channels
        self.conv = EqualConv2d(ch + 1, ch, 3)
        self.fc = EqualLinear(ch * 16, ch, activate=True)
        self.class_logits = EqualLinear(ch, num_classes)

    def forward(self, images: Tensor, class_probs: Tensor) -> Tensor:
        return self._head(self.trunk(images), class_probs)

    def judge_batches(self, batches: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
        """``[D(images, probs) for images, probs in batches]`` with one trunk pass over all the images: the trunk
        works per image, so only the minibatch-stddev head runs per batch (the same values, to float rounding)."""
        features = self.trunk(torch.cat([images for images, _ in batches])).split([len(i) for i, _ in batches])
        return [self._head(part, probs) for part, (_, probs) in zip(features, batches)]

    def _head(self, features: Tensor, class_probs: Tensor) -> Tensor:
        if class_probs.shape != (features.shape[0], self.num_classes):
            raise ValueError(f"class_probs must have shape ({features.shape[0]}, {self.num_classes}), "
                             f"got {tuple(class_probs.shape)}")
        x = self.conv(minibatch_stddev(features))
        logits = self.class_logits(self.fc(x.flatten(1)))
        return (logits.float() * class_probs.float()).sum(dim=1)
