"""The offline HTML gallery of attributes (and its headless-Chromium check): per class, every attribute's
original | changed pairs, a toggling GIF, p(class), LPIPS and each example's saliency maps. Written atomically."""
from __future__ import annotations

import contextlib
import html
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from torch import Tensor

from stylexlib.core.io import atomic_write, temp_dir, write_text
from stylexlib.explain.attfind.examples import AttributeExamples, by_class
from stylexlib.explain.attfind.visibility import VisibilityRule
from stylexlib.gan.losses import VISIBILITY_SIZE
from stylexlib.report.viz import amplified_difference, display_scale, heat_strip, save_png, save_toggle_gif, to_pil

log = logging.getLogger(__name__)



GALLERY_MARKER = ".stylex-gallery"  # marks a folder write_gallery may replace


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
.warn{border-left:4px solid #c33;padding:4px 8px;background:#fff4f4}
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


def _mean_change(ex: AttributeExamples, k: int) -> tuple[float, float]:
    """The first ``k`` examples' mean |change of p(class)| and mean LPIPS (``ex.lpips`` set)."""
    p_orig, p_changed = ex.class_probs()
    return float((p_changed[:k] - p_orig[:k]).abs().mean()), float(ex.lpips[:k].mean())


def _all_invisible(group: Sequence[AttributeExamples], rule: VisibilityRule, max_examples: int | None) -> bool:
    """True when every attribute of a class with measured examples is an invisible change under ``rule``."""
    measured = [(ex, min(ex.num_examples, max_examples or ex.num_examples)) for ex in group
                if ex.lpips is not None and ex.num_examples]
    return bool(measured) and all(rule.invisible(*_mean_change(ex, k)) for ex, k in measured)


NO_VISIBLE_ATTRIBUTE = ('<p class="warn"><b>No attribute of this class changes the image visibly while moving the '
                        'classifier.</b> Every one below is flagged as an invisible change: the classifier reacts to '
                        'details a person cannot see in these renders, so they are not explanations to act on. Train '
                        'longer or on a GPU, or read the saliency maps instead.</p>')


NO_ATTRIBUTE = ('<p class="warn"><b>AttFind selected no attribute for this class.</b> No StyleSpace coordinate both '
                'moved the classifier toward it and changed the image visibly (<code>attfind.visible_only</code>), or '
                'no searched image belonged to another class.</p>')


def _attribute_html(ex: AttributeExamples, images_dir: Path, max_examples: int | None,
                    saliency: dict[int, str] | None = None, rule: VisibilityRule = VisibilityRule(),
                    note: str = "") -> str:
    k = min(ex.num_examples, max_examples or ex.num_examples)
    gif = f"images/{ex.key}.gif"
    if k:
        save_toggle_gif(ex, images_dir / f"{ex.key}.gif", max_examples=k)
    p_orig, p_changed = ex.class_probs()
    delta, gain = amplified_difference(ex.originals[:k], ex.changed[:k])
    pairs = []
    for i in range(k):
        names = [f"images/{ex.key}_{i}_{kind}.png" for kind in ("original", "changed", "change")]
        for name, image in zip(names, (ex.originals[i], ex.changed[i], delta[i])):
            save_png(to_pil(image), images_dir.parent / name)
        moved = float(p_changed[i] - p_orig[i])
        seen = f" · LPIPS {float(ex.lpips[i]):.3f}" if ex.lpips is not None else ""
        pairs.append('<div class="pair">'
                     + _figure_html(names[0], "original", [f"image #{ex.image_indices[i]} original",
                                                           f"p({ex.class_name}) = {float(p_orig[i]):.3f}"])
                     + _figure_html(names[1], "changed", ["changed",
                                                          f"p({ex.class_name}) = {float(p_changed[i]):.3f} (Δ {moved:+.3f}){seen}"])
                     + _figure_html(names[2], "change", [f"the change, x{gain:.0f}", "(grey: unchanged)"])
                     + (_figure_html(saliency[ex.image_indices[i]], "maps", ["saliency maps of the input image, "
                                                                              "predicted class"])
                        if saliency and ex.image_indices[i] in saliency else "")
                     + "</div>")
    direction = ex.label.rsplit(" ", 1)[-1]
    visibility = ""
    if ex.lpips is not None and k:
        change, lp = _mean_change(ex, k)
        visibility = (f" · mean |Δp| {change:.3f} at mean LPIPS {lp:.3f}"
                      + (' <b class="invisible">invisible change</b>' if rule.invisible(change, lp) else ""))
    return (f'<section class="attr" id="{ex.key}"><h3>#{ex.rank} <code>{html.escape(ex.label)}</code> '
            f'<span class="{html.escape(direction)}">({html.escape(direction)})</span></h3>'
            f'<div class="stats">mean effect <b>{ex.mean_effect:+.4f}</b> · fraction affected '
            f'<b>{ex.fraction_affected:.1%}</b> · StyleSpace coordinate {ex.flat} · {k} examples{visibility}</div>'
            + (f'<div class="stats">read by the probes: {html.escape(note)}</div>' if note else "")
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
    tmp = temp_dir(path.parent, f".{path.name}.", ".tmp")
    try:
        yield tmp
        (tmp / GALLERY_MARKER).write_text("written by stylexlib; replaced as a whole on every write\n")
        old = None
        if path.exists():
            old = temp_dir(path.parent, f".{path.name}.", ".old")
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_gallery(examples: Sequence[AttributeExamples], out_dir: str | Path, title: str = "StylEx attributes",
                  subtitle: str = "", max_examples: int | None = None,
                  saliency: dict[int, Tensor] | None = None, saliency_names: Sequence[str] = (),
                  rule: VisibilityRule = VisibilityRule(), notes: Mapping[str, str] | None = None,
                  figures: Sequence[tuple[str, str | Path]] = ()) -> Path:
    """A standalone HTML gallery (``index.html`` + ``images/``), per class and attribute; returns index.html.

    ``saliency`` (dataset index -> (M, H, W) maps named ``saliency_names``) puts each example's saliency maps beside
    it: where the other explainers say the classifier looks, next to what StylEx changes. Attributes whose examples
    carry their LPIPS (:func:`~stylexlib.explain.attfind.visibility.measure_visibility`) are flagged by ``rule``; a class
    whose every attribute is flagged says so above them. ``notes`` (by :attr:`AttributeExamples.key`) adds a line
    under an attribute's numbers, e.g. what the factor or attribute probes read in its changes. ``figures``
    ((caption, PNG file) pairs, e.g. the audit's labels drawn by their directions) follow the classes, copied in."""
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
                legend(rule), f"<nav>Classes: {nav}</nav>"]
        for c, name in enumerate(names):
            group = groups.get(c, [])
            body.append(f'<h2 id="class{c}">Class “{html.escape(name)}”: {len(group)} attributes</h2>')
            if _all_invisible(group, rule, max_examples):
                body.append(NO_VISIBLE_ATTRIBUTE)
            body += [_attribute_html(ex, images_dir, max_examples, strips, rule, (notes or {}).get(ex.key, ""))
                     for ex in group] or [NO_ATTRIBUTE]
        for n, (caption, path) in enumerate(figures):
            shutil.copyfile(path, images_dir / f"figure_{n}.png")
            body.append(f'<h2>{html.escape(caption)}</h2><img src="images/figure_{n}.png" alt="{html.escape(caption)}" '
                        'style="max-width:100%">')
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


# --------------------------------------------------------------------------------------------- HTML gallery
def legend(rule: VisibilityRule = VisibilityRule()) -> str:
    """The page's legend, with the visibility rule its flags follow."""
    return LEGEND.format(visibility_size=VISIBILITY_SIZE, rule=html.escape(rule.describe()))


LEGEND = """
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
<dt>LPIPS</dt><dd>perceptual distance between original and changed (0: identical), images under {visibility_size}
px enlarged to it first (LPIPS was fitted to people's judgements of {visibility_size} px patches). An attribute
is flagged <b class="invisible">invisible change</b> when its {rule}: the classifier reacts to something a person
cannot see. On synthetic data the subtitle gives the truth's own changes (the label rule's factors and the shortcut
re-rendered at their mirrored values), a check on the yardstick.</dd>
</dl>"""
