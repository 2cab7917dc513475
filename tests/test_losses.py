"""Loss terms: adversarial, R1, path length, KL, reconstruction, LPIPS loading."""
from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from stylexlib.core.config import StylexConfig
from stylexlib.core.stylex_config import stylex_config
from stylexlib.gan import Discriminator, Generator, losses

TINY = stylex_config(channel_base=256, channel_max=32, latent_dim=32)
SHARED_TORCH_HOME = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "torch"


def test_adversarial_losses() -> None:
    real, fake = torch.tensor([5.0, 4.0]), torch.tensor([-5.0, -6.0])
    assert losses.d_logistic_loss(real, fake) < 0.05  # D is right: small loss
    assert losses.g_nonsaturating_loss(fake) > 4.0  # G is fooled nowhere: large loss


def test_r1_positive_and_zero_for_constant_d() -> None:
    D = Discriminator(16, 2, TINY)
    images = torch.randn(4, 3, 16, 16, requires_grad=True)
    probs = torch.full((4, 2), 0.5)
    penalty = losses.d_r1_loss(D(images, probs), images)
    assert penalty > 0
    penalty.backward()
    assert D.trunk.from_rgb.weight.grad is not None
    flat_images = torch.randn(4, 3, 16, 16, requires_grad=True)
    constant = (flat_images * 0).sum(dim=(1, 2, 3)) + 1.0
    assert losses.d_r1_loss(constant, flat_images) == 0


def test_path_length_runs() -> None:
    G = Generator(16, 2, TINY)
    w = G.mapping(torch.randn(4, TINY.model.latent_dim))
    c = torch.full((4, 2), 0.5)
    images = G(w, c)
    loss, mean, lengths = losses.g_path_length_loss(images, w, 0.0)
    assert lengths.shape == (4,) and (lengths > 0).all()
    assert torch.isclose(mean, 0.01 * lengths.mean()) and not mean.requires_grad
    loss.backward()
    assert G.affine.weight.grad is not None


def test_classifier_kl_equals_the_closed_form_in_the_papers_direction() -> None:
    gen = torch.Generator().manual_seed(0)
    real, rec = torch.randn(6, 3, generator=gen) * 2, torch.randn(6, 3, generator=gen) * 2
    p, q = real.softmax(1), rec.softmax(1)
    forward = (p * (p.log() - q.log())).sum(1)  # KL(C(x) || C(x')), Lang et al. 2021
    backward = (q * (q.log() - p.log())).sum(1)
    assert torch.allclose(losses.classifier_kl_loss(real, rec, reduction="none"), forward, atol=1e-6)
    assert torch.allclose(losses.classifier_kl_loss(real, rec), forward.mean(), atol=1e-6)
    assert not torch.allclose(forward, backward, atol=1e-3)  # the two directions differ: the test can tell them apart
    assert torch.allclose(losses.classifier_kl_loss(rec, real, reduction="none"), backward, atol=1e-6)


def test_classifier_kl() -> None:
    logits = torch.randn(5, 3)
    assert losses.classifier_kl_loss(logits, logits.clone()).abs() < 1e-6
    rec = torch.randn(5, 3, requires_grad=True)
    kl = losses.classifier_kl_loss(logits, rec)
    assert kl > 0
    kl.backward()
    assert rec.grad is not None


def test_weighted_sum_uses_config_weights() -> None:
    from stylexlib.gan.train import loss_weights

    weights = loss_weights(StylexConfig())
    assert weights == {"d": 1.0, "r1": 8.0, "adv": 1.0, "kl": 1.0, "sample_kl": 0.0, "latent": 0.1, "l1": 1.0,
                       "lpips": 0.1, "class_sparsity": 0.0, "class_share": 0.0, "pl": 0.0,
                       "mapping_match": 0.0}
    total = losses.weighted_sum({"l1": torch.tensor(2.0), "lpips": torch.tensor(3.0)}, weights)
    assert torch.isclose(total, torch.tensor(2.3))
    with pytest.raises(KeyError, match="no weight"):
        losses.weighted_sum({"unknown": torch.tensor(1.0)}, weights)


def test_class_pathway_sparsity_is_the_mean_norm_of_what_the_class_moves_each_coordinate_by() -> None:
    generator = Generator(16, 2, TINY)
    affine = generator.affine
    with torch.no_grad():
        affine.weight[:, TINY.model.latent_dim:] = 0.0
        affine.weight[3, TINY.model.latent_dim:] = torch.tensor([3.0, 4.0]) / affine.weight_gain
    loss = losses.class_pathway_sparsity(generator)
    assert loss.item() == pytest.approx(5.0 / generator.style_dim)  # one coordinate, moved by (3, 4) per unit of c
    w = torch.randn(1, TINY.model.latent_dim)
    moved = generator.styles(w, torch.tensor([[1.0, 0.0]])) - generator.styles(w, torch.tensor([[0.0, 0.0]]))
    assert moved.abs().argmax().item() == 3 and moved[0, 3].item() == pytest.approx(3.0, rel=1e-4)
    loss.backward()
    assert affine.weight.grad[:, : TINY.model.latent_dim].abs().sum() == 0  # w's columns are left alone


