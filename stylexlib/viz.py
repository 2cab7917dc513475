"""Attribute figures: original | changed pairs, toggling GIFs, the paper's summary figure, an offline HTML gallery.

Everything here consumes :class:`AttributeExamples` (one attribute, its top images as original and changed renders
with the classifier's probabilities), which ``attfind.collect_examples`` produces. Files are written atomically.
"""
from __future__ import annotations

import contextlib
import html
import logging
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from .io import atomic_write, torch_load, torch_save, write_text
from .plots import to_hwc
from .quality import INVISIBLE_LPIPS, INVISIBLE_PROB_CHANGE, is_invisible

log = logging.getLogger(__name__)

BACKGROUND = (255, 255, 255)
GALLERY_MARKER = ".stylex-gallery"  # marks a folder write_gallery may replace


@dataclass
class AttributeExamples:
    """One attribute (a StyleSpace coordinate and direction) and the images where it acts most."""

    class_index: int
    class_name: str
    rank: int
    flat: int
    label: str  # human-readable, e.g. "b16.conv1[12] up"
    mean_effect: float
    fraction_affected: float
    image_indices: list[int]  # dataset indices of the examples
    originals: Tensor  # (K, 3, H, W) float in [-1, 1]
    changed: Tensor  # (K, 3, H, W) float in [-1, 1]
    probs_original: Tensor  # (K, C) classifier probabilities
    probs_changed: Tensor  # (K, C)
    class_names: list[str]
    lpips: Tensor | None = None  # (K,) LPIPS between each original and its changed image: is the change visible?

    def __post_init__(self) -> None:
        k = len(self.image_indices)
        shapes = {name: tuple(getattr(self, name).shape) for name in ("originals", "changed", "probs_original", "probs_changed")}
        if any(s[0] != k for s in shapes.values()) or shapes["originals"] != shapes["changed"]:
            raise ValueError(f"attribute {self.label}: {k} image indices but tensor shapes {shapes}")
        if shapes["probs_original"][1:] != (len(self.class_names),) or shapes["probs_changed"] != shapes["probs_original"]:
            raise ValueError(f"attribute {self.label}: probabilities must be (K, {len(self.class_names)}), got {shapes}")
        self.image_indices = [int(i) for i in self.image_indices]

    @property
    def num_examples(self) -> int:
        """Number of example images K."""
        return len(self.image_indices)

    @property
    def key(self) -> str:
        """A file-name-safe identifier: class index and rank."""
        return f"c{self.class_index}_r{self.rank:02d}"

    def class_probs(self) -> tuple[Tensor, Tensor]:
        """The classifier's probability of this attribute's class on the originals and on the changed images."""
        return self.probs_original[:, self.class_index], self.probs_changed[:, self.class_index]

    def to_dict(self) -> dict:
        """Plain tensors, numbers and strings (for ``torch_save`` / ``weights_only`` loading)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def attribute_label(layer_name: str, channel: int, direction: str) -> str:
    """The human-readable name of an attribute, e.g. ``b16.conv1[12] up``."""
    return f"{layer_name}[{int(channel)}] {direction}"


def save_examples(examples: Sequence[AttributeExamples], path: str | Path) -> Path:
    """Save attribute examples atomically (loadable with ``weights_only``)."""
    return torch_save(path, [ex.to_dict() for ex in examples])


def load_examples(path: str | Path) -> list[AttributeExamples]:
    """Load attribute examples written by :func:`save_examples`."""
    return [AttributeExamples(**d) for d in torch_load(path)]


def by_class(examples: Sequence[AttributeExamples], top: int | None = None) -> dict[int, list[AttributeExamples]]:
    """Examples grouped by class index (sorted) and ordered by rank, at most ``top`` per class."""
    groups: dict[int, list[AttributeExamples]] = {}
    for ex in sorted(examples, key=lambda e: (e.class_index, e.rank)):
        groups.setdefault(ex.class_index, []).append(ex)
    return {c: group[:top] if top else group for c, group in sorted(groups.items())}


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
    fig.suptitle("Top attributes per class: original | changed (red), titled with p(class)", fontsize=9)
    return fig


# --------------------------------------------------------------------------------------------- HTML gallery
LEGEND = f"""
<dl class="legend">
<dt>original</dt><dd>the image as the StylEx generator reconstructs it from its encoding, G(E(x), C(x)) &mdash;
edits are made to this reconstruction, so it is the fair reference.</dd>
<dt>changed</dt><dd>the same image with one StyleSpace coordinate (the attribute) shifted in the attribute's
direction (<em>up</em> or <em>down</em>) by the AttFind shift; nothing else changes.</dd>
<dt>p(class)</dt><dd>the classifier's probability for the class on that image; &Delta; is changed minus original.</dd>
<dt>mean effect</dt><dd>the average change of the classifier's output for the class when the attribute is applied,
over the images AttFind searched (higher: the attribute pushes the classifier further towards the class), in the
units of <code>attfind.output</code>: one-vs-rest log-odds (default) or probability.</dd>
<dt>fraction affected</dt><dd>the share of the searched images on which the attribute moved the classifier's output
by more than the AttFind threshold.</dd>
<dt>label</dt><dd><code>layer[channel] direction</code>: the generator layer and style channel of the coordinate.</dd>
<dt>LPIPS</dt><dd>perceptual distance between original and changed (0: identical). An attribute whose examples move
p(class) by at least {INVISIBLE_PROB_CHANGE} on average at a mean LPIPS under {INVISIBLE_LPIPS} is flagged
<b class="invisible">invisible change</b>: the classifier reacts to something a person cannot see.</dd>
</dl>"""

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fff}
h1{margin-bottom:4px} .sub{color:#555;margin-top:0}
.legend{background:#f4f6f8;border-left:4px solid #4a7;padding:8px 16px;max-width:1000px;font-size:14px}
.legend dt{font-weight:bold;float:left;clear:left;width:150px;white-space:nowrap} .legend dd{margin-left:160px;margin-bottom:4px}
nav a{margin-right:12px} section.attr{border-top:1px solid #ddd;padding:10px 0}
.stats{font-size:14px;color:#333} .stats b{color:#000}
.pairs{display:flex;flex-wrap:wrap;gap:18px;margin-top:8px} .pair{display:flex;gap:4px}
figure{margin:0;text-align:center;font-size:12px}
img.px{width:128px;height:128px;image-rendering:pixelated;border:1px solid #ccc}
figure.changed img{border-color:#c33} .up{color:#080} .down{color:#a00}
figure.maps img.px{width:auto;height:80px;margin-left:8px}
img.broken{outline:3px solid red} .invisible{color:#fff;background:#c33;padding:0 4px}
"""

SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; else imgs[i].classList.add('broken');
  }
  document.body.setAttribute('data-images-loaded', ok);
  document.body.setAttribute('data-images-total', imgs.length);
});
"""


def _figure_html(src: str, kind: str, lines: Sequence[str]) -> str:
    text = "<br>".join(html.escape(line) for line in lines)
    return f'<figure class="{kind}"><img class="px" src="{src}" alt="{kind}"><figcaption>{text}</figcaption></figure>'


def _attribute_html(ex: AttributeExamples, images_dir: Path, max_examples: int | None,
                    saliency: dict[int, str] | None = None) -> str:
    k = min(ex.num_examples, max_examples or ex.num_examples)
    gif = f"images/{ex.key}.gif"
    if k:
        save_toggle_gif(ex, images_dir / f"{ex.key}.gif", max_examples=k)
    p_orig, p_changed = ex.class_probs()
    pairs = []
    for i in range(k):
        names = [f"images/{ex.key}_{i}_{kind}.png" for kind in ("original", "changed")]
        save_png(to_pil(ex.originals[i]), images_dir.parent / names[0])
        save_png(to_pil(ex.changed[i]), images_dir.parent / names[1])
        delta = float(p_changed[i] - p_orig[i])
        seen = f" · LPIPS {float(ex.lpips[i]):.3f}" if ex.lpips is not None else ""
        pairs.append('<div class="pair">'
                     + _figure_html(names[0], "original", [f"image #{ex.image_indices[i]} original",
                                                           f"p({ex.class_name}) = {float(p_orig[i]):.3f}"])
                     + _figure_html(names[1], "changed", ["changed",
                                                          f"p({ex.class_name}) = {float(p_changed[i]):.3f} (Δ {delta:+.3f}){seen}"])
                     + (_figure_html(saliency[ex.image_indices[i]], "maps", ["saliency maps of the input image, "
                                                                              "predicted class"])
                        if saliency and ex.image_indices[i] in saliency else "")
                     + "</div>")
    direction = ex.label.rsplit(" ", 1)[-1]
    visibility = ""
    if ex.lpips is not None and k:
        change, lp = float((p_changed[:k] - p_orig[:k]).abs().mean()), float(ex.lpips[:k].mean())
        visibility = (f" · mean |Δp| {change:.3f} at mean LPIPS {lp:.3f}"
                      + (' <b class="invisible">invisible change</b>' if is_invisible(change, lp) else ""))
    return (f'<section class="attr" id="{ex.key}"><h3>#{ex.rank} <code>{html.escape(ex.label)}</code> '
            f'<span class="{html.escape(direction)}">({html.escape(direction)})</span></h3>'
            f'<div class="stats">mean effect <b>{ex.mean_effect:+.4f}</b> · fraction affected '
            f'<b>{ex.fraction_affected:.1%}</b> · StyleSpace coordinate {ex.flat} · {k} examples{visibility}</div>'
            + (f'<div class="pairs"><figure><img src="{gif}" alt="toggle original/changed"><figcaption>'
               f'animated: original ↔ changed</figcaption></figure></div><div class="pairs">{"".join(pairs)}</div>'
               if k else '<p class="stats"><em>No example images: every searched image is already classified as '
                         'this class.</em></p>')
            + "</section>")


@contextlib.contextmanager
def replaced_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder that replaces ``path`` (a folder this module wrote) on success."""
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not (path / GALLERY_MARKER).exists():
        raise FileExistsError(f"{path} exists and was not written by stylexlib; choose an empty or new folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        (tmp / GALLERY_MARKER).write_text("written by stylexlib; replaced as a whole on every write\n")
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_gallery(examples: Sequence[AttributeExamples], out_dir: str | Path, title: str = "StylEx attributes",
                  subtitle: str = "", max_examples: int | None = None,
                  saliency: dict[int, Tensor] | None = None, saliency_names: Sequence[str] = ()) -> Path:
    """A standalone HTML gallery (``index.html`` + ``images/``), per class and attribute; returns index.html.

    ``saliency`` (dataset index -> (M, H, W) maps named ``saliency_names``) puts each example's saliency maps beside
    it: where the other explainers say the classifier looks, next to what StylEx changes."""
    if not examples:
        raise ValueError("write_gallery needs at least one attribute")
    groups = by_class(examples)
    names = examples[0].class_names
    with replaced_dir(out_dir) as tmp:
        images_dir = tmp / "images"
        images_dir.mkdir()
        strips = {}
        for index, maps in (saliency or {}).items():
            strips[index] = f"images/maps_{index}.png"
            save_png(heat_strip(maps, saliency_names, display_scale(maps.shape[-1], 64)), tmp / strips[index])
        nav = " ".join(f'<a href="#class{c}">{html.escape(name)} ({len(groups.get(c, []))})</a>' for c, name in enumerate(names))
        body = [f"<h1>{html.escape(title)}</h1>", f'<p class="sub">{html.escape(subtitle)}</p>' if subtitle else "",
                LEGEND, f"<nav>Classes: {nav}</nav>"]
        for c, name in enumerate(names):
            group = groups.get(c, [])
            body.append(f'<h2 id="class{c}">Class “{html.escape(name)}”: {len(group)} attributes</h2>')
            body += [_attribute_html(ex, images_dir, max_examples, strips) for ex in group] or [
                '<p class="stats"><em>AttFind selected no attribute for this class.</em></p>']
        page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
                f"<style>{STYLE}</style><script>{SCRIPT}</script></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")
        write_text(tmp / "index.html", page)
    log.info("wrote gallery of %d attributes to %s", len(examples), out_dir)
    return Path(out_dir) / "index.html"


