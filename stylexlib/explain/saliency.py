"""Saliency maps of an image classifier: the seven methods of the standard survey, one interface.

Leave-one-out (grid occlusion and SLIC superpixels), vanilla gradients, guided backpropagation, Grad-CAM and guided
Grad-CAM, SmoothGrad, Integrated Gradients come from captum; Blur IG (Xu et al., CVPR 2020), which captum lacks, is
written here, batched in torch, and tested against PAIR's ``saliency`` reference. Every method answers
``attribute(images in [-1, 1] (N, 3, H, W), target=None)`` (None: the predicted class) with :class:`SaliencyMaps`.

Settings for 32-64 px images, not the 224 px defaults: occlusion windows of 1/8 of the image with stride 1/16;
about 4 SLIC superpixels per row; SmoothGrad noise 0.3 (15% of the [-1, 1] range, as the SmoothGrad paper) over 16
samples; Integrated Gradients from a gray image (0) in 32 steps; Blur IG up to sigma = size / 4 (8 px at 32 px:
blurred that far a 32 px face is a uniform blob, so the path starts from "no information", and completeness holds
within a few percent, where the 224 px default of 50 leaves nothing of the image but the zero padding) in 32 steps.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stylexlib.classifier.predict import classify

METHODS = ("occlusion", "loo_superpixels", "gradient", "guided_backprop", "gradcam", "guided_gradcam", "smoothgrad",
           "integrated_gradients", "blur_ig")


@dataclass
class SaliencyMaps:
    """One saliency method's answer: per image a relevance map (N, H, W), for the class ``target``."""

    method: str
    images: Tensor  # (N, 3, H, W) in [-1, 1]
    target: Tensor  # (N,) class explained
    maps: Tensor  # (N, H, W): relevance per pixel (channels summed; signed where the method is)
    seconds_per_image: float
    extras: dict = field(default_factory=dict)  # e.g. Integrated Gradients' convergence delta per image

    def to_dataframe(self) -> pd.DataFrame:
        """One row per image: method, target, total and positive relevance, the most relevant pixel."""
        flat = self.maps.flatten(1)
        peak = flat.argmax(1)
        width = self.maps.shape[-1]
        table = pd.DataFrame({
            "method": self.method, "image": np.arange(len(flat)), "target": self.target.numpy(),
            "total": flat.sum(1).numpy(), "positive": flat.clamp(min=0).sum(1).numpy(),
            "peak_row": (peak // width).numpy(), "peak_col": (peak % width).numpy(),
            "seconds_per_image": self.seconds_per_image,
        })
        for name, values in self.extras.items():
            table[name] = np.asarray(values)
        return table


def gaussian_blur(images: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
    """Separable Gaussian blur of (N, C, H, W) images with zero padding, as ``scipy.ndimage.gaussian_filter(...,
    mode='constant')`` (radius ``int(truncate * sigma + 0.5)``); sigma 0 returns the images."""
    if sigma <= 0:
        return images
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    out = F.conv2d(F.pad(images, (radius, radius, 0, 0)), kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(out, (0, 0, radius, radius)), kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def blur_ig(model: nn.Module, images: Tensor, target: Tensor, max_sigma: float, steps: int = 32,
            grad_step: float = 0.01, batch_size: int = 128) -> Tensor:
    """Blur IG (Xu et al. 2020): integrated gradients along the path from ``blur(x, max_sigma)`` to x, through
    successively smaller blurs; attributions (N, C, H, W) that sum to about f(x) - f(blur(x, max_sigma)), f the
    target's logit. Batched over images and steps (PAIR's ``BlurIG`` takes one image at a time)."""
    sigmas = [max_sigma * i / steps for i in range(steps + 1)]
    points, slopes = [], []
    for i in range(steps):
        step = gaussian_blur(images, sigmas[i])
        points.append(step)
        slopes.append((gaussian_blur(images, sigmas[i] + grad_step) - step) / grad_step * (sigmas[i + 1] - sigmas[i]))
    points, slopes = torch.stack(points, 1).flatten(0, 1), torch.stack(slopes, 1).flatten(0, 1)  # (N*steps, ...)
    targets = target.repeat_interleave(steps)
    grads = torch.empty_like(points)
    for start in range(0, len(points), batch_size):
        chunk = points[start:start + batch_size].detach().requires_grad_(True)
        logits = model(chunk)
        (grad,) = torch.autograd.grad(logits.gather(1, targets[start:start + batch_size, None]).sum(), chunk)
        grads[start:start + batch_size] = grad
    return -(grads * slopes).view(len(images), steps, *images.shape[1:]).sum(1)


class SaliencyExplainer:
    """``SaliencyExplainer(classifier, "integrated_gradients").attribute(images, target=None)`` -> SaliencyMaps.

    ``layer`` (Grad-CAM, guided Grad-CAM): the module whose activations are weighted, or its dotted name in the
    classifier (``classifier.gradcam_layer`` in a config); by default the classifier's last convolution.
    """

    def __init__(self, classifier: nn.Module, method: str, layer: nn.Module | str | None = None, **options) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown saliency method '{method}'; methods: {', '.join(METHODS)}")
        self.classifier = classifier.eval()
        self.method, self.options = method, options
        self.layer = gradcam_layer(classifier, layer) if method in ("gradcam", "guided_gradcam") else None

    def attribute(self, inputs: Tensor, target: int | Tensor | None = None, **options) -> SaliencyMaps:
        """Relevance maps of ``inputs`` (N, 3, H, W) in [-1, 1] for ``target`` (None: the predicted class)."""
        images = inputs.detach().float()
        predicted = classify(self.classifier, images).argmax(1).to(images.device)
        target = predicted if target is None else torch.as_tensor(target).expand(len(images)).long()
        options = {**self.options, **options}
        started = time.perf_counter()
        attributions, extras = self._attribute(images, target, options)
        seconds = (time.perf_counter() - started) / max(len(images), 1)
        maps = attributions.sum(1) if attributions.ndim == 4 else attributions
        return SaliencyMaps(self.method, images, target.cpu(), maps.detach().cpu(), seconds, extras)

    def _attribute(self, x: Tensor, target: Tensor, options: dict) -> tuple[Tensor, dict]:
        import captum.attr as ca

        model, size = self.classifier, x.shape[-1]
        if self.method == "occlusion":
            window, stride = max(2, size // 8), max(1, size // 16)
            return ca.Occlusion(model).attribute(x, target=target, sliding_window_shapes=(3, window, window),
                                                 strides=(3, stride, stride), baselines=0.0), {}
        if self.method == "loo_superpixels":
            masks = superpixels(x, options.get("segments", max(4, (size // 8) ** 2)))
            return ca.FeatureAblation(model).attribute(x, target=target, feature_mask=masks, baselines=0.0), {}
        if self.method == "gradient":
            return ca.Saliency(model).attribute(x, target=target, abs=True), {}
        if self.method == "guided_backprop":
            return ca.GuidedBackprop(model).attribute(x, target=target), {}
        if self.method == "gradcam":
            cam = ca.LayerGradCam(model, self.layer).attribute(x, target=target, relu_attributions=True)
            return ca.LayerAttribution.interpolate(cam, (size, size), "bilinear")[:, 0], {}
        if self.method == "guided_gradcam":
            return ca.GuidedGradCam(model, self.layer).attribute(x, target=target), {}
        if self.method == "smoothgrad":  # its noise is seeded (option ``seed``): the maps never depend on what ran before
            tunnel = ca.NoiseTunnel(ca.Saliency(model))
            with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
                torch.manual_seed(options.get("seed", 0))
                return tunnel.attribute(x, target=target, nt_type="smoothgrad", nt_samples=options.get("samples", 16),
                                        stdevs=options.get("stdev", 0.3), abs=True), {}
        if self.method == "integrated_gradients":
            attributions, delta = ca.IntegratedGradients(model).attribute(
                x, target=target, baselines=0.0, n_steps=options.get("steps", 32), internal_batch_size=128,
                return_convergence_delta=True)
            return attributions, {"convergence_delta": delta.detach().cpu().numpy()}
        return blur_ig(model, x, target, options.get("max_sigma", size / 4), options.get("steps", 32)), {}


def superpixels(images: Tensor, segments: int) -> Tensor:
    """SLIC superpixels (scikit-image) per image, as captum's feature mask (N, 1, H, W) of region ids."""
    from skimage.segmentation import slic

    hwc = ((images.permute(0, 2, 3, 1).cpu().numpy() + 1) / 2).clip(0, 1)
    masks = [slic(image, n_segments=segments, compactness=10, start_label=0, channel_axis=-1) for image in hwc]
    return torch.as_tensor(np.stack(masks))[:, None].long()


def gradcam_layer(model: nn.Module, layer: nn.Module | str | None = None) -> nn.Module:
    """Grad-CAM's layer: the given module, the module of that dotted name, or the model's last ``nn.Conv2d``."""
    if isinstance(layer, nn.Module):
        return layer
    if layer is not None:
        try:
            return model.get_submodule(layer)
        except AttributeError:
            names = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
            raise ValueError(f"classifier.gradcam_layer '{layer}' is not a module of the classifier; its convolutions "
                             f"are {names or 'none'}") from None
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("Grad-CAM needs a convolution layer and this classifier has no nn.Conv2d (a TorchScript "
                         "file hides its modules): set classifier.gradcam_layer to the dotted name of the module "
                         "whose activations Grad-CAM should weight")
    return convs[-1]


