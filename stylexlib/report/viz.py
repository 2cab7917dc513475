"""Attribute pictures: original | changed pairs (with the change amplified), toggling GIFs, the paper's summary figure,
heat-map strips.

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


def pair_axes(rows: int, pairs: int, size: float, height: float = 1.3, label_width: float = 0.0,
              panels: int = 2) -> tuple[plt.Figure, np.ndarray]:
    """A figure with ``rows`` x ``pairs`` groups of ``panels`` axes (original | changed [| difference]), a gap between
    groups: axes[row, pair, panel]."""
    step = panels + 1
    ratios = ([1.0] * panels + [0.25]) * pairs
    fig, grid = plt.subplots(rows, step * pairs - 1, squeeze=False,
                             gridspec_kw={"width_ratios": ratios[:-1], "wspace": 0.06},
                             figsize=(label_width + size * ((panels + 0.25) * pairs - 0.25), rows * size * height))
    for ax in grid[:, panels::step].flat:
        ax.remove()
    axes = np.empty((rows, pairs, panels), dtype=object)
    for p in range(pairs):
        for j in range(panels):
            axes[:, p, j] = grid[:, step * p + j]
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


DIFFERENCE_QUANTILE = 0.99  # the amplified change maps this quantile of |changed - original| to the full range


def amplified_difference(originals: Tensor, changed: Tensor) -> tuple[Tensor, float]:
    """The signed change ``changed - originals`` (float images in [-1, 1]) on mid-grey, amplified so that its
    ``DIFFERENCE_QUANTILE`` over all the given images fills the range: a redder mouth shows as red, a darker jaw as
    dark, an unchanged pixel as grey. One gain for all images, so they compare; returns the images (in [-1, 1]) and
    the gain (at most 100: a change too small to see stays near grey)."""
    delta = changed.detach().float().cpu() - originals.detach().float().cpu()
    if not delta.numel():
        return delta, 1.0
    magnitude = delta.abs().flatten()
    peak = float(magnitude.kthvalue(max(1, math.ceil(DIFFERENCE_QUANTILE * magnitude.numel()))).values)
    gain = min(100.0, 1.0 / max(peak, 1e-2))
    return (delta * gain).clamp(-1, 1), gain


def pair_figure(ex: AttributeExamples, max_examples: int | None = None, pairs_per_row: int = 3,
                size: float = 1.5, difference: bool = True) -> plt.Figure:
    """The images where the attribute acts most, as original | changed pairs titled with p(class), each followed by
    the change amplified (:func:`amplified_difference`) unless ``difference`` is False."""
    k = min(ex.num_examples, max_examples or ex.num_examples)
    if k == 0:
        fig, ax = plt.subplots(figsize=(5, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, f"{ex.class_name} #{ex.rank} {ex.label}: no example images", ha="center", va="center")
        return fig
    rows = max(1, math.ceil(k / pairs_per_row))
    fig, axes = pair_axes(rows, min(k, pairs_per_row), size, height=1.45, panels=3 if difference else 2)
    p_orig, p_changed = ex.class_probs()
    originals, changed = to_hwc(ex.originals[:k]), to_hwc(ex.changed[:k])
    if difference:
        delta, gain = amplified_difference(ex.originals[:k], ex.changed[:k])
    for ax in axes.flat:
        ax.axis("off")
    for i in range(k):
        r, c = divmod(i, pairs_per_row)
        left, right = axes[r, c, :2]
        left.imshow(originals[i], interpolation="nearest")
        left.set_title(_prob_title(f"#{ex.image_indices[i]} original", float(p_orig[i]), ex.class_name), fontsize=7)
        right.imshow(changed[i], interpolation="nearest")
        right.set_title(_prob_title("changed", float(p_changed[i]), ex.class_name), fontsize=7, color="C3")
        if difference:
            axes[r, c, 2].imshow(to_hwc(delta[i:i + 1])[0], interpolation="nearest")
            axes[r, c, 2].set_title(f"change\nx{gain:.0f}", fontsize=7, color="0.35")
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
                   notes: Mapping[str, str] | None = None, difference: bool = True) -> plt.Figure:
    """The paper's summary: the top attributes of each class, one row each, as original | changed pairs, each followed
    by the change amplified (one gain per row, written in the row's label) unless ``difference`` is False.

    ``notes`` (by :attr:`AttributeExamples.key`) adds a line to a row's label, e.g. the factor it changes.
    """
    groups = by_class(examples, top)
    rows = [ex for group in groups.values() for ex in group]
    if not rows:
        raise ValueError("summary_figure needs at least one attribute")
    panels = 3 if difference else 2
    fig, axes = pair_axes(len(rows), pairs, size, height=1.2, label_width=1.6, panels=panels)
    for r, ex in enumerate(rows):
        p_orig, p_changed = ex.class_probs()
        delta, gain = amplified_difference(ex.originals[:pairs], ex.changed[:pairs])
        for c in range(pairs):
            shown = ((ex.originals, p_orig), (ex.changed, p_changed), (delta, None))[:panels]
            for j, (images, probs) in enumerate(shown):
                ax = axes[r, c, j]
                if c >= ex.num_examples:
                    ax.set_frame_on(False)  # not axis("off"): the row label stays visible
                    if c == j == 0:
                        ax.text(0.05, 0.5, "no examples", fontsize=7, color="0.4", transform=ax.transAxes)
                    continue
                ax.imshow(to_hwc(images[c:c + 1])[0], interpolation="nearest")
                if probs is None:
                    ax.set_frame_on(False)
                    continue
                ax.set_title(f"{float(probs[c]):.2f}", fontsize=7, color="C3" if j else "black", pad=2)
                if j:  # a thick edge separates the pairs
                    for spine in ax.spines.values():
                        spine.set_edgecolor("C3")
        note = f"\n{notes[ex.key]}" if notes and ex.key in notes else ""
        amplified = f"\nchange x{gain:.0f}" if difference and ex.num_examples else ""
        axes[r, 0, 0].set_ylabel(f"{ex.class_name} #{ex.rank}\n{ex.label}{note}{amplified}", rotation=0, ha="right",
                                 va="center", fontsize=8)
    height = fig.get_figheight()  # the title half an inch above the grid, however many rows (not 12% of the height)
    fig.subplots_adjust(top=1 - 0.5 / height)
    what = "original | changed (red) | the change amplified" if difference else "original | changed (red)"
    fig.suptitle(f"Top attributes per class: {what}, titled with p(class)", fontsize=9, y=1 - 0.15 / height)
    return fig
