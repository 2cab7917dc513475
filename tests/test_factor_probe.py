"""The factor probe: reads the synthetic factors off faces, maps what every coordinate does, names attributes."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from stylexlib.classifier.model import build_classifier
from stylexlib.core.config import DataConfig
from stylexlib.core.run import open_run
from stylexlib.core.stylex_config import stylex_config
from stylexlib.data import load_dataset
from stylexlib.data import synthetic as syn
from stylexlib.evaluate import factor_probe as fp
from stylexlib.explain.attfind.editor import AttributeEditor
from stylexlib.explain.attfind.effects import StyleStats
from stylexlib.gan import Encoder, Generator
from stylexlib.gan.models import StylexModels
from stylexlib.stylespace.inversion import invert


@pytest.fixture(scope="module")
def probe_and_data(tmp_path_factory):
    data = load_dataset(DataConfig(num_images=1200, resolution=16), cache_dir=tmp_path_factory.mktemp("cache"))
    return fp.train_factor_probe(data, epochs=20, width=8), data


def test_probe_reads_the_factors_of_held_out_faces(probe_and_data):
    probe, data = probe_and_data
    scores = fp.probe_scores(probe, data).set_index("factor")
    assert scores.loc["glasses", "metric"] == "accuracy" and scores.loc["glasses", "score"] > 0.9
    assert scores.loc["background_hue", "metric"] == "r2" and scores.loc["background_hue", "score"] > 0.5


def test_probe_does_not_learn_the_datasets_shortcut(probe_and_data):
    """The data ties glasses to the smile (0.9 in train); the probe must read the mouth the same with or without them."""
    probe, data = probe_and_data
    rows = data.indices("test")  # glasses independent of the label here
    truth = data.factors.iloc[rows]
    error = (probe.read(data.images[torch.as_tensor(rows)]) - probe.normalise(truth))[:, probe.names.index("mouth_curve")]
    glasses = torch.as_tensor(truth["glasses"].to_numpy() == 1)
    assert abs(float(error[glasses].mean() - error[~glasses].mean())) < 0.05


def test_factor_scores_catch_a_factor_lost_in_reconstruction(probe_and_data):
    probe, data = probe_and_data
    truth = data.factors.iloc[data.indices("val")].reset_index(drop=True)
    hats_everywhere = syn.render(syn.intervene(truth, "hat", 1), 16)  # what the demo's reconstructions did
    scores = fp.factor_scores(probe, hats_everywhere, truth).set_index("factor")
    assert scores.loc["hat", "read_mean"] > scores.loc["hat", "truth_mean"] + 0.25
    assert scores.loc["hat", "score"] < 0.75 and scores.loc["glasses", "score"] > 0.9


def test_coordinate_map_equals_rendering_every_edit(probe_and_data, tmp_path, monkeypatch):
    probe, data = probe_and_data
    cfg = stylex_config(latent_dim=16, mapping_layers=2, channel_base=128, channel_max=8)
    torch.manual_seed(0)
    models = StylexModels(Generator(16, 2, cfg).eval(), Encoder(16, 16, cfg).eval(),
                          build_classifier(2, 16, width=4).eval(), cfg, ["frown", "smile"], 0, torch.device("cpu"))
    styles = invert(models, data.images[:3]).styles
    editor = AttributeEditor(models, StyleStats.of(styles))
    coords = torch.arange(0, models.generator.style_dim, 7)
    changes = fp.coordinate_factor_changes(probe, editor, styles, coords, batch_size=5)
    assert len(changes) == 2 * len(coords) and list(changes.columns[:3]) == ["flat", "direction", "label"]
    base = probe.read(editor.render(styles))
    for row in changes.sample(6, random_state=0).itertuples():
        expected = (probe.read(editor.render(editor.edit(styles, row.flat, row.direction))) - base).mean(0)
        assert torch.allclose(torch.tensor([getattr(row, name) for name in probe.names]), expected, atol=1e-5)
    assert changes[fp.FACTOR_NAMES].abs().to_numpy().max() > 0
    reloaded = fp.load_probe(fp.save_probe(probe, tmp_path / fp.PROBE_FILE))
    assert torch.equal(reloaded.read(data.images[:4]), probe.read(data.images[:4]))

    # stage 06's analysis: the same map, written to the run folder, the attributes named and the metrics computed
    run = open_run(tmp_path / "run", overrides=["data.label_rule=mouth_curve > 0", "data.spurious_factor=glasses"])
    monkeypatch.setattr(fp, "fit_run_probe", lambda *args: probe)
    attributes = pd.DataFrame({"class_index": [0, 1], "class_name": ["frown", "smile"], "rank": [1, 1],
                               "flat": [int(coords[0]), int(coords[2])], "direction": ["up", "down"]})
    found = fp.analyse_attributes(run, data, editor, styles, coords, attributes)
    pd.testing.assert_frame_equal(found.changes, changes.reset_index(drop=True), check_exact=False, atol=1e-6)
    assert pd.read_csv(run.path("attfind", "coordinate_factors.csv")).shape == changes.shape
    assert list(pd.read_csv(run.path("attfind", "attribute_factors.csv"))["key"]) == ["c0_r01", "c1_r01"]
    assert found.map_factors == ("mouth_curve", "glasses") and set(found.notes) == {"c0_r01", "c1_r01"}
    assert found.metrics == {**fp.ground_truth_summary(found.attributes, "mouth_curve > 0", "glasses"),
                             **fp.factor_enrichment(changes, attributes, "mouth_curve > 0", "glasses")}


def fake_changes(edits: dict[tuple[int, str], dict[str, float]]) -> pd.DataFrame:
    """A coordinate-factor table: zero change except the given factors."""
    rows = [{"flat": flat, "direction": direction, "label": f"b4.conv1[{flat}] {direction}",
             **{name: moved.get(name, 0.0) for name in fp.FACTOR_NAMES}} for (flat, direction), moved in edits.items()]
    return pd.DataFrame(rows)


def test_attributes_are_named_by_the_factor_they_change_and_compared_with_chance():
    changes = fake_changes({(0, "up"): {"glasses": 0.3, "mouth_curve": 0.05}, (0, "down"): {"glasses": -0.3},
                            (1, "down"): {"background_hue": -0.2, "offset_x": 0.9}, (2, "up"): {"mouth_curve": 0.1}})
    attributes = pd.DataFrame({"class_index": [0, 0, 1], "class_name": ["frown", "frown", "smile"], "rank": [1, 2, 1],
                               "flat": [0, 1, 2], "direction": ["up", "down", "up"]})
    table = fp.attribute_factors(changes, attributes)
    assert list(table["factor"]) == ["glasses", "background_hue", "mouth_curve"]  # nuisance offsets never win
    assert list(table["key"]) == ["c0_r01", "c0_r02", "c1_r01"] and table.loc[1, "change"] == -0.2
    assert fp.factor_notes(table)["c0_r01"] == "changes glasses +0.30"
    assert fp.ground_truth_summary(table, "mouth_curve > 0", "glasses") == {
        "attributes_on_label_factor": 1, "attributes_best_rank_label_factor": 1,
        "attributes_on_spurious_factor": 1, "attributes_best_rank_spurious_factor": 1}
    assert fp.ground_truth_summary(table, "eye_size > 0.5", None) == {
        "attributes_on_label_factor": 0, "attributes_best_rank_label_factor": None}
    enrichment = fp.factor_enrichment(changes, attributes, "mouth_curve > 0", "glasses")
    assert enrichment == pytest.approx({
        "factor_label_factor_attfind": 0.05, "factor_label_factor_random": 0.0375,
        "factor_label_factor_enrichment": 0.05 / 0.0375, "factor_label_factor_attfind_max": 0.1,
        "factor_label_factor_stylespace_max": 0.1,
        "factor_spurious_factor_attfind": 0.1, "factor_spurious_factor_random": 0.15,
        "factor_spurious_factor_enrichment": 0.1 / 0.15, "factor_spurious_factor_attfind_max": 0.3,
        "factor_spurious_factor_stylespace_max": 0.3})
    fp.factor_heatmap(table)
    fp.factor_map_figure(changes, attributes, "mouth_curve", "glasses")
    with pytest.raises(ValueError, match=r"coordinates \[7\]"):
        fp.attribute_factors(changes, attributes.assign(flat=[0, 1, 7]))


def test_probe_needs_factors(probe_and_data):
    _, data = probe_and_data
    no_factors = type(data)(images=data.images, labels=data.labels, class_names=data.class_names, split=data.split)
    with pytest.raises(ValueError, match="data.source: synthetic"):
        fp.train_factor_probe(no_factors)


def test_rule_factors():
    assert fp.rule_factors("mouth_curve > 0 and eye_size < 0.5") == ["eye_size", "mouth_curve"]
