"""Attribute figures, GIFs and the standalone HTML gallery (rendered in headless Chromium)."""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from stylexlib.core.figures import image_grid
from stylexlib.explain.attfind.examples import AttributeExamples, load_examples, save_examples
from stylexlib.report.gallery import ChromiumNotFound, dump_dom, find_chromium, screenshot_html, write_gallery
from stylexlib.report.viz import amplified_difference, pair_figure, save_toggle_gif, summary_figure

RED, BLUE = (220, 20, 20), (20, 40, 230)
NAMES = ["frown", "smile"]


def solid(color: tuple[int, int, int], k: int, res: int = 16) -> torch.Tensor:
    """``k`` images of one colour, float in [-1, 1]."""
    return (torch.tensor(color, dtype=torch.float32).view(1, 3, 1, 1).expand(k, 3, res, res) / 127.5 - 1).clone()


def make_examples(num_classes: int = 2, per_class: int = 3, k: int = 4) -> list[AttributeExamples]:
    """Attributes whose originals are red and changed images blue; p(class) rises by 0.1 * rank."""
    out = []
    for c in range(num_classes):
        for rank in range(1, per_class + 1):
            p0 = torch.full((k,), 0.3)
            p1 = p0 + 0.1 * rank
            probs = lambda p: torch.stack([1 - p, p], 1) if c == 1 else torch.stack([p, 1 - p], 1)  # noqa: E731
            out.append(AttributeExamples(c, NAMES[c], rank, 100 * c + rank, f"b8.conv1[{rank}] {'up' if rank % 2 else 'down'}",
                                         0.1 * rank, 0.25 * rank, [10 * rank + i for i in range(k)],
                                         solid(RED, k), solid(BLUE, k), probs(p0), probs(p1), NAMES))
    return out


def test_examples_are_checked_and_round_trip(tmp_path: Path) -> None:
    ex = make_examples(1, 1)[0]
    with pytest.raises(ValueError, match="image indices"):
        AttributeExamples(**{**ex.to_dict(), "image_indices": [1, 2]})
    with pytest.raises(ValueError, match="probabilities"):
        AttributeExamples(**{**ex.to_dict(), "probs_original": torch.rand(4, 3), "probs_changed": torch.rand(4, 3)})
    back = load_examples(save_examples([ex], tmp_path / "ex.pt"))[0]
    assert back.label == ex.label and back.image_indices == ex.image_indices and torch.equal(back.changed, ex.changed)
    p0, p1 = ex.class_probs()
    assert torch.allclose(p1 - p0, torch.full((4,), 0.1))


def test_pair_figure_titles_carry_probabilities() -> None:
    ex = make_examples(2, 1, k=5)[1]  # class "smile", p 0.3 -> 0.4
    fig = pair_figure(ex, pairs_per_row=3)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 15  # original | changed | the change, for each of 5 examples
    titles = [ax.get_title() for ax in shown]
    assert titles.count("changed\np(smile)=0.40") == 5 and "#10 original\np(smile)=0.30" in titles
    assert sum(t.startswith("change\nx") for t in titles) == 5
    assert sum(1 for ax in pair_figure(ex, difference=False).axes if ax.images) == 10


def test_amplified_difference_keeps_sign_location_and_one_gain() -> None:
    originals = torch.zeros(2, 3, 16, 16)
    changed = originals.clone()
    changed[0, 0, :8, :8] = 0.05  # the first image's red rises in the top-left quarter ...
    changed[1, 0, :8, :8] = 0.025  # ... the second's by half as much
    changed[1, 2, 8:, 8:] = -0.05  # and its blue falls in the bottom-right
    shown, gain = amplified_difference(originals, changed)
    assert gain == pytest.approx(20.0)
    assert torch.allclose(shown[0, 0, :8, :8], torch.ones(8, 8))
    assert torch.allclose(shown[1, 0, :8, :8], torch.full((8, 8), 0.5))  # the same gain for both images
    assert torch.allclose(shown[1, 2, 8:, 8:], -torch.ones(8, 8))
    assert shown[:, 1].abs().max() == 0 and shown[0, :, 8:].abs().max() == 0  # unchanged stays grey
    same, capped = amplified_difference(originals, originals)
    assert capped == 100.0 and same.abs().max() == 0


