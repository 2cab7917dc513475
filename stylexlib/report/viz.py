"""Attribute pictures: original | changed pairs, toggling GIFs, the paper's summary figure, heat-map strips.

Everything here consumes :class:`AttributeExamples`, which ``explain.attfind.examples.collect_examples``
produces. Files are written atomically.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from stylexlib.core.figures import to_hwc
from stylexlib.core.io import atomic_write
from stylexlib.explain.attfind.examples import AttributeExamples, by_class

BACKGROUND = (255, 255, 255)


# --------------------------------------------------------------------------------------------- PIL sheets
def font(size: int = 12) -> ImageFont.ImageFont:
    """PIL's built-in scalable font (a bitmap font on builds without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def to_pil(image: Tensor, scale: int = 1) -> Image.Image:
    """One image (3, H, W), uint8 or float in [-1, 1], as an RGB PIL image enlarged ``scale`` times (nearest)."""
    return enlarge(Image.fromarray(to_hwc(image[None])[0]), scale)


def enlarge(pic: Image.Image, scale: int) -> Image.Image:
    """The picture enlarged ``scale`` times with nearest-neighbour sampling (pixels stay crisp)."""
    return pic.resize((pic.width * scale, pic.height * scale), Image.NEAREST) if scale > 1 else pic


def display_scale(resolution: int, target: int = 128) -> int:
    """The whole-number enlargement that brings ``resolution`` to about ``target`` pixels."""
    return max(1, round(target / resolution))


