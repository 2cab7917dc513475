"""StylEx training (Lang et al., ICCV 2021): G, its EMA copy, encoder E, conditional D, frozen classifier C.

One step: a seeded real batch x and C(x); the encoder path x' = G(E(x), C(x)) and/or the random path
G(mapping(z), C(shuffled x)) (``stylex.path_mode``), with optional style mixing; a D step (logistic loss on
optionally DiffAugmented inputs, lazy R1); a G+E step (adversarial + L1 + LPIPS + latent + KL reconstruction
losses, lazy path length); optionally the mapping match (mapping(z) towards E(x)'s distribution); the EMA update.
The first ``stylex.warmup_steps`` steps train E and G as an autoencoder only (reconstruction and KL terms; no D, no
random path; the mapping match, when on, runs throughout).
Single process, or data parallel under ``torchrun`` (see :mod:`stylexlib.core.distributed`)::

    torchrun --nproc_per_node=4 -m stylexlib train runs/demo
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import matplotlib.pyplot as plt
import torch
from torch import Tensor, nn

from stylexlib.classifier.fold import folded_copy
from stylexlib.classifier.training import load_run_classifier
from stylexlib.core.config import StylexConfig, to_dict
from stylexlib.core.distributed import (SINGLE, DistInfo, any_rank, average_gradients, broadcast_modules,
                                        gather_objects, mean_across_ranks)
from stylexlib.core.figures import image_grid, save_figure
from stylexlib.core.interrupt import Interrupted, stop_requests
from stylexlib.core.io import atomic_write, torch_save
from stylexlib.core.progress import tqdm
from stylexlib.core.provenance import accepts, stylex_fingerprint
from stylexlib.core.run import Run, pick_device
from stylexlib.data import ImageDataset, to_float
from stylexlib.gan.augment import diff_augment, parse_policy
from stylexlib.gan.checkpoint import (CHECKPOINT_FORMAT, STATS_FILE, capture_rng, checkpoint_path, load_checkpoint,
                                      read_stats, restore_rng)
from stylexlib.gan.collapse import COLLAPSE_IMAGES, collapse_metrics, collapse_warning
from stylexlib.gan.discriminator import Discriminator
from stylexlib.gan.encoder_fit import fit_checkpoint_encoder
from stylexlib.gan.generator import MAPPING_LR_MUL
from stylexlib.gan.losses import (class_pathway_sparsity, classifier_kl_loss, d_logistic_loss, d_r1_loss,
                                  g_nonsaturating_loss, g_path_length_loss, latent_mmd_loss, latent_prior_loss,
                                  load_lpips, loss_weights, reconstruction_losses, weighted_sum)
from stylexlib.gan.models import StylexModels, build_networks, class_input
from stylexlib.gan.pace import PaceAnnouncer
from stylexlib.gan.step_options import StepOptions, update_ema

log = logging.getLogger(__name__)

PATH_MODES = ("mix", "alternate")
PREVIEW_COUNT = 16  # samples in a preview grid; half as many (input | reconstruction) pairs


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the message names the loss, the step and the checkpoint kept."""


@dataclass
class TrainSummary:
    """What a call of :meth:`StylexTrainer.train` did."""

    steps: int  # completed steps in total (all sessions)
    session_steps: int
    train_seconds: float  # training wall time in total (all sessions)
    session_seconds: float
    images_per_second: float  # real images per second of training, all sessions and ranks together
    stopped_by_time_limit: bool
    checkpoint: Path | None


class BatchSampler:
    """Endless seeded batches of dataset positions: a fresh permutation each epoch; saveable state."""

    def __init__(self, positions: Tensor, batch_size: int, seed: int) -> None:
        if len(positions) == 0:
            raise ValueError("no training images: the train split is empty")
        self.positions = positions
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)
        self.cursor = 0

    def next(self) -> Tensor:
        """The positions of the next batch."""
        parts, needed = [], self.batch_size
        while needed > 0:
            if self.cursor >= len(self.order):
                self.order, self.cursor = torch.randperm(len(self.positions), generator=self.generator), 0
            part = self.order[self.cursor : self.cursor + needed]
            self.cursor += len(part)
            needed -= len(part)
            parts.append(part)
        return self.positions[torch.cat(parts)]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order.clone(), "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.cursor = state["order"].clone(), int(state["cursor"])


@dataclass
class Generated:
    """One step's generator outputs: reconstructions first, then random samples, and D's class weights."""

    images: Tensor
    probs: Tensor
    w_encoded: Tensor | None  # E(x), when the encoder path ran
    w_sampled: Tensor | None  # mapping(z), when the random path ran
    reconstructions: Tensor | None


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``stylex.precision`` on a device (None: full precision)."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"stylex.precision must be auto, fp32, bf16 or fp16, got '{precision}'")
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def adam(params: Iterator[nn.Parameter], lr: float, cfg: StylexConfig, reg_every: int | None,
         beta1: float | None = None, fused: bool = False) -> torch.optim.Adam:
    """Adam with StyleGAN2's lazy-regularisation correction of lr and betas (when ``reg_every`` is set); ``beta1``
    defaults to ``cfg.beta1``; ``fused``: one fused kernel (CPU and CUDA parameters) instead of a per-tensor loop."""
    ratio = reg_every / (reg_every + 1) if reg_every else 1.0
    beta1 = cfg.beta1 if beta1 is None else beta1
    params = [p for p in params if p.requires_grad]  # frozen pretrained trunks never step
    fused = fused and bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=lr * ratio, betas=(beta1**ratio, cfg.beta2**ratio), fused=fused or None)


