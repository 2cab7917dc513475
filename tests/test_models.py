"""Generator / StyleSpace / encoder / discriminator: shapes, StyleSpace algebra, prefix caching."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stylexlib.core.stylex_config import stylex_config
from stylexlib.gan import Discriminator, Encoder, Generator, SynthesisState

TINY = stylex_config(channel_base=256, channel_max=32, latent_dim=32)
NUM_CLASSES = 3


def make_generator(resolution: int = 16) -> Generator:
    torch.manual_seed(0)
    G = Generator(resolution, NUM_CLASSES, TINY).eval()
    with torch.no_grad():  # non-zero noise strengths so noise handling is exercised
        for layer in G.layers:
            if hasattr(layer, "noise_strength"):
                layer.noise_strength.fill_(0.3)
    return G


def inputs(G: Generator, batch: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w = G.mapping(torch.randn(batch, G.latent_dim, generator=gen))
    c = torch.softmax(torch.randn(batch, G.num_classes, generator=gen), dim=1)
    return w, c


@pytest.fixture(scope="module")
def G16() -> Generator:
    return make_generator(16)


@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_shapes(resolution: int) -> None:
    G = make_generator(resolution)
    E = Encoder(resolution, TINY.model.latent_dim, TINY)
    D = Discriminator(resolution, NUM_CLASSES, TINY)
    with torch.no_grad():
        w, c = inputs(G, batch=2)
        assert w.shape == (2, TINY.model.latent_dim)
        styles = G.styles(w, c)
        assert styles.shape == (2, G.style_dim)
        images = G.synthesize(styles)
        assert images.shape == (2, 3, resolution, resolution)
        assert torch.isfinite(images).all()
        assert E(images).shape == (2, TINY.model.latent_dim)
        assert D(images, c).shape == (2,)


def test_bad_resolution_rejected() -> None:
    with pytest.raises(ValueError, match="power of two"):
        Generator(24, NUM_CLASSES, TINY)


def test_style_index_consistency(G16: Generator) -> None:
    index = G16.style_index
    w, c = inputs(G16, batch=1)
    assert index.size == G16.styles(w, c).shape[1] == len(index)
    assert [layer.name for layer in index.layers] == [
        "b4.conv1", "b4.torgb", "b8.conv0", "b8.conv1", "b8.torgb", "b16.conv0", "b16.conv1", "b16.torgb"]
    for flat in range(index.size):
        where = index.locate(flat)
        assert index.flat(where.layer, where.channel) == flat
        assert index.flat(where.name, where.channel) == flat
        assert where.is_torgb == where.name.endswith("torgb")
    mask = index.exclude_torgb_mask()
    torgb_channels = sum(layer.channels for layer in index.layers if layer.is_torgb)
    assert mask.dtype == torch.bool and int((~mask).sum()) == torgb_channels
    assert torch.equal(index.layer_ids()[index.layer_slices[3]], torch.full((index.layers[3].channels,), 3))
    table = index.table()
    assert len(table) == index.num_layers and table["channels"].sum() == index.size
    assert len(index.table(per_channel=True)) == index.size
    with pytest.raises(IndexError):
        index.locate(index.size)


def reference_styled_conv(x: torch.Tensor, style: torch.Tensor, layer) -> torch.Tensor:
    """StyleGAN2's modulated convolution as published (Karras et al. 2020, Eqs. 1-3): per-sample weights w * s,
    demodulated by their norm, applied as one grouped convolution; then bias and lrelu with the sqrt(2) gain."""
    n, cin = x.shape[:2]
    if layer.upsample:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    weight = layer.weight[None] * layer.weight_gain * style[:, None, :, None, None]  # (N, out, in, 3, 3)
    weight = weight / (weight.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8).sqrt()
    out = F.conv2d(x.reshape(1, n * cin, *x.shape[2:]), weight.reshape(-1, cin, 3, 3), padding=1, groups=n)
    out = out.reshape(n, -1, *out.shape[2:]) + layer.bias[None, :, None, None]
    return F.leaky_relu(out, 0.2) * math.sqrt(2.0)


def reference_generator(G: Generator, w: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """G(w, c) without noise, rebuilt from the layers' weights: affine styles, grouped modulated convs, toRGB skips."""
    styles = F.linear(torch.cat([w, c], 1), G.affine.weight * G.affine.weight_gain, G.affine.bias * G.affine.bias_gain)
    x, img = G.const.expand(len(w), -1, -1, -1), None
    for layer, span in zip(G.layers, G.style_index.layer_slices):
        s = styles[:, span]
        if hasattr(layer, "noise_strength"):
            x = reference_styled_conv(x, s, layer)
        else:  # toRGB: modulated 1x1 conv, no demodulation, added to the upsampled skip image
            rgb = F.conv2d(x * s[:, :, None, None], layer.weight * layer.weight_gain) + layer.bias[None, :, None, None]
            img = rgb if img is None else F.interpolate(img, scale_factor=2.0, mode="bilinear", align_corners=False) + rgb
    return img


