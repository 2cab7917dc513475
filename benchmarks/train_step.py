"""Images/s and peak memory of StylEx training steps, against a peer measured in the same run; prints JSON.

Measurements at each ``--resolution``, timed in turn within one process (one step of each per round, so load from
other work hits all alike); peak memory each in its own subprocess (so its peak RSS is its own):
  stylex         the adversarial StylEx step (StylexTrainer.train_step after the warm-up): G, E, conditional D with
                 DiffAugment on both paths, frozen classifier, LPIPS, the mapping match, EMA, and R1 at its real
                 frequency (every r1_every steps: timed apart and amortised)
  stylex_warmup  a warm-up step (the config's first warmup_steps: E and G as an autoencoder, no D)
  plain          a plain G+D step with our networks: G forward, D step (logistic loss), G step (non-saturating)
  peer           the same plain step with the `stylegan2_pytorch` package (lucidrains; the base of the public StylEx
                 reproduction): its StyleVectorizer, Generator and Discriminator, no augmentation, no attention,
                 network_capacity/fmap_max picked so that G's and D's channel widths at each resolution match ours
                 (the same work per image; both parameter counts are reported).
``stylex_vs_peer_{R}`` is the adversarial step's real images/s over the peer's images/s. ``--device cuda`` times the
same steps on a GPU (the trainer's autocast; the plain step under the same autocast) without the peer, whose
dependencies a GPU image rarely has, and reports ``stylex_vs_plain_{R}`` and CUDA peak memory instead.
``--variants`` adds the trainer with each lossless speed-up of stylexlib.gan.step_options off in turn, with all of
them off ("plain_step"), and with ``stylex.runtime.compile`` on (compile time reported as its warm-up), both phases;
``speedup_vs_plain_step``.

    make bench        # or: python benchmarks/train_step.py --resolution 32 64 --threads 2 --variants
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from unittest import mock

import torch
from torch import nn

from stylexlib.core.config import StylexConfig, load_config
from stylexlib.core.stylex_config import replace_keys
from stylexlib.gan import Discriminator, Generator
from stylexlib.gan.losses import d_logistic_loss, g_nonsaturating_loss
from stylexlib.gan.step_options import StepOptions, option_names

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 2
DEVICE = torch.device("cpu")  # --device
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
    mapping = peer.StyleVectorizer(cfg.model.latent_dim, cfg.model.mapping_layers)
    G = peer.Generator(resolution, cfg.model.latent_dim, network_capacity=capacity_g, fmap_max=fmap_max_g)
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
    opt_g = torch.optim.Adam(G_params, lr=cfg.optim.lr_g, betas=(cfg.optim.beta1, cfg.optim.beta2))
    opt_d = torch.optim.Adam(D_params, lr=cfg.optim.lr_d, betas=(cfg.optim.beta1, cfg.optim.beta2))

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


@dataclass
class Measured:
    """One measured step function and facts about it; ``is_lazy_step`` tells whether the next call is one of the
    costlier steps that come every ``lazy_every`` calls (R1); ``align`` makes the next call one of them."""

    step: Callable[[], None]
    facts: dict
    lazy_every: int = 0
    is_lazy_step: Callable[[], bool] = lambda: False
    align: Callable[[], None] = lambda: None


def build(kind: str, cfg: StylexConfig, resolution: int, batch: int, config: str | None = None) -> Measured:
    """The step function of one measurement ("plain", "peer", "stylex", "stylex_warmup", "stylex:<variant>")."""
    torch.manual_seed(0)
    memory_format = torch.channels_last if cfg.runtime.channels_last else torch.contiguous_format
    real = torch.rand(batch, 3, resolution, resolution, device=DEVICE).mul(2).sub(1)
    real = real.contiguous(memory_format=memory_format)
    probs = torch.softmax(torch.randn(batch, NUM_CLASSES, device=DEVICE), dim=1)
    if kind.split(":")[0] in VARIANT_PREFIXES:
        phase, _, variant = kind.partition(":")
        return stylex_step(cfg, resolution, batch, phase, variant or "all", config)
    if kind == "plain":
        G, D = Generator(resolution, NUM_CLASSES, cfg), Discriminator(resolution, NUM_CLASSES, cfg)
        G.to(DEVICE, memory_format=memory_format)
        D.to(DEVICE, memory_format=memory_format)
        step = plain_step(lambda: G(G.mapping(torch.randn(batch, cfg.model.latent_dim, device=DEVICE)), probs,
                                    noise_mode="random"),
                          lambda images: D(images, probs), real, G.parameters(), D.parameters(), cfg)
        return Measured(autocast(step), {"params_g": count(G), "params_d": count(D)})
    peer = import_peer()
    capacity_g, fmap_max_g = matched_peer_size(peer, resolution, cfg, "G")
    capacity_d, fmap_max_d = matched_peer_size(peer, resolution, cfg, "D")
    mapping, G, D = peer_networks(peer, resolution, cfg, capacity_g, capacity_d, fmap_max_g, fmap_max_d)

    def generate() -> torch.Tensor:
        w = mapping(torch.randn(batch, cfg.model.latent_dim))
        styles = peer.styles_def_to_tensor([(w, G.num_layers)])
        return G(styles, torch.rand(batch, resolution, resolution, 1))

    step = plain_step(generate, lambda images: D(images)[0], real.contiguous(),
                      [*mapping.parameters(), *G.parameters()], D.parameters(), cfg)
    return Measured(step, {"params_g": count(mapping, G), "params_d": count(D), "network_capacity_g": capacity_g,
                           "fmap_max_g": fmap_max_g, "network_capacity_d": capacity_d, "fmap_max_d": fmap_max_d})


VARIANT_PREFIXES = ("stylex", "stylex_warmup")


def autocast(step: Callable[[], None]) -> Callable[[], None]:
    """``step`` under bf16 autocast on CUDA (as the trainer's precision "auto" runs there); unchanged on CPU."""
    if DEVICE.type != "cuda":
        return step

    def cast_step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            step()

    return cast_step


def variant_settings(variant: str) -> tuple[StepOptions, list[str]]:
    """The step options and config overrides of a trainer variant: "all" (the default trainer), "plain_step" (every
    speed-up off), "without_<option>", "compile" (stylex.runtime.compile=true), or any "stylex.<group>.<key>=<value>"
    override."""
    if variant == "all":
        return StepOptions(), []
    if variant == "plain_step":
        return StepOptions.none(), []
    if variant == "compile":
        return StepOptions(), ["stylex.runtime.compile=true"]
    if "=" in variant:
        return StepOptions(), [variant]
    if variant.startswith("without_") and variant[len("without_"):] in option_names():
        return StepOptions().without(variant[len("without_"):]), []
    raise SystemExit(f"unknown variant '{variant}'")


def stylex_step(cfg: StylexConfig, resolution: int, batch: int, phase: str, variant: str = "all",
                config: str | None = None) -> Measured:
    """StylexTrainer.train_step on random images with an untrained built-in classifier, in the warm-up or the
    adversarial phase (R1 on its real schedule: the step counter is kept in the phase, not reset)."""
    import numpy as np

    from stylexlib.classifier.model import build_classifier
    from stylexlib.data import ImageDataset
    from stylexlib.gan.train import StylexTrainer

    options, overrides = variant_settings(variant)
    if overrides:
        cfg = load_config(config, overrides).stylex
    n = 4 * batch
    images = torch.randint(0, 256, (n, 3, resolution, resolution), dtype=torch.uint8)
    data = ImageDataset(images, torch.arange(n) % NUM_CLASSES, ["a", "b"], np.array(["train"] * n))
    classifier = build_classifier(NUM_CLASSES, resolution, width=32)
    trainer = StylexTrainer(replace_keys(cfg, batch_size=batch, device=DEVICE.type), data, classifier,
                            options=options)
    facts = {"params_g": count(trainer.G), "params_d": count(trainer.D), "params_e": count(trainer.E),
             "path_mode": cfg.schedule.path_mode, "variant": variant}
    r1_every = cfg.regularise.r1_every if cfg.regularise.r1_gamma > 0 else 0
    if phase == "stylex_warmup":
        return Measured(trainer.train_step, facts)
    trainer.step = cfg.schedule.warmup_steps

    def align() -> None:  # the first timed step is an R1 step
        if r1_every:
            trainer.step += -trainer.step % r1_every

    return Measured(trainer.train_step, facts, r1_every, lambda: bool(r1_every) and trainer.step % r1_every == 0,
                    align)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}  # cpu: this process's CPU time (a busy machine)
