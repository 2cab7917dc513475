"""One step's forward pass: the generator's images for the scheduled paths, and the :class:`StepContext` that loss
terms read (each shared intermediate computed once, when a term first asks for it)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn

from stylexlib.core.config import StylexConfig
from stylexlib.gan.augment import diff_augment
from stylexlib.gan.discriminator import Discriminator
from stylexlib.gan.step_options import StepOptions
from stylexlib.gan.train.batches import RealBatch
from stylexlib.gan.train.schedule import Paths
from stylexlib.gan.train.state import TrainingState


@dataclass
class Generated:
    """One step's generator outputs: reconstructions first, then random samples, and D's class weights."""

    images: Tensor
    probs: Tensor
    w_encoded: Tensor | None  # E(x), when the encoder path ran
    w_sampled: Tensor | None  # mapping(z), when the random path ran
    reconstructions: Tensor | None


def generate(state: TrainingState, batch: RealBatch, paths: Paths) -> Generated:
    """One batched G forward of the scheduled paths: G(E(x), c) and G(mapping(z), c[perm]) (with style mixing)."""
    x, condition, probs = batch.x, batch.condition, batch.probs
    latents, conditions, d_probs, w_encoded, w_sampled = [], [], [], None, None
    if paths.encoder:
        w_encoded = state.E(x)
        latents.append(w_encoded)
        conditions.append(condition)
        d_probs.append(probs)
    if paths.random:
        shuffle = torch.randperm(len(x), device=state.device)
        w_sampled = state.random_w(len(x))
        latents.append(w_sampled)
        conditions.append(condition[shuffle])
        d_probs.append(probs[shuffle])
    styles = state.G.styles(torch.cat(latents), torch.cat(conditions))
    if paths.random and state.cfg.regularise.mixing_prob > 0:
        n = len(styles) - len(x)
        styles = torch.cat([styles[:n], mix_styles(state, styles[n:], conditions[-1])])
    images = state.G.synthesize(styles, noise_mode="random")
    return Generated(images, torch.cat(d_probs), w_encoded, w_sampled, images[: len(x)] if paths.encoder else None)


def mix_styles(state: TrainingState, styles: Tensor, condition: Tensor) -> Tensor:
    """Style mixing (StyleGAN2): with ``mixing_prob``, a sample takes a second latent's styles from a random layer
    on, so that neighbouring layers cannot rely on each other and StyleSpace channels stay layer-local."""
    n, layers = len(styles), state.G.style_index.num_layers
    other = state.G.styles(state.random_w(n), condition)
    cutoff = torch.randint(1, layers, (n, 1), device=state.device)
    cutoff = torch.where(torch.rand(n, 1, device=state.device) < state.cfg.regularise.mixing_prob, cutoff, layers)
    style_layers = state.G.style_index.layer_ids().to(state.device)  # layer number of every style coordinate
    return torch.where(style_layers[None] >= cutoff, other, styles)


@dataclass
class StepContext:
    """What a loss term reads: the state, the real batch, the generated images and the frozen helpers."""

    state: TrainingState
    batch: RealBatch
    generated: Generated
    step_classifier: nn.Module
    lpips: nn.Module
    options: StepOptions
    warming_up: bool

    @property
    def cfg(self) -> StylexConfig:
        return self.state.cfg

    def augment(self, images: Tensor) -> Tensor:
        """D's view of images (DiffAugment with ``stylex.regularise.augment``)."""
        return diff_augment(images, self.cfg.regularise.augment) if self.cfg.regularise.augment else images

    def discriminate(self, batches: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
        """D's outputs for several (images, class weights) batches: one trunk pass (``options.batched_discriminator``)
        or one call per batch."""
        D = self.state.D
        if self.options.batched_discriminator and isinstance(D, Discriminator):
            return D.judge_batches(batches)
        return [D(images, probs) for images, probs in batches]

    @property
    def judged(self) -> tuple[Tensor, Tensor] | None:
        """The generated images D judges, with their class weights (none during the warm-up)."""
        return None if self.warming_up else (self.generated.images, self.generated.probs)

    @cached_property
    def encoded_reconstructions(self) -> Tensor:
        """E(x'), for the latent cycle term."""
        return self.state.E(self.generated.reconstructions)

    @cached_property
    def generated_logits(self) -> tuple[Tensor | None, Tensor | None]:
        """Classifier logits of the reconstructions and of the random samples where a KL term needs them (else None):
        one pass over all the images when both are needed (``options.batched_classifier``), else one each."""
        generated, cfg = self.generated, self.cfg
        rec = samples = None
        if generated.reconstructions is not None and cfg.weight("kl") > 0:
            rec = generated.images[: len(generated.reconstructions)]
        if generated.w_sampled is not None and cfg.weight("sample_kl") > 0:
            samples = generated.images[-len(generated.w_sampled):]
        if rec is not None and samples is not None and self.options.batched_classifier:
            both = self.step_classifier(generated.images)  # the reconstructions, then the samples
            return both[: len(rec)], both[len(rec):]
        return tuple(None if part is None else self.step_classifier(part) for part in (rec, samples))
