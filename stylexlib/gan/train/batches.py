"""Real training batches: seeded, saveable positions, the images on the device and the frozen classifier's C(x)
(cached per image: C is frozen and in eval mode)."""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from stylexlib.classifier.fold import folded_copy
from stylexlib.data import ImageDataset, to_float
from stylexlib.data.labels import balancing_weights
from stylexlib.gan.models import class_input


class BatchSampler:
    """Endless seeded batches of dataset positions: a fresh permutation each epoch; saveable state.

    ``next(prioritised=k)`` draws ``k`` of the batch in proportion to each image's last recorded score (``record``:
    its reconstruction's KL(C(x) || C(x')); an image not yet scored counts as the mean of those scored),
    ``next(balanced=b)`` draws ``b`` in proportion to fixed per-image ``weights`` (``positions``' order; e.g.
    :func:`stylexlib.data.labels.balancing_weights`), and the rest come from the permutation."""

    def __init__(self, positions: Tensor, batch_size: int, seed: int, weights: Tensor | None = None) -> None:
        if len(positions) == 0:
            raise ValueError("no training images: the train split is empty")
        self.positions = positions
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)
        self.cursor = 0
        self.scores = torch.full((len(positions),), float("nan"))  # per training image, in ``positions``' order
        self.slot = {int(position): i for i, position in enumerate(positions)}
        if weights is not None and (weights.shape != (len(positions),) or not bool((weights >= 0).all())
                                    or not weights.sum() > 0):
            raise ValueError(f"sampler weights must be {len(positions)} non-negative numbers, not all 0")
        self.weights = weights

    def record(self, positions: Tensor, scores: Tensor) -> None:
        """Remember each image's latest score (dataset positions, one score each)."""
        slots = torch.tensor([self.slot[int(p)] for p in positions], dtype=torch.long)
        self.scores[slots] = scores.detach().float().cpu().clamp_min(0)  # a KL, rounding aside

    def next(self, prioritised: int = 0, balanced: int = 0) -> Tensor:
        """The positions of the next batch: ``prioritised`` of them drawn by score, ``balanced`` by the fixed weights,
        the rest from the permutation."""
        if balanced > 0 and self.weights is None:
            raise ValueError("balanced draws need the sampler's weights")
        parts, needed = [], self.batch_size
        for count, weights in ((prioritised, self._score_weights), (balanced, lambda: self.weights)):
            count = min(count, needed, len(self.positions))
            if count > 0:
                parts.append(torch.multinomial(weights(), count, replacement=False, generator=self.generator))
                needed -= count
        while needed > 0:
            if self.cursor >= len(self.order):
                self.order, self.cursor = torch.randperm(len(self.positions), generator=self.generator), 0
            part = self.order[self.cursor : self.cursor + needed]
            self.cursor += len(part)
            needed -= len(part)
            parts.append(part)
        return self.positions[torch.cat(parts)]

    def _score_weights(self) -> Tensor:
        known = ~self.scores.isnan()
        fill = self.scores[known].mean() if known.any() else torch.tensor(1.0)
        return torch.where(known, self.scores, fill) + 1e-6  # every image keeps a chance

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order.clone(), "cursor": self.cursor,
                "scores": self.scores.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.cursor = state["order"].clone(), int(state["cursor"])
        if "scores" in state:  # checkpoints before stylex.schedule.kl_sampling have none
            self.scores = state["scores"].clone()


@dataclass
class RealBatch:
    """One step's real images with the classifier's logits, D's class weights and G's class input."""

    x: Tensor
    logits: Tensor
    probs: Tensor
    condition: Tensor
    positions: Tensor  # the images' dataset positions


class RealBatches:
    """Draws the real batches of the train split and classifies them (``options.cached_real_logits``: each image once);
    with ``balance`` (label columns), the sampler's weights make each column's two values equally likely."""

    def __init__(self, data: ImageDataset, classifier: nn.Module, batch_size: int, seed: int, condition_on: str,
                 device: torch.device, memory_format: torch.memory_format, folded: bool, cached: bool,
                 autocast: Callable[[], contextlib.AbstractContextManager], balance: list[str] | None = None) -> None:
        self.images, self.num_classes, self.device = data.images, data.num_classes, device
        self.condition_on, self.memory_format, self.cached, self.autocast = condition_on, memory_format, cached, autocast
        self.classifier = classifier
        self.step_classifier = folded_copy(classifier) if folded else classifier  # what the step runs
        positions = torch.as_tensor(data.indices("train"))
        weights = balancing_weights(data, balance, positions) if balance else None
        self.sampler = BatchSampler(positions, batch_size, seed, weights)
        self.logits: Tensor | None = None  # C(x) per dataset image, filled as images are drawn
        self.known = torch.zeros(0, dtype=torch.bool)

    def compile_classifier(self) -> None:
        """torch.compile the step's classifier (a copy: the frozen classifier itself stays eager)."""
        if self.step_classifier is self.classifier:
            self.step_classifier = copy.deepcopy(self.classifier)
        self.step_classifier.compile(dynamic=True)

    def next(self, prioritised: int = 0, balanced: int = 0) -> RealBatch:
        """The next batch with C(x), D's class weights (uniform without a classifier) and G's class input;
        ``prioritised`` of its images drawn by their last reconstruction KL (:meth:`BatchSampler.record`), ``balanced``
        by the sampler's fixed weights."""
        positions = self.sampler.next(prioritised, balanced)
        x = to_float(self.images[positions]).to(self.device, non_blocking=True).contiguous(
            memory_format=self.memory_format)
        logits = self._logits(positions, x)
        probs, condition = logits.softmax(dim=1), class_input(logits, self.condition_on)
        if self.condition_on == "none":  # no classifier: D's class heads averaged (unconditional)
            probs = torch.full_like(probs, 1 / probs.shape[1])
        return RealBatch(x, logits, probs, condition, positions)

    @torch.no_grad()
    def _logits(self, positions: Tensor, x: Tensor) -> Tensor:
        if not self.cached:
            with self.autocast():
                return self.step_classifier(x).float()
        if self.logits is None:
            self.logits = torch.zeros(len(self.images), self.num_classes, device=self.device)
            self.known = torch.zeros(len(self.images), dtype=torch.bool)
        missing = ~self.known[positions]
        if missing.any():
            new = positions[missing]
            with self.autocast():
                self.logits[new.to(self.device)] = self.step_classifier(x[missing.to(self.device)]).float()
            self.known[new] = True
        return self.logits[positions.to(self.device)]