CLOCK = CLOCKS["wall"]


def timed(step: Callable[[], None]) -> float:
    synchronize()
    started = CLOCK()
    step()
    synchronize()
    return CLOCK() - started


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def step_seconds(durations: list[float], lazy: list[bool], every: int) -> float:
    """Seconds per step: the median ordinary step, plus the lazy steps' extra time (mean) spread over ``every``."""
    ordinary = statistics.median(d for d, is_lazy in zip(durations, lazy) if not is_lazy)
    extra = [d - ordinary for d, is_lazy in zip(durations, lazy) if is_lazy]
    return ordinary + (statistics.mean(extra) / every if extra and every else 0.0)


def interleaved_rates(measured: dict[str, Measured], batch: int, rounds: int, warmup: int) -> dict[str, dict]:
    """Images/s per kind, timing one step of each kind per round (so load from other work hits all alike)."""
    warmup_seconds = {kind: sum(timed(m.step) for _ in range(warmup)) for kind, m in measured.items()}
    for m in measured.values():
        m.align()
    durations: dict[str, list[float]] = {kind: [] for kind in measured}
    lazy: dict[str, list[bool]] = {kind: [] for kind in measured}
    for _ in range(rounds):
        for kind, m in measured.items():
            lazy[kind].append(m.is_lazy_step())
            durations[kind].append(timed(m.step))
    return {kind: {"images_per_s": round(batch / step_seconds(durations[kind], lazy[kind], m.lazy_every), 2),
                   "warmup_s": round(warmup_seconds[kind], 1)} for kind, m in measured.items()}


