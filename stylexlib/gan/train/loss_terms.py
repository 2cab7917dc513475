"""The loss as a registry of named terms: each term's weight (from the config), the phase it trains in, its function.

A new loss term is one :func:`register` call with its function here: its weight is ``stylex.loss.<name>`` in a config
(0, off, where none names it, which leaves every checkpoint's fingerprint as it was); the phase sums it (weighted),
backpropagates it and logs it to ``stats.jsonl`` under its name. Terms run in registration order, which fixes the
order of their random draws and of autograd's gradient sums (the G terms below reproduce the monolithic trainer's
weights bit for bit: tests/test_train_equivalence.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from stylexlib.core.config import ConfigError, StylexConfig
from stylexlib.core.distributed import mean_across_ranks
from stylexlib.gan.losses import (class_pathway_share_excess, class_pathway_sparsity, classifier_kl_loss,
                                  d_logistic_loss, d_r1_loss, g_nonsaturating_loss, g_path_length_loss,
                                  latent_mmd_loss, lpips_distance)
from stylexlib.gan.train.forward import StepContext

TermFunction = Callable[[StepContext], "Tensor | None"]  # None: the term does not apply on this step


@dataclass(frozen=True)
class LossTerm:
    """A named loss term: ``weight(cfg)`` times ``compute(context)``, trained in ``phase`` (see gan.train.phases)."""

    name: str
    phase: str
    weight: Callable[[StylexConfig], float]
    compute: TermFunction
    skip_at_zero_weight: bool = True  # False: computed and logged even at weight 0 (the paper's terms)
    weighted_by_config: bool = True  # weighted by stylex.loss.<name> (False: by other settings, e.g. r1_gamma)


LOSS_TERMS: dict[str, LossTerm] = {}


def register(name: str, phase: str, weight: Callable[[StylexConfig], float] | None = None,
             skip_at_zero_weight: bool = True) -> Callable[[TermFunction], TermFunction]:
    """Decorator: add a loss term to :data:`LOSS_TERMS`, weighted by ``stylex.loss.<name>`` (or by ``weight(cfg)``
    for the regularisers whose weight follows other settings)."""
    def add(compute: TermFunction) -> TermFunction:
        if name in LOSS_TERMS:
            raise ValueError(f"loss term '{name}' is registered twice")
        LOSS_TERMS[name] = LossTerm(name, phase, weight or (lambda cfg: cfg.weight(name)), compute,
                                    skip_at_zero_weight, weighted_by_config=weight is None)
        return compute
    return add


def check_loss_names(cfg: StylexConfig) -> None:
    """Raise ConfigError when ``stylex.loss`` names a term that is not registered, or one whose weight follows other
    settings, or turns ``class_share`` on without a cap below 1 (``stylex.regularise.class_share_max``)."""
    known = sorted(name for name, term in LOSS_TERMS.items() if term.weighted_by_config)
    unknown = sorted(set(cfg.loss) - set(known))
    if unknown:
        raise ConfigError(f"stylex.loss: no loss term named {', '.join(map(repr, unknown))}; the terms a weight can be "
                          f"given: {', '.join(known)} (gan/train/loss_terms.py)")
    if cfg.weight("class_share") > 0 and not 0 < cfg.regularise.class_share_max < 1:
        raise ConfigError(f"stylex.loss.class_share is on but stylex.regularise.class_share_max is "
                          f"{cfg.regularise.class_share_max}: set the largest share of the class pathway one coordinate "
                          f"may carry, between 0 and 1 (0.1: the class over at least 10 coordinates)")


def loss_weights(cfg: StylexConfig) -> dict[str, float]:
    """The weight of every registered loss term under ``cfg``."""
    return {name: term.weight(cfg) for name, term in LOSS_TERMS.items()}


def phase_terms(phase: str, context: StepContext) -> dict[str, Tensor]:
    """The unweighted values of ``phase``'s terms that apply on this step, in registration order."""
    values = {}
    for term in LOSS_TERMS.values():
        if term.phase != phase or (term.skip_at_zero_weight and term.weight(context.cfg) == 0):
            continue
        value = term.compute(context)
        if value is not None:
            values[term.name] = value
    return values


