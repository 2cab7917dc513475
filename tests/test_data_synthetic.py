"""The embedded synthetic faces: determinism, interventions, label rules, planted shortcut, cache."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stylexlib.core.config import DataConfig
from stylexlib.data import DataError, load_dataset
from stylexlib.data import synthetic as syn


def small_cfg(**changes) -> DataConfig:
    return DataConfig(**{"num_images": 200, "resolution": 16, **changes})


def test_factor_table_lists_every_factor():
    table = syn.factor_table()
    assert list(table["name"]) == syn.FACTOR_NAMES
    assert set(table["kind"]) == {"continuous", "binary"}
    assert (table["kind"] == "binary").sum() >= 2 and len(table) >= 8


def test_sampling_is_deterministic_and_in_range():
    a, b, c = syn.sample_factors(500, 3), syn.sample_factors(500, 3), syn.sample_factors(500, 4)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)
    for spec in syn.FACTORS:
        assert a[spec.name].between(spec.low, spec.high).all()
    assert (a["mouth_curve"].abs() >= 0.15).all()
    assert 0.3 < (a["mouth_curve"] > 0).mean() < 0.7


def test_render_is_deterministic_and_seed_dependent():
    images = syn.render(syn.sample_factors(8, 0), 32)
    assert images.dtype == torch.uint8
    assert torch.equal(images, syn.render(syn.sample_factors(8, 0), 32))
    assert not torch.equal(images, syn.render(syn.sample_factors(8, 1), 32))


def test_render_does_not_depend_on_batching(monkeypatch):
    factors = syn.sample_factors(7, 0)
    whole = syn.render(factors, 16)
    monkeypatch.setattr(syn, "PIXELS_PER_BATCH", 3 * 16 * 16)
    assert torch.equal(whole, syn.render(factors, 16))
    assert torch.equal(whole[4:5], syn.render(factors.iloc[[4]], 16))
    assert torch.equal(whole[[2, 2]], syn.render(factors.iloc[[2, 2]], 16))


@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_render_shapes(resolution):
    assert syn.render(syn.sample_factors(3, 0), resolution).shape == (3, 3, resolution, resolution)


@pytest.mark.parametrize("resolution", [8, 24, 33])
def test_bad_resolution(resolution):
    with pytest.raises(DataError, match="power of two"):
        syn.render(syn.sample_factors(1, 0), resolution)


@pytest.mark.parametrize("spec", syn.FACTORS, ids=lambda spec: spec.name)
def test_intervention_changes_one_factor_and_the_pixels(spec):
    factors = syn.sample_factors(6, 0)
    value = 1 - factors[spec.name] if spec.kind == "binary" else np.where(factors[spec.name] > 0, spec.low, spec.high)
    changed = syn.intervene(factors, spec.name, value)
    differs = (changed != factors).any()
    assert list(differs[differs].index) == [spec.name]
    before, after = syn.render(factors, 32), syn.render(changed, 32)
    assert (before != after).flatten(1).any(1).all()
    same = syn.intervene(factors, spec.name, factors[spec.name].to_numpy())
    assert torch.equal(before, syn.render(same, 32))


def test_intervene_rejects_unknown_factor_and_out_of_range_values():
    factors = syn.sample_factors(2, 0)
    with pytest.raises(DataError, match="unknown factor 'smile'.*mouth_curve"):
        syn.intervene(factors, "smile", 1.0)
    with pytest.raises(DataError, match=r"eye_size.*\[0, 1\]"):
        syn.intervene(factors, "eye_size", 1.5)
    with pytest.raises(DataError, match="glasses.*0 or 1"):
        syn.intervene(factors, "glasses", [0, 2])
    with pytest.raises(DataError, match="3 values of 'hat' for 2 rows"):
        syn.intervene(factors, "hat", [0, 1, 1])


def test_render_interventions_sweeps_each_sample():
    factors = syn.sample_factors(2, 0)
    sweep = syn.render_interventions(factors, "eye_size", [0.0, 0.5, 1.0], 16)
    assert sweep.shape == (6, 3, 16, 16)
    row = syn.intervene(factors.iloc[[1]], "eye_size", 0.5)
    assert torch.equal(sweep[4], syn.render(row, 16)[0])
    hats = syn.render(syn.intervene(factors.iloc[[0, 0]], "hat", [0, 1]), 16)
    assert torch.equal(syn.render_interventions(factors.iloc[0], "hat", [0, 1], 16), hats)


def test_label_rules():
    factors = syn.sample_factors(300, 0)
    np.testing.assert_array_equal(syn.apply_label_rule(factors, "mouth_curve > 0"), factors["mouth_curve"] > 0)
    counts = syn.apply_label_rule(factors, "glasses + hat")
    assert counts.dtype == np.int64 and set(counts) == {0, 1, 2}
    with pytest.raises(DataError, match=r"label rule 'smile > 0'.*mouth_curve"):
        syn.apply_label_rule(factors, "smile > 0")
    with pytest.raises(DataError, match="must give booleans"):
        syn.apply_label_rule(factors, "eye_size * 2")
    with pytest.raises(DataError, match="label rule 'mouth_curve >'"):
        syn.apply_label_rule(factors, "mouth_curve >")
    with pytest.raises(DataError, match="not an assignment"):
        syn.apply_label_rule(factors, "smile = mouth_curve > 0")


def test_dataset_rejects_single_class_rule_and_wrong_class_names(tmp_path):
    with pytest.raises(DataError, match="label rule 'eye_size > 2' gives only one class"):
        syn.make_synthetic_dataset(small_cfg(label_rule="eye_size > 2"), cache_dir=tmp_path)
    with pytest.raises(DataError, match="gives 3 classes but data.class_names has 2"):
        syn.make_synthetic_dataset(small_cfg(label_rule="glasses + hat", spurious_factor=None), cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_plant_spurious_checks_its_factor():
    factors, labels = syn.sample_factors(10, 0), np.arange(10) % 2
    with pytest.raises(DataError, match="must be binary"):
        syn.plant_spurious(factors, labels, "eye_size", 0.9, 0)
    with pytest.raises(DataError, match="used by the label rule"):
        syn.plant_spurious(factors, labels, "glasses", 0.9, 0, rule="glasses == 1 or mouth_curve > 0")
    planted = syn.plant_spurious(factors, labels, "hat", 0.7, 0, rule="mouth_curve > 0")
    assert (planted["hat"] == labels).sum() == 7
    assert planted.drop(columns="hat").equals(factors.drop(columns="hat"))


def test_dataset_plants_exact_agreement_per_split(tmp_path):
    cfg = small_cfg(num_images=333, spurious_agreement=0.8, spurious_agreement_test=0.25)
    data = syn.make_synthetic_dataset(cfg, cache_dir=tmp_path)
    agree = data.factors["glasses"].to_numpy() == data.labels.numpy()
    for split, rate in [("train", 0.8), ("val", 0.8), ("test", 0.25)]:
        rows = data.split == split
        assert agree[rows].sum() == round(rate * rows.sum())
        assert data.info["spurious_agreement"][split] == agree[rows].mean()
    np.testing.assert_array_equal(data.labels.numpy(), data.factors["mouth_curve"] > 0)
    assert torch.equal(data.images, syn.render(data.factors, 16))


def test_label_noise_flips_exactly_its_share_of_train_and_val_labels(tmp_path):
    cfg = small_cfg(num_images=300, label_noise=0.1, spurious_agreement=0.9)
    data = syn.make_synthetic_dataset(cfg, cache_dir=tmp_path)
    rule = syn.apply_label_rule(data.factors, cfg.label_rule)
    wrong = data.labels.numpy() != rule
    fitted = ~(data.split == "test")
    assert wrong[fitted].sum() == round(0.1 * fitted.sum()) and not wrong[~fitted].any()
    agree = data.factors["glasses"].to_numpy() == data.labels.numpy()  # the shortcut follows the noisy labels
    assert agree[data.split == "train"].mean() == pytest.approx(0.9, abs=0.01)
    clean = syn.make_synthetic_dataset(small_cfg(num_images=300), cache_dir=tmp_path)
    assert clean.info["cache"] != data.info["cache"]
    with pytest.raises(DataError, match=r"data.label_noise must be in \[0, 0.5\)"):
        syn.make_synthetic_dataset(small_cfg(label_noise=0.7), cache_dir=tmp_path)


def test_dataset_cache_hit_is_identical(tmp_path, monkeypatch):
    first = syn.make_synthetic_dataset(small_cfg(), cache_dir=tmp_path)
    cached = list(tmp_path.glob("synthetic-*.pt"))
    assert [str(p) for p in cached] == [first.info["cache"]]
    with monkeypatch.context() as patch:
        patch.setattr(syn, "render", None)  # a cache hit renders nothing
        second = load_dataset(small_cfg(), cache_dir=tmp_path)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    pd.testing.assert_frame_equal(first.factors, second.factors)
    assert (first.split == second.split).all() and second.class_names == ["frown", "smile"]
    syn.make_synthetic_dataset(small_cfg(seed=1), cache_dir=tmp_path)
    assert len(list(tmp_path.glob("synthetic-*.pt"))) == 2


def test_unreadable_cache_is_rebuilt(tmp_path):
    first = syn.make_synthetic_dataset(small_cfg(num_images=20), cache_dir=tmp_path)
    Path(first.info["cache"]).write_bytes(b"truncated")
    again = syn.make_synthetic_dataset(small_cfg(num_images=20), cache_dir=tmp_path)
    assert torch.equal(first.images, again.images)


def test_save_factors_csv(tmp_path):
    data = syn.make_synthetic_dataset(small_cfg(num_images=20), cache_dir=tmp_path)
    table = pd.read_csv(syn.save_factors_csv(data, tmp_path / "factors.csv"))
    assert list(table.columns) == ["image", *syn.FACTOR_NAMES, "label", "class_name", "split"]
    assert (table["label"] == data.labels.numpy()).all() and (table["split"] == data.split).all()
    np.testing.assert_allclose(table["eye_size"], data.factors["eye_size"])