def peak_memory(kind: str, cfg: StylexConfig, resolution: int, batch: int) -> dict:
    """Peak RSS of a process that builds one kind and runs two steps (called in a fresh subprocess)."""
    measured = build(kind, cfg, resolution, batch)
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        measured.step()
        measured.step()
        return {"peak_cuda_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1), **measured.facts}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    measured.step()
    measured.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_mib": round(peak / 1024, 1), "peak_rss_over_built_mib": round((peak - before) / 1024, 1),
            **measured.facts}


def in_subprocess(kind: str, resolution: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--memory-of", kind, "--config", args.config, "--resolution",
               str(resolution), "--batch", str(args.batch), "--threads", str(args.threads), "--device", args.device]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"memory measurement of '{kind}' failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def kinds_to_time(cfg: StylexConfig, variants: bool, extra: list[str]) -> list[str]:
    """The measured kinds: the plain steps (the peer on CPU only), the StylEx phases, with ``variants`` each trainer
    variant, and ``extra`` variants (config overrides)."""
    phases = ["stylex_warmup", "stylex"] if cfg.schedule.warmup_steps > 0 else ["stylex"]
    kinds = ["plain", *(["peer"] if DEVICE.type == "cpu" else []), *phases]
    names = (["plain_step", *(f"without_{name}" for name in option_names()), "compile"] if variants else []) + extra
    if names and "plain_step" not in names:
        names.insert(0, "plain_step")
    return kinds + [f"{phase}:{name}" for name in names for phase in phases]


def measure_resolution(cfg: StylexConfig, resolution: int, args: argparse.Namespace,
                       memory: dict[str, dict]) -> dict:
    """Every kind at one resolution, timed in the same run; the ratios against the peer and the plain step."""
    kinds = kinds_to_time(cfg, args.variants, args.variant)
    results = {kind: dict(facts) for kind, facts in memory.items()}
    with contextlib.redirect_stdout(sys.stderr):
        measured = {kind: build(kind, cfg, resolution, args.batch, args.config) for kind in kinds}
    for kind, rate in interleaved_rates(measured, args.batch, args.steps, args.warmup).items():
        results.setdefault(kind, dict(measured[kind].facts)).update(rate)
    rate = {kind: result["images_per_s"] for kind, result in results.items()}
    reference = "peer" if "peer" in rate else "plain"
    report = {"results": results, f"stylex_vs_{reference}_{resolution}": round(rate["stylex"] / rate[reference], 3)}
    if reference == "peer":
        params = {kind: results[kind]["params_g"] + results[kind]["params_d"] for kind in ("plain", "peer")}
        report.update({"plain_vs_peer_speedup": round(rate["plain"] / rate["peer"], 2),
                       "peer_vs_plain_params": round(params["peer"] / params["plain"], 3)})
    if "stylex_warmup" in rate:
        report[f"stylex_warmup_vs_{reference}_{resolution}"] = round(rate["stylex_warmup"] / rate[reference], 3)
    for phase in VARIANT_PREFIXES:
        if f"{phase}:plain_step" in rate:
            report[f"{phase}_speedup_vs_plain_step_{resolution}"] = {
                kind.split(":")[1] if ":" in kind else "all": round(value / rate[f"{phase}:plain_step"], 3)
                for kind, value in rate.items() if kind.split(":")[0] == phase}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"), help="network widths from stylex:")
    parser.add_argument("--resolution", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=16, help="timed steps per kind (one R1 step among them)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--variants", action="store_true", help="also time the trainer without each speed-up")
    parser.add_argument("--variant", action="append", default=[],
                        help="also time a variant, e.g. stylex.schedule.path_mode=alternate")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="cpu: CPU time, for a busy machine")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: without the peer")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global CLOCK, DEVICE
    CLOCK = CLOCKS[args.clock]
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    cfg = load_config(args.config).stylex
    if args.memory_of:
        with contextlib.redirect_stdout(sys.stderr):
            result = peak_memory(args.memory_of, cfg, args.resolution[0], args.batch)
        print(json.dumps(result))
        return
    report = {"batch": args.batch, "threads": args.threads, "clock": args.clock,
              "channels_last": cfg.runtime.channels_last, "config": args.config, "torch": torch.__version__, "machine": platform.machine(), "device": args.device}
    if DEVICE.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name()
    # Peak memory first, while this process is small: Linux carries a parent's peak RSS into the subprocesses.
    kinds = [kind for kind in kinds_to_time(cfg, False, []) if ":" not in kind]
    memory = {r: {kind: in_subprocess(kind, r, args) for kind in kinds} for r in args.resolution}
    for resolution in args.resolution:
        measured = measure_resolution(cfg, resolution, args, memory[resolution])
        report.update({key: value for key, value in measured.items() if key.startswith("stylex")})
        report[f"at_{resolution}"] = measured
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