def test_generator_equals_the_grouped_convolution_reference(G16: Generator) -> None:
    w, c = inputs(G16)
    with torch.no_grad():
        want = reference_generator(G16, w, c)
        assert torch.allclose(G16(w, c, noise_mode="none"), want, atol=1e-4)
        assert torch.allclose(G16.synthesize(G16.styles(w, c), noise_mode="none"), want, atol=1e-4)
        conv = G16.layers[2]  # b8.conv0: upsamples
        x, s = torch.randn(3, conv.in_channels, 4, 4), torch.rand(3, conv.in_channels) + 0.5
        got = conv(SynthesisState(x, None), s, "none").x
        assert conv.upsample and torch.allclose(got, reference_styled_conv(x, s, conv), atol=1e-4)
        assert not torch.allclose(got, reference_styled_conv(x, torch.ones_like(s), conv), atol=1e-2)  # s matters


def test_noise_modes(G16: Generator) -> None:
    w, c = inputs(G16)
    with torch.no_grad():
        styles = G16.styles(w, c)
        assert torch.equal(G16.synthesize(styles, "const"), G16.synthesize(styles, "const"))
        assert not torch.allclose(G16.synthesize(styles, "random"), G16.synthesize(styles, "random"))
        assert not torch.allclose(G16.synthesize(styles, "none"), G16.synthesize(styles, "const"))
    with pytest.raises(ValueError, match="noise_mode"):
        G16.synthesize(styles, "fixed")


def test_const_noise_is_seeded() -> None:
    a, b = Generator(16, NUM_CLASSES, TINY), Generator(16, NUM_CLASSES, TINY)
    assert torch.equal(a.layers[0].noise_const, b.layers[0].noise_const)


def test_single_coordinate_edit_acts_only_from_its_layer(G16: Generator) -> None:
    w, c = inputs(G16, batch=2)
    index = G16.style_index
    with torch.no_grad():
        styles = G16.styles(w, c)
        layer = index.layer_number("b8.conv1")
        edited = styles.clone()
        edited[:, index.flat(layer, 5)] += 3.0
        assert not torch.allclose(G16.synthesize(edited), G16.synthesize(styles), atol=1e-4)
        before_s, before_e = G16.synthesize_prefix(styles, layer), G16.synthesize_prefix(edited, layer)
        assert torch.equal(before_s.x, before_e.x) and torch.equal(before_s.img, before_e.img)
        after_s, after_e = G16.synthesize_prefix(styles, layer + 1), G16.synthesize_prefix(edited, layer + 1)
        assert not torch.allclose(after_s.x, after_e.x)


