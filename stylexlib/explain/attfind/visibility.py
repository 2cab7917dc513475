"""Can a person see an edit? The rule that flags an attribute as an invisible change, calibrated on a change people see.

A fixed threshold misfires both ways: a mouth edit at LPIPS 0.01 that moves p(class) by 0.3 is plain to see, while a
coordinate that moves p(class) by 0.14 at LPIPS 0.001 changes nothing anyone sees. What gives an edit away is how much
it moves the classifier *per unit of visible change* (:func:`~stylexlib.gan.losses.visible_change`), against a change
known to be real. The yardstick is the generator's own class change (:func:`class_swap_yardstick`): the same latent
rendered with the classifier's predicted and runner-up classes swapped in the class input, what the model learned a
change of class looks like. It needs no labels, so it is the same on every dataset; on the synthetic data the truth's
own changes (:func:`stylexlib.evaluate.ground_truth.truth_yardstick`) check it (docs/experiments.md, "A visibility
rule calibrated on a change people see").

An attribute is invisible when its examples move p(class) by at least ``min_prob_change`` on average and by more than
``factor`` times the yardstick's |Δp| per unit of LPIPS. Stage 06 counts and flags them, ``stylex explain`` marks
them, and ``attfind.visible_only`` keeps AttFind from selecting them (:func:`visibility_check`). A GAN trained without
the classifier has no class change; there the fixed thresholds of :data:`FIXED_PROB_CHANGE` and :data:`FIXED_LPIPS`
stay.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd
import torch
from torch import Tensor, nn

from stylexlib.explain.attfind.effects import Effects, apply_attributes
from stylexlib.gan.generator import Generator
from stylexlib.gan.losses import visible_change
from stylexlib.gan.models import StylexModels

FIXED_PROB_CHANGE = 0.3  # without a yardstick: an edit that moves p(class) this much ...
FIXED_LPIPS = 0.02  # ... while changing the image less than this (LPIPS, visible_change) is invisible
YARDSTICK_IMAGES = 64


@dataclass(frozen=True)
class VisibilityRule:
    """Flags an attribute whose edits move p(class) far more per unit of visible change than a change people see."""

    prob_change_per_lpips: float | None = None  # the yardstick's mean |Δp| / mean LPIPS; None: the fixed thresholds
    source: str = "fixed thresholds"  # what the yardstick is, for the gallery's legend
    factor: float = 3.0  # invisible above this multiple of the yardstick's ratio ...
    min_prob_change: float = 0.1  # ... for edits that move p(class) at least this much on average

    def invisible(self, mean_prob_change: float, mean_lpips: float) -> bool:
        """True for an attribute whose examples move p(class) by ``mean_prob_change`` at ``mean_lpips``."""
        if self.prob_change_per_lpips is None:
            return mean_prob_change >= FIXED_PROB_CHANGE and mean_lpips < FIXED_LPIPS
        return (mean_prob_change >= self.min_prob_change
                and mean_prob_change > self.factor * self.prob_change_per_lpips * mean_lpips)

    def describe(self) -> str:
        """One sentence for a legend or caption."""
        if self.prob_change_per_lpips is None:
            return (f"examples move p(class) by at least {FIXED_PROB_CHANGE} on average at a mean LPIPS under "
                    f"{FIXED_LPIPS}")
        return (f"examples move p(class) by at least {self.min_prob_change} on average, and by more than "
                f"{self.factor:g}x {self.prob_change_per_lpips:.1f} per unit of LPIPS, the ratio of {self.source}")


def visibility_rule(class_swap: dict[str, float] | None) -> VisibilityRule:
    """The rule calibrated on the generator's class change (:func:`class_swap_yardstick`), or the fixed thresholds
    for a generator without a class input (or one whose class input changes nothing)."""
    if class_swap and class_swap["mean_prob_change"] > 0 and class_swap["mean_lpips"] > 0:
        return VisibilityRule(class_swap["prob_change_per_lpips"], "the generator's class change")
    return VisibilityRule()


def saved_rule(metrics: dict) -> VisibilityRule | None:
    """The rule stage 06 calibrated, from a run's metrics (``visibility_yardstick``); None before stage 06 ran or where
    it fell back to the fixed thresholds."""
    if "visibility_yardstick" not in metrics:
        return None
    return VisibilityRule(float(metrics["visibility_yardstick"]), "the yardstick stage 06 measured")


def swapped_top_two(logits: Tensor) -> Tensor:
    """Logits with each row's largest and second-largest entries exchanged: the runner-up class becomes the top."""
    top2 = logits.topk(2, dim=1).indices
    swapped = logits.clone()
    rows = torch.arange(len(logits), device=logits.device)
    swapped[rows, top2[:, 0]] = logits[rows, top2[:, 1]]
    swapped[rows, top2[:, 1]] = logits[rows, top2[:, 0]]
    return swapped


