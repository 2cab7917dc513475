"""The encoder-collapse detector, the encoder's checkpoint keys, the real-data preset, D's judged images."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from stylexlib.core.config import ConfigError, InversionConfig, StylexConfig, from_dict
from stylexlib.core.presets import REAL, REAL_INVERSION
from stylexlib.core.stylex_config import replace_keys
from stylexlib.gan.collapse import collapse_warning, pairwise_lpips, self_retrieval, spread_ratio
from stylexlib.gan.encoder import Encoder
from stylexlib.gan.losses import load_lpips, lpips_distance
from tests.test_train import TINY, make_trainer


@pytest.fixture(scope="module")
def lpips_model() -> torch.nn.Module:
    return load_lpips("squeeze")


def test_pairwise_lpips_equals_lpips_of_each_pair_at_64px(lpips_model) -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = (torch.rand(4, 3, 32, 32, generator=gen) * 2 - 1 for _ in range(2))
    table = pairwise_lpips(lpips_model, x, y)
    for i in range(4):  # row i: reconstruction y[i] against every input
        expected = lpips_distance(lpips_model, x, y[i : i + 1].expand(4, -1, -1, -1), min_size=64)
        assert torch.allclose(table[i], expected, atol=1e-5)
    assert not torch.allclose(table[0], lpips_distance(lpips_model, x, y[:1].expand(4, -1, -1, -1)), atol=1e-4)


def test_self_retrieval_tells_recognisable_from_collapsed_reconstructions(lpips_model) -> None:
    gen = torch.Generator().manual_seed(1)
    inputs = torch.rand(8, 3, 32, 32, generator=gen) * 2 - 1
    noisy = (inputs + 0.1 * torch.randn(inputs.shape, generator=gen)).clamp(-1, 1)
    assert self_retrieval(pairwise_lpips(lpips_model, inputs, noisy)) == 1.0
    average = inputs.mean(0, keepdim=True).expand(8, -1, -1, -1)  # one average image for every input
    assert self_retrieval(pairwise_lpips(lpips_model, inputs, average)) <= 1 / 8
    assert self_retrieval(torch.tensor([[0.1, 0.1], [0.2, 0.3]])) == 0.0  # ties and misses do not count


def test_spread_ratio_and_warning() -> None:
    w = torch.randn(512, 8)
    assert spread_ratio(w * 0.1, w) == pytest.approx(0.1, rel=1e-4)
    assert collapse_warning({"recon_self_retrieval": 0.02, "encoder_spread_ratio": 0.1}) is not None
    assert collapse_warning({"recon_self_retrieval": 0.95, "encoder_spread_ratio": 0.9}) is None
    assert "recon_self_retrieval 0.30" in collapse_warning({"recon_self_retrieval": 0.3, "encoder_spread_ratio": 0.9})
    # with the encoder refitted after training, a training pair that spreads but is not yet recognisable is expected;
    # a collapsed spread still warns
    assert collapse_warning({"recon_self_retrieval": 0.3, "encoder_spread_ratio": 0.9}, refit=True) is None
    assert collapse_warning({"recon_self_retrieval": 0.3, "encoder_spread_ratio": 0.1}, refit=True) is not None


def test_residual_encoder_keeps_its_checkpoint_keys() -> None:
    keys = set(Encoder(16, 8, replace_keys(TINY, latent_dim=8)).state_dict())
    assert {"fc.weight", "to_latent.weight", "conv.weight"} <= keys and "w_avg" not in keys


def test_the_trainer_checks_collapse_of_the_live_pair(lpips_model) -> None:
    from stylexlib.classifier.model import build_classifier
    from tests.test_train import tiny_dataset

    trainer = make_trainer(TINY, tiny_dataset(), build_classifier(2, 16, width=4).eval(), lpips_model, None)
    trainer.train_step()
    metrics = trainer.check_collapse()
    assert 0.0 <= metrics["recon_self_retrieval"] <= 1.0 and metrics["encoder_spread_ratio"] > 0


def test_d_judges_every_generated_image(lpips_model) -> None:
    from stylexlib.classifier.model import build_classifier
    from tests.test_train import tiny_dataset

    cfg = replace_keys(TINY, path_mode="mix")  # both paths in one step
    trainer = make_trainer(cfg, tiny_dataset(), build_classifier(2, 16, width=4).eval(), lpips_model, None)
    seen = []
    forward = trainer.D.forward
    trainer.D.forward = lambda images, probs: seen.append(len(images)) or forward(images, probs)
    trainer.train_step()
    batch = TINY.optim.batch_size
    # D step: real batch, then the reconstructions and samples; the G step judges the same fakes
    assert seen[:2] == [batch, 2 * batch] and seen[-1] == 2 * batch


def test_folder_data_gets_the_real_preset_beneath_its_own_keys() -> None:
    folder = {"data": {"source": "folder", "root": "/x"}}
    cfg = from_dict(folder)
    assert cfg.stylex.preset == "real" and cfg.stylex.encoder_fit.minutes == REAL["encoder_fit"]["minutes"] > 0
    assert cfg.stylex.weight("kl") == REAL["loss"]["kl"] != StylexConfig().weight("kl")
    cfg = from_dict({**folder, "stylex": {"loss": {"kl": 0.5}, "regularise": {"mixing_prob": 0.5}}})
    assert cfg.stylex.weight("kl") == 0.5 and cfg.stylex.regularise.mixing_prob == 0.5 != REAL["regularise"]["mixing_prob"]
    assert cfg.stylex.regularise.mapping_match is REAL["regularise"]["mapping_match"] is True  # the group entry by entry
    assert cfg.stylex.weight("lpips") == REAL["loss"]["lpips"] and cfg.stylex.weight("l1") == 1.0  # entry by entry
    assert cfg.stylex.schedule.warmup_steps == REAL["schedule"]["warmup_steps"]
    assert cfg.inversion.per_image_steps == REAL_INVERSION["per_image_steps"] > 0  # the preset's other section
    own = from_dict({**folder, "inversion": {"per_image_steps": 0, "num_images": 8}})
    assert own.inversion.per_image_steps == 0 and own.inversion.num_images == 8
    plain = from_dict({**folder, "stylex": {"preset": "none"}})
    assert plain.stylex.encoder_fit.minutes == 0 and plain.stylex.weight("kl") == StylexConfig().weight("kl")
    assert plain.inversion == InversionConfig()
    assert from_dict({}).stylex == StylexConfig() and from_dict({}).inversion == InversionConfig()  # synthetic data
    assert from_dict(dataclasses.asdict(cfg)) == cfg  # a resolved config reads back unchanged
    with pytest.raises(ConfigError, match="stylex.preset"):
        from_dict({"stylex": {"preset": "photos"}})


def test_encoder_fit_trains_only_a_copy_of_e_and_later_stages_load_it(tmp_path, lpips_model) -> None:
    from stylexlib.classifier.model import build_classifier
    from stylexlib.gan.checkpoint import load_checkpoint
    from stylexlib.gan.encoder_fit import EncoderFitter, fit_checkpoint_encoder
    from stylexlib.gan.models import load_models
    from tests.test_train import tiny_dataset

    data, classifier = tiny_dataset(), build_classifier(2, 16, width=4).eval()
    cfg = replace_keys(TINY, steps=2, checkpoint_every=0, encoder_fit_lr=3e-3)
    trainer = make_trainer(cfg, data, classifier, lpips_model, tmp_path)
    trainer.train(progress=False)
    models = trainer.models()
    generator_before = {k: v.clone() for k, v in models.generator.state_dict().items()}
    encoder_before = {k: v.clone() for k, v in models.encoder.state_dict().items()}
    fitter = EncoderFitter(cfg, models.generator, models.encoder, classifier, lpips_model, data, torch.device("cpu"))
    first = {k: float(v) for k, v in fitter.train_step().items()}
    assert {"l1", "lpips", "kl", "sample_cycle"} <= set(first)
    for _ in range(40):
        last = fitter.train_step()
    assert float(last["l1"]) + float(last["lpips"]) < first["l1"] + first["lpips"]  # it learns to reconstruct
    assert all(torch.equal(v, models.generator.state_dict()[k]) for k, v in generator_before.items())  # G frozen
    assert all(torch.equal(v, models.encoder.state_dict()[k]) for k, v in encoder_before.items())  # a copy trains

    summary = fit_checkpoint_encoder(trainer, data, minutes=0.02, progress=False)
    state = load_checkpoint(trainer.checkpoint_file)
    assert summary.steps > 0 and state["encoder_fit"]["step"] == trainer.step == 2
    loaded = load_models(trainer.checkpoint_file, classifier, None, "03", "cpu")
    assert all(torch.equal(v, loaded.encoder.state_dict()[k]) for k, v in state["E_fit"].items())
    assert fit_checkpoint_encoder(trainer, data, minutes=0.02, progress=False) is None  # done for this step already


def test_collapse_check_and_reconstruction_previews_read_the_live_g_with_the_live_e(tmp_path, lpips_model,
                                                                                       monkeypatch) -> None:
    """#40: they paired G_ema with the training E, the pair that drifts apart (docs/experiments.md)."""
    from stylexlib.classifier.model import build_classifier
    from stylexlib.gan.train import callbacks
    from tests.test_train import tiny_dataset

    cfg = replace_keys(TINY, steps=2, checkpoint_every=0)
    trainer = make_trainer(cfg, tiny_dataset(), build_classifier(2, 16, width=4).eval(), lpips_model, tmp_path)
    trainer.train(progress=False)
    with torch.no_grad():  # make the live G differ clearly from its EMA
        for p in trainer.G.parameters():
            p.add_(0.01)
    read = []
    real = callbacks.collapse_metrics
    monkeypatch.setattr(callbacks, "collapse_metrics", lambda generator, encoder, *a, **k: read.append(
        (generator, encoder)) or real(generator, encoder, *a, **k))
    trainer.check_collapse()
    assert read == [(trainer.G, trainer.E)]
    grids, real_grid = {}, callbacks.image_grid

    def record(images, titles, **kwargs):
        grids["reconstructions" if "reconstruction" in kwargs["suptitle"] else "samples"] = images
        return real_grid(images, titles, **kwargs)

    monkeypatch.setattr(callbacks, "image_grid", record)
    trainer.save_previews()
    models = trainer.models()
    inputs = models.prepare(trainer.previews.images[:8])
    with torch.no_grad():
        condition = models.condition(trainer.classifier(inputs).float())
        expected = trainer.G(trainer.E(inputs), condition, noise_mode="const")
    torch.testing.assert_close(grids["reconstructions"][1::2], expected)
    assert models.generator is trainer.G_ema  # what later stages load is unchanged
