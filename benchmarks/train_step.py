"""Images/s and peak memory of StylEx training steps, against a peer measured in the same run; prints JSON.

Measurements, each in its own subprocess (so its peak RSS is its own):
  stylex  one full StylEx step: G, E, conditional D, frozen classifier, LPIPS (StylexTrainer.train_step)
  plain   a plain G+D step with our networks: G forward, D step (logistic loss), G step (non-saturating)
  peer    the same plain step with the `stylegan2_pytorch` package (lucidrains; the base of the public StylEx
          reproduction): its StyleVectorizer, Generator and Discriminator, no augmentation, no attention,
          network_capacity/fmap_max picked so that G's and D's channel widths at each resolution match ours
          (the same work per image; both parameter counts are reported).

    make bench        # or: python benchmarks/train_step.py --resolution 32 --batch 16
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable
from unittest import mock

import torch
from torch import nn

from stylexlib.core.config import StylexConfig, load_config
from stylexlib.gan import Discriminator, Generator
from stylexlib.gan.losses import d_logistic_loss, g_nonsaturating_loss

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 2
PEER_CAPACITIES = (2, 4, 6, 8, 12, 16, 24, 32)
PEER_FMAP_MAX = (32, 64, 128, 256, 512)


def count(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def import_peer():
    """The stylegan2_pytorch module (it asserts CUDA at import time; the networks themselves run on CPU)."""
    try:
        with mock.patch("torch.cuda.is_available", return_value=True):
            import stylegan2_pytorch.stylegan2_pytorch as peer
    except ImportError as exc:
        raise SystemExit(f"the peer needs the bench extra: pip install -c requirements.lock stylegan2_pytorch==1.9.0 ({exc})")
    return peer


def peer_networks(peer, resolution: int, cfg: StylexConfig, capacity_g: int, capacity_d: int, fmap_max_g: int,
                  fmap_max_d: int) -> tuple[nn.Module, ...]:
    """The peer's StyleVectorizer, Generator and Discriminator (no attention layers, no quantisation)."""
    mapping = peer.StyleVectorizer(cfg.latent_dim, cfg.mapping_layers)
    G = peer.Generator(resolution, cfg.latent_dim, network_capacity=capacity_g, fmap_max=fmap_max_g)
    D = peer.Discriminator(resolution, network_capacity=capacity_d, fmap_max=fmap_max_d)
    return mapping, G, D


def peer_widths(peer, resolution: int, cfg: StylexConfig, capacity: int, fmap_max: int) -> tuple[list[int], list[int]]:
    """The peer's generator block widths (low to high resolution) and discriminator block widths (high to low)."""
    _, G, D = peer_networks(peer, resolution, cfg, capacity, capacity, fmap_max, fmap_max)
    return [b.conv2.weight.shape[0] for b in G.blocks], [b.conv_res.weight.shape[0] for b in D.blocks]


def our_widths(resolution: int, cfg: StylexConfig) -> tuple[list[int], list[int]]:
    """Our generator widths per resolution (4 .. R) and discriminator widths (R .. 4), as the peer counts them."""
    from stylexlib.gan.generator import channels_at

    log2 = int(math.log2(resolution))
    generator = [channels_at(2**i, cfg) for i in range(2, log2 + 1)]
    return generator, [channels_at(2**i, cfg) for i in range(log2, 1, -1)]


def matched_peer_size(peer, resolution: int, cfg: StylexConfig, part: str) -> tuple[int, int]:
    """(network_capacity, fmap_max) whose peer ``part`` ("G" or "D") has our channel widths at each resolution.

    Same widths means about the same work per image (parameter counts differ: the peer's style layers are
    larger); ties and near misses are decided by the summed log-ratio of the widths.
    """
    ours = our_widths(resolution, cfg)[0 if part == "G" else 1]

    def mismatch(key: tuple[int, int]) -> float:
        theirs = peer_widths(peer, resolution, cfg, *key)[0 if part == "G" else 1]
        pairs = list(zip(ours, theirs))
        return sum(abs(math.log(a / b)) for a, b in pairs) + abs(len(theirs) - len(ours))

    return min(((c, f) for c in PEER_CAPACITIES for f in PEER_FMAP_MAX), key=lambda key: (mismatch(key), key))


def plain_step(generate: Callable[[], torch.Tensor], discriminate: Callable[[torch.Tensor], torch.Tensor],
               real: torch.Tensor, G_params, D_params, cfg: StylexConfig) -> Callable[[], None]:
    """One G forward, a D step on real vs detached fakes, a G step through D (same code for both nets)."""
    opt_g = torch.optim.Adam(G_params, lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(D_params, lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))

    def step() -> None:
        fake = generate()
        d_loss = d_logistic_loss(discriminate(real), discriminate(fake.detach()))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = g_nonsaturating_loss(discriminate(fake))
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()

    return step


