"""The shipped configs for photographs: the real-data preset, the age task's classes, the GPU config on CPU."""
from __future__ import annotations

import pytest
import torch

from stylexlib.core.config import load_config
from stylexlib.core.presets import REAL
from stylexlib.data import load_dataset
from stylexlib.gan.train import StylexTrainer
from tests.conftest import REPO, SHARED

needs_data = pytest.mark.skipif(not (SHARED / "data" / "utkface").exists(), reason="../shared/data is not here")


@pytest.mark.parametrize("name", ["utkface", "utkface_age", "utkface_gpu", "cats_vs_dogs", "celeba_smile", "celeba_gender",
                                  "celeba_young", "celeba_smile_gpu", "celeba_gender_gpu"])
def test_folder_configs_use_the_real_preset(name: str) -> None:
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert cfg.stylex.preset == "real" and cfg.stylex.encoder_fit.minutes > 0
    assert cfg.stylex.encoder_fit.minutes < cfg.stylex.schedule.time_limit_minutes
    if not name.endswith("_gpu"):  # the CPU configs keep the preset's sizes and schedule
        preset = {(group, k): v for group, keys in REAL.items() if group != "loss" for k, v in keys.items()
                  if k != "time_limit_minutes"}
        assert {(group, k): getattr(getattr(cfg.stylex, group), k) for group, k in preset} == preset
        assert {term: cfg.stylex.weight(term) for term in REAL["loss"]} == REAL["loss"]


@needs_data
def test_age_task_keeps_young_and_old_adults_only() -> None:
    cfg = load_config(REPO / "configs" / "utkface_age.yaml", ["data.resolution=16", "data.max_images=400"])
    data = load_dataset(cfg.data)
    assert data.class_names == ["old", "young"] and min(data.class_counts().values()) > 50


@needs_data
@pytest.mark.parametrize("name, classes", [("celeba_smile", ["not smiling", "smiling"]), ("celeba_gender", ["female", "male"]),
                                           ("celeba_young", ["old", "young"])])
def test_celeba_tasks_name_their_classes_and_read_every_other_label(name: str, classes: list[str]) -> None:
    from stylexlib.evaluate.label_oracle import resolve_attribute_columns

    cfg = load_config(REPO / "configs" / f"{name}.yaml", ["data.resolution=16", "data.max_images=300"])
    data = load_dataset(cfg.data)
    assert data.class_names == classes and min(data.class_counts().values()) > 30
    columns = resolve_attribute_columns(cfg.evaluate.attribute_columns, cfg.data, data)
    label = {"celeba_smile": "Smiling", "celeba_gender": "Male", "celeba_young": "Young"}[name]
    assert len(columns) == 39 and label not in columns and "Eyeglasses" in columns


@needs_data
def test_gpu_config_starts_on_cpu() -> None:
    cfg = load_config(REPO / "configs" / "utkface_gpu.yaml",
                      ["data.max_images=48", "stylex.runtime.device=cpu", "stylex.optim.batch_size=2", "stylex.schedule.warmup_steps=1",
                       "stylex.runtime.precision=fp32"])
    data = load_dataset(cfg.data)
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 64, 2))
    trainer = StylexTrainer(cfg.stylex, data, classifier)
    assert trainer.G.latent_dim == 512 and trainer.G.style_dim > 4000
    warmup, random_path, encoder_path = (trainer.train_step() for _ in range(3))  # one path per step after the warm-up
    assert "adv" not in warmup and {"d", "adv"} <= set(random_path) and {"d", "adv", "l1", "lpips"} <= set(encoder_path)
    assert all(torch.isfinite(torch.tensor(v)) for step in (random_path, encoder_path) for v in step.values())