# --------------------------------------------------------------------------------------------- headless Chromium
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class ChromiumNotFound(RuntimeError):
    """No headless Chromium/Chrome binary was found."""


def find_chromium() -> str | None:
    """The Chromium binary: ``$STYLEX_CHROMIUM``, else the first of chromium, chromium-browser, google-chrome on PATH."""
    explicit = os.environ.get("STYLEX_CHROMIUM")
    if explicit:
        return explicit if shutil.which(explicit) else None
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def _run_chromium(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    binary = find_chromium()
    if binary is None:
        raise ChromiumNotFound("headless Chromium is needed for this: install the Debian/Ubuntu package "
                               "'chromium' (sudo apt-get install -y chromium), or point STYLEX_CHROMIUM at a "
                               "Chrome/Chromium binary")
    with tempfile.TemporaryDirectory(prefix="stylex-chromium-") as profile:
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--hide-scrollbars", f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "HOME": profile})


def screenshot_html(html_path: str | Path, png_path: str | Path, width: int = 1280, height: int = 1600,
                    timeout: float = 120) -> Path:
    """Render a local HTML file in headless Chromium and save a ``width`` x ``height`` PNG screenshot."""
    url = Path(html_path).resolve().as_uri()

    def shoot(tmp: Path) -> None:
        shot = tmp.with_name(tmp.name + ".png")
        try:
            done = _run_chromium([f"--screenshot={shot}", f"--window-size={width},{height}",
                                  "--virtual-time-budget=10000", url], timeout)
            if not shot.exists() or shot.stat().st_size == 0:
                raise RuntimeError(f"chromium wrote no screenshot of {html_path} (exit {done.returncode}): "
                                   f"{done.stderr.strip()[-800:]}")
            os.replace(shot, tmp)
        finally:
            shot.unlink(missing_ok=True)

    return atomic_write(png_path, shoot)


def dump_dom(html_path: str | Path, timeout: float = 120) -> str:
    """The DOM of a local HTML file after Chromium has loaded it and run its scripts."""
    done = _run_chromium(["--dump-dom", "--virtual-time-budget=10000", Path(html_path).resolve().as_uri()], timeout)
    if done.returncode != 0 or "<html" not in done.stdout:
        raise RuntimeError(f"chromium could not load {html_path} (exit {done.returncode}): {done.stderr.strip()[-800:]}")
    return done.stdout
