"""An attribute's shown examples: the images where it acts most, as original and changed renders with the
classifier's probabilities (what the gallery, the studies and the browser show)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from stylexlib.core.io import torch_load, torch_save
from stylexlib.explain.attfind.editor import AttributeEditor
from stylexlib.explain.attfind.effects import DIRECTIONS
from stylexlib.explain.attfind.names import named_label
from stylexlib.explain.attfind.search import AttFindResult, load_attfind


@dataclass
class AttributeExamples:
    """One attribute (a StyleSpace coordinate and direction) and the images where it acts most."""

    class_index: int
    class_name: str
    rank: int
    flat: int
    label: str  # human-readable, e.g. "b16.conv1[12] up", or "wide smile: b16.conv1[12] up" once named
    mean_effect: float
    fraction_affected: float
    image_indices: list[int]  # dataset indices of the examples
    originals: Tensor  # (K, 3, H, W) float in [-1, 1]
    changed: Tensor  # (K, 3, H, W) float in [-1, 1]
    probs_original: Tensor  # (K, C) classifier probabilities
    probs_changed: Tensor  # (K, C)
    class_names: list[str]
    lpips: Tensor | None = None  # (K,) LPIPS between each original and its changed image: is the change visible?

    def __post_init__(self) -> None:
        k = len(self.image_indices)
        shapes = {name: tuple(getattr(self, name).shape) for name in ("originals", "changed", "probs_original", "probs_changed")}
        if any(s[0] != k for s in shapes.values()) or shapes["originals"] != shapes["changed"]:
            raise ValueError(f"attribute {self.label}: {k} image indices but tensor shapes {shapes}")
        if shapes["probs_original"][1:] != (len(self.class_names),) or shapes["probs_changed"] != shapes["probs_original"]:
            raise ValueError(f"attribute {self.label}: probabilities must be (K, {len(self.class_names)}), got {shapes}")
        self.image_indices = [int(i) for i in self.image_indices]

    @property
    def num_examples(self) -> int:
        """Number of example images K."""
        return len(self.image_indices)

    @property
    def key(self) -> str:
        """A file-name-safe identifier: class index and rank."""
        return f"c{self.class_index}_r{self.rank:02d}"

    def class_probs(self) -> tuple[Tensor, Tensor]:
        """The classifier's probability of this attribute's class on the originals and on the changed images."""
        return self.probs_original[:, self.class_index], self.probs_changed[:, self.class_index]

    def to_dict(self) -> dict:
        """Plain tensors, numbers and strings (for ``torch_save`` / ``weights_only`` loading)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def attribute_label(layer_name: str, channel: int, direction: str) -> str:
    """The human-readable name of an attribute, e.g. ``b16.conv1[12] up``."""
    return f"{layer_name}[{int(channel)}] {direction}"


def save_examples(examples: Sequence[AttributeExamples], path: str | Path) -> Path:
    """Save attribute examples atomically (loadable with ``weights_only``)."""
    return torch_save(path, [ex.to_dict() for ex in examples])


def load_examples(path: str | Path) -> list[AttributeExamples]:
    """Load attribute examples written by :func:`save_examples`."""
    return [AttributeExamples(**d) for d in torch_load(path)]


def by_class(examples: Sequence[AttributeExamples], top: int | None = None) -> dict[int, list[AttributeExamples]]:
    """Examples grouped by class index (sorted) and ordered by rank, at most ``top`` per class."""
    groups: dict[int, list[AttributeExamples]] = {}
    for ex in sorted(examples, key=lambda e: (e.class_index, e.rank)):
        groups.setdefault(ex.class_index, []).append(ex)
    return {c: group[:top] if top else group for c, group in sorted(groups.items())}


def collect_examples(run, editor: AttributeEditor, top: int = 4, per_attribute: int = 6,
                     result: AttFindResult | None = None):
    """For each class's top attributes, original | changed (AttributeExamples) on the images of other classes where
    the attribute raises the class's probability most (shown probabilities, whatever ``attfind.output`` selected by)."""
    result = result if result is not None else load_attfind(run)
    effects = result.effects
    examples = []
    for row in result.attributes[result.attributes["rank"] <= top].itertuples():
        position = int((effects.coords == row.flat).nonzero()[0, 0])
        score = effects.toward(row.class_index, "probs")[:, position, DIRECTIONS.index(row.direction)]
        score[effects.predicted == row.class_index] = float("-inf")
        chosen = score.topk(min(per_attribute, int(torch.isfinite(score).sum()))).indices
        styles = result.styles[chosen]
        originals = editor.render(styles)
        changed = editor.render(editor.edit(styles, row.flat, row.direction))
        examples.append(AttributeExamples(
            class_index=int(row.class_index), class_name=row.class_name, rank=int(row.rank), flat=int(row.flat),
            label=named_label(attribute_label(row.layer_name, row.channel, row.direction), getattr(row, "name", "")),
            mean_effect=float(row.mean_effect),
            fraction_affected=float(row.fraction_affected), image_indices=effects.image_indices[chosen].tolist(),
            originals=originals, changed=changed, probs_original=editor.probabilities(originals),
            probs_changed=editor.probabilities(changed), class_names=list(editor.class_names),
        ))
    return examples
