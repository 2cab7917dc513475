"""Figure primitives every layer uses: atomic PNG saving, image grids, training curves."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from stylexlib.core.io import atomic_write


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 110) -> Path:
    """Save a figure as PNG atomically."""
    return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=dpi, bbox_inches="tight"))


def to_hwc(images: torch.Tensor) -> np.ndarray:
    """uint8 NCHW or float [-1, 1] NCHW -> uint8 NHWC numpy."""
    if images.dtype != torch.uint8:
        images = images.detach().float().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()


def image_grid(
    images: torch.Tensor,
    titles: Sequence[str] | None = None,
    ncols: int = 8,
    size: float = 1.3,
    suptitle: str | None = None,
) -> plt.Figure:
    """A grid of images with optional per-image titles."""
    pics = to_hwc(images)
    n = len(pics)
    nrows = max(1, int(np.ceil(n / ncols)))
    title_lines = max((str(t).count("\n") + 1 for t in titles or []), default=0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size * (1 + 0.25 * title_lines)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(pics[i], interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[i], fontsize=7)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def training_curves(history: list[dict], keys: Sequence[tuple[str, ...]] | None = None, x_key: str = "epoch") -> plt.Figure:
    """Line plots of per-epoch (or per-step) history, one panel per group of ``keys`` (e.g. train/validation)."""
    keys = keys or [("train_loss", "val_loss"), ("train_accuracy", "val_accuracy")]
    x = [h.get(x_key, i + 1) for i, h in enumerate(history)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    for ax, group in zip(axes.flat, keys):
        for key in group:
            ax.plot(x, [h[key] for h in history], marker="o" if len(x) <= 50 else None, label=key)
        ax.set_xlabel(x_key)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