def test_toggle_gif_alternates_original_and_changed(tmp_path: Path) -> None:
    path = save_toggle_gif(make_examples(1, 1)[0], tmp_path / "a.gif", max_examples=3)
    gif = Image.open(path)
    assert gif.n_frames == 2 and gif.info.get("loop") == 0
    colours = []
    for frame in range(2):
        gif.seek(frame)
        pixels = np.asarray(gif.convert("RGB")).reshape(-1, 3)
        colours.append((np.all(np.abs(pixels - RED) < 8, 1).mean(), np.all(np.abs(pixels - BLUE) < 8, 1).mean()))
    assert colours[0][0] > 0.3 and colours[0][1] == 0 and colours[1][1] > 0.3 and colours[1][0] == 0


def test_summary_figure_has_top_rows_per_class() -> None:
    fig = summary_figure(make_examples(2, 5), top=4, pairs=2)
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert len(labels) == 8 and labels[0].startswith("frown #1") and labels[-1].startswith("smile #4")
    assert sum(1 for ax in fig.axes if ax.images) == 8 * 2 * 3 and labels[0].endswith("change x1")
    assert sum(1 for ax in summary_figure(make_examples(2, 5), top=4, pairs=2, difference=False).axes
               if ax.images) == 8 * 2 * 2
    assert (1 - fig.subplotpars.top) * fig.get_figheight() <= 0.6  # the title sits just above the grid, no gap


