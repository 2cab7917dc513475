"""One protocol for every GAN-edit explainer: StylEx, Wu et al.'s StyleSpace, Voynov & Babenko, GANSpace, SeFa and
the random controls, on the same classifier and images.

Edits are selected on one split and scored on another:

- **selection**: AttFind's greedy coverage rule (Lang et al., Alg. 1) on the change of each class's log-odds, over
  the method's pool in either sign, ``step`` of each edit's own std; Wu et al.'s positives ranking for that method;
- **sufficiency**: the flip rate with the top-k edits of the class each image is pushed toward applied together;
- **per image**, the top-1 edit of the class it is pushed toward: the drop of its class's log-odds, that drop per
  unit of visible change (LPIPS between the renders enlarged as people see them, :func:`visible_change`: no method
  wins by breaking images), COUT (how fast pasting the edit's pixels moves the classifier from the image's class to
  the one it is pushed toward), realism (``kid_lpips_squeeze``: KID on LPIPS-SqueezeNet features of the edited
  renders against real images, beside the unedited renders'), its map |G(s + edit) - G(s)| for localisation and
  faithfulness, and on synthetic data the factors it changes (read by the factor probe) against the classifier's
  true use.

The pools differ in size (every StyleSpace coordinate for StylEx and Wu et al., K directions for the others); the
controls hold pools of K random directions or K random coordinates under the same rule, so what selection alone buys
from a pool of K is measured, and selection and scoring never see the same images.
"""
from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor

from stylexlib.core.config import AttFindConfig
from stylexlib.evaluate.quality import feature_kid, kid_name, lpips_features
from stylexlib.evaluate.scores import bootstrap_interval, cout
from stylexlib.explain.attfind.effects import DIRECTIONS, Effects, class_score, predict_styles
from stylexlib.explain.attfind.selection import class_attributes, default_thresholds
from stylexlib.explain.directions import DirectionExplainer, pool_logits, wu_positive_ranking
from stylexlib.gan.losses import visible_change

RULES = ("attfind", "wu_positives")


def select_edits(explainer: DirectionExplainer, styles: Tensor, k: int = 10, rule: str = "attfind") -> pd.DataFrame:
    """Per class, the top-``k`` edits (pool index, direction) that move images of the other classes toward it."""
    if rule not in RULES:
        raise ValueError(f"the selection rule must be one of {RULES}, got '{rule}'")
    generator, classifier, pool = explainer.generator, explainer.models.classifier, explainer.pool
    base = predict_styles(generator, classifier, styles, explainer.batch_size)
    tables = []
    if rule == "attfind":
        logits = pool_logits(generator, classifier, styles, pool, explainer.step, explainer.batch_size)
        effects = Effects(logits, base, base, torch.arange(len(pool)), torch.arange(len(styles)))
        thresholds = default_thresholds(AttFindConfig(output="logits"))
    for c, name in enumerate(explainer.models.class_names):
        if not (base.argmax(1) != c).any():
            continue
        if rule == "attfind":
            table = class_attributes(effects, c, k, "logits", "greedy", *thresholds).rename(columns={"flat": "index"})
        else:
            if pool.coords is None:
                raise ValueError("Wu et al.'s positives ranking ranks StyleSpace coordinates: use a coordinate pool")
            ranking = wu_positive_ranking(styles, explainer.stats, base.argmax(1) == c, pool.coords).head(k)
            table = pd.DataFrame({"rank": range(1, len(ranking) + 1), "index": ranking["position"].to_numpy(),
                                  "direction": ranking["direction"].to_numpy(),
                                  "relevance": ranking["relevance"].to_numpy()})
        tables.append(table.assign(class_index=c, class_name=name, label=[pool.labels[i] for i in table["index"]]))
    return pd.concat(tables, ignore_index=True)


