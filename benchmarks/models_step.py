"""Images/s of a plain conditional G+D training step; prints JSON.

One step: G forward, D forward/backward on real and fake (logistic loss), D optimizer step,
D forward on the same fakes and G backward (non-saturating loss), G optimizer step.
Compares memory formats and, as a reference in the same run, a per-sample grouped modulated
convolution against the activation-modulating form the models use (demodulation is the same
matrix product in both).

    PYTHONPATH=. python benchmarks/models_step.py --resolutions 32 64 --batch 16
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from stylexlib.core.config import StylexConfig
from stylexlib.gan import Discriminator, Generator, stylegan2
from stylexlib.gan.losses import d_logistic_loss, g_nonsaturating_loss

NUM_CLASSES = 2


def grouped_modulated_conv2d(x: torch.Tensor, style: torch.Tensor, weight: torch.Tensor,
                             upsample: bool) -> torch.Tensor:
    """Reference: per-sample modulated weights ``w * s`` as one grouped convolution (StyleGAN2's form)."""
    n, in_channels = style.shape
    weights = (weight[None] * style[:, None, :, None, None]).reshape(-1, in_channels, *weight.shape[2:])
    if upsample:
        x = stylegan2.upsample2x(x)
    height, width = x.shape[2:]
    out = F.conv2d(x.reshape(1, n * in_channels, height, width), weights.to(x.dtype),
                   padding=weight.shape[-1] // 2, groups=n)
    return out.reshape(n, -1, height, width)


IMPLEMENTATIONS = {"activations": stylegan2.modulated_conv2d, "grouped": grouped_modulated_conv2d}


def images_per_second(resolution: int, batch: int, channels_last: bool, steps: int, warmup: int) -> float:
    """Measured training throughput for one configuration."""
    torch.manual_seed(0)
    cfg = StylexConfig()
    G, D = Generator(resolution, NUM_CLASSES, cfg), Discriminator(resolution, NUM_CLASSES, cfg)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    G.to(memory_format=memory_format)
    D.to(memory_format=memory_format)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.optim.lr_g, betas=(cfg.optim.beta1, cfg.optim.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.optim.lr_d, betas=(cfg.optim.beta1, cfg.optim.beta2))
    real = torch.randn(batch, 3, resolution, resolution).contiguous(memory_format=memory_format)
    probs = torch.softmax(torch.randn(batch, NUM_CLASSES), dim=1)

    def step() -> None:
        fake = G(G.mapping(torch.randn(batch, cfg.model.latent_dim)), probs, noise_mode="random")
        d_loss = d_logistic_loss(D(real, probs), D(fake.detach(), probs))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = g_nonsaturating_loss(D(fake, probs))
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()

    for _ in range(warmup):
        step()
    durations = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        durations.append(time.perf_counter() - start)
    return batch / statistics.median(durations)  # the median resists stalls from other work on the host


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--implementations", nargs="+", choices=sorted(IMPLEMENTATIONS),
                        default=["activations", "grouped"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results = []
    for resolution in args.resolutions:
        for channels_last in (False, True):
            for name in args.implementations:
                stylegan2.modulated_conv2d = IMPLEMENTATIONS[name]
                rate = images_per_second(resolution, args.batch, channels_last, args.steps, args.warmup)
                results.append(dict(resolution=resolution, channels_last=channels_last,
                                    modulation=name, images_per_s=round(rate, 2)))
        stylegan2.modulated_conv2d = IMPLEMENTATIONS["activations"]
        base = next(r["images_per_s"] for r in results
                    if r["resolution"] == resolution and not r["channels_last"] and r["modulation"] == "activations")
        for row in results:
            if row["resolution"] == resolution:
                row["speedup_vs_activations_contiguous"] = round(row["images_per_s"] / base, 3)
    print(json.dumps(dict(batch=args.batch, threads=args.threads, steps=args.steps, torch=torch.__version__,
                          machine=platform.machine(), config="StylexConfig() defaults", results=results), indent=2))


if __name__ == "__main__":
    main()