def test_gallery_folder_is_self_contained_and_replaced_whole(tmp_path: Path) -> None:
    out = tmp_path / "gallery"
    index = write_gallery(make_examples(), out, subtitle="run x")
    page = index.read_text()
    sources = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert len(sources) == 6 * (1 + 3 * 4)  # per attribute: a GIF and 4 pairs, each with its change
    assert all(not s.startswith(("/", "http", "file:")) and (out / s).is_file() for s in sources)
    assert "fraction affected" in page and "mean effect <b>+0.3000</b>" in page and "p(smile) = 0.400" in page
    (out / "images" / "stale.png").write_bytes(b"x")
    one = make_examples(1, 1)
    page = write_gallery(one, out, notes={one[0].key: "age 31->44 <older>"}).read_text()
    assert "read by the probes: age 31-&gt;44 &lt;older&gt;</div>" in page
    assert not (out / "images" / "stale.png").exists() and len(list((out / "images").glob("*.png"))) == 12
    assert '<a href="#class1">smile (0)</a>' in page and "no attribute for this class" in page
    drawn = tmp_path / "drawn.png"
    drawn.write_bytes((out / "images").glob("*.png").__next__().read_bytes())
    page = write_gallery(one, out, figures=[("Glasses <drawn on>", drawn)]).read_text()
    assert '<h2>Glasses &lt;drawn on&gt;</h2><img src="images/figure_0.png"' in page
    assert (out / "images" / "figure_0.png").read_bytes() == drawn.read_bytes()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not written by stylexlib"):
        write_gallery(make_examples(1, 1), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").exists()


def test_missing_chromium_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STYLEX_CHROMIUM", str(tmp_path / "no-such-browser"))
    assert find_chromium() is None
    with pytest.raises(ChromiumNotFound, match="apt-get install -y chromium"):
        screenshot_html(tmp_path / "index.html", tmp_path / "shot.png")
    assert not (tmp_path / "shot.png").exists()


def test_gallery_renders_with_its_images_in_chromium(tmp_path: Path, chromium: str) -> None:
    index = write_gallery(make_examples(), tmp_path / "gallery")
    dom = dump_dom(index)
    total = len(re.findall(r"<img\b", dom))
    assert total == 78 and f'data-images-loaded="{total}"' in dom and f'data-images-total="{total}"' in dom
    shot = Image.open(screenshot_html(index, tmp_path / "shot.png", width=1000, height=1200))
    pixels = np.asarray(shot.convert("RGB")).reshape(-1, 3).astype(int)
    assert shot.size == (1000, 1200)
    red = np.all(np.abs(pixels - RED) < 10, 1).mean()
    blue = np.all(np.abs(pixels - BLUE) < 10, 1).mean()
    white = np.all(pixels > 245, 1).mean()
    assert red > 0.03 and blue > 0.02 and white < 0.9, (red, blue, white)


def test_chromium_check_catches_a_missing_image(tmp_path: Path, chromium: str) -> None:
    index = write_gallery(make_examples(1, 1), tmp_path / "gallery")
    (tmp_path / "gallery" / "images" / "c0_r01_2_changed.png").unlink()
    dom = dump_dom(index)
    assert 'data-images-loaded="12"' in dom and 'data-images-total="13"' in dom and 'class="px broken"' in dom


def test_an_attribute_without_examples_still_has_its_place(tmp_path: Path) -> None:
    empty = make_examples(1, 1)[0]
    empty = AttributeExamples(**{**empty.to_dict(), "rank": 2, "image_indices": [], "originals": empty.originals[:0],
                                 "changed": empty.changed[:0], "probs_original": empty.probs_original[:0],
                                 "probs_changed": empty.probs_changed[:0]})
    assert "no example images" in pair_figure(empty).axes[0].texts[0].get_text()
    with pytest.raises(ValueError, match="no example images"):
        save_toggle_gif(empty, tmp_path / "e.gif")
    page = write_gallery([make_examples(1, 1)[0], empty], tmp_path / "g").read_text()
    assert "No example images" in page and page.count('<section class="attr"') == 2
    first = summary_figure([empty]).axes[0]
    assert first.axison and first.get_ylabel().startswith("frown #2") and first.texts[0].get_text() == "no examples"


def test_gallery_puts_each_examples_saliency_maps_beside_it(tmp_path: Path) -> None:
    examples = make_examples(1, 2, k=2)
    indices = sorted({i for ex in examples for i in ex.image_indices})
    maps = torch.zeros(3, 16, 16)
    maps[1, :8] = 1.0  # the second method marks the top half
    page = write_gallery(examples, tmp_path / "g", saliency={i: maps for i in indices[:-1]},
                         saliency_names=["occlusion", "gradient", "gradcam"]).read_text()
    assert page.count('class="maps"') == 3 and f"maps_{indices[-1]}.png" not in page  # an image without maps: none
    strip = np.asarray(Image.open(tmp_path / "g" / "images" / f"maps_{indices[0]}.png").convert("RGB")).astype(int)
    assert strip.shape[1] >= 3 * 64  # three maps side by side, enlarged
    heat = plt.get_cmap("inferno")(1.0)[:3]
    assert np.all(np.abs(strip - np.array(heat) * 255) < 3, axis=-1).sum() > 64 * 32 * 0.9  # the marked half, hot


def test_intervention_figure_shows_every_factor_at_each_of_its_values() -> None:
    from stylexlib.data.synthetic import FACTORS, render_interventions, sample_factors
    from stylexlib.evaluate.ground_truth import intervention_values
    from stylexlib.report.plots import intervention_figure

    factors = sample_factors(2, seed=0)
    fig = intervention_figure(factors, 16)
    width = max(len(intervention_values(spec.name)) for spec in FACTORS)
    assert len(fig.axes) == len(FACTORS) * width
    first = FACTORS[0]
    expected = render_interventions(factors.iloc[[0]], first.name, intervention_values(first.name), 16)
    shown = fig.axes[0].images[0].get_array()
    assert fig.axes[0].get_title() == first.name and (shown == expected[0].permute(1, 2, 0).numpy()).all()
    short = next(i for i, spec in enumerate(FACTORS) if len(intervention_values(spec.name)) < width)
    blank = fig.axes[short * width + width - 1].images[0].get_array()
    assert (blank == 255).all()  # rows with fewer values are padded with white


def test_image_grid_rows_grow_with_their_title_lines() -> None:
    images = torch.zeros(4, 3, 8, 8)
    heights = [image_grid(images, titles, ncols=2).get_size_inches()[1] for titles in (None, ["a"] * 4, ["a\nb"] * 4)]
    plt.close("all")
    assert heights[0] < heights[1] < heights[2]  # a second title line no longer runs into the row above