@pytest.mark.parametrize("layer_name", ["b4.conv1", "b4.torgb", "b8.conv0", "b16.torgb"])
def test_prefix_cache_with_batch_expansion(G16: Generator, layer_name: str) -> None:
    index = G16.style_index
    layer = index.layer_number(layer_name)
    w, c = inputs(G16, batch=1)
    with torch.no_grad():
        styles = G16.styles(w, c)
        edits = styles.repeat(8, 1)
        span = index.layer_slices[layer]
        edits[:, span] += torch.randn(8, span.stop - span.start)  # only layers >= `layer` change
        edits[:, span.stop:] += torch.randn(8, index.size - span.stop)
        state = G16.synthesize_prefix(styles, layer)
        reference = G16.synthesize(edits)
        assert torch.allclose(G16.synthesize_from(state.expand(8), edits, layer), reference, atol=1e-5)
        assert torch.allclose(G16.synthesize_from(state, edits, layer), reference, atol=1e-5)
        full = G16.synthesize_prefix(styles, index.num_layers)
        assert torch.allclose(full.img, G16.synthesize(styles), atol=1e-6)


def test_initial_state_and_empty_prefix(G16: Generator) -> None:
    w, c = inputs(G16, batch=2)
    with torch.no_grad():
        styles = G16.styles(w, c)
        state = G16.synthesize_prefix(styles, 0)
        assert isinstance(state, SynthesisState) and state.img is None and state.x.shape[0] == 2
        assert torch.equal(G16.synthesize_from(state, styles, 0), G16.synthesize(styles))


def test_conditioning_changes_styles(G16: Generator) -> None:
    w, _ = inputs(G16, batch=2)
    one_hot = torch.eye(NUM_CLASSES)[:2]
    with torch.no_grad():
        assert not torch.allclose(G16.styles(w, one_hot), G16.styles(w, one_hot.flip(1)))
    with pytest.raises(ValueError, match="expected w"):
        G16.styles(w, one_hot[:, :2])


def test_discriminator_weights_class_logits() -> None:
    torch.manual_seed(0)
    D = Discriminator(16, NUM_CLASSES, TINY).eval()
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        per_class = [D(images, torch.eye(NUM_CLASSES)[k].expand(4, -1)) for k in range(NUM_CLASSES)]
        probs = torch.softmax(torch.randn(4, NUM_CLASSES), dim=1)
        mixed = sum(probs[:, k] * per_class[k] for k in range(NUM_CLASSES))
        assert torch.allclose(D(images, probs), mixed, atol=1e-5)
        assert not torch.allclose(per_class[0], per_class[1])


def test_channels_last_matches() -> None:
    G = make_generator(32)
    E, D = Encoder(32, TINY.model.latent_dim, TINY), Discriminator(32, NUM_CLASSES, TINY)
    w, c = inputs(G)
    with torch.no_grad():
        reference = (G(w, c), E(G(w, c)), D(G(w, c), c))
        for net in (G, E, D):
            net.to(memory_format=torch.channels_last)
        images = G(w, c)
        assert images.is_contiguous(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
        for got, want in zip((images, E(images), D(images, c)), reference):
            assert torch.allclose(got, want, atol=1e-4)


def test_training_step_backpropagates() -> None:
    G = make_generator(16).train()
    D = Discriminator(16, NUM_CLASSES, TINY)
    w, c = inputs(G, batch=4)
    D(G(w.detach(), c), c).mean().backward()
    assert all(p.grad is not None for p in D.parameters())
    assert G.affine.weight.grad is not None and G.layers[-1].weight.grad is not None


def test_bf16_autocast_runs_on_cpu(G16: Generator) -> None:
    D = Discriminator(16, NUM_CLASSES, TINY)
    w, c = inputs(G16, batch=2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        images = G16(w, c)
        logits = D(images, c)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(logits).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_autocast_training_step() -> None:
    G = make_generator(32)
    w, c = (t.detach().cuda() for t in inputs(G))
    G = G.cuda().to(memory_format=torch.channels_last).train()
    D = Discriminator(32, NUM_CLASSES, TINY).cuda().to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.float16):
        images = G(w, c, noise_mode="random")
        logits = D(images, c)
    assert images.device.type == "cuda" and torch.isfinite(logits).all()
    logits.mean().backward()
    assert torch.isfinite(G.affine.weight.grad).all()