def build(kind: str, cfg: StylexConfig, resolution: int, batch: int) -> tuple[Callable[[], None], dict]:
    """The step function of one measurement and facts about it (parameter counts)."""
    torch.manual_seed(0)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    real = torch.rand(batch, 3, resolution, resolution).mul(2).sub(1).contiguous(memory_format=memory_format)
    probs = torch.softmax(torch.randn(batch, NUM_CLASSES), dim=1)
    if kind == "stylex":
        return stylex_step(cfg, resolution, batch)
    if kind == "plain":
        G, D = Generator(resolution, NUM_CLASSES, cfg), Discriminator(resolution, NUM_CLASSES, cfg)
        G.to(memory_format=memory_format)
        D.to(memory_format=memory_format)
        step = plain_step(lambda: G(G.mapping(torch.randn(batch, cfg.latent_dim)), probs, noise_mode="random"),
                          lambda images: D(images, probs), real, G.parameters(), D.parameters(), cfg)
        return step, {"params_g": count(G), "params_d": count(D)}
    peer = import_peer()
    capacity_g, fmap_max_g = matched_peer_size(peer, resolution, cfg, "G")
    capacity_d, fmap_max_d = matched_peer_size(peer, resolution, cfg, "D")
    mapping, G, D = peer_networks(peer, resolution, cfg, capacity_g, capacity_d, fmap_max_g, fmap_max_d)

    def generate() -> torch.Tensor:
        w = mapping(torch.randn(batch, cfg.latent_dim))
        styles = peer.styles_def_to_tensor([(w, G.num_layers)])
        return G(styles, torch.rand(batch, resolution, resolution, 1))

    step = plain_step(generate, lambda images: D(images)[0], real.contiguous(),
                      [*mapping.parameters(), *G.parameters()], D.parameters(), cfg)
    return step, {"params_g": count(mapping, G), "params_d": count(D), "network_capacity_g": capacity_g,
                  "fmap_max_g": fmap_max_g, "network_capacity_d": capacity_d, "fmap_max_d": fmap_max_d}


def stylex_step(cfg: StylexConfig, resolution: int, batch: int) -> tuple[Callable[[], None], dict]:
    """StylexTrainer.train_step on random images with an untrained built-in classifier."""
    import numpy as np

    from stylexlib.classifier.model import build_classifier
    from stylexlib.data import ImageDataset
    from stylexlib.gan.training import StylexTrainer

    n = 4 * batch
    images = torch.randint(0, 256, (n, 3, resolution, resolution), dtype=torch.uint8)
    data = ImageDataset(images, torch.arange(n) % NUM_CLASSES, ["a", "b"], np.array(["train"] * n))
    classifier = build_classifier(NUM_CLASSES, resolution, width=32)
    trainer = StylexTrainer(dataclasses.replace(cfg, batch_size=batch, device="cpu"), data, classifier)
    facts = {"params_g": count(trainer.G), "params_d": count(trainer.D), "params_e": count(trainer.E),
             "path_mode": cfg.path_mode}
    return trainer.train_step, facts


KINDS = ("plain", "peer", "stylex")


def timed(step: Callable[[], None]) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def interleaved_rates(steps: dict[str, Callable[[], None]], batch: int, rounds: int, warmup: int) -> dict[str, dict]:
    """Median images/s per kind, timing one step of each kind per round (so load from other work hits all alike)."""
    warmup_seconds = {kind: sum(timed(step) for _ in range(warmup)) for kind, step in steps.items()}
    durations: dict[str, list[float]] = {kind: [] for kind in steps}
    for _ in range(rounds):
        for kind, step in steps.items():
            durations[kind].append(timed(step))
    return {kind: {"images_per_s": round(batch / statistics.median(durations[kind]), 2),
                   "warmup_s": round(warmup_seconds[kind], 1)} for kind in steps}


def peak_memory(kind: str, cfg: StylexConfig, resolution: int, batch: int) -> dict:
    """Peak RSS of a process that builds one kind and runs two steps (called in a fresh subprocess)."""
    step, facts = build(kind, cfg, resolution, batch)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_mib": round(peak / 1024, 1), "peak_rss_over_built_mib": round((peak - before) / 1024, 1), **facts}


def in_subprocess(kind: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--memory-of", kind, "--config", args.config, "--resolution",
               str(args.resolution), "--batch", str(args.batch), "--threads", str(args.threads)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"memory measurement of '{kind}' failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"), help="network widths from stylex:")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per kind (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", choices=["cpu"], help="CPU only: the peer hard-codes .cuda() elsewhere")
    parser.add_argument("--memory-of", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config).stylex
    if args.memory_of:
        with contextlib.redirect_stdout(sys.stderr):
            result = peak_memory(args.memory_of, cfg, args.resolution, args.batch)
        print(json.dumps(result))
        return
    results = {kind: in_subprocess(kind, args) for kind in KINDS}
    with contextlib.redirect_stdout(sys.stderr):
        steps = {kind: build(kind, cfg, args.resolution, args.batch)[0] for kind in KINDS}
    for kind, rate in interleaved_rates(steps, args.batch, args.steps, args.warmup).items():
        results[kind].update(rate)
    params = {kind: results[kind]["params_g"] + results[kind]["params_d"] for kind in ("plain", "peer")}
    print(json.dumps({
        "resolution": args.resolution, "batch": args.batch, "threads": args.threads,
        "channels_last": cfg.channels_last, "config": args.config, "torch": torch.__version__,
        "machine": platform.machine(), "results": results,
        "plain_vs_peer_speedup": round(results["plain"]["images_per_s"] / results["peer"]["images_per_s"], 2),
        "peer_vs_plain_params": round(params["peer"] / params["plain"], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