def caption(pic: Image.Image, text: str, size: int = 12, above: bool = False) -> Image.Image:
    """The picture with a line of text centred in a white band below (or above) it, widened to fit the text."""
    f = font(size)
    width = ImageDraw.Draw(pic).textlength(text, font=f)
    band = size + 8
    out = Image.new("RGB", (max(pic.width, math.ceil(width) + 4), pic.height + band), BACKGROUND)
    out.paste(pic, ((out.width - pic.width) // 2, band if above else 0))
    ImageDraw.Draw(out).text(((out.width - width) / 2, (0 if above else pic.height) + 3), text, fill=(0, 0, 0), font=f)
    return out


def stack(pics: Sequence[Image.Image], horizontal: bool = True, gap: int = 6) -> Image.Image:
    """Pictures side by side (or one above the other), top/left-aligned, ``gap`` white pixels apart."""
    if horizontal:
        size = (sum(p.width for p in pics) + gap * (len(pics) - 1), max(p.height for p in pics))
    else:
        size = (max(p.width for p in pics), sum(p.height for p in pics) + gap * (len(pics) - 1))
    out = Image.new("RGB", size, BACKGROUND)
    offset = 0
    for p in pics:
        out.paste(p, (offset, 0) if horizontal else (0, offset))
        offset += (p.width if horizontal else p.height) + gap
    return out


def heat_strip(maps: Tensor, names: Sequence[str], scale: int = 1) -> Image.Image:
    """Saliency maps (M, H, W) side by side as heat maps (|relevance|, each scaled to its own maximum), captioned."""
    colour = plt.get_cmap("inferno")
    pics = []
    for relevance, name in zip(maps, names):
        magnitude = relevance.abs().float()
        magnitude = (magnitude / magnitude.max().clamp_min(1e-12)).numpy()
        pic = enlarge(Image.fromarray((colour(magnitude)[..., :3] * 255).astype(np.uint8)), scale)
        pics.append(caption(pic, name, size=10))
    return stack(pics, gap=2)


def save_png(pic: Image.Image, path: str | Path) -> Path:
    """Save a PIL image as PNG atomically."""
    return atomic_write(path, lambda p: pic.save(p, format="PNG"))


def save_gif(frames: Sequence[Image.Image], path: str | Path, duration_ms: int = 700) -> Path:
    """Save frames as a looping animated GIF atomically."""
    first, *rest = frames
    return atomic_write(path, lambda p: first.save(p, format="GIF", save_all=True, append_images=rest,
                                                   duration=duration_ms, loop=0, disposal=1))


# --------------------------------------------------------------------------------------------- figures
def _prob_title(kind: str, p: float, class_name: str) -> str:
    return f"{kind}\np({class_name})={p:.2f}"


def pair_axes(rows: int, pairs: int, size: float, height: float = 1.3, label_width: float = 0.0) -> tuple[plt.Figure, np.ndarray]:
    """A figure with ``rows`` x ``pairs`` original | changed axes pairs, a gap between pairs: axes[row, pair, 0|1]."""
    ratios = [1.0, 1.0, 0.25] * pairs
    fig, grid = plt.subplots(rows, 3 * pairs - 1, squeeze=False, gridspec_kw={"width_ratios": ratios[:-1], "wspace": 0.06},
                             figsize=(label_width + size * (2.25 * pairs - 0.25), rows * size * height))
    for ax in grid[:, 2::3].flat:
        ax.remove()
    axes = np.empty((rows, pairs, 2), dtype=object)
    for p in range(pairs):
        axes[:, p, 0], axes[:, p, 1] = grid[:, 3 * p], grid[:, 3 * p + 1]
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def pair_figure(ex: AttributeExamples, max_examples: int | None = None, pairs_per_row: int = 3,
                size: float = 1.5) -> plt.Figure:
    """The images where the attribute acts most, as original | changed pairs titled with p(class)."""
    k = min(ex.num_examples, max_examples or ex.num_examples)
    if k == 0:
        fig, ax = plt.subplots(figsize=(5, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, f"{ex.class_name} #{ex.rank} {ex.label}: no example images", ha="center", va="center")
        return fig
    rows = max(1, math.ceil(k / pairs_per_row))
    fig, axes = pair_axes(rows, min(k, pairs_per_row), size, height=1.45)
    p_orig, p_changed = ex.class_probs()
    originals, changed = to_hwc(ex.originals[:k]), to_hwc(ex.changed[:k])
    for ax in axes.flat:
        ax.axis("off")
    for i in range(k):
        r, c = divmod(i, pairs_per_row)
        left, right = axes[r, c]
        left.imshow(originals[i], interpolation="nearest")
        left.set_title(_prob_title(f"#{ex.image_indices[i]} original", float(p_orig[i]), ex.class_name), fontsize=7)
        right.imshow(changed[i], interpolation="nearest")
        right.set_title(_prob_title("changed", float(p_changed[i]), ex.class_name), fontsize=7, color="C3")
    fig.suptitle(f"{ex.class_name} #{ex.rank}: {ex.label}  (mean effect {ex.mean_effect:+.3f}, "
                 f"affected {ex.fraction_affected:.0%})", fontsize=9)
    return fig


def toggle_frames(originals: Tensor, changed: Tensor, scale: int = 1, labels: bool = True) -> list[Image.Image]:
    """Two frames: the originals in a row, then the changed images in the same places."""
    frames = []
    for kind, images in (("original", originals), ("changed", changed)):
        row = stack([to_pil(img, scale) for img in images], gap=4)
        frames.append(caption(row, kind, size=max(10, min(16, row.height // 6)), above=True) if labels else row)
    return frames


def save_toggle_gif(ex: AttributeExamples, path: str | Path, max_examples: int | None = None,
                    scale: int | None = None, duration_ms: int = 700) -> Path:
    """An animated GIF toggling the attribute's examples between original and changed."""
    k = min(ex.num_examples, max_examples or ex.num_examples)
    if k == 0:
        raise ValueError(f"attribute {ex.label} of {ex.class_name} has no example images to animate")
    scale = scale or display_scale(ex.originals.shape[-1], 96)
    return save_gif(toggle_frames(ex.originals[:k], ex.changed[:k], scale), path, duration_ms)


def summary_figure(examples: Sequence[AttributeExamples], top: int = 4, pairs: int = 3, size: float = 1.1,
                   notes: Mapping[str, str] | None = None) -> plt.Figure:
    """The paper's summary: the top attributes of each class, one row each, as original | changed pairs.

    ``notes`` (by :attr:`AttributeExamples.key`) adds a line to a row's label, e.g. the factor it changes.
    """
    groups = by_class(examples, top)
    rows = [ex for group in groups.values() for ex in group]
    if not rows:
        raise ValueError("summary_figure needs at least one attribute")
    fig, axes = pair_axes(len(rows), pairs, size, height=1.2, label_width=1.6)
    for r, ex in enumerate(rows):
        p_orig, p_changed = ex.class_probs()
        for c in range(pairs):
            for j, (images, probs) in enumerate(((ex.originals, p_orig), (ex.changed, p_changed))):
                ax = axes[r, c, j]
                if c >= ex.num_examples:
                    ax.set_frame_on(False)  # not axis("off"): the row label stays visible
                    if c == j == 0:
                        ax.text(0.05, 0.5, "no examples", fontsize=7, color="0.4", transform=ax.transAxes)
                    continue
                ax.imshow(to_hwc(images[c:c + 1])[0], interpolation="nearest")
                ax.set_title(f"{float(probs[c]):.2f}", fontsize=7, color="C3" if j else "black", pad=2)
                if j:  # a thick edge separates the pairs
                    for spine in ax.spines.values():
                        spine.set_edgecolor("C3")
        note = f"\n{notes[ex.key]}" if notes and ex.key in notes else ""
        axes[r, 0, 0].set_ylabel(f"{ex.class_name} #{ex.rank}\n{ex.label}{note}", rotation=0, ha="right", va="center",
                                 fontsize=8)
    height = fig.get_figheight()  # the title half an inch above the grid, however many rows (not 12% of the height)
    fig.subplots_adjust(top=1 - 0.5 / height)
    fig.suptitle("Top attributes per class: original | changed (red), titled with p(class)", fontsize=9,
                 y=1 - 0.15 / height)
    return fig


