"""Saliency speed: seconds per image of every method at 32 and 64 px on the built-in CNN (demo widths), and the
batched Blur IG against PAIR's reference ``saliency.core.BlurIG`` (one image at a time): the same attributions
(max abs difference) and the speedup, measured in the same run.

    python benchmarks/saliency.py [--images 16]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from stylexlib.classifier.model import build_classifier
from stylexlib.data import to_float
from stylexlib.data.synthetic import render, sample_factors
from stylexlib.explain import METHODS, SaliencyExplainer, blur_ig

# This file is named like PAIR's package: keep its folder off the import path so `import saliency` finds PAIR's.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def pair_blur_ig(model, image: torch.Tensor, target: int, max_sigma: float, steps: int) -> np.ndarray:
    from saliency.core import INPUT_OUTPUT_GRADIENTS, BlurIG

    def call_model(batch, call_model_args=None, expected_keys=None):
        x = torch.tensor(np.asarray(batch), dtype=torch.float32).permute(0, 3, 1, 2).requires_grad_(True)
        (grad,) = torch.autograd.grad(model(x)[:, target].sum(), x)
        return {INPUT_OUTPUT_GRADIENTS: grad.permute(0, 2, 3, 1).numpy()}

    return BlurIG().GetMask(image.permute(1, 2, 0).numpy(), call_model, max_sigma=max_sigma, steps=steps,
                            batch_size=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args()
    out = {"machine": {"threads": torch.get_num_threads(), "platform": platform.platform()}, "seconds_per_image": {}}
    for size in (32, 64):
        torch.manual_seed(0)
        model = build_classifier(2, size, width=32).eval()
        images = to_float(render(sample_factors(args.images, 0), size))
        out["seconds_per_image"][size] = {
            method: round(SaliencyExplainer(model, method).attribute(images).seconds_per_image, 4) for method in METHODS}
        target = model(images).argmax(1)
        started = time.perf_counter()
        ours = blur_ig(model, images, target, max_sigma=size / 4, steps=32)
        batched = (time.perf_counter() - started) / len(images)
        started = time.perf_counter()
        reference = [pair_blur_ig(model, image, int(t), size / 4, 32) for image, t in zip(images, target)]
        pair = (time.perf_counter() - started) / len(images)
        diff = max(float(np.abs(ours[i].permute(1, 2, 0).detach().numpy() - r).max()) for i, r in enumerate(reference))
        scale = max(float(np.abs(r).max()) for r in reference)
        out[f"blur_ig_{size}px"] = {"batched_seconds_per_image": round(batched, 4),
                                    "pair_seconds_per_image": round(pair, 4), "speedup": round(pair / batched, 2),
                                    "max_abs_difference": diff, "relative_difference": diff / scale}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