def runner_up(logits: Tensor) -> Tensor:
    """The class each image is pushed toward: the runner-up of its logits (N,)."""
    return logits.scatter(1, logits.argmax(1, keepdim=True), float("-inf")).argmax(1)


def top_edits(selected: pd.DataFrame, toward: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(picks (N, k), signs (N, k), usable (N,)): each image's top-``k`` edits of the class it is pushed toward."""
    picks = torch.zeros(len(toward), k, dtype=torch.long)
    signs = torch.zeros_like(picks)
    usable = torch.zeros(len(toward), dtype=torch.bool)
    for c, group in selected.groupby("class_index"):
        group = group.sort_values("rank")
        if len(group) < k:
            continue
        mine = toward == int(c)
        usable |= mine
        picks[mine] = torch.tensor(group["index"].to_numpy()[:k])
        signs[mine] = torch.tensor([DIRECTIONS.index(d) for d in group["direction"].to_numpy()[:k]])
    return picks, signs, usable


def sufficiency_curve(explainer: DirectionExplainer, styles: Tensor, selected: pd.DataFrame,
                      max_k: int = 10, per_image: dict | None = None) -> pd.DataFrame:
    """Flip rate (k, flip_rate, images) when each image's top-k edits are applied together, k = 1..max_k. A dict
    passed as ``per_image`` receives ``flip_rate_top<k>``: (N,) 1.0 where the top-k edits flipped the image's class,
    0.0 where they did not, NaN where the image had no k edits (the images the flip rate leaves out)."""
    base = predict_styles(explainer.generator, explainer.models.classifier, styles, explainer.batch_size)
    predicted, toward, rows = base.argmax(1), runner_up(base), []
    for k in range(1, max_k + 1):
        picks, signs, usable = top_edits(selected, toward, k)
        if not usable.any():
            break
        edited = explainer.pool.apply(styles[usable], picks[usable], signs[usable], explainer.step)
        after = predict_styles(explainer.generator, explainer.models.classifier, edited, explainer.batch_size)
        flipped = (after.argmax(1) != predicted[usable]).float()
        rows.append(dict(k=k, flip_rate=float(flipped.mean()), images=int(usable.sum())))
        if per_image is not None:
            per_image[f"flip_rate_top{k}"] = torch.full((len(styles),), float("nan")).masked_scatter(
                usable, flipped.cpu()).numpy()
    return pd.DataFrame(rows)


def top1_edits(explainer: DirectionExplainer, styles: Tensor, selected: pd.DataFrame) -> dict[str, Tensor]:
    """Each image's top-1 edit (of the class it is pushed toward) applied: the renders before and after, the target
    (its predicted class), the class it is pushed toward (``toward``), the drop of the target's log-odds and which
    images had an edit (``usable``)."""
    G, C = explainer.generator, explainer.models.classifier
    base = predict_styles(G, C, styles, explainer.batch_size)
    target, toward = base.argmax(1), runner_up(base)
    picks, signs, usable = top_edits(selected, toward, 1)
    edited_styles = explainer.pool.apply(styles, picks, signs, explainer.step)
    after = predict_styles(G, C, edited_styles, explainer.batch_size)
    drop = class_score(base, target, "logits") - class_score(after, target, "logits")
    return {"styles": styles, "original": explainer.render(styles), "edited": explainer.render(edited_styles),
            "target": target, "toward": toward, "drop": drop, "usable": usable, "picks": picks[:, 0],
            "signs": signs[:, 0]}


def edit_measures(top1: dict[str, Tensor], lpips_model: torch.nn.Module, real_features: Tensor,
                  classifier: torch.nn.Module | None = None, feature_model: torch.nn.Module | None = None,
                  per_image: dict | None = None) -> dict[str, float]:
    """The top-1 edits' mean log-odds drop, mean visible change (``lpips``: :func:`visible_change`), drop per unit of
    it, realism (``kid_lpips_<net>``: KID of the edited renders' features from ``feature_model``, default
    ``lpips_model``, to ``real_features`` of the same model, and ``kid_lpips_<net>_unedited`` for the unedited
    renders; lower is more realistic) and, given the classifier, COUT (:func:`cout`, from the image's class to the
    one it is pushed toward; mean and 95% bootstrap interval). A dict passed as ``per_image`` receives the per-image
    values of the usable images (``logodds_change``, ``lpips``, ``cout``; KID has none: it compares two sets)."""
    use = top1["usable"]
    original, edited = top1["original"][use], top1["edited"][use]
    feature_model = feature_model if feature_model is not None else lpips_model
    device = next(lpips_model.parameters()).device
    with torch.no_grad():
        distance = torch.cat([visible_change(lpips_model, a.to(device), b.to(device)).cpu()
                              for a, b in zip(original.split(64), edited.split(64))])
    drop, kid = float(top1["drop"][use].mean()), kid_name(feature_model)
    out = {"logodds_change": drop, "lpips": float(distance.mean()),
           "logodds_per_lpips": drop / max(float(distance.mean()), 1e-6),
           kid: feature_kid(lpips_features(feature_model, edited), real_features),
           f"{kid}_unedited": feature_kid(lpips_features(feature_model, original), real_features)}
    if classifier is not None:
        scores = cout(classifier, original, edited, top1["target"][use], top1["toward"][use])
        out["cout"], out["cout_low"], out["cout_high"] = bootstrap_interval(scores.numpy())
    if per_image is not None:
        per_image.update(logodds_change=top1["drop"][use].cpu().numpy(), lpips=distance.numpy())
        if classifier is not None:
            per_image["cout"] = scores.numpy()
    return out


def probe_factor_changes(probe: torch.nn.Module, original: Tensor, edited: Tensor, factors: list[str]) -> pd.DataFrame:
    """(N images x factors): |change| of each factor's reading (scaled to its range) between the renders."""
    change = (probe.read(edited) - probe.read(original)).abs()
    return pd.DataFrame(change.numpy(), columns=probe.names)[factors]


def edit_factors(probe: torch.nn.Module, explainer: DirectionExplainer, styles: Tensor, selected: pd.DataFrame,
                 factors: list[str], top: int = 5) -> pd.DataFrame:
    """The factor each of a class's top edits changes most (mean |change| of the probe's reading over ``styles``)."""
    original, rows = explainer.render(styles), []
    for row in selected[selected["rank"] <= top].itertuples():
        picks = torch.full((len(styles), 1), int(row.index))
        signs = torch.full_like(picks, DIRECTIONS.index(row.direction))
        edited = explainer.render(explainer.pool.apply(styles, picks, signs, explainer.step))
        change = probe_factor_changes(probe, original, edited, factors).mean()
        rows.append(dict(class_name=row.class_name, rank=row.rank, label=row.label, factor=change.idxmax(),
                         change=float(change.max()), runner_up=float(change.nlargest(2).iloc[-1])))
    return pd.DataFrame(rows)


def separation(factor_table: pd.DataFrame, groups: dict[str, list[str]]) -> dict[str, object]:
    """Do the rule's factor and the shortcut land in separate top edits (each the main factor of a different one)?"""
    out: dict[str, object] = {"top_factors": " ".join(f"{r.class_name}#{r.rank}:{r.factor}"
                                                      for r in factor_table.itertuples())}
    hits = {group: set(factor_table.index[factor_table["factor"].isin(names)]) for group, names in groups.items()}
    if {"label_factor", "spurious_factor"} <= set(hits):
        rule, shortcut = hits["label_factor"], hits["spurious_factor"]
        out["rule_and_shortcut_separate"] = bool(rule and shortcut)  # distinct edits: one factor each is their main
    return out


__all__ = ["RULES", "edit_factors", "edit_measures", "probe_factor_changes", "runner_up", "select_edits",
           "separation", "sufficiency_curve", "top1_edits", "top_edits"]
