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


class FeatureDiscriminator(nn.Module):
    """``D(images, class_probs) -> (N,)`` on frozen pretrained features, in the spirit of Projected GANs (Sauer et al.,
    NeurIPS 2021): the LPIPS SqueezeNet trunk (ImageNet weights, shipped for LPIPS) reads the image at 32 px; per
    feature scale a fixed random 1x1 projection and a small trained head give per-class logits, weighted by the
    classifier's probabilities and summed over scales. D starts from features that already tell shapes apart, so it
    gives G useful gradients from the first steps."""

    SCALES = (0, 1, 2)  # SqueezeNet slices: 32 px -> 15, 7, 3 px features (64, 128, 256 channels)
    INPUT_SIZE = 32  # the trunk reads 32 px images as they are (LPIPS_MIN_SIZE); larger ones are resized down

    def __init__(self, resolution: int, num_classes: int, cfg: StylexConfig, trunk: nn.Module | None = None,
                 width: int = 64):
        super().__init__()
        if trunk is None:
            from stylexlib.gan.losses import load_lpips

            trunk = load_lpips(cfg.lpips_net if cfg.lpips_net == "squeeze" else "squeeze")
        self.resolution, self.num_classes = resolution, num_classes
        self.scaling = trunk.scaling_layer
        self.slices = nn.ModuleList(getattr(trunk.net, f"slice{i + 1}") for i in range(max(self.SCALES) + 1))
        for p in self.parameters():
            p.requires_grad_(False)  # the trunk stays frozen; the heads are created below
        with torch.no_grad():
            channels = [f.shape[1] for f in self._features(torch.zeros(1, 3, resolution, resolution))]
        gen = torch.Generator().manual_seed(cfg.seed)
        for i, c in enumerate(channels):
            self.register_buffer(f"projection{i}", torch.randn(width, c, 1, 1, generator=gen) / math.sqrt(c))
        self.heads = nn.ModuleList(self._head(width, num_classes) for _ in channels)

    def requires_grad_(self, requires_grad: bool = True) -> FeatureDiscriminator:
        """Only the heads ever train: the pretrained trunk and the random projections stay fixed."""
        self.heads.requires_grad_(requires_grad)
        return self

    @staticmethod
    def _head(width: int, num_classes: int) -> nn.Module:
        return nn.Sequential(EqualConv2d(width, width, 3), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                             EqualLinear(width * 16, width, activate=True), EqualLinear(width, num_classes))

    def _features(self, images: Tensor) -> list[Tensor]:
        x = F.interpolate(images, size=self.INPUT_SIZE, mode="bilinear", align_corners=False) \
            if images.shape[-1] != self.INPUT_SIZE else images
        x, out = self.scaling(x), []
        for i, block in enumerate(self.slices):
            x = block(x)
            if i in self.SCALES:
                out.append(x)
        return out

    def forward(self, images: Tensor, class_probs: Tensor) -> Tensor:
        if class_probs.shape != (images.shape[0], self.num_classes):
            raise ValueError(f"class_probs must have shape ({images.shape[0]}, {self.num_classes}), "
                             f"got {tuple(class_probs.shape)}")
        logits = sum(head(F.conv2d(f, getattr(self, f"projection{i}").to(f.dtype)))
                     for i, (f, head) in enumerate(zip(self._features(images), self.heads)))
        return (logits.float() * class_probs.float()).sum(dim=1)
