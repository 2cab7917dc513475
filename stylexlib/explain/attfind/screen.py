"""AttFind's screened search (``attfind.screen``): first-order estimates choose the edits the exact search evaluates,
and the attributes selected from them are then evaluated on every image (:func:`complete`), so that the selection
reads exact effects wherever it picks.

Which edits an image gets: per class, the ``screen_candidates`` edits with the largest mean estimated gain over the
class's pool (the images AttFind searches that class's attributes on), on every image; and the image's own
``screen_per_image`` largest estimated gains toward each class (the greedy coverage picks edits that matter for the
few images the first picks leave). Measured against the exhaustive search on five runs: docs/experiments.md, "A
screened search".
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from stylexlib.core.config import AttFindConfig
from stylexlib.core.distributed import SINGLE, DistInfo, gather_objects
from stylexlib.explain.attfind.effects import (Effects, class_score, edited_logits_fast, interleave_shards,
                                               predict_styles, search_precision)
from stylexlib.gan.generator import Generator
from stylexlib.gan.models import StylexModels


def estimated_effects(generator: Generator, classifier: nn.Module, styles: Tensor, targets: Tensor, coords: Tensor,
                      output: str = "probs") -> Tensor:
    """First-order estimates (N, K, 2, C) of every edit's change of each class's output: gradient x shift."""
    device = next(generator.parameters()).device
    estimates = []
    for n in range(len(styles)):
        s = styles[n : n + 1].to(device).requires_grad_(True)
        logits = classifier(generator.synthesize(s)).float()
        grads = torch.stack([
            torch.autograd.grad(class_score(logits, torch.tensor([c], device=device), output).sum(), s,
                                retain_graph=c + 1 < logits.shape[1])[0][0]
            for c in range(logits.shape[1])
        ], dim=-1).cpu()  # (S, C)
        shift = targets[:, n][:, coords] - styles[n, coords]  # (2, K)
        estimates.append(grads[coords][:, None, :] * shift.T[:, :, None])
    return torch.stack(estimates)


def screen_mask(estimates: Tensor, pools: Tensor, candidates: int, per_image: int) -> Tensor:
    """The edits (N, K, 2) bool to evaluate exactly, from ``estimates`` (N, K, 2, C) and each class's pool (C, N) bool:
    per class the ``candidates`` edits of largest mean positive estimate over its pool (for every image), and each
    image's ``per_image`` largest estimates toward each class."""
    count, edits = estimates.shape[0], estimates.shape[1] * 2
    mask = torch.zeros(count, edits, dtype=torch.bool)
    for c in range(estimates.shape[-1]):
        gain = estimates[..., c].flatten(1)
        if pools[c].any():
            mask[:, gain[pools[c]].clamp(min=0).mean(0).topk(min(candidates, edits)).indices] = True
        mask.scatter_(1, gain.topk(min(per_image, edits), dim=1).indices, True)
    return mask.view(estimates.shape[:-1])


def class_pools(base_logits: Tensor, input_logits: Tensor, drop_inconsistent: bool) -> Tensor:
    """(C, N) bool: the images each class's attributes are searched on (another predicted class; consistent ones only
    when ``drop_inconsistent``), as :func:`~stylexlib.explain.attfind.selection.class_attributes` pools them."""
    predicted = base_logits.argmax(1)
    usable = predicted == input_logits.argmax(1) if drop_inconsistent else torch.ones_like(predicted, dtype=torch.bool)
    return torch.stack([usable & (predicted != c) for c in range(base_logits.shape[1])])


def screened_edits(models: StylexModels, styles: Tensor, targets: Tensor, coords: Tensor, input_logits: Tensor,
                   cfg: AttFindConfig, dist: DistInfo = SINGLE) -> Tensor:
    """The screen of every image (N, K, 2) bool; under ``torch.distributed`` the estimates are sharded and gathered,
    so that every rank holds the same screen."""
    for name in ("screen_candidates", "screen_per_image"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"attfind.{name} must be 0 or more (edits per class), got {getattr(cfg, name)}")
    mine = torch.arange(dist.rank, len(styles), dist.world_size)
    estimates = estimated_effects(models.generator, models.classifier, styles[mine], targets[:, mine], coords,
                                  cfg.output)
    estimates = interleave_shards(gather_objects(estimates, dist), len(styles), dist.world_size)
    base = predict_styles(models.generator, models.classifier, styles, cfg.batch_size or 64)
    pools = class_pools(base, input_logits.float().cpu(), cfg.drop_inconsistent)
    return screen_mask(estimates, pools, cfg.screen_candidates, cfg.screen_per_image)


def complete(effects: Effects, models: StylexModels, styles: Tensor, targets: Tensor, flats: list[int],
             cfg: AttFindConfig) -> Effects:
    """``effects`` with both edits of each coordinate in ``flats`` evaluated exactly on every image the screen skipped
    them on (the same ``effects`` object when there is nothing to evaluate)."""
    if effects.evaluated is None or not flats:
        return effects
    columns = (effects.coords[:, None] == torch.as_tensor(flats)[None]).any(1)  # (K,)
    todo = ~effects.evaluated & columns[None, :, None]
    images = todo.flatten(1).any(1)
    if not images.any():
        return effects
    logits = edited_logits_fast(models.generator, models.classifier, styles[images], targets[:, images],
                                effects.coords, cfg.batch_size or 64, todo[images],
                                autocast=search_precision(models.device, cfg.precision))
    edited = effects.edited_logits.clone()
    edited[images] = torch.where(todo[images][..., None], logits, edited[images])
    return Effects(edited, effects.base_logits, effects.input_logits, effects.coords, effects.image_indices,
                   effects.evaluated | todo)
