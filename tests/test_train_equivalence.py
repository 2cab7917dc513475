"""The training package trains to the same weights as the monolithic trainer it replaced (#40).

``tests/data/train_equivalence.json`` holds per-tensor sums and norms of G, G_ema, E and D, and every step's losses,
after a few seeded CPU steps of two tiny configs, written by the old ``stylexlib/gan/training.py`` (commit 84f8d63,
where the mapping match was ``weight_mapping_match=1.0``).
Regenerate (only for an intended change of what training learns): ``python tests/test_train_equivalence.py``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stylexlib.classifier.model import build_classifier
from stylexlib.core.config import StylexConfig
from stylexlib.core.stylex_config import replace_keys, stylex_config
from stylexlib.data import ImageDataset
from stylexlib.gan.losses import load_lpips
from stylexlib.gan.training import StylexTrainer

GOLDEN = Path(__file__).parent / "data" / "train_equivalence.json"
RESOLUTION = 16
BASE = stylex_config(latent_dim=16, mapping_layers=2, channel_base=128, channel_max=16, batch_size=4, r1_every=2,
                    pl_weight=2.0, pl_every=2, log_every=2, sample_every=0, checkpoint_every=0, collapse_every=0,
                    device="cpu", seed=3)
CONFIGS = {  # the default path schedule with a warm-up, the mapping match and class sparsity; then the "mix" path
    "alternate": replace_keys(BASE, steps=6, warmup_steps=2, mapping_match=True,
                                     loss={**BASE.loss, "class_sparsity": 1.0}),
    "mix": replace_keys(BASE, steps=4, path_mode="mix", loss={**BASE.loss, "sample_kl": 1.0}, mixing_prob=0.9,
                               augment="color,translation,cutout"),
}


def tiny_dataset(n: int = 40) -> ImageDataset:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, RESOLUTION, RESOLUTION), dtype=torch.uint8, generator=gen)
    split = np.array(["train"] * (n - n // 5) + ["val"] * (n // 5))
    return ImageDataset(images, torch.arange(n) % 2, ["even", "odd"], split)


def trained(cfg: StylexConfig, lpips_model: torch.nn.Module) -> tuple[StylexTrainer, list[dict[str, float]]]:
    """A trainer after ``cfg.schedule.steps`` train steps, and each step's losses."""
    torch.manual_seed(0)
    classifier = build_classifier(2, RESOLUTION, width=4).eval()
    trainer = StylexTrainer(cfg, tiny_dataset(), classifier, lpips_model=lpips_model)
    return trainer, [trainer.train_step() for _ in range(cfg.schedule.steps)]


def summary(trainer: StylexTrainer, losses: list[dict[str, float]]) -> dict:
    """Sum and norm of every tensor of G, G_ema, E and D; the losses of every step."""
    nets = {"G": trainer.G, "G_ema": trainer.G_ema, "E": trainer.E, "D": trainer.D}
    tensors = {f"{name}.{key}": value.double() for name, net in nets.items()
               for key, value in net.state_dict().items() if value.is_floating_point()}
    return {"tensors": {key: [value.sum().item(), value.norm().item()] for key, value in tensors.items()},
            "losses": losses}


@pytest.fixture(scope="module")
def lpips_model() -> torch.nn.Module:
    return load_lpips("squeeze")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_training_reproduces_the_monolithic_trainers_weights(name: str, lpips_model) -> None:
    expected = json.loads(GOLDEN.read_text())[name]
    got = summary(*trained(CONFIGS[name], lpips_model))
    assert got["tensors"].keys() == expected["tensors"].keys()
    torch.testing.assert_close(torch.tensor(list(got["tensors"].values()), dtype=torch.float64),
                               torch.tensor(list(expected["tensors"].values()), dtype=torch.float64),
                               rtol=1e-4, atol=1e-5)
    assert [sorted(step) for step in got["losses"]] == [sorted(step) for step in expected["losses"]]
    for got_step, expected_step in zip(got["losses"], expected["losses"]):
        for key in expected_step:
            assert got_step[key] == pytest.approx(expected_step[key], rel=1e-4, abs=1e-6), key


if __name__ == "__main__":  # write the golden file (and, with a path argument, the full states for a closer look)
    torch.set_num_threads(1)
    lpips = load_lpips("squeeze")
    golden, states = {}, {}
    for config_name, config in CONFIGS.items():
        run, step_losses = trained(config, lpips)
        golden[config_name] = summary(run, step_losses)
        states[config_name] = {f"{n}.{k}": v.clone() for n in ("G", "G_ema", "E", "D")
                               for k, v in getattr(run, n).state_dict().items()}
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")
    if len(sys.argv) > 1:
        torch.save(states, sys.argv[1])
