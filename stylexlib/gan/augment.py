"""Differentiable augmentation of the discriminator's inputs (Zhao et al., "Differentiable Augmentation for
Data-Efficient GAN Training", NeurIPS 2020): the same random colour, translation and cutout transforms applied to
real and generated images alike, so that D cannot memorise a small training set and G still gets gradients.
"""
from __future__ import annotations

import torch
from torch import Tensor

from stylexlib.core.config import augment_problem


def parse_policy(policy: str) -> list[str]:
    """``"color,translation"`` -> ["color", "translation"]; an empty string is no augmentation."""
    problem = augment_problem(policy)
    if problem:
        raise ValueError(f"stylex.regularise.augment: {problem}")
    return [name.strip() for name in policy.split(",") if name.strip()]


def diff_augment(images: Tensor, policy: str) -> Tensor:
    """Apply each augmentation of ``policy`` with fresh per-image random parameters (differentiable in images)."""
    for name in parse_policy(policy):
        images = {"color": random_color, "translation": random_translation, "cutout": random_cutout}[name](images)
    return images


def random_color(x: Tensor) -> Tensor:
    """Random brightness (+-0.5), saturation (x0..2) and contrast (x0.5..1.5) per image, on [-1, 1] images."""
    n = len(x)
    rand = lambda: torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype)  # noqa: E731
    x = x + (rand() - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (2 * rand()) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (rand() + 0.5) + mean


def random_translation(x: Tensor, ratio: float = 0.125) -> Tensor:
    """Shift each image by up to ``ratio`` of its size in x and y (integer pixels), filling with zeros."""
    n, _, h, w = x.shape
    sy, sx = max(1, int(h * ratio + 0.5)), max(1, int(w * ratio + 0.5))
    dy = torch.randint(-sy, sy + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(-sx, sx + 1, (n, 1, 1), device=x.device)
    rows = torch.arange(h, device=x.device)[None, :, None] - dy  # source row for each target row
    cols = torch.arange(w, device=x.device)[None, None, :] - dx
    inside = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).to(x.dtype)
    flat = rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)  # (n, h, w) source pixel per target pixel
    gathered = x.flatten(2).gather(2, flat.flatten(1)[:, None, :].expand(-1, x.shape[1], -1)).view_as(x)
    return gathered * inside[:, None]


def random_cutout(x: Tensor, ratio: float = 0.5) -> Tensor:
    """Zero one square of ``ratio`` of the image size per image, at a random position."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + 1 - ch % 2, (n, 1, 1), device=x.device)  # centre; the square may cross the border
    cx = torch.randint(0, w + 1 - cw % 2, (n, 1, 1), device=x.device)
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    hole = ((rows >= cy - ch // 2) & (rows < cy - ch // 2 + ch) & (cols >= cx - cw // 2) & (cols < cx - cw // 2 + cw))
    return x * (~hole)[:, None].to(x.dtype)

