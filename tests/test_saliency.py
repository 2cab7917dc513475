"""Saliency explainers: one interface for the seven methods; Blur IG against PAIR's reference and completeness."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from stylexlib.classifier.model import build_classifier
from stylexlib.explain import METHODS, SaliencyExplainer, blur_ig, gaussian_blur


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_classifier(2, 32, width=8).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so the maps are not all alike
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_gaussian_blur_matches_scipy() -> None:
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for sigma in (0.5, 1.3, 4.0):
        want = np.stack([[ndimage.gaussian_filter(c, sigma, mode="constant") for c in image] for image in x.numpy()])
        assert np.allclose(gaussian_blur(x, sigma).numpy(), want, atol=1e-10)
    assert torch.equal(gaussian_blur(x, 0.0), x)


def test_blur_ig_equals_pairs_reference(classifier) -> None:
    from saliency.core import INPUT_OUTPUT_GRADIENTS, BlurIG

    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 - 1
    model = classifier.double()
    try:
        def call_model(batch_hwc, call_model_args=None, expected_keys=None):
            x = torch.tensor(np.asarray(batch_hwc)).permute(0, 3, 1, 2).requires_grad_(True)
            (grad,) = torch.autograd.grad(model(x)[:, 1].sum(), x)
            return {INPUT_OUTPUT_GRADIENTS: grad.permute(0, 2, 3, 1).numpy()}

        want = BlurIG().GetMask(image[0].permute(1, 2, 0).numpy(), call_model, max_sigma=4, steps=12, batch_size=1)
        got = blur_ig(model, image, torch.tensor([1]), max_sigma=4, steps=12)
        assert np.allclose(got[0].permute(1, 2, 0).numpy(), want, rtol=1e-6, atol=1e-9)
    finally:
        classifier.float()


def test_blur_ig_is_complete_at_small_image_settings(classifier) -> None:
    from stylexlib.data import to_float
    from stylexlib.data.synthetic import render, sample_factors

    faces, target = to_float(render(sample_factors(4, 0), 32)), torch.tensor([0, 1, 1, 0])
    attributions = blur_ig(classifier, faces, target, max_sigma=8, steps=64)
    with torch.no_grad():
        full = classifier(faces).gather(1, target[:, None])[:, 0]
        blurred = classifier(gaussian_blur(faces, 8)).gather(1, target[:, None])[:, 0]
    gap = full - blurred  # attributions sum to f(x) - f(blur(x, sigma_max)), within a few percent
    assert float((attributions.sum(dim=(1, 2, 3)) - gap).abs().sum() / gap.abs().sum()) < 0.05


@pytest.mark.parametrize("method", METHODS)
def test_every_method_answers_the_same_verb(classifier, images, method) -> None:
    maps = SaliencyExplainer(classifier, method).attribute(images)
    with torch.no_grad():
        assert torch.equal(maps.target, classifier(images).argmax(1))  # target=None: the predicted class
    assert maps.maps.shape == (3, 32, 32) and torch.isfinite(maps.maps).all()
    table = maps.to_dataframe()
    assert len(table) == 3 and (table["method"] == method).all() and maps.seconds_per_image > 0
    other = SaliencyExplainer(classifier, method).attribute(images, target=1 - maps.target[0])
    assert (other.target == 1 - maps.target[0]).all()
    assert maps.maps.abs().sum() + other.maps.abs().sum() > 0  # Grad-CAM's ReLU may zero one class of an untrained CNN


def test_guided_backprop_is_not_plain_gradients(classifier, images) -> None:
    guided = SaliencyExplainer(classifier, "guided_backprop").attribute(images, target=1).maps
    plain = SaliencyExplainer(classifier, "gradient").attribute(images, target=1).maps
    assert not torch.allclose(guided.abs(), plain, rtol=0.1)  # nn.ReLU modules: captum's hooks take effect


def test_integrated_gradients_reports_its_convergence_delta(classifier, images) -> None:
    table = SaliencyExplainer(classifier, "integrated_gradients", steps=64).attribute(images).to_dataframe()
    assert "convergence_delta" in table and (table["convergence_delta"].abs() < 0.05).all()


def test_gradcam_without_a_convolution_names_the_option_to_set() -> None:
    flat = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    with pytest.raises(ValueError, match="classifier.gradcam_layer"):
        SaliencyExplainer(flat, "gradcam")
    with pytest.raises(ValueError, match="classifier.gradcam_layer 'nope'"):
        SaliencyExplainer(flat, "gradcam", layer="nope")
    with pytest.raises(ValueError, match="unknown saliency method"):
        SaliencyExplainer(flat, "lime")


def test_smoothgrad_is_seeded_and_leaves_the_global_rng_alone(classifier, images) -> None:
    explainer = SaliencyExplainer(classifier, "smoothgrad", samples=4)
    torch.manual_seed(1)
    first = explainer.attribute(images).maps
    after = torch.rand(3)
    torch.manual_seed(2)  # a different history of random draws before the call
    second = explainer.attribute(images).maps
    assert torch.equal(first, second)
    torch.manual_seed(1)
    explainer.attribute(images)
    assert torch.equal(torch.rand(3), after)  # the noise came from a forked generator
    assert not torch.equal(explainer.attribute(images, seed=5).maps, first)