def test_class_pathway_share_excess_is_zero_when_the_class_is_spread_and_pushes_the_largest_share_down() -> None:
    generator = Generator(16, 2, TINY)
    affine, latent = generator.affine, TINY.model.latent_dim
    with torch.no_grad():
        affine.weight[:, latent:] = 1.0  # a common part: the same move for either class, no class signal
        for row, move in ((0, 6.0), (1, 2.0), (2, 2.0)):  # (1 + move, 1 - move): a class change moves it by 2 * move
            affine.weight[row, latent:] = torch.tensor([1.0 + move, 1.0 - move])
    shares = torch.tensor([0.6, 0.2, 0.2])  # the common part does not count
    loss = losses.class_pathway_share_excess(generator, max_share=0.25)
    assert loss.item() == pytest.approx((shares - 0.25).clamp_min(0).sum().item(), rel=1e-5)  # 0.35, row 0 only
    loss.backward()
    grad = affine.weight.grad[:, latent:]
    assert grad[0, 0] > 0 > grad[0, 1]  # descending shrinks row 0's class move ...
    assert grad[1, 0] < 0 < grad[1, 1]  # ... and grows the others'
    assert losses.class_pathway_share_excess(generator, max_share=0.6).item() == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def lpips_model() -> torch.nn.Module:
    if not (SHARED_TORCH_HOME / "hub" / "checkpoints" / losses.LPIPS_TRUNK_CHECKPOINTS["squeeze"]).exists():
        pytest.skip(f"no squeezenet weights under {SHARED_TORCH_HOME}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(SHARED_TORCH_HOME))
        return losses.load_lpips("squeeze")


def test_lpips_frozen_and_zero_for_identical(lpips_model: torch.nn.Module) -> None:
    assert not lpips_model.training
    assert not any(p.requires_grad for p in lpips_model.parameters())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert lpips_model(x, x).abs().max() < 1e-6
    assert lpips_model(x, -x).mean() > 0.01


@pytest.mark.parametrize("resolution", [16, 32])
def test_lpips_distance_handles_small_images(lpips_model: torch.nn.Module, resolution: int) -> None:
    x = torch.rand(3, 3, resolution, resolution) * 2 - 1
    distance = losses.lpips_distance(lpips_model, x, -x)
    assert distance.shape == (3,) and (distance > 0).all()


def test_visible_change_judges_small_images_enlarged_to_lpips_patch_size(lpips_model: torch.nn.Module) -> None:
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = x.clone()
    y[..., 20:24, 12:20] *= -1  # a mouth-sized patch changes
    enlarged = lambda t: F.interpolate(t, size=64, mode="bilinear", align_corners=False)  # noqa: E731
    expected = lpips_model(enlarged(x), enlarged(y)).flatten()
    assert torch.allclose(losses.visible_change(lpips_model, x, y), expected, atol=1e-6)
    assert not torch.allclose(losses.lpips_distance(lpips_model, x, y), expected, atol=1e-3)  # not the 32 px value
    big_x, big_y = enlarged(x), enlarged(y)  # 64 px images are judged as they are
    assert torch.allclose(losses.visible_change(lpips_model, big_x, big_y), lpips_model(big_x, big_y).flatten())



def test_missing_lpips_weights_gives_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network blocked in test")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(RuntimeError) as info:
        losses.load_lpips("squeeze")
    message = str(info.value)
    assert "squeezenet1_1-b8a52dc0.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message and f"TORCH_HOME={tmp_path}" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_latent_mmd_tells_a_matching_distribution_from_a_collapsed_one_and_trains_only_the_encoder() -> None:
    from stylexlib.gan.losses import latent_mmd_loss

    gen = torch.Generator().manual_seed(0)
    reference = torch.randn(256, 8, generator=gen) * 2 + 1
    matching = torch.randn(64, 8, generator=gen) * 2 + 1
    on_a_line = torch.randn(64, 1, generator=gen).expand(64, 8) * 2 + 1  # every marginal right, all on one line
    collapsed = torch.full((64, 8), 1.0) + 0.01 * torch.randn(64, 8, generator=gen)
    near = latent_mmd_loss(matching, reference)
    assert abs(float(near)) < 0.02
    assert float(latent_mmd_loss(on_a_line, reference)) > 10 * abs(float(near))
    assert float(latent_mmd_loss(collapsed, reference)) > 10 * abs(float(near))
    encoded, sampled = collapsed.clone().requires_grad_(True), reference.clone().requires_grad_(True)
    latent_mmd_loss(encoded, sampled).backward()
    assert encoded.grad.abs().sum() > 0 and sampled.grad is None
    with pytest.raises(ValueError, match="at least 2"):
        latent_mmd_loss(encoded[:1], sampled)
