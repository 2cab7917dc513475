"""StylEx encoder E: image -> w (Lang et al., ICCV 2021): a net shaped like the discriminator, trained from scratch (the
paper's). After training, :mod:`stylexlib.gan.encoder_fit` fits it to the frozen G_ema.
"""
from __future__ import annotations

from torch import Tensor, nn

from stylexlib.core.config import StylexConfig
from stylexlib.gan.discriminator import DownsamplingTrunk
from stylexlib.gan.generator import EqualConv2d, EqualLinear


class Encoder(nn.Module):
    """``E(images) -> w`` (N, latent_dim); per-sample (no minibatch statistics)."""

    def __init__(self, resolution: int, latent_dim: int, cfg: StylexConfig):
        super().__init__()
        self.resolution, self.latent_dim = resolution, latent_dim
        self.trunk = DownsamplingTrunk(resolution, cfg)
        ch = self.trunk.out_channels
        self.conv = EqualConv2d(ch, ch, 3)
        self.fc = EqualLinear(ch * 16, ch, activate=True)
        self.to_latent = EqualLinear(ch, latent_dim)

    def forward(self, images: Tensor) -> Tensor:
        return self.to_latent(self.fc(self.conv(self.trunk(images)).flatten(1)))