@torch.no_grad()
def class_swap_yardstick(models: StylexModels, images: Tensor, lpips_model: nn.Module,
                         count: int = YARDSTICK_IMAGES) -> dict[str, float] | None:
    """The generator's own class change on the first ``count`` images: G(E(x), c) against G(E(x), c') with the
    predicted and runner-up classes swapped in C(x); the mean |change of p(predicted class)| over the two renders, the
    mean :func:`visible_change` and their ratio, on the renders clamped to [-1, 1] as the gallery shows them. None for
    a generator without a class input."""
    if models.cfg.model.condition_on == "none":
        return None
    x = models.prepare(images[:count])
    logits = models.classifier(x).float()
    w = models.encoder(x)
    before, after = (models.generator(w, models.condition(c), noise_mode="const").clamp(-1, 1)
                     for c in (logits, swapped_top_two(logits)))
    p_before, p_after = models.classifier(before).float().softmax(1), models.classifier(after).float().softmax(1)
    predicted = p_before.argmax(1, keepdim=True)
    moved = float((p_after.gather(1, predicted) - p_before.gather(1, predicted)).abs().mean())
    seen = float(visible_change(lpips_model, before, after).mean())
    return {"mean_prob_change": moved, "mean_lpips": seen, "prob_change_per_lpips": moved / max(seen, 1e-6)}


def visibility_check(generator: Generator, classifier: nn.Module, lpips_model: nn.Module, styles: Tensor,
                     targets: Tensor, effects: Effects, target: int, rule: VisibilityRule,
                     examples: int = 6) -> Callable[[int, int], bool]:
    """A vetting function for :func:`~stylexlib.explain.attfind.selection.class_attributes` (``attfind.visible_only``):
    rejects an edit that ``rule`` calls invisible on the images the gallery shows it on, the ``examples`` images of
    other classes whose p(``target``) it raises most (``styles`` (N, S) and ``targets`` (2, N, S) in the order of
    ``effects``), measured as the gallery measures them: p(``target``) and :func:`visible_change` on the renders."""
    gain = effects.toward(target, "probs")
    gain[effects.predicted == target] = float("-inf")
    device = next(generator.parameters()).device

    @torch.no_grad()
    def accept(flat: int, direction: int) -> bool:
        score = gain[:, int((effects.coords == flat).nonzero()[0, 0]), direction]
        chosen = score.topk(min(examples, int(torch.isfinite(score).sum()))).indices
        if not len(chosen):
            return True
        column = torch.full((len(chosen), 1), flat)
        edited = apply_attributes(styles[chosen], targets[:, chosen], column, torch.full_like(column, direction))
        before, after = (generator.synthesize(s.to(device)).clamp(-1, 1) for s in (styles[chosen], edited))  # as shown
        moved = (classifier(after).float().softmax(1) - classifier(before).float().softmax(1))[:, target].abs()
        return not rule.invisible(float(moved.mean()), float(visible_change(lpips_model, before, after).mean()))

    return accept


@torch.no_grad()
def measure_visibility(examples: list, lpips_model: nn.Module) -> pd.DataFrame:
    """Set each attribute's ``lpips`` (original vs changed, per example, :func:`visible_change`) and return one row
    per shown example: attribute (key, class, rank, label), image, p(class) before and after, its change, the LPIPS."""
    device, rows = next(lpips_model.parameters()).device, []
    for ex in examples:
        ex.lpips = (visible_change(lpips_model, ex.originals.to(device), ex.changed.to(device)).cpu()
                    if ex.num_examples else torch.zeros(0))
        before, after = ex.class_probs()
        for i in range(ex.num_examples):
            rows.append({"attribute": ex.key, "class": ex.class_name, "rank": ex.rank, "label": ex.label,
                         "image": ex.image_indices[i], "prob_original": float(before[i]),
                         "prob_changed": float(after[i]), "prob_change": float(after[i] - before[i]),
                         "lpips": float(ex.lpips[i])})
    return pd.DataFrame(rows, columns=["attribute", "class", "rank", "label", "image", "prob_original",
                                       "prob_changed", "prob_change", "lpips"])


def invisible_attributes(examples: pd.DataFrame, rule: VisibilityRule = VisibilityRule()) -> pd.DataFrame:
    """Per attribute, over its shown examples (columns ``attribute, prob_change, lpips``): the mean |change of
    p(class)|, the mean LPIPS between original and changed, their ratio (classifier change per unit of image change),
    and whether the attribute is invisible under ``rule``."""
    table = examples.assign(abs_change=examples["prob_change"].abs()).groupby("attribute", sort=False).agg(
        mean_prob_change=("abs_change", "mean"), mean_lpips=("lpips", "mean"), examples=("lpips", "size"))
    table["prob_change_per_lpips"] = table["mean_prob_change"] / table["mean_lpips"].clip(lower=1e-6)
    table["invisible"] = [rule.invisible(c, lp) for c, lp in zip(table["mean_prob_change"], table["mean_lpips"])]
    return table.reset_index()


def visibility_metrics(table: pd.DataFrame, rule: VisibilityRule = VisibilityRule()) -> dict[str, float | int]:
    """``attributes_invisible`` (count under ``rule``), the median classifier change per unit of LPIPS, the mean
    LPIPS and the rule's yardstick (``visibility_yardstick``, |Δp| per LPIPS; absent for the fixed thresholds)."""
    out: dict[str, float | int] = {}
    if rule.prob_change_per_lpips is not None:
        out["visibility_yardstick"] = rule.prob_change_per_lpips
    if table.empty:
        return {"attributes_invisible": 0, **out}
    return {"attributes_invisible": int(table["invisible"].sum()),
            "attributes_prob_change_per_lpips": float(table["prob_change_per_lpips"].median()),
            "attributes_mean_lpips": float(table["mean_lpips"].mean()), **out}


__all__ = ["FIXED_LPIPS", "FIXED_PROB_CHANGE", "VisibilityRule", "class_swap_yardstick", "invisible_attributes",
           "measure_visibility", "saved_rule", "swapped_top_two", "visibility_check", "visibility_metrics",
           "visibility_rule"]
