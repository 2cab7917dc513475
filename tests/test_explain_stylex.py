"""StylEx behind the common verb: attribute / class_attributes / edit on a generator with one planted coordinate."""
from __future__ import annotations

import pytest
import torch

from stylexlib.core.stylex_config import stylex_config
from stylexlib.explain import Attribute, Direction, StylEx
from stylexlib.explain.attfind.effects import StyleStats
from stylexlib.gan import Encoder, Generator

CFG = stylex_config(latent_dim=16, mapping_layers=2, channel_base=128, channel_max=8)


class RedMean(torch.nn.Module):
    def __init__(self, center: float = 0.0) -> None:
        super().__init__()
        self.center = torch.nn.Parameter(torch.tensor(center), requires_grad=False)

    def forward(self, images):
        red = images[:, 0].mean(dim=(1, 2)) - self.center
        return torch.stack([-red, red], dim=1) * 4


@pytest.fixture(scope="module")
def planted():
    """A generator whose image depends on one StyleSpace coordinate (last toRGB, channel 3, drives red)."""
    torch.manual_seed(0)
    G, E = Generator(16, 2, CFG).eval(), Encoder(16, CFG.model.latent_dim, CFG).eval()
    with torch.no_grad():
        for layer in G.layers:
            layer.weight.zero_()
            layer.bias.fill_(0.0 if layer in G.layers[1::3] else 0.5)  # the toRGB layers (b4, b8, b16): no bias
        G.layers[-1].weight[0, 3] = 0.5  # red stays inside [-1, 1], where the rendered images are clamped
        G.affine.weight[:, CFG.model.latent_dim:] = 0.0  # styles do not depend on the classifier's output: fixed below
    gen = torch.Generator().manual_seed(2)
    pool = torch.rand(64, 3, 16, 16, generator=gen) * 2 - 1
    explainer = StylEx(G, E, RedMean(), StyleStats.of(torch.zeros(2, G.style_dim)), ["low", "high"], include_torgb=True)
    styles, _ = explainer.encode(pool)
    explainer.stats = StyleStats.of(styles)  # the statistics of the encoded images, as stage 05 computes them
    with torch.no_grad():
        red = explainer.generator.synthesize(styles)[:, 0].mean(dim=(1, 2))  # unclamped, as the effects see it
        explainer.models.classifier.center.fill_(float(red.median()))
    return explainer, G.style_index.flat(len(G.layers) - 1, 3), pool[:6]


def test_attribute_names_the_planted_coordinate_for_every_image(planted) -> None:
    explainer, flat, images = planted
    result = explainer.attribute(images, target=1, k=3)
    table = result.to_dataframe()
    top = table[table["rank"] == 1]
    assert (top["flat"] == flat).all() and (top["direction"] == "down").all()  # lowering red lowers "high"
    assert (top["effect"] < 0).all() and (top["layer"] == explainer.generator.style_index.layers[-1].name).all()
    assert (top["prob_edited"] < top["prob_original"]).all()
    assert result.edited.shape == (6, 3, 3, 16, 16) and len(table) == 18
    assert set(table.columns) >= {"image", "rank", "flat", "layer", "channel", "direction", "effect", "target"}


def test_class_attributes_and_edit_use_the_same_attribute(planted) -> None:
    explainer, flat, images = planted
    table = explainer.class_attributes(images, target=1, k=2)
    assert int(table.iloc[0]["flat"]) == flat and table.iloc[0]["direction"] == "up"
    up = explainer.edit(images, Attribute(flat, Direction.UP))
    none = explainer.edit(images, Attribute(flat, "up"), strength=0.0)
    assert (up[:, 0].mean(dim=(1, 2)) > none[:, 0].mean(dim=(1, 2))).all()
    assert torch.allclose(none, explainer.render(explainer.encode(images)[0]))


def test_direction_is_one_type() -> None:
    assert Direction.of("up") is Direction.UP and Direction.of(0) is Direction.DOWN and Direction.UP.index == 1
    assert Direction.of(Direction.DOWN) is Direction.DOWN and Direction.UP == "up"
    with pytest.raises(ValueError):
        Direction.of("left")


def test_inputs_in_the_wrong_range_shape_or_target_get_clear_errors(planted) -> None:
    explainer, _, images = planted
    with pytest.raises(ValueError, match=r"look like \[0, 1\] images .*pass x \* 2 - 1"):
        explainer.attribute((images + 1) / 2, target=1, k=1)
    with pytest.raises(ValueError, match=r"float images in \[-1, 1\], got values in \[0.*, 25.\]; scale"):
        explainer.attribute((images + 1) * 127.5, target=1, k=1)
    with pytest.raises(ValueError, match=r"target has 2 entries for 6 images: give one class index \(0 to 1"):
        explainer.attribute(images, target=torch.tensor([0, 1]), k=1)
    with pytest.raises(ValueError, match=r"target \[2\] holds a class index outside 0 to 1"):
        explainer.attribute(images, target=2, k=1)
    with pytest.raises(ValueError, match=r"RGB images shaped \(N, 3, 16, 16\), got \(6, 1, 16, 16\)"):
        explainer.attribute(images[:, :1], k=1)
    with pytest.raises(ValueError, match="square images"):
        explainer.attribute(images[..., :12], k=1)
    per_image = explainer.attribute(images[:2], target=torch.tensor([0, 1]), k=1)
    assert per_image.target.tolist() == [0, 1]


def test_another_image_size_is_resized_with_a_warning(planted) -> None:
    explainer, flat, images = planted
    larger = torch.nn.functional.interpolate(images, size=(32, 32), mode="nearest")
    with pytest.warns(UserWarning, match="resized the images from 32 x 32 to the generator's 16 x 16"):
        result = explainer.attribute(larger, target=1, k=1)
    assert result.images.shape[-1] == 16 and (result.to_dataframe()["flat"] == flat).all()


def test_visible_only_ranks_the_edits_the_rule_calls_invisible_last(planted) -> None:
    from stylexlib.explain.attfind.visibility import VisibilityRule

    explainer, flat, images = planted
    try:
        explainer.visible_only, explainer.rule = True, VisibilityRule(1e6, "a yardstick nothing exceeds")
        kept = explainer.attribute(images, target=1, k=3).to_dataframe()
        assert (kept[kept["rank"] == 1]["flat"] == flat).all()  # nothing invisible: the order stays
        explainer.rule = VisibilityRule(1e-6, "a yardstick every edit that moves p exceeds", min_prob_change=0.01)
        demoted = explainer.attribute(images, target=1, k=3)
        table = demoted.to_dataframe()
        assert (table["flat"] != flat).all()  # the planted edit moves p, so it is "invisible" and falls out of the top 3
        assert demoted.edited.shape == (6, 3, 3, 16, 16) and len(table) == 18
        moved = (table["prob_edited"] - table["prob_original"]).abs()
        assert (moved < 0.01).all()  # what is left moves p too little to count as invisible
    finally:
        explainer.visible_only, explainer.rule = False, None
