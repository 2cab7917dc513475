"""Where the class enters StyleSpace, and how many of AttFind's top attributes sit there.

The generator takes the classifier's output ``c`` through A's class columns (``Generator.class_columns``); the
class-sparsity lasso (``stylex.loss.class_sparsity``) keeps few of them. Whatever the generator learns to draw for a
class then travels through those few coordinates, and a search that ranks coordinates by how much they move the
classifier finds them first: when the pathway is narrow, each top attribute bundles everything the classifier reads
(docs/experiments.md, "The class pathway").
"""
from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor

from stylexlib.gan.losses import class_shares
from stylexlib.gan.models import StylexModels

PATHWAY_MASS = 0.9  # the pathway's coordinates: the fewest that hold this share of it


def class_pathway_shares(class_columns: Tensor) -> Tensor:
    """Each StyleSpace coordinate's share of the class pathway (S,) from A's class columns (S, classes), detached:
    :func:`~stylexlib.gan.losses.class_shares`, the shares ``stylex.loss.class_share`` caps."""
    return class_shares(class_columns.detach().float())


def pathway_coordinates(shares: Tensor, mass: float = PATHWAY_MASS) -> Tensor:
    """Flat indices of the fewest coordinates that hold ``mass`` of the pathway, largest share first."""
    if float(shares.sum()) <= 0:
        return torch.zeros(0, dtype=torch.long)
    order = shares.argsort(descending=True)
    count = int((shares[order].cumsum(0) < mass * float(shares.sum())).sum()) + 1
    return order[:count]


def class_pathway_metrics(models: StylexModels, attributes: pd.DataFrame, top: int = 5,
                          mass: float = PATHWAY_MASS) -> dict[str, float]:
    """``class_pathway_coordinates`` (how many coordinates hold ``mass`` of the pathway), ``class_pathway_top_share``
    (the largest share) and ``attributes_on_class_pathway_top5`` (the share of each class's top ``top`` attributes
    whose coordinate is one of them). Empty for a generator that ignores the class (``condition_on: none``)."""
    if models.cfg.model.condition_on == "none":
        return {}
    shares = class_pathway_shares(models.generator.class_columns())
    on_pathway = set(pathway_coordinates(shares, mass).tolist())
    chosen = attributes[attributes["rank"] <= top]
    return {"class_pathway_coordinates": len(on_pathway), "class_pathway_top_share": float(shares.max()),
            f"attributes_on_class_pathway_top{top}": float(chosen["flat"].isin(on_pathway).mean())}


def pathway_note(metrics: dict[str, float], top: int = 5) -> str:
    """One sentence for the stage's output: how narrow the pathway is and what that means for the attributes."""
    if not metrics:
        return "The generator ignores the class input: no class pathway."
    count, on = metrics["class_pathway_coordinates"], metrics[f"attributes_on_class_pathway_top{top}"]
    note = (f"The class reaches StyleSpace through {count} coordinate{'s' if count != 1 else ''} "
            f"({PATHWAY_MASS:.0%} of its pathway); {on:.0%} of the classes' top {top} attributes are among them.")
    if count <= 2 * top:
        note += (" A pathway this narrow makes each coordinate on it carry everything the generator draws for the class:"
                 " expect bundles. A lower stylex.loss.class_sparsity spreads it, at weaker attributes"
                 " (docs/experiments.md, \"The class pathway\").")
    return note
