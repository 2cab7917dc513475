"""StyleGAN2 generator (Karras et al., CVPR 2020) with an explicit, flat StyleSpace.

StylEx (Lang et al., ICCV 2021) conditions every affine layer on ``[w, c]``, where ``c`` is the
classifier's output. Here all affine layers are stacked into one linear map, so
``G.styles(w, c)`` returns the whole StyleSpace as one (N, S) tensor and
``G.synthesize(styles)`` renders it; ``G.style_index`` names every coordinate.
Pure PyTorch: equalized learning rate everywhere, modulation applied to the activations
(one shared conv weight per batch) and demodulation as a small matrix product.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stylexlib.core.config import StylexConfig
from stylexlib.gan.stylespace import StyleLayer, StyleSpaceIndex

NOISE_MODES = ("const", "random", "none")


def channels_at(resolution: int, cfg: StylexConfig) -> int:
    """Feature channels at a resolution: ``min(channel_base // resolution, channel_max)``."""
    return max(1, min(cfg.model.channel_base // resolution, cfg.model.channel_max))


def check_resolution(resolution: int) -> int:
    """log2 of a power-of-two resolution >= 4 (raises ValueError otherwise)."""
    log2 = int(math.log2(resolution)) if resolution > 0 else 0
    if resolution < 4 or 2**log2 != resolution:
        raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
    return log2


# StyleGAN's leaky ReLU (slope 0.2) has a sqrt(2) output gain that keeps activations' scale. Since
# gain * lrelu(x) == lrelu(gain * x) for gain > 0, the gain is folded into the preceding affine op.
ACT_GAIN = math.sqrt(2.0)
MAPPING_LR_MUL = 0.01  # StyleGAN2: the mapping network learns at a hundredth of the rate


def lrelu_(x: Tensor) -> Tensor:
    """In-place leaky ReLU, slope 0.2 (on a fresh pre-activation already scaled by ``ACT_GAIN``)."""
    return F.leaky_relu_(x, 0.2)


def upsample2x(x: Tensor) -> Tensor:
    """Bilinear 2x upsampling (the separable [1, 3, 3, 1] / 4 filter, edges replicated)."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate (weights scaled at runtime by lr_mul / sqrt(fan_in))."""

    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul))
        gain = ACT_GAIN if activate else 1.0
        self.weight_gain = gain * lr_mul / math.sqrt(in_features)
        self.bias_gain = gain * lr_mul
        self.activate = activate

    def forward(self, x: Tensor) -> Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return lrelu_(x) if self.activate else x


class EqualConv2d(nn.Module):
    """Same-padded convolution with equalized learning rate, optional bias and lrelu."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 bias: bool = True, activate: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.act_gain = ACT_GAIN if activate else 1.0
        self.weight_gain = self.act_gain / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2
        self.activate = activate

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias * self.act_gain
        x = F.conv2d(x, self.weight * self.weight_gain, bias, padding=self.padding)
        return lrelu_(x) if self.activate else x


class MappingNetwork(nn.Module):
    """z -> w: pixel-normalised z through equalized-lr FC layers with lrelu (lr multiplier 0.01)."""

    def __init__(self, latent_dim: int, num_layers: int, lr_mul: float = MAPPING_LR_MUL):
        super().__init__()
        self.net = nn.Sequential(*[
            EqualLinear(latent_dim, latent_dim, lr_mul=lr_mul, activate=True) for _ in range(num_layers)
        ])

    def forward(self, z: Tensor) -> Tensor:
        z = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
        return self.net(z)


class SynthesisState(NamedTuple):
    """Activations between two synthesis layers: features ``x`` and the running skip image ``img``."""

    x: Tensor
    img: Tensor | None

    def expand(self, batch: int) -> SynthesisState:
        """The same state repeated (as a view) ``batch`` times; use to push many edits of one image."""
        img = None if self.img is None else self.img.expand(batch, -1, -1, -1)
        return SynthesisState(self.x.expand(batch, -1, -1, -1), img)


def modulated_conv2d(x: Tensor, style: Tensor, weight: Tensor, upsample: bool) -> Tensor:
    """``conv(x * s, w)``: modulation applied to the activations, so one conv weight serves the batch.

    Equals a convolution with StyleGAN2's per-sample weights ``w * s`` (Karras et al. 2020, Eq. 1);
    ``upsample`` doubles the resolution (bilinear) between modulation and convolution.
    """
    x = x * style[:, :, None, None].to(x.dtype)
    if upsample:
        x = upsample2x(x)
    return F.conv2d(x, weight.to(x.dtype), padding=weight.shape[-1] // 2)


def demodulation(style: Tensor, weight: Tensor) -> Tensor:
    """Per-sample output scales (N, out) ``1 / ||w * s||`` (StyleGAN2, Eq. 3) as one matrix product."""
    return torch.rsqrt(style.square() @ weight.square().sum(dim=(2, 3)).T + 1e-8)


class StyledConv(nn.Module):
    """Modulated 3x3 conv (optionally after 2x upsampling), demodulation, noise, bias, lrelu."""

    def __init__(self, in_channels: int, out_channels: int, resolution: int, upsample: bool,
                 noise_generator: torch.Generator):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution, generator=noise_generator))
        self.weight_gain = 1.0 / math.sqrt(in_channels * 9)
        self.in_channels = in_channels
        self.upsample = upsample
        self.resolution = resolution

    def forward(self, state: SynthesisState, style: Tensor, noise_mode: str) -> SynthesisState:
        weight = self.weight * self.weight_gain
        x = modulated_conv2d(state.x, style, weight, upsample=self.upsample)
        scale = (demodulation(style, weight) * ACT_GAIN).to(x.dtype)[:, :, None, None]
        shift = self.bias[:, None, None] * ACT_GAIN
        if noise_mode == "const":
            shift = shift + self.noise_const * (self.noise_strength * ACT_GAIN)
        x = (x * scale).add_(shift.to(x.dtype))  # in place: keeps x's memory format, no extra buffer
        if noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype)
            x.add_(noise * (self.noise_strength * ACT_GAIN).to(x.dtype))
        lrelu_(x)
        return SynthesisState(x, state.img)


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB (no demodulation), added to the upsampled skip image."""

    def __init__(self, in_channels: int, resolution: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(3))
        self.weight_gain = 1.0 / math.sqrt(in_channels)
        self.in_channels = in_channels
        self.resolution = resolution

    def forward(self, state: SynthesisState, style: Tensor, noise_mode: str) -> SynthesisState:
        rgb = modulated_conv2d(state.x, style, self.weight * self.weight_gain, upsample=False)
        rgb = rgb + self.bias.to(rgb.dtype)[:, None, None]
        img = rgb if state.img is None else upsample2x(state.img).to(rgb.dtype) + rgb
        return SynthesisState(state.x, img)


class Generator(nn.Module):
    """Conditional StyleGAN2 generator (skip architecture) with an explicit StyleSpace.

    ``G(w, c)`` equals ``G.synthesize(G.styles(w, c))``; ``z`` -> ``w`` is ``G.mapping(z)``.
    Layers, in synthesis order: ``b4.conv1, b4.torgb, b8.conv0 (upsamples), b8.conv1, b8.torgb,
    ...``; ``G.style_index`` maps flat style coordinates to them.
    """

    def __init__(self, resolution: int, num_classes: int, cfg: StylexConfig):
        super().__init__()
        log2 = check_resolution(resolution)
        self.resolution = resolution
        self.num_classes = num_classes
        self.latent_dim = cfg.model.latent_dim
        self.mapping = MappingNetwork(cfg.model.latent_dim, cfg.model.mapping_layers)
        ch = channels_at(4, cfg)
        self.const = nn.Parameter(torch.randn(1, ch, 4, 4))

        noise = torch.Generator().manual_seed(cfg.seed)  # draws every layer's constant noise in turn
        named: list[tuple[str, StyledConv | ToRGB]] = [
            ("b4.conv1", StyledConv(ch, ch, 4, upsample=False, noise_generator=noise)),
            ("b4.torgb", ToRGB(ch, 4)),
        ]
        for res in (2**i for i in range(3, log2 + 1)):
            out = channels_at(res, cfg)
            named += [
                (f"b{res}.conv0", StyledConv(ch, out, res, upsample=True, noise_generator=noise)),
                (f"b{res}.conv1", StyledConv(out, out, res, upsample=False, noise_generator=noise)),
                (f"b{res}.torgb", ToRGB(out, res)),
            ]
            ch = out
        self.layers = nn.ModuleList(module for _, module in named)
        self.style_index = StyleSpaceIndex([
            StyleLayer(name, module.in_channels, module.resolution, isinstance(module, ToRGB)) for name, module in named
        ])
        # All per-layer affine maps A_l([w, c]) stacked into one linear layer (bias 1, as StyleGAN2).
        self.affine = EqualLinear(cfg.model.latent_dim + num_classes, self.style_index.size, bias_init=1.0)

    @property
    def style_dim(self) -> int:
        """Number of StyleSpace coordinates S."""
        return self.style_index.size

    def styles(self, w: Tensor, c: Tensor) -> Tensor:
        """StyleSpace vectors (N, S) of latents ``w`` (N, latent_dim) and classifier outputs ``c`` (N, classes)."""
        if w.shape[1] != self.latent_dim or c.shape[1] != self.num_classes or w.shape[0] != c.shape[0]:
            raise ValueError(f"expected w (N, {self.latent_dim}) and c (N, {self.num_classes}), "
                             f"got {tuple(w.shape)} and {tuple(c.shape)}")
        return self.affine(torch.cat([w, c.to(w.dtype)], dim=1))

    def class_columns(self) -> Tensor:
        """How far a unit of each class input moves each StyleSpace coordinate: A's columns for c (S, classes)."""
        return self.affine.weight[:, self.latent_dim:] * self.affine.weight_gain

    def forward(self, w: Tensor, c: Tensor, noise_mode: str = "const") -> Tensor:
        """Images (N, 3, R, R), roughly in [-1, 1]."""
        return self.synthesize(self.styles(w, c), noise_mode)

    def synthesize(self, styles: Tensor, noise_mode: str = "const") -> Tensor:
        """Render flat styles (N, S). ``noise_mode``: 'const' (fixed buffers, deterministic), 'random', 'none'."""
        return self.synthesize_from(self.initial_state(styles.shape[0]), styles, 0, noise_mode)

    def initial_state(self, batch: int) -> SynthesisState:
        """The state before layer 0: the learned constant, repeated (as a view) ``batch`` times."""
        return SynthesisState(self.const.expand(batch, -1, -1, -1), None)

    def synthesize_prefix(self, styles: Tensor, upto_layer: int, noise_mode: str = "const") -> SynthesisState:
        """Run layers ``[0, upto_layer)`` and return the state right before layer ``upto_layer``.

        Prefix caching: an edit of a style coordinate in layer ``l`` leaves every activation before
        ``l`` unchanged, so for styles ``s2`` that agree with ``s`` on all layers before ``l``::

            G.synthesize_from(G.synthesize_prefix(s, l), s2, l) == G.synthesize(s2)

        with noise_mode 'const' or 'none' (the same operations run; results agree to float rounding,
        bit-exactly when the batch size is unchanged). A batch-1 state serves a batch of edits of
        that image: pass ``state.expand(len(s2))`` (or the batch-1 state itself; it broadcasts).
        """
        self._check_styles(styles, noise_mode)
        return self._run(self.initial_state(styles.shape[0]), styles, 0, upto_layer, noise_mode)

    def synthesize_from(self, state: SynthesisState, styles: Tensor, from_layer: int,
                        noise_mode: str = "const") -> Tensor:
        """Images from a state cached before ``from_layer``, using the styles of layers ``>= from_layer``."""
        self._check_styles(styles, noise_mode)
        return self._run(state, styles, from_layer, len(self.layers), noise_mode).img

    def _run(self, state: SynthesisState, styles: Tensor, start: int, stop: int, noise_mode: str) -> SynthesisState:
        if not 0 <= start <= stop <= len(self.layers):
            raise IndexError(f"layer range [{start}, {stop}) outside [0, {len(self.layers)}]")
        for number in range(start, stop):
            state = self.layers[number](state, styles[:, self.style_index.layer_slices[number]], noise_mode)
        return state

    def _check_styles(self, styles: Tensor, noise_mode: str) -> None:
        if styles.ndim != 2 or styles.shape[1] != self.style_dim:
            raise ValueError(f"styles must have shape (N, {self.style_dim}), got {tuple(styles.shape)}")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got '{noise_mode}'")
