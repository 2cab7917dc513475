"""The attribute editor: encode images, move one StyleSpace coordinate at a chosen strength, render, classify."""
from __future__ import annotations

import torch
from torch import Tensor

from stylexlib.classifier.predict import classify
from stylexlib.core.config import AttFindConfig
from stylexlib.explain.attfind.effects import DIRECTIONS, StyleStats, apply_attributes, shift_targets
from stylexlib.gan.models import StylexModels
from stylexlib.stylespace.inversion import invert


class AttributeEditor:
    """Encode images, apply one attribute at a chosen strength, render, and read the classifier."""

    def __init__(self, models: StylexModels, stats: StyleStats, shift: str = "minmax", shift_std: float = 2.0,
                 batch_size: int = 64) -> None:
        self.models, self.stats, self.shift, self.shift_std, self.batch_size = models, stats, shift, shift_std, batch_size
        self.class_names = list(models.class_names)
        self.resolution = models.generator.resolution
        self.style_index = models.generator.style_index

    @classmethod
    def for_attfind(cls, models: StylexModels, stats: StyleStats, cfg: AttFindConfig) -> "AttributeEditor":
        """The editor whose strength 1 is AttFind's shift (``attfind.shift``, ``attfind.shift_std``)."""
        return cls(models, stats, cfg.shift, cfg.shift_std)

    def encode(self, images: Tensor) -> Tensor:
        """uint8 or [-1, 1] images (N, 3, H, W) -> styles (N, S)."""
        return invert(self.models, images, self.batch_size).styles

    @torch.no_grad()
    def render(self, styles: Tensor) -> Tensor:
        """Styles (N, S) -> images in [-1, 1] (N, 3, H, W), on the CPU."""
        device = self.models.device
        return torch.cat([self.models.generator.synthesize(s.to(device)).clamp(-1, 1).cpu()
                          for s in styles.split(self.batch_size)])

    @torch.no_grad()
    def probabilities(self, images: Tensor) -> Tensor:
        """Classifier softmax (N, C) of images in [-1, 1]."""
        return classify(self.models.classifier, images, self.batch_size, self.models.device).softmax(1)

    def edit(self, styles: Tensor, flat: int, direction: str, strength: float = 1.0) -> Tensor:
        """Styles with coordinate ``flat`` moved "up" or "down"; strength 1 is the full AttFind shift, 0 none."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got '{direction}'")
        targets = shift_targets(styles, self.stats, self.shift, self.shift_std)
        flats = torch.full((len(styles), 1), int(flat))
        directions = torch.full((len(styles), 1), DIRECTIONS.index(direction))
        return apply_attributes(styles, targets, flats, directions, strength)