# ------------------------------------------------------------------ D: logistic loss, lazy R1 (StyleGAN2)
@register("d", "D", lambda cfg: 1.0)
def discriminator_logistic(c: StepContext) -> Tensor | None:
    if c.judged is None:
        return None
    images, probs = c.judged
    real, fake = c.discriminate([(c.augment(c.batch.x), c.batch.probs), (c.augment(images.detach()), probs)])
    return d_logistic_loss(real, fake)


@register("r1", "D_reg", lambda cfg: cfg.regularise.r1_gamma / 2 * cfg.regularise.r1_every)
def r1_penalty(c: StepContext) -> Tensor:
    x = c.batch.x.detach().requires_grad_(True)
    return d_r1_loss(c.state.D(c.augment(x), c.batch.probs), x)


# ------------------------------------------------------------------ G and E (Lang et al. 2021, Sec. 3; our additions)
@register("adv", "G", skip_at_zero_weight=False)
def adversarial(c: StepContext) -> Tensor | None:
    if c.judged is None:
        return None
    images, probs = c.judged
    return g_nonsaturating_loss(c.state.D(c.augment(images), probs))


@register("kl", "G")
def reconstruction_kl(c: StepContext) -> Tensor | None:
    """KL(C(x) || C(x'))."""
    rec_logits = c.generated_logits[0]
    return None if rec_logits is None else classifier_kl_loss(c.batch.logits, rec_logits)


@register("sample_kl", "G")
def sample_kl(c: StepContext) -> Tensor | None:
    """KL(c || C(G(mapping(z), c))) on the random path's samples (not in the paper)."""
    sample_logits = c.generated_logits[1]
    if sample_logits is None:
        return None
    wanted = c.generated.probs[-len(sample_logits):].clamp_min(1e-8).log()  # the samples follow the reconstructions
    return classifier_kl_loss(wanted, sample_logits)


@register("latent", "G", skip_at_zero_weight=False)
def latent_cycle(c: StepContext) -> Tensor | None:
    """|E(x') - E(x)|, E(x) detached."""
    if c.generated.reconstructions is None:
        return None
    return (c.encoded_reconstructions - c.generated.w_encoded.detach()).abs().mean()


@register("l1", "G", skip_at_zero_weight=False)
def reconstruction_l1(c: StepContext) -> Tensor | None:
    rec = c.generated.reconstructions
    return None if rec is None else (c.batch.x - rec).abs().mean()


@register("lpips", "G", skip_at_zero_weight=False)
def reconstruction_lpips(c: StepContext) -> Tensor | None:
    rec = c.generated.reconstructions
    return None if rec is None else lpips_distance(c.lpips, c.batch.x, rec).mean()


@register("class_sparsity", "G")
def class_sparsity(c: StepContext) -> Tensor:
    return class_pathway_sparsity(c.state.G)


@register("class_share", "G")
def class_share(c: StepContext) -> Tensor:
    """No StyleSpace coordinate carries more than ``stylex.regularise.class_share_max`` of the class pathway."""
    return class_pathway_share_excess(c.state.G, c.cfg.regularise.class_share_max)


# ------------------------------------------------------------------ regularisers with phases of their own
@register("pl", "G_reg", lambda cfg: cfg.regularise.pl_weight * cfg.regularise.pl_every)
def path_length(c: StepContext) -> Tensor:
    """StyleGAN2's path-length penalty on half a batch of fresh samples; updates the running mean path length."""
    condition = c.batch.condition
    count = max(1, len(condition) // 2)
    w = c.state.random_w(count)
    images = c.state.G(w, condition[torch.randperm(len(condition), device=c.state.device)[:count]],
                       noise_mode="random")
    penalty, mean, _ = g_path_length_loss(images, w, c.state.mean_path_length)
    c.state.mean_path_length = mean_across_ranks(mean, c.state.dist)
    return penalty


@register("mapping_match", "mapping", lambda cfg: float(cfg.regularise.mapping_match))
def mapping_match(c: StepContext) -> Tensor | None:
    """mapping(z) towards E(x)'s distribution (kernel MMD; four latents per image: a batch alone is a noisy sample)."""
    w_encoded = c.generated.w_encoded
    if w_encoded is None:
        return None
    return latent_mmd_loss(c.state.random_w(4 * len(w_encoded)), w_encoded.detach())
