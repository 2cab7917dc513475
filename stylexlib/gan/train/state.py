"""The training state: networks, EMA copy, optimizers (with lazy-regularisation ratios), scalers, counters, state dicts."""
from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch
from torch import Tensor, nn

from stylexlib.core.config import StylexConfig, to_dict
from stylexlib.core.distributed import DistInfo, average_gradients, broadcast_modules
from stylexlib.core.stylex_config import OptimConfig
from stylexlib.gan.generator import MAPPING_LR_MUL
from stylexlib.gan.models import build_networks
from stylexlib.gan.step_options import StepOptions, update_ema

OPTIMIZERS = ("opt_g", "opt_e", "opt_d", "opt_mapping")
NETWORKS = ("G", "G_ema", "E", "D")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``stylex.runtime.precision`` on a device (None: full precision)."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"stylex.runtime.precision must be auto, fp32, bf16 or fp16, got '{precision}'")
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def adam(params: Iterator[nn.Parameter], lr: float, optim: OptimConfig, reg_every: int | None,
         fused: bool = False) -> torch.optim.Adam:
    """Adam with StyleGAN2's lazy-regularisation correction of lr and betas (when ``reg_every`` is set); ``fused``: one
    fused kernel (CPU and CUDA parameters) instead of a per-tensor loop."""
    ratio = reg_every / (reg_every + 1) if reg_every else 1.0
    params = [p for p in params if p.requires_grad]  # frozen trunks never step
    fused = fused and bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    betas = (optim.beta1**ratio, optim.beta2**ratio)
    return torch.optim.Adam(params, lr=lr * ratio, betas=betas, fused=fused or None)


class TrainingState:
    """G, G_ema, E, D with their optimizers and gradient scalers, the step and the training time: everything a
    checkpoint continues (``state_dict``), and the two updates every phase shares (``optimize``, ``update_ema``)."""

    def __init__(self, cfg: StylexConfig, resolution: int, num_classes: int, device: torch.device, dist: DistInfo,
                 options: StepOptions) -> None:
        self.cfg, self.device, self.dist, self.options = cfg, device, dist, options
        self.memory_format = torch.channels_last if cfg.runtime.channels_last else torch.contiguous_format
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.G, self.E, self.D = build_networks(resolution, num_classes, cfg)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        for net in self.networks():
            net.to(device, memory_format=self.memory_format)
        broadcast_modules(self.networks(), dist)
        fused = options.fused_adam
        optim, reg = cfg.optim, cfg.regularise
        self.opt_g = adam(self.G.parameters(), optim.lr_g, optim, reg.pl_every if reg.pl_weight > 0 else None, fused)
        self.opt_e = adam(self.E.parameters(), optim.lr_e, optim, None, fused)
        self.opt_d = adam(self.D.parameters(), optim.lr_d, optim, reg.r1_every if reg.r1_gamma > 0 else None, fused)
        self.opt_mapping = adam(self.G.mapping.parameters(), optim.lr_g / MAPPING_LR_MUL, optim, None, fused)
        self.amp_dtype = autocast_dtype(cfg.runtime.precision, device)
        fp16 = self.amp_dtype == torch.float16
        self.scaler_g = torch.amp.GradScaler(device.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(device.type, enabled=fp16)
        self.full_precision = torch.amp.GradScaler(device.type, enabled=False)  # the regularisation phases
        self.step, self.train_seconds = 0, 0.0
        self.mean_path_length = torch.zeros((), device=device)

    def networks(self) -> list[nn.Module]:
        return [self.G, self.E, self.D, self.G_ema]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to ``stylex.runtime.precision`` (a no-op at full precision)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def random_w(self, count: int) -> Tensor:
        """mapping(z) for ``count`` fresh z (with gradients to the mapping network)."""
        return self.G.mapping(torch.randn(count, self.cfg.model.latent_dim, device=self.device))

    def optimize(self, loss: Tensor, nets: list[tuple[nn.Module, torch.optim.Optimizer]],
                 scaler: torch.amp.GradScaler) -> None:
        """Backward, average gradients across ranks, one optimizer step per net."""
        for _, optimizer in nets:
            optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        for net, optimizer in nets:
            average_gradients(net, self.dist)
            scaler.step(optimizer)
        scaler.update()

    def update_ema(self) -> None:
        """G_ema moves towards G with a half-life of ``ema_half_life_images`` images."""
        optim = self.cfg.optim
        beta = 0.5 ** (optim.batch_size * self.dist.world_size / max(optim.ema_half_life_images, 1e-8))
        update_ema(self.G_ema, self.G, 1.0 - beta, self.options.foreach_ema)

    def compile(self) -> None:
        """torch.compile (in place: state dicts keep their keys) E and G's synthesis layers unless the path-length
        penalty needs their double backward (which compiled graphs lack; so does R1, and D stays eager)."""
        layers = [*self.G.layers] if self.cfg.regularise.pl_weight == 0 else []
        dynamo = torch._dynamo.config  # the layers share code objects: one compiled graph each
        dynamo.recompile_limit = max(dynamo.recompile_limit, 8 * len(self.G.layers))
        for module in [*layers, self.E]:
            module.compile(dynamic=True)

    def state_dict(self) -> dict:
        """Networks, optimizers, scalers and counters (RNG and sampler states are the trainer's)."""
        return {"step": self.step, "train_seconds": self.train_seconds, "config": to_dict(self.cfg),
                "world_size": self.dist.world_size,
                **{name: getattr(self, name).state_dict() for name in NETWORKS + OPTIMIZERS},
                "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict(),
                "mean_path_length": self.mean_path_length.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`."""
        for name in NETWORKS + ("opt_g", "opt_e", "opt_d", "scaler_g", "scaler_d"):
            getattr(self, name).load_state_dict(state[name])
        if "opt_mapping" in state:  # checkpoints written before the mapping match have none (and did not use it)
            self.opt_mapping.load_state_dict(state["opt_mapping"])
        self.step, self.train_seconds = int(state["step"]), float(state["train_seconds"])
        self.mean_path_length = state["mean_path_length"].to(self.device)
