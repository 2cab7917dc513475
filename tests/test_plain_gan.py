"""The classifier-free baseline GAN: the StylEx trainer with the classifier taken out of the loop."""
from __future__ import annotations

import torch
from test_train import TINY, data, lpips_model, tiny_dataset  # noqa: F401 (fixtures)

from stylexlib.classifier.model import build_classifier
from stylexlib.core.stylex_config import replace_keys
from stylexlib.gan import train
from stylexlib.gan.plain_gan import plain_gan_config

RESOLUTION = 16


def test_plain_gan_is_trained_without_the_classifier(data, lpips_model) -> None:  # noqa: F811
    cfg = replace_keys(plain_gan_config(TINY, steps=3), checkpoint_every=0)
    assert cfg.schedule.steps == 3 and cfg.schedule.time_limit_minutes is None and cfg.weight("kl") == 0 == cfg.weight("sample_kl")
    weights = []
    for seed in (1, 2):  # two different classifiers give the same GAN: neither enters the losses or the condition
        torch.manual_seed(seed)
        classifier = build_classifier(2, RESOLUTION, width=4).eval()
        trainer = train.StylexTrainer(cfg, data, classifier, lpips_model=lpips_model)
        losses = [trainer.train_step() for _ in range(3)]
        assert all("kl" not in step and "sample_kl" not in step for step in losses)
        weights.append([p.detach().clone() for p in trainer.G.parameters()])
        models = trainer.models()
        _, c = models.encode(tiny_dataset(4).images)
        assert torch.equal(c, torch.zeros(4, 2))  # the generator's class input is constant
    assert all(torch.equal(a, b) for a, b in zip(*weights))
    conditioned = train.StylexTrainer(replace_keys(TINY, checkpoint_every=0), data, classifier,
                                      lpips_model=lpips_model)
    assert "kl" in conditioned.train_step()  # the StylEx trainer it is compared with does use it
