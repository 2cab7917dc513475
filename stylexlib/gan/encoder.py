"""StylEx encoder E: image -> w (Lang et al., ICCV 2021).

Two backbones (``stylex.encoder``): "residual", a net shaped like the discriminator and trained from scratch (the
paper's), and "squeeze", trained heads on the frozen ImageNet SqueezeNet trunk that LPIPS already ships (pretrained
backbones, as the inversion encoders pSp and e4e use). With ``stylex.encoder_offset`` E predicts an offset from the
average latent of the mapping network (``w_avg``, kept up to date by the trainer), as pSp's ``start_from_latent_avg``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stylexlib.core.config import StylexConfig
from stylexlib.gan.discriminator import DownsamplingTrunk
from stylexlib.gan.generator import EqualConv2d, EqualLinear

SQUEEZE_INPUT = 64  # the pretrained trunk reads images at 64 px (smaller ones are enlarged)
SQUEEZE_SCALES = (0, 1, 2, 6)  # SqueezeNet slices read at 64 px: 31, 15, 7 and 3 px features
SQUEEZE_POOL = 4  # each scale pooled to 4 x 4 cells (keeps the layout: pose, where the hair is)
SQUEEZE_REDUCED = 32  # channels per scale after a trained 1x1 projection
HEAD_WIDTH = 256


class Encoder(nn.Module):
    """``E(images) -> w`` (N, latent_dim); per-sample (no minibatch statistics)."""

    def __init__(self, resolution: int, latent_dim: int, cfg: StylexConfig, trunk: nn.Module | None = None):
        super().__init__()
        if cfg.encoder not in ("residual", "squeeze"):
            raise ValueError(f"stylex.encoder must be 'residual' or 'squeeze', got '{cfg.encoder}'")
        self.resolution, self.latent_dim, self.backbone = resolution, latent_dim, cfg.encoder
        if cfg.encoder_offset:  # the mapping network's mean latent, kept up to date by the trainer
            self.register_buffer("w_avg", torch.zeros(latent_dim))
        else:
            self.w_avg = None
        if cfg.encoder == "squeeze":
            self.features = SqueezeFeatures(trunk)
            width = SQUEEZE_REDUCED * SQUEEZE_POOL**2 * len(SQUEEZE_SCALES)
            self.fc, ch = EqualLinear(width, HEAD_WIDTH, activate=True), HEAD_WIDTH
        else:
            self.trunk = DownsamplingTrunk(resolution, cfg)
            ch = self.trunk.out_channels
            self.conv = EqualConv2d(ch, ch, 3)
            self.fc = EqualLinear(ch * 16, ch, activate=True)
        self.to_latent = EqualLinear(ch, latent_dim)

    def requires_grad_(self, requires_grad: bool = True) -> Encoder:
        """As nn.Module's, except that a pretrained trunk stays frozen."""
        super().requires_grad_(requires_grad)
        if self.backbone == "squeeze":
            self.features.requires_grad_(requires_grad)
        return self

    def forward(self, images: Tensor) -> Tensor:
        x = self.features(images) if self.backbone == "squeeze" else self.conv(self.trunk(images)).flatten(1)
        w = self.to_latent(self.fc(x))
        return w if self.w_avg is None else w + self.w_avg.to(w.dtype)


class SqueezeFeatures(nn.Module):
    """Frozen ImageNet SqueezeNet features (LPIPS's trunk and input scaling) at several scales, each projected by a
    trained 1x1 conv and average-pooled to a 4 x 4 grid, flattened."""

    def __init__(self, trunk: nn.Module | None = None):
        super().__init__()
        if trunk is None:
            from stylexlib.gan.losses import load_lpips

            trunk = load_lpips("squeeze")
        self.scaling = trunk.scaling_layer
        self.slices = nn.ModuleList(getattr(trunk.net, f"slice{i + 1}") for i in range(max(SQUEEZE_SCALES) + 1))
        self.slices.requires_grad_(False)
        with torch.no_grad():
            channels = [f.shape[1] for f in self._trunk(torch.zeros(1, 3, SQUEEZE_INPUT, SQUEEZE_INPUT))]
        self.projections = nn.ModuleList(EqualConv2d(c, SQUEEZE_REDUCED, 1) for c in channels)

    def requires_grad_(self, requires_grad: bool = True) -> SqueezeFeatures:
        """Only the projections ever train: the pretrained trunk stays frozen."""
        self.slices.requires_grad_(False)
        self.projections.requires_grad_(requires_grad)
        return self

    def _trunk(self, images: Tensor) -> list[Tensor]:
        if images.shape[-1] != SQUEEZE_INPUT:
            images = F.interpolate(images, size=SQUEEZE_INPUT, mode="bilinear", align_corners=False)
        x, out = self.scaling(images), []
        for i, block in enumerate(self.slices):
            x = block(x)
            if i in SQUEEZE_SCALES:
                out.append(x)
        return out

    def forward(self, images: Tensor) -> Tensor:
        cells = [F.adaptive_avg_pool2d(projection(f), SQUEEZE_POOL)
                 for projection, f in zip(self.projections, self._trunk(images))]
        return torch.cat(cells, dim=1).flatten(1)
