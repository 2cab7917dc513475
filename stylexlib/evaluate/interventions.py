"""Measures of classifiers and explanations against the synthetic ground truth."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from stylexlib.data import to_float


@torch.no_grad()
def intervention_flip_rate(
    classifier: torch.nn.Module,
    factors: pd.DataFrame,
    factor: str,
    resolution: int,
    value: float | np.ndarray | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> float:
    """Fraction of images whose predicted class changes when only ``factor`` is changed.

    Binary factors are flipped (0 <-> 1) unless ``value`` is given; continuous factors need ``value``.
    """
    from stylexlib.data import synthetic

    current = factors[factor].to_numpy()
    if value is None:
        if not set(np.unique(current)) <= {0, 1}:
            raise ValueError(f"factor '{factor}' is not binary: pass the value to set it to")
        value = 1 - current
    before = synthetic.render(factors, resolution)
    after = synthetic.render(synthetic.intervene(factors, factor, value), resolution)
    changed = 0
    for a, b in zip(before.split(batch_size), after.split(batch_size)):
        pa = classifier(to_float(a).to(device)).argmax(1)
        pb = classifier(to_float(b).to(device)).argmax(1)
        changed += (pa != pb).sum().item()
    return changed / max(len(factors), 1)
