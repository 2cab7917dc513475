"""The factor probe: reads the synthetic factors off faces and names the factor an edit changes."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from stylexlib import factor_probe as fp
from stylexlib.config import DataConfig
from stylexlib.data import load_dataset, to_float
from stylexlib.data import synthetic as syn
from stylexlib.viz import AttributeExamples


@pytest.fixture(scope="module")
def probe_and_data(tmp_path_factory):
    data = load_dataset(DataConfig(num_images=1200, resolution=16), cache_dir=tmp_path_factory.mktemp("cache"))
    return fp.train_factor_probe(data, epochs=20, width=8), data


def fake_attribute(factors: pd.DataFrame, name: str, value, rank: int) -> AttributeExamples:
    """An 'attribute' whose changed images are the same faces re-rendered with one factor set."""
    originals = to_float(syn.render(factors, 16))
    changed = to_float(syn.render(syn.intervene(factors, name, value), 16))
    probs = torch.full((len(factors), 2), 0.5)
    return AttributeExamples(0, "frown", rank, rank, f"{name} -> {value}", 0.1, 0.5, list(range(len(factors))),
                             originals, changed, probs, probs, ["frown", "smile"])


def test_probe_reads_the_factors_of_held_out_faces(probe_and_data):
    probe, data = probe_and_data
    scores = fp.probe_scores(probe, data).set_index("factor")
    assert scores.loc["glasses", "metric"] == "accuracy" and scores.loc["glasses", "score"] > 0.9
    assert scores.loc["background_hue", "metric"] == "r2" and scores.loc["background_hue", "score"] > 0.5


def test_attributes_are_named_by_the_factor_they_change(probe_and_data, tmp_path):
    probe, data = probe_and_data
    val = data.factors.iloc[data.indices("val")]
    faces = val[val["glasses"] == 0].head(24).reset_index(drop=True)
    examples = [fake_attribute(faces, "glasses", 1, 1),
                fake_attribute(faces, "background_hue", 0.0, 2)]
    table = fp.attribute_factors(probe, examples)
    assert list(table["factor"]) == ["glasses", "background_hue"]
    assert fp.factor_notes(table)[examples[0].key].startswith("changes glasses +")
    assert table.loc[1, "change"] < 0  # hues moved down to 0
    summary = fp.ground_truth_summary(table, "background_hue > 0.4", "glasses")
    assert summary == {"attributes_on_label_factor": 1, "attributes_best_rank_label_factor": 2,
                       "attributes_on_spurious_factor": 1, "attributes_best_rank_spurious_factor": 1}
    assert fp.ground_truth_summary(table, "mouth_curve > 0", None) == {
        "attributes_on_label_factor": 0, "attributes_best_rank_label_factor": None}
    reloaded = fp.load_probe(fp.save_probe(probe, tmp_path / fp.PROBE_FILE))
    assert torch.equal(reloaded.read(examples[0].changed), probe.read(examples[0].changed))
    fp.factor_heatmap(table)


def test_probe_needs_factors(probe_and_data):
    _, data = probe_and_data
    no_factors = type(data)(images=data.images, labels=data.labels, class_names=data.class_names, split=data.split)
    with pytest.raises(ValueError, match="data.source: synthetic"):
        fp.train_factor_probe(no_factors)


def test_rule_factors():
    assert fp.rule_factors("mouth_curve > 0 and eye_size < 0.5") == ["eye_size", "mouth_curve"]