class StylexTrainer:
    """Trains G, E and D against a frozen classifier; checkpoints, logs and previews into ``out_dir``."""

    def __init__(self, cfg: StylexConfig, data: ImageDataset, classifier: nn.Module, out_dir: str | Path | None = None,
                 device: torch.device | None = None, dist: DistInfo = SINGLE, lpips_model: nn.Module | None = None,
                 fingerprint: str | None = None, options: StepOptions = StepOptions()) -> None:
        if cfg.path_mode not in PATH_MODES:
            raise ValueError(f"stylex.path_mode must be one of {PATH_MODES}, got '{cfg.path_mode}'")
        parse_policy(cfg.augment)
        self.cfg, self.dist, self.class_names, self.fingerprint = cfg, dist, list(data.class_names), fingerprint
        self.options = options
        self.device = device or pick_device(cfg.device)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        if self.out_dir is not None and dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.G, self.E, self.D = build_networks(data.resolution, data.num_classes, cfg)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.E_ema = copy.deepcopy(self.E).eval().requires_grad_(False) if cfg.encoder_ema else None
        self.style_layers = self.G.style_index.layer_ids()  # layer number of every style coordinate (style mixing)
        for net in self._networks():
            net.to(self.device, memory_format=self.memory_format)
        broadcast_modules(self._networks(), dist)
        self.classifier = classifier.to(self.device).eval().requires_grad_(False)
        self.step_classifier = folded_copy(self.classifier) if options.folded_classifier else self.classifier
        self.real_logits: Tensor | None = None  # C(x) per dataset image, filled as images are drawn
        self.real_logits_known = torch.zeros(0, dtype=torch.bool)
        self.lpips = lpips_model if lpips_model is not None else load_lpips(cfg.lpips_net, self.device)
        fused = options.fused_adam
        self.opt_g = adam(self.G.parameters(), cfg.lr_g, cfg, cfg.pl_every if cfg.pl_weight > 0 else None, fused=fused)
        self.opt_e = adam(self.E.parameters(), cfg.lr_e, cfg, None, cfg.beta1_e, fused=fused)
        self.opt_d = adam(self.D.parameters(), cfg.lr_d, cfg, cfg.r1_every if cfg.r1_gamma > 0 else None, fused=fused)
        self.opt_mapping = adam(self.G.mapping.parameters(), cfg.lr_g / MAPPING_LR_MUL, cfg, None,  # the mapping match
                                fused=fused)
        if cfg.compile:
            self._compile()
        self.amp_dtype = autocast_dtype(cfg.precision, self.device)
        fp16 = self.amp_dtype == torch.float16
        self.scaler_g = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.full_precision = torch.amp.GradScaler(self.device.type, enabled=False)  # the regularisation steps
        self.images, self.resolution, self.num_classes = data.images, data.resolution, data.num_classes
        self.sampler = BatchSampler(torch.as_tensor(data.indices("train")), cfg.batch_size, cfg.seed * 1000 + dist.rank)
        self.preview_images = self._preview_images(data)
        self.collapse_images, _ = data.heldout(COLLAPSE_IMAGES)
        self.collapse_lpips = None  # LPIPS for the collapse check, chosen on first use
        self.collapse_flag: str | None = None  # the last check's self-retrieval when it fired
        if cfg.encoder_offset:
            self._init_w_avg()
        self.preview_z = torch.randn(PREVIEW_COUNT, cfg.latent_dim, generator=torch.Generator().manual_seed(cfg.seed))
        self.step, self.train_seconds, self.checkpoint_step = 0, 0.0, None
        self.mean_path_length = torch.zeros((), device=self.device)
        torch.manual_seed(cfg.seed * 1000 + dist.rank)  # each rank draws its own z and noise
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    # ---------------------------------------------------------------- one step
    def train_step(self) -> dict[str, float]:
        """One D step and one G+E step (plus the lazy regularisers when due; during the warm-up the G+E step only)."""
        cfg = self.cfg
        positions = self.sampler.next()
        x = self._real_batch(positions)
        logits = self._real_logits(positions, x)
        probs, condition = logits.softmax(dim=1), class_input(logits, cfg.condition_on)
        if cfg.condition_on == "none":  # no classifier: D's class heads averaged (unconditional)
            probs = torch.full_like(probs, 1 / probs.shape[1])
        with self._autocast():
            generated = self._generate(x, condition, probs)
        if self.warming_up:  # reconstruction first: no D, no regularisers
            losses = self._generator_step(x, logits, generated)
        else:
            losses = self._discriminator_step(x, probs, generated)
            if cfg.r1_gamma > 0 and "d" in losses and self._d_steps_before() % cfg.r1_every == 0:
                losses.update(self._r1_step(x, probs))  # lazy R1: every r1_every-th D step, on a step D trains
            losses.update(self._generator_step(x, logits, generated))
            if cfg.pl_weight > 0 and self.step % cfg.pl_every == 0:
                losses.update(self._path_length_step(condition))
        if cfg.weight_mapping_match > 0 and generated.w_encoded is not None:
            losses.update(self._mapping_match_step(generated.w_encoded.detach()))
        if cfg.encoder_offset:
            self._track_w_avg(generated.w_sampled)
        self._update_ema()
        self.step += 1
        return losses

    def _compile(self) -> None:
        """torch.compile (in place: state dicts keep their keys) the step's E and classifier copy, and G's synthesis
        layers unless the path-length penalty needs their double backward (which compiled graphs lack; so does
        D's R1, and D stays eager); shapes are dynamic (batches of 16 and 32 images)."""
        if self.step_classifier is self.classifier:
            self.step_classifier = copy.deepcopy(self.classifier)
        layers = [*self.G.layers] if self.cfg.pl_weight == 0 else []
        dynamo = torch._dynamo.config  # the layers share code objects: one compiled graph each
        dynamo.recompile_limit = max(dynamo.recompile_limit, 8 * len(self.G.layers))
        for module in [*layers, self.E, self.step_classifier]:
            module.compile(dynamic=True)

    @property
    def warming_up(self) -> bool:
        """True during the reconstruction-first warm-up (``stylex.warmup_steps``)."""
        return self.step < self.cfg.warmup_steps

    def _networks(self) -> list[nn.Module]:
        return [self.G, self.E, self.D, self.G_ema] + ([self.E_ema] if self.E_ema is not None else [])

    def _real_batch(self, positions: Tensor) -> Tensor:
        x = to_float(self.images[positions]).to(self.device, non_blocking=True)
        return x.contiguous(memory_format=self.memory_format)

    @torch.no_grad()
    def _real_logits(self, positions: Tensor, x: Tensor) -> Tensor:
        """C(x) for the real batch; with ``options.cached_real_logits`` each image's logits are computed the first time
        it is drawn and kept (the classifier is frozen and in eval mode: the same values, to float rounding)."""
        if not self.options.cached_real_logits:
            with self._autocast():
                return self.step_classifier(x).float()
        if self.real_logits is None:
            self.real_logits = torch.zeros(len(self.images), self.num_classes, device=self.device)
            self.real_logits_known = torch.zeros(len(self.images), dtype=torch.bool)
        missing = ~self.real_logits_known[positions]
        if missing.any():
            new = positions[missing]
            with self._autocast():
                self.real_logits[new.to(self.device)] = self.step_classifier(x[missing.to(self.device)]).float()
            self.real_logits_known[new] = True
        return self.real_logits[positions.to(self.device)]

    def _paths(self) -> tuple[bool, bool]:
        """(encoder path, random path) for the current step."""
        if self.warming_up:
            return True, False
        if self.cfg.path_mode == "mix":
            return True, True
        encoder = self.step % self.cfg.encoder_every == 0
        return encoder, not encoder

    def _generate(self, x: Tensor, condition: Tensor, probs: Tensor) -> Generated:
        """One batched G forward of both paths: reconstructions G(E(x), c) and samples G(mapping(z), c[perm])."""
        encoder, random = self._paths()
        latents, conditions, d_probs, w_encoded, w_sampled = [], [], [], None, None
        if encoder:
            w_encoded = self.E(x)
            latents.append(w_encoded)
            conditions.append(condition)
            d_probs.append(probs)
        if random:
            shuffle = torch.randperm(len(x), device=self.device)
            w_sampled = self._random_w(len(x))
            latents.append(w_sampled)
            conditions.append(condition[shuffle])
            d_probs.append(probs[shuffle])
        styles = self.G.styles(torch.cat(latents), torch.cat(conditions))
        if random and self.cfg.mixing_prob > 0:
            styles = torch.cat([styles[: len(styles) - len(x)], self._mix_styles(styles[len(styles) - len(x):],
                                                                                   conditions[-1])])
        images = self.G.synthesize(styles, noise_mode="random")
        return Generated(images, torch.cat(d_probs), w_encoded, w_sampled, images[: len(x)] if encoder else None)

    def _random_w(self, count: int) -> Tensor:
        """mapping(z) for ``count`` fresh z (with gradients to the mapping network)."""
        return self.G.mapping(torch.randn(count, self.cfg.latent_dim, device=self.device))

    def _mix_styles(self, styles: Tensor, condition: Tensor) -> Tensor:
        """Style mixing (StyleGAN2): with ``mixing_prob``, a sample takes a second latent's styles from a random layer
        on, so that neighbouring layers cannot rely on each other and StyleSpace channels stay layer-local."""
        n, layers = len(styles), self.G.style_index.num_layers
        other = self.G.styles(self._random_w(n), condition)
        cutoff = torch.randint(1, layers, (n, 1), device=self.device)
        cutoff = torch.where(torch.rand(n, 1, device=self.device) < self.cfg.mixing_prob, cutoff, layers)
        return torch.where(self.style_layers.to(self.device)[None] >= cutoff, other, styles)

    def _augment(self, images: Tensor) -> Tensor:
        return diff_augment(images, self.cfg.augment) if self.cfg.augment else images

    def _judged(self, generated: Generated) -> tuple[Tensor, Tensor] | None:
        """The generated images D judges, with their class weights: all of them, or only the random path's samples
        (``stylex.adv_on_reconstructions`` off); None when there are none this step."""
        if self.cfg.adv_on_reconstructions:
            return generated.images, generated.probs
        if generated.w_sampled is None:
            return None
        count = len(generated.w_sampled)
        return generated.images[-count:], generated.probs[-count:]

    def _discriminator_step(self, x: Tensor, probs: Tensor, generated: Generated) -> dict[str, float]:
        judged = self._judged(generated)
        if judged is None:
            return {}
        self.D.requires_grad_(True)
        with self._autocast():
            real, fake = self._discriminate([(self._augment(x), probs), (self._augment(judged[0].detach()), judged[1])])
            loss = d_logistic_loss(real, fake)
        values = self._checked({"d": loss})
        self._optimize(loss, [(self.D, self.opt_d)], self.scaler_d)
        return values

    def _d_steps_before(self) -> int:
        """The D steps before this one, the clock lazy R1 runs on (every ``r1_every``-th D step). Counted from step 0
        as if the warm-up had D steps too, so that where D trains every step (``adv_on_reconstructions``, the default,
        or ``path_mode: mix``) it is the step itself (R1 on every r1_every-th step, as always); with ``path_mode:
        alternate`` and ``adv_on_reconstructions: false`` D trains on the random path's steps only (step % encoder_every
        != 0)."""
        if self.cfg.adv_on_reconstructions or self.cfg.path_mode == "mix":
            return self.step
        every = self.cfg.encoder_every
        return self.step - (self.step + every - 1) // every  # less the encoder steps 0, every, 2 * every, ...

    def _discriminate(self, batches: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
        """D's outputs for several (images, class weights) batches: one trunk pass (``options.batched_discriminator``)
        or one call per batch."""
        if self.options.batched_discriminator and isinstance(self.D, Discriminator):
            return self.D.judge_batches(batches)
        return [self.D(images, probs) for images, probs in batches]

    def _r1_step(self, x: Tensor, probs: Tensor) -> dict[str, float]:
        x = x.detach().requires_grad_(True)
        penalty = d_r1_loss(self.D(self._augment(x), probs), x)
        values = self._checked({"r1": penalty})
        self._optimize(penalty * (self.cfg.r1_gamma / 2 * self.cfg.r1_every), [(self.D, self.opt_d)], self.full_precision)
        return values

    def _generator_step(self, x: Tensor, logits: Tensor, generated: Generated) -> dict[str, float]:
        self.D.requires_grad_(False)
        with self._autocast():
            judged = None if self.warming_up else self._judged(generated)
            terms = {} if judged is None else {
                "adv": g_nonsaturating_loss(self.D(self._augment(judged[0]), judged[1]))}
            rec = generated.reconstructions
            noise = self._kl_noise(generated.images)
            rec_logits, sample_logits = self._classify_generated(generated, noise)
            if rec is not None:
                terms.update(reconstruction_losses(x, rec, generated.w_encoded.detach(), self.E(rec), self.lpips))
                if self.cfg.weight_kl > 0:
                    target = logits if noise is None else self._noisy_real_logits(x, noise[: len(x)])
                    terms["kl"] = classifier_kl_loss(target, rec_logits)
                if self.cfg.weight_w_prior > 0:
                    prior = latent_mmd_loss if self.cfg.w_prior == "mmd" else latent_prior_loss
                    terms["w_prior"] = prior(generated.w_encoded, self._reference_w(generated))
            if generated.w_sampled is not None and self.cfg.weight_sample_kl > 0:
                count = len(generated.w_sampled)  # the samples follow the reconstructions; their condition's probs
                wanted = generated.probs[-count:].clamp_min(1e-8).log()
                terms["sample_kl"] = classifier_kl_loss(wanted, sample_logits)
            if self.cfg.weight_class_sparsity > 0:
                terms["class_sparsity"] = class_pathway_sparsity(self.G)
            loss = weighted_sum(terms, loss_weights(self.cfg))
        values = self._checked({"g": loss, **terms})
        nets = [(self.G, self.opt_g)] + ([(self.E, self.opt_e)] if rec is not None else [])
        self._optimize(loss, nets, self.scaler_g)
        return values

    def _kl_noise(self, images: Tensor) -> Tensor | None:
        """The Gaussian noise (``kl_noise_std``) both KL terms read the generated images through; None when off."""
        return torch.randn_like(images) * self.cfg.kl_noise_std if self.cfg.kl_noise_std > 0 else None

    @torch.no_grad()
    def _noisy_real_logits(self, x: Tensor, noise: Tensor) -> Tensor:
        """C(x + n): the reconstruction KL's target when it reads through noise, the same draw n as on x'."""
        with self._autocast():
            return self.step_classifier(x + noise).float()

    def _classify_generated(self, generated: Generated, noise: Tensor | None = None
                            ) -> tuple[Tensor | None, Tensor | None]:
        """Classifier logits of the reconstructions and of the random samples where a KL term needs them (else None),
        read through ``noise`` when given: one pass over all the images when both are needed
        (``options.batched_classifier``), else one each."""
        images = generated.images if noise is None else generated.images + noise
        rec = samples = None
        if generated.reconstructions is not None and self.cfg.weight_kl > 0:
            rec = images[: len(generated.reconstructions)]
        if generated.w_sampled is not None and self.cfg.weight_sample_kl > 0:
            samples = images[-len(generated.w_sampled):]
        if rec is not None and samples is not None and self.options.batched_classifier:
            both = self.step_classifier(images)  # the images are the reconstructions, then the samples
            return both[: len(rec)], both[len(rec):]
        return tuple(None if part is None else self.step_classifier(part) for part in (rec, samples))

    @torch.no_grad()
    def _reference_w(self, generated: Generated) -> Tensor:
        """mapping(z) for the W prior: this step's random-path latents (moments), or fresh ones when that path did not
        run; the MMD prior draws a larger reference (128 latents: a batch of 16 alone is a noisy target)."""
        if generated.w_sampled is not None and self.cfg.w_prior == "moments":
            return generated.w_sampled
        count = max(128, len(generated.w_encoded)) if self.cfg.w_prior == "mmd" else len(generated.w_encoded)
        return self._random_w(count)

    def _mapping_match_step(self, w_encoded: Tensor) -> dict[str, float]:
        """mapping(z) takes a step towards E(x)'s distribution (kernel MMD, E(x) detached), so that random samples
        land where the decoder renders faces. Its own Adam at the mapping's unscaled rate (lr_g / MAPPING_LR_MUL): at
        StyleGAN2's 0.01 multiplier the mapping would need far more steps than a CPU budget has to get there."""
        w = self._random_w(4 * len(w_encoded))
        loss = latent_mmd_loss(w, w_encoded)  # four latents per image: a batch of 16 alone is a noisy MMD sample
        values = self._checked({"mapping_match": loss})
        self._optimize(loss * self.cfg.weight_mapping_match, [(self.G.mapping, self.opt_mapping)], self.full_precision)
        return values

    def _path_length_step(self, condition: Tensor) -> dict[str, float]:
        count = max(1, len(condition) // 2)
        w = self._random_w(count)
        images = self.G(w, condition[torch.randperm(len(condition), device=self.device)[:count]], noise_mode="random")
        penalty, mean, _ = g_path_length_loss(images, w, self.mean_path_length)
        self.mean_path_length = mean_across_ranks(mean, self.dist)
        values = self._checked({"pl": penalty})
        self._optimize(penalty * (self.cfg.pl_weight * self.cfg.pl_every), [(self.G, self.opt_g)], self.full_precision)
        return values

    def _optimize(self, loss: Tensor, nets: list[tuple[nn.Module, torch.optim.Optimizer]],
                  scaler: torch.amp.GradScaler) -> None:
        """Backward, average gradients across ranks, one optimizer step per net."""
        for _, optimizer in nets:
            optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        for net, optimizer in nets:
            average_gradients(net, self.dist)
            scaler.step(optimizer)
        scaler.update()

    def _checked(self, losses: dict[str, Tensor]) -> dict[str, float]:
        """Loss values averaged over ranks; raises :class:`TrainingDiverged` on a NaN or Inf."""
        values = mean_across_ranks(torch.stack([v.detach().float() for v in losses.values()]), self.dist).tolist()
        for name, value in zip(losses, values):
            if not math.isfinite(value):
                kept = (f"the last good checkpoint (step {self.checkpoint_step}) is kept at {self.checkpoint_file}"
                        if self.checkpoint_step is not None else "no checkpoint was written yet")
                raise TrainingDiverged(
                    f"StylEx training diverged: loss '{name}' is {value} at step {self.step + 1}; {kept}. "
                    "Lower the learning rates (stylex.lr_g, lr_d, lr_e), raise stylex.r1_gamma, or use stylex.precision=fp32."
                )
        return dict(zip(losses, values))

    @torch.no_grad()
    def _init_w_avg(self, count: int = 1024) -> None:
        """E's offset origin: the mean of mapping(z) over ``count`` draws (from the model seed: equal on every rank)."""
        z = torch.randn(count, self.cfg.latent_dim, generator=torch.Generator().manual_seed(self.cfg.seed))
        self.E.w_avg.copy_(self.G.mapping(z.to(self.device)).mean(0))

    @torch.no_grad()
    def _track_w_avg(self, w_sampled: Tensor | None, beta: float = 0.995) -> None:
        """Move E's offset origin towards this step's mean of mapping(z) (StyleGAN2's w_avg tracking)."""
        w = w_sampled if w_sampled is not None else self._random_w(self.cfg.batch_size)
        self.E.w_avg.lerp_(mean_across_ranks(w.detach().float().mean(0), self.dist), 1.0 - beta)

    @torch.no_grad()
    def check_collapse(self) -> dict[str, float]:
        """The encoder-collapse detector (:mod:`stylexlib.gan.collapse`) on held-out images, of the live G and E
        (:meth:`trained_pair`); warns when it fires."""
        if self.collapse_lpips is None:  # the training LPIPS when it is a real one (tests may pass a stand-in)
            self.collapse_lpips = self.lpips if hasattr(self.lpips, "lins") else load_lpips("squeeze", self.device)
        models = self.trained_pair()
        images = to_float(self.collapse_images).to(self.device)
        metrics = collapse_metrics(models.generator, models.encoder, self.classifier, images, self.collapse_lpips,
                                   models.condition, seed=self.cfg.seed)
        warning = collapse_warning(metrics)
        self.collapse_flag = f"{metrics['recon_self_retrieval']:.2f}" if warning else None  # shown on the bar
        if warning:
            log.warning("step %d: %s", self.step, warning)
        return metrics

    def _update_ema(self) -> None:
        beta = 0.5 ** (self.cfg.batch_size * self.dist.world_size / max(self.cfg.ema_half_life_images, 1e-8))
        pairs = [(self.G_ema, self.G)] + ([(self.E_ema, self.E)] if self.E_ema is not None else [])
        for averaged, net in pairs:
            update_ema(averaged, net, 1.0 - beta, self.options.foreach_ema)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ---------------------------------------------------------------- the loop
    def train(self, steps: int | None = None, progress: bool = True) -> TrainSummary:
        """Train until ``steps`` (default ``cfg.steps``) or the time limit; checkpoint and preview on schedule. The time
        limit counts the training time of every session (``train_seconds``, kept in the checkpoint): a resumed run
        trains only the minutes left.

        Ctrl-C or SIGTERM stops it after the current step: it writes a checkpoint there, then raises
        :class:`~stylexlib.core.interrupt.Interrupted` (a ``KeyboardInterrupt``)."""
        cfg, total = self.cfg, steps if steps is not None else self.cfg.steps
        first_step, seconds_before, started = self.step, self.train_seconds, time.perf_counter()
        limit = cfg.time_limit_minutes * 60 if cfg.time_limit_minutes else math.inf  # for all sessions together
        self._trim_stats()
        bar = tqdm(total=total, initial=self.step, desc="stylex", disable=not (progress and self.dist.is_main))
        pace = PaceAnnouncer(total, limit - seconds_before if cfg.time_limit_minutes else None, cfg.warmup_steps,
                             enabled=self.dist.is_main)  # "about N steps fit in the limit; training ends at ~HH:MM"
        window: dict[str, list[float]] = {}
        window_start, interrupted = (self.step, time.perf_counter()), False
        stopped_by_time = self.step < total and any_rank(seconds_before >= limit, self.device, self.dist)  # spent
        with contextlib.closing(bar), stop_requests("StylEx training") as stop:
            while self.step < total and not stopped_by_time:
                warming_up = self.warming_up
                for name, value in self.train_step().items():
                    window.setdefault(name, []).append(value)
                self.train_seconds = seconds_before + time.perf_counter() - started
                bar.update(1)
                pace.step_done(self.step, warming_up)
                if self.step % cfg.log_every == 0 or self.step == total:
                    shown = {k: f"{v:.3g}" for k, v in self._log(window, window_start).items()
                             if k in ("d", "adv", "l1", "kl")}
                    bar.set_postfix({**shown, **({"COLLAPSE": self.collapse_flag} if self.collapse_flag else {})})
                    window, window_start = {}, (self.step, time.perf_counter())
                stopped_by_time = any_rank(self.train_seconds > limit, self.device, self.dist)
                interrupted = any_rank(stop.requested, self.device, self.dist)
                if stopped_by_time or interrupted or self.step == total:
                    break
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self.save_previews()
                if cfg.collapse_every and self.step % cfg.collapse_every == 0 and self.dist.is_main:
                    self._log_record({"step": self.step, **self.check_collapse()})
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
        if window:
            self._log(window, window_start)
        interrupted = interrupted or any_rank(stop.requested, self.device, self.dist)  # a signal after the last check
        if interrupted:  # Ctrl-C / SIGTERM: keep the finished step, then stop as an interrupt does
            self.save_checkpoint()
            raise Interrupted(f"StylEx training stopped by {stop.name or 'a signal on another rank'} after step "
                              f"{self.step}; checkpoint {self.checkpoint_file} (it resumes there)", stop.signum or 0)
        if self.step > first_step or self.checkpoint_step is None:
            if cfg.sample_every:
                self.save_previews()
            self.save_checkpoint()
        if stopped_by_time:
            log.warning("time limit of %.1f min (all sessions) reached after %d steps (of %d)", cfg.time_limit_minutes,
                        self.step, total)
        images = self.step * cfg.batch_size * self.dist.world_size
        return TrainSummary(self.step, self.step - first_step, self.train_seconds, time.perf_counter() - started,
                            images / max(self.train_seconds, 1e-9), stopped_by_time, self.checkpoint_file)

    def _log(self, window: dict[str, list[float]], window_start: tuple[int, float]) -> dict[str, float]:
        """Append the window's mean losses to stats.jsonl (main rank) and return them."""
        means = {name: sum(values) / len(values) for name, values in window.items()}
        steps, seconds = self.step - window_start[0], time.perf_counter() - window_start[1]
        record = {"step": self.step, "images": self.step * self.cfg.batch_size * self.dist.world_size,
                  "seconds": round(self.train_seconds, 3),
                  "images_per_second": steps * self.cfg.batch_size * self.dist.world_size / max(seconds, 1e-9), **means}
        self._log_record(record)
        log.debug("step %d: %s", self.step, record)
        return means

    def _log_record(self, record: dict) -> None:
        """Append one line to stats.jsonl (main rank, when there is a run folder)."""
        if self.dist.is_main and self.out_dir is not None:
            with open(self.out_dir / STATS_FILE, "a") as stats:
                stats.write(json.dumps(record) + "\n")

    def _trim_stats(self) -> None:
        """Drop stats.jsonl lines past the current step (left by an interrupted session)."""
        if not (self.dist.is_main and self.out_dir is not None and (self.out_dir / STATS_FILE).exists()):
            return
        kept = [record for record in read_stats(self.out_dir) if record["step"] <= self.step]
        text = "".join(json.dumps(record) + "\n" for record in kept)
        atomic_write(self.out_dir / STATS_FILE, lambda path: path.write_text(text))

    # ---------------------------------------------------------------- checkpoints
    @property
    def checkpoint_file(self) -> Path | None:
        return checkpoint_path(self.out_dir) if self.out_dir is not None else None

    def state_dict(self) -> dict:
        """Everything needed to continue exactly (every rank must call it: RNG states are gathered)."""
        return {
            "format": CHECKPOINT_FORMAT, "step": self.step, "train_seconds": self.train_seconds,
            "resolution": self.resolution, "num_classes": self.num_classes, "class_names": self.class_names,
            "config": to_dict(self.cfg), "world_size": self.dist.world_size, "fingerprint": self.fingerprint,
            "G": self.G.state_dict(), "G_ema": self.G_ema.state_dict(), "E": self.E.state_dict(), "D": self.D.state_dict(),
            **({"E_ema": self.E_ema.state_dict()} if self.E_ema is not None else {}),
            "opt_g": self.opt_g.state_dict(), "opt_e": self.opt_e.state_dict(), "opt_d": self.opt_d.state_dict(),
            "opt_mapping": self.opt_mapping.state_dict(),
            "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict(),
            "mean_path_length": self.mean_path_length.detach().cpu(),
            "rng": gather_objects(capture_rng(self.device), self.dist),
            "sampler": gather_objects(self.sampler.state_dict(), self.dist),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (same model sizes; same number of ranks for an exact resume)."""
        if (state["resolution"], state["num_classes"]) != (self.resolution, self.num_classes):
            raise ValueError(f"the checkpoint is for {state['resolution']}px images and {state['num_classes']} classes, "
                             f"the data has {self.resolution}px and {self.num_classes}; use a new run folder")
        names = ("G", "G_ema", "E", "D", "opt_g", "opt_e", "opt_d", "scaler_g", "scaler_d")
        for name in names + (("E_ema",) if self.E_ema is not None else ()):
            getattr(self, name).load_state_dict(state[name])
        if "opt_mapping" in state:  # checkpoints written before the mapping match have none (and did not use it)
            self.opt_mapping.load_state_dict(state["opt_mapping"])
        self.step, self.train_seconds = int(state["step"]), float(state["train_seconds"])
        self.checkpoint_step = self.step
        self.mean_path_length = state["mean_path_length"].to(self.device)
        if state["world_size"] == self.dist.world_size:
            restore_rng(state["rng"][self.dist.rank], self.device)
            self.sampler.load_state_dict(state["sampler"][self.dist.rank])
        else:
            log.warning("checkpoint written by %d ranks, resuming on %d: random draws will differ from an "
                        "uninterrupted run", state["world_size"], self.dist.world_size)
            torch.manual_seed(self.cfg.seed * 1000 + self.dist.rank + self.step)

    def save_checkpoint(self) -> Path | None:
        """Write the checkpoint atomically (main rank); every rank must call it."""
        state = self.state_dict()
        if self.dist.is_main and self.checkpoint_file is not None:
            torch_save(self.checkpoint_file, state)
            log.info("checkpoint at step %d: %s", self.step, self.checkpoint_file)
        self.checkpoint_step = self.step
        return self.checkpoint_file

    def resume(self) -> bool:
        """Load ``out_dir``'s checkpoint if there is one; True when it did."""
        if self.checkpoint_file is None or not self.checkpoint_file.exists():
            return False
        state = load_checkpoint(self.checkpoint_file)
        if not accepts(state.get("fingerprint"), self.fingerprint):
            log.warning("%s was made from another config or other data: training StylEx afresh", self.checkpoint_file)
            return False
        self.load_state_dict(state)
        log.info("resuming StylEx training at step %d from %s", self.step, self.checkpoint_file)
        return True

    # ---------------------------------------------------------------- previews
    def _preview_images(self, data: ImageDataset) -> Tensor:
        return data.heldout(PREVIEW_COUNT)[0]

    def models(self) -> StylexModels:
        """The current EMA generator, encoder and classifier, as later stages load them."""
        encoder = self.E_ema if self.E_ema is not None else self.E
        return StylexModels(self.G_ema, encoder, self.classifier, self.cfg, self.class_names, self.step, self.device)

    def trained_pair(self) -> StylexModels:
        """The live G with the live E: the pair that trains together, which the collapse check and the reconstruction
        previews read during training. E is trained against the live G, not G_ema: G_ema + E drifts apart once D joins
        (docs/experiments.md, "Real photographs": at the end of a UTKFace run LPIPS 0.107 and self-retrieval 0.28 for
        G + E against 0.366 and 0.125 for G_ema + E), so that pairing reports drift, not whether E collapsed. G_ema is
        paired with an encoder of its own only after training, by the encoder fit (gan.encoder_fit: G_ema + E_fit,
        what later stages load)."""
        return StylexModels(self.G, self.E, self.classifier, self.cfg, self.class_names, self.step, self.device)

    @torch.no_grad()
    def save_previews(self) -> dict[str, Path]:
        """Save grids of random samples G_ema(z, c) and of (input | reconstruction G(E(x), c)) pairs (main rank; the
        reconstructions by :meth:`trained_pair`)."""
        if not (self.dist.is_main and self.out_dir is not None):
            return {}
        models, figures = self.models(), {}
        conditions = models.condition(self.classifier(models.prepare(self.preview_images)).float())
        z = self.preview_z[: len(conditions)].to(self.device)
        samples = self.G_ema(self.G_ema.mapping(z), conditions[: len(z)])
        wanted = [self.class_names[i] for i in conditions.argmax(1).tolist()]
        titles = [f"c={name}\n{label}" for name, label in zip(wanted, self._labels(samples))]
        figures["samples"] = self._save_grid("samples", samples, titles, "random samples G_ema(z, c): C's output below")
        inputs = models.prepare(self.preview_images[: PREVIEW_COUNT // 2])
        pairs = torch.stack([inputs, self.trained_pair().reconstruct(inputs)], dim=1).flatten(0, 1)
        titles = [f"{'rec' if i % 2 else 'in'} {label}" for i, label in enumerate(self._labels(pairs))]
        figures["reconstructions"] = self._save_grid("reconstructions", pairs, titles,
                                                     "input | reconstruction G(E(x), c), C's output")
        return figures

    def _labels(self, images: Tensor) -> list[str]:
        probs = self.classifier(images).float().softmax(dim=1)
        top, which = probs.max(dim=1)
        return [f"{self.class_names[i]} {p:.2f}" for i, p in zip(which.tolist(), top.tolist())]

    def _save_grid(self, kind: str, images: Tensor, titles: list[str], title: str) -> Path:
        fig = image_grid(images.cpu(), titles, ncols=8, suptitle=f"{title} (step {self.step})")
        path = save_figure(fig, self.out_dir / "figures" / f"{kind}_{self.step:06d}.png")
        plt.close(fig)
        return path


# -------------------------------------------------------------------- run-level helpers
def train_stylex(run: Run, data: ImageDataset, classifier: nn.Module | None = None, device: torch.device | None = None,
                 dist: DistInfo = SINGLE, progress: bool = True) -> TrainSummary:
    """Stage 03: train StylEx into the run folder, resuming from its checkpoint; then, with
    ``stylex.encoder_fit_minutes``, fit the encoder to the frozen G_ema (:mod:`stylexlib.gan.encoder_fit`) in the last
    minutes of the time limit; saves the loss curves."""
    classifier = classifier if classifier is not None else load_run_classifier(run, data)
    cfg = run.cfg.stylex
    fit_minutes = cfg.encoder_fit_minutes
    if fit_minutes and cfg.time_limit_minutes:
        if fit_minutes >= cfg.time_limit_minutes:
            raise ValueError(f"stylex.encoder_fit_minutes ({fit_minutes}) must be less than stylex.time_limit_minutes "
                             f"({cfg.time_limit_minutes}): the fit takes its minutes from the time limit")
        cfg = dataclasses.replace(cfg, time_limit_minutes=cfg.time_limit_minutes - fit_minutes)
    trainer = StylexTrainer(cfg, data, classifier, out_dir=run.dir, device=device, dist=dist,
                            fingerprint=stylex_fingerprint(run.cfg))
    trainer.resume()
    summary = trainer.train(progress=progress)
    if fit_minutes and dist.is_main:
        fit_checkpoint_encoder(trainer, data, fit_minutes, progress)
    history = read_stats(run.dir)
    if dist.is_main and history:
        fig = loss_curves(history)
        save_figure(fig, run.path("figures", "stylex_losses.png"))
        plt.close(fig)
    return summary


LOSS_GROUPS = {
    "adversarial": ("d", "adv", "r1"),
    "reconstruction": ("l1", "lpips", "latent"),
    "classifier KL": ("kl",),
    "path length": ("pl",),
}


def latest_preview(run_dir: str | Path, kind: str) -> Path | None:
    """The newest ``figures/{kind}_STEP.png`` of a run ("samples" or "reconstructions"), or None."""
    found = sorted((Path(run_dir) / "figures").glob(f"{kind}_[0-9]*.png"))
    return found[-1] if found else None


def loss_curves(history: list[dict]) -> plt.Figure:
    """StylEx losses against the training step, one panel per group of terms."""
    groups = {title: [k for k in keys if any(k in h for h in history)] for title, keys in LOSS_GROUPS.items()}
    groups = {title: keys for title, keys in groups.items() if keys}
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.2), squeeze=False)
    for ax, (title, keys) in zip(axes.flat, groups.items()):
        for key in keys:
            points = [(h["step"], h[key]) for h in history if key in h]
            ax.plot(*zip(*points), label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
