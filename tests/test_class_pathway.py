"""The class pathway: each coordinate's share of how the class input moves StyleSpace, and the top attributes on it."""
from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from stylexlib.classifier.model import build_classifier
from stylexlib.core.stylex_config import stylex_config
from stylexlib.evaluate.class_pathway import class_pathway_metrics, class_pathway_shares, pathway_coordinates, pathway_note
from stylexlib.gan import Encoder, Generator
from stylexlib.gan.models import StylexModels

CFG = stylex_config(latent_dim=16, mapping_layers=2, channel_base=128, channel_max=8)
RESOLUTION = 16


def planted_models(rows: dict[int, tuple[float, float]], cfg=CFG) -> StylexModels:
    """A tiny generator whose class columns are zero but for the given coordinates' (class 0, class 1) entries."""
    torch.manual_seed(0)
    G = Generator(RESOLUTION, 2, cfg).eval().requires_grad_(False)
    columns = torch.zeros(G.style_dim, 2)
    for flat, values in rows.items():
        columns[flat] = torch.tensor(values)
    G.affine.weight[:, cfg.model.latent_dim:] = columns / G.affine.weight_gain
    E = Encoder(RESOLUTION, cfg.model.latent_dim, cfg).eval().requires_grad_(False)
    C = build_classifier(2, RESOLUTION, width=4).eval().requires_grad_(False)
    return StylexModels(G, E, C, cfg, ["a", "b"], 0, torch.device("cpu"))


def attributes(flats: list[int]) -> pd.DataFrame:
    """Top attributes of two classes, ranks 1..n each, at the given flat coordinates (both classes alike)."""
    return pd.DataFrame([dict(class_index=k, rank=r + 1, flat=f) for k in (0, 1) for r, f in enumerate(flats)])


def test_shares_count_what_moves_between_classes_not_what_every_class_adds() -> None:
    models = planted_models({3: (-3.0, 3.0), 10: (-1.0, 1.0), 20: (5.0, 5.0)})  # 20: a bias both classes add alike
    shares = class_pathway_shares(models.generator.class_columns())
    assert shares.sum() == pytest.approx(1.0)
    assert shares[3] == pytest.approx(0.75) and shares[10] == pytest.approx(0.25)
    assert shares[20] == pytest.approx(0.0)
    assert pathway_coordinates(shares, 0.7).tolist() == [3]
    assert pathway_coordinates(shares, 0.9).tolist() == [3, 10]


def test_metrics_count_the_top_attributes_on_the_pathway() -> None:
    models = planted_models({3: (-3.0, 3.0), 10: (-1.0, 1.0)})
    found = class_pathway_metrics(models, attributes([3, 10, 40, 41, 42, 43]), top=5)
    assert found == {"class_pathway_coordinates": 2, "class_pathway_top_share": pytest.approx(0.75),
                     "attributes_on_class_pathway_top5": pytest.approx(0.4)}
    note = pathway_note(found)
    assert "2 coordinates" in note and "40%" in note and "expect bundles" in note


def test_a_wide_pathway_gives_no_bundle_warning_and_a_classless_generator_no_pathway() -> None:
    rows = {flat: (-1.2, 1.2) if flat < 5 else (-1.0, 1.0) for flat in range(25)}  # 5 x 1.2 + 20 x 1: 90% is 23.4
    found = class_pathway_metrics(planted_models(rows), attributes([0, 1, 2, 3, 4]))
    assert found["class_pathway_coordinates"] == 23 and found["attributes_on_class_pathway_top5"] == 1.0
    assert "expect bundles" not in pathway_note(found)
    classless = dataclasses.replace(CFG, model=dataclasses.replace(CFG.model, condition_on="none"))
    assert class_pathway_metrics(planted_models({3: (-1.0, 1.0)}, classless), attributes([3])) == {}
