"""Stage 09: the GAN-direction baselines of a run folder, trained (resumably) and scored under one protocol.

Two GANs: the run's StylEx model and the classifier-free GAN (:mod:`stylexlib.gan.plain_gan`). Methods: ``stylex``
(AttFind on StylEx's StyleSpace), ``wu_attfind`` (AttFind on the plain GAN's StyleSpace: the Wu et al. baseline as
the StylEx paper ran it), ``wu_positives`` (Wu et al.'s own ranking there), and on both GANs ``voynov_babenko``,
``ganspace``, ``sefa``, ``random_directions`` and ``random_coordinates``. Rows follow ``benchmark/methods.csv``;
``benchmark/paired_gan.csv`` holds StylEx minus each other method per per-image score, paired (:func:`paired_table`).
Each method's evaluation is kept as it finishes (:mod:`.evaluated_store`): an interrupted stage resumes after the last
finished method.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import Tensor

from stylexlib.classifier.predict import classify
from stylexlib.classifier.training import load_run_classifier
from stylexlib.core.figures import image_grid, save_figure
from stylexlib.core.progress import tqdm
from stylexlib.core.provenance import fingerprint, stylex_fingerprint
from stylexlib.core.run import Run, pick_device
from stylexlib.data import to_float
from stylexlib.evaluate.benchmark import COLUMNS, paired_differences, score_maps
from stylexlib.evaluate.evaluated_store import (EVALUATED_DIR, Evaluated, evaluation_key, load_evaluated,
                                               protocol_key, save_evaluated)
from stylexlib.evaluate.directions import (edit_factors, edit_measures, probe_factor_changes, select_edits, separation,
                                           sufficiency_curve, top1_edits)
from stylexlib.evaluate.factor_probe import factor_groups
from stylexlib.evaluate.ground_truth import factor_masks, factor_sensitivity
from stylexlib.evaluate.label_readings import (counterfactual_label_scores, edit_label_readings,
                                               oracle_class_correlation, reading_metrics)
from stylexlib.evaluate.quality import lpips_features
from stylexlib.explain.attfind.effects import StyleStats, searched_coordinates
from stylexlib.explain.attfind.search import run_statistics, subset_indices
from stylexlib.explain.directions import (DirectionExplainer, EditPool, coordinate_pool, ganspace_directions,
                                          latent_pool, random_coordinates, random_directions, sefa_directions)
from stylexlib.explain.voynov_babenko import VoynovBabenkoTrainer, training_curves
from stylexlib.gan.inversion_store import weights_digest
from stylexlib.gan.losses import load_lpips
from stylexlib.gan.models import StylexModels, load_stylex
from stylexlib.gan.plain_gan import load_plain_gan, train_plain_gan
from stylexlib.stylespace.inversion import invert

log = logging.getLogger(__name__)

GAN_METHODS = ("stylex", "wu_attfind", "wu_positives", "voynov_babenko", "ganspace", "sefa", "random_directions",
               "random_coordinates")
KID_NET = "squeeze"  # realism: KID on this LPIPS backbone's features, whatever LPIPS the run trains with
REALISM = f"kid_lpips_{KID_NET}"
EXTRA_COLUMNS = ["gan", "flip_rate_top1", "flip_rate_top5", "flip_rate_top10", "logodds_change", "lpips",
                 "logodds_per_lpips", "cout", REALISM, f"{REALISM}_unedited", "top_factors",
                 "rule_and_shortcut_separate"]
ALIASES = {"realism": REALISM, "realism_unedited": f"{REALISM}_unedited"}  # old column names, kept for old readers
CARRIED = EXTRA_COLUMNS + ["cout_low", "cout_high", *ALIASES]  # stage 09's columns StylEx's stage-08 row takes
PAIRED_FILE = "paired_gan.csv"  # benchmark/paired_gan.csv: StylEx minus each other method, per per-image score
FLIP_KS = (1, 5, 10)
RATIOS = {"logodds_per_lpips": ("logodds_change", "lpips")}  # a ratio of means: paired on the same resampled images
PAIRED_COLUMNS = ["task", "reference", "method", "gan", "score", "images", "reference_images", "method_images",
                  "evaluated", "difference", "low", "high"]


@dataclass
class Gan:
    """One GAN as the methods use it: its models, StyleSpace statistics and encoded latents of real images."""

    name: str
    models: StylexModels
    stats: StyleStats
    latents: Tensor


@dataclass
class Method:
    name: str
    family: str
    rule: str
    explainer: DirectionExplainer
    notes: dict = field(default_factory=dict)


def gan_of(method: Method) -> str:
    """"stylex" or "plain": the GAN a method edits."""
    return "plain" if method.explainer.models.cfg.model.condition_on == "none" else "stylex"


def load_gans(run: Run, data, device=None, progress: bool = True) -> list[Gan]:
    """StylEx's GAN and the classifier-free GAN (trained here for as many steps as StylEx, or resumed)."""
    device = device or pick_device(run.cfg.stylex.runtime.device)
    classifier = load_run_classifier(run, data)
    stylex = load_stylex(run, device, data)
    train_plain_gan(run, data, classifier, stylex.step, device, progress)  # StylEx's number of steps: the budget
    plain = load_plain_gan(run, classifier, stylex.step, device)
    a = run.cfg.attfind
    images = data.images[subset_indices(data, "train", a.stats_images, a.seed)]
    gans = []
    for name, models, stats in (("stylex", stylex, run_statistics(run, data, stylex, a)), ("plain", plain, None)):
        inverted = invert(models, images, refine=False)  # E(x), as stage 05's statistics: per-image refinement of
        # thousands of images would cost hours on a CPU and move the min / max / PCA little
        gans.append(Gan(name, models, stats if stats is not None else StyleStats.of(inverted.styles), inverted.w))
    return gans


def train_directions(run: Run, gan: Gan, data, progress: bool = True) -> tuple[Tensor, dict]:
    """Voynov & Babenko's directions on one GAN (resumable; curves saved), with R's accuracy and chance."""
    cfg = run.cfg.compare
    logits = invert(gan.models, data.images[subset_indices(data, "train", 512, cfg.seed)], refine=False).logits  # C(x)
    conditions = gan.models.condition(logits.to(gan.models.device)).cpu()  # the class inputs G sees on real images
    key = fingerprint("voynov_babenko", stylex_fingerprint(run.cfg), gan.name, cfg.directions, cfg.vb_kind,
                      cfg.vb_batch_size, cfg.seed, gan.models.step)
    trainer = VoynovBabenkoTrainer(gan.models, conditions, cfg.directions, cfg.vb_kind, cfg.vb_batch_size,
                                   seed=cfg.seed, checkpoint=run.path("baselines", f"voynov_babenko_{gan.name}.pt"),
                                   fingerprint=key)
    result = trainer.train(cfg.vb_steps, progress=progress)
    fig = training_curves(result.history, result.chance)
    save_figure(fig, run.path("figures", f"voynov_babenko_{gan.name}.png"))
    plt.close(fig)
    return result.directions, {"vb_accuracy": result.accuracy, "vb_chance": result.chance}


def build_methods(run: Run, gans: list[Gan], data, progress: bool = True, only: set[str] | None = None
                  ) -> list[Method]:
    """Every method's explainer (or those named in ``only``): its GAN, its pool of edits and its selection rule."""
    cfg, include_torgb = run.cfg.compare, run.cfg.attfind.include_torgb
    methods = []
    for gan in gans:
        G, k = gan.models.generator, cfg.directions

        def explainer(pool: EditPool) -> DirectionExplainer:
            return DirectionExplainer(gan.models, gan.stats, pool, cfg.step_std, run.cfg.attfind.batch_size or 64)

        coords = searched_coordinates(G, include_torgb)
        if gan.name == "stylex":
            pool = coordinate_pool("stylex", G, gan.stats, coords)
            methods.append(Method("stylex", "attribute", "attfind", explainer(pool)))
        else:
            pool = coordinate_pool("stylespace", G, gan.stats, coords)
            methods += [Method("wu_attfind", "attribute", "attfind", explainer(pool)),
                        Method("wu_positives", "attribute", "wu_positives", explainer(pool))]
        directions = {"ganspace": lambda: ganspace_directions(G, k, seed=cfg.seed),
                      "sefa": lambda: sefa_directions(G, k, include_torgb),
                      "random_directions": lambda: random_directions(G.latent_dim, k, cfg.seed)}
        notes = {}
        if only is None or "voynov_babenko" in only:
            vb, notes = train_directions(run, gan, data, progress)
            directions = {"voynov_babenko": lambda: vb, **directions}
        for name, make in directions.items():
            d = make()
            methods.append(Method(name, "direction", "attfind", explainer(latent_pool(name, G, d, gan.latents)),
                                  notes if name == "voynov_babenko" else {}))
        picked = random_coordinates(G, k, include_torgb, cfg.seed)
        methods.append(Method("random_coordinates", "attribute", "attfind",
                              explainer(coordinate_pool("random_coordinates", G, gan.stats, picked))))
    return [m for m in methods if only is None or m.name in only]


def baseline_explainer(run_dir: str, method: str, gan: str = "plain", device=None) -> DirectionExplainer:
    """One baseline of a run folder as an explainer (``attribute(images, target, k)``); trains what it needs first
    (the classifier-free GAN, Voynov & Babenko's directions), resuming what an earlier run left."""
    from stylexlib.core.run import open_run
    from stylexlib.data import load_dataset

    if method not in GAN_METHODS:
        raise ValueError(f"unknown method '{method}'; the GAN baselines are {', '.join(GAN_METHODS)}")
    run = open_run(run_dir)
    data = load_dataset(run.cfg.data)
    gans = [g for g in load_gans(run, data, device) if g.name == gan]
    found = build_methods(run, gans, data, only={method})
    if not found:
        raise ValueError(f"method '{method}' does not run on the {gan} GAN (stylex: StylEx's; wu_*: the plain one)")
    return found[0].explainer


def _on_all_images(values, usable: np.ndarray) -> np.ndarray:
    """Scores of the usable images back in place among all evaluation images (NaN elsewhere)."""
    out = np.full(len(usable), np.nan)
    out[usable] = np.asarray(values, dtype=float)
    return out


@dataclass
class Encoded:
    """One GAN's inversion of the selection and evaluation images (the same for every method on that GAN: computed
    once), with the seconds each took."""

    selection: Tensor
    evaluation: Tensor
    selection_seconds: float
    evaluation_seconds: float


def encode_images(explainer: DirectionExplainer, selection: Tensor, evaluation: Tensor) -> Encoded:
    """The styles of ``selection`` and ``evaluation`` images in the explainer's GAN, timed."""
    started = time.perf_counter()
    chosen = explainer.encode(selection)[0]
    middle = time.perf_counter()
    evaluated = explainer.encode(evaluation)[0]
    return Encoded(chosen, evaluated, middle - started, time.perf_counter() - middle)


def evaluate_method(method: Method, gan: str, selection: Tensor, evaluation: Tensor, task: str, lpips_model,
                    real_features: Tensor, probe=None, masks=None, sensitivity=None, groups=None,
                    top_k: int = 10, feature_model=None, oracle=None, label_correlation=None,
                    encoded: Encoded | None = None) -> Evaluated:
    """One method under the protocol: select on ``selection`` images, score on ``evaluation`` images (realism on
    ``feature_model``'s LPIPS features, default ``lpips_model``, against ``real_features`` of the same model). With
    the labelled-attribute ``oracle`` (real data with labels): the top-1 edits' ``label_mnac`` and ``label_cd``
    (``label_correlation``: each label's correlation with the class in the data) and the top 5 edits' readings
    (``attr_*_top5``, ``top_labels``), as stage 06 reads StylEx's attributes. ``encoded``: the images' inversion in
    this method's GAN, shared by its methods (its seconds still count in each method's timings)."""
    explainer = method.explainer
    encoded = encoded or encode_images(explainer, selection, evaluation)
    started = time.perf_counter()
    selected = select_edits(explainer, encoded.selection, top_k, method.rule)
    selection_seconds = time.perf_counter() - started + encoded.selection_seconds
    started = time.perf_counter()
    styles = encoded.evaluation
    top1 = top1_edits(explainer, styles, selected)
    seconds = (time.perf_counter() - started + encoded.evaluation_seconds) / len(evaluation)
    flips: dict = {}
    curve = sufficiency_curve(explainer, styles, selected, top_k, per_image=flips)
    use = top1["usable"]
    relevance = (top1["edited"] - top1["original"]).abs().sum(1)
    factor_scores = None
    if probe is not None and sensitivity is not None:
        factor_scores = {method.name: probe_factor_changes(probe, top1["original"], top1["edited"],
                                                           list(sensitivity.columns))[use.numpy()]}
    map_scores: dict[str, pd.DataFrame] = {}
    table = score_maps(explainer.models.classifier, evaluation[use], top1["target"][use],
                       {method.name: (relevance[use], seconds)}, task,
                       {n: m[use] for n, m in masks.items()} if masks is not None else None,
                       sensitivity[use.numpy()].reset_index(drop=True) if sensitivity is not None else None,
                       factor_scores, baseline=False, per_image=map_scores)
    row = table.iloc[0].to_dict()
    edits: dict = {}
    measures = edit_measures(top1, lpips_model, real_features, explainer.models.classifier, feature_model, edits)
    measures.update({old: measures[new] for old, new in ALIASES.items() if new in measures})
    row.update(family=method.family, gan=gan, selection_seconds=selection_seconds, **measures, **method.notes)
    for k in FLIP_KS:
        hit = curve[curve["k"] == k]
        row[f"flip_rate_top{k}"] = float(hit["flip_rate"].iloc[0]) if len(hit) else float("nan")
    if probe is not None and sensitivity is not None:
        factors = edit_factors(probe, explainer, styles, selected, list(sensitivity.columns))
        row.update(separation(factors, groups or {}))
    usable = use.numpy()
    if oracle is not None:
        labels = counterfactual_label_scores(oracle, lpips_model, top1["original"][use], top1["edited"][use],
                                             label_correlation)
        edits["label_mnac"] = labels.pop("per_image")
        row.update(labels)
        readings = edit_label_readings(oracle, lpips_model, explainer, styles, top1["target"], selected)
        if len(readings):
            row.update(reading_metrics(readings))
            row["top_labels"] = " ".join(f"{r['class']}#{r['rank']}:{r['main_label']}" for _, r in readings.iterrows())
    nan = np.full(len(usable), np.nan)
    per_image = {f"flip_rate_top{k}": flips.get(f"flip_rate_top{k}", nan) for k in FLIP_KS}
    per_image.update({name: _on_all_images(values, usable) for name, values in edits.items()})
    per_image.update({name: _on_all_images(values, usable) for name, values in map_scores[method.name].items()})
    return Evaluated(row, curve, selected, top1, pd.DataFrame(per_image))


def evaluate_all(run: Run, data, methods: list[Method], probe=None, progress: bool = True, oracle=None
                 ) -> tuple[pd.DataFrame, dict[str, Evaluated]]:
    """Every method on the same selection and evaluation images; the table (``benchmark/methods.csv`` columns). With
    the labelled-attribute ``oracle`` (:func:`~stylexlib.evaluate.label_oracle.run_label_oracle`), the labelled
    scores of :func:`evaluate_method` too. Each method's result is kept in ``baselines/evaluated/<method>@<gan>.pt``
    as it finishes and read back while :func:`evaluation_key` still matches (a re-run after an interruption
    evaluates only the methods not kept)."""

    cfg = run.cfg.compare
    selection = data.images[subset_indices(data, run.cfg.attfind.split, cfg.selection_images, cfg.seed)]
    rows = data.indices("test")[: cfg.evaluation_images]
    evaluation = to_float(data.images[torch.as_tensor(rows)])
    with_factors = data.factors is not None and probe is not None
    protocol = protocol_key(run, data, selection, rows, [run.cfg.stylex.model.lpips_net, KID_NET],
                            probe if with_factors else None, oracle)
    weights: dict[int, str] = {}  # per GAN (its models): the digest of its weights, computed once
    keys, results = {}, {}
    for method in methods:
        models = method.explainer.models
        if id(models) not in weights:
            weights[id(models)] = weights_digest(models.generator, models.encoder, models.classifier)
        name = f"{method.name}@{gan_of(method)}"
        keys[name] = evaluation_key(method, gan_of(method), weights[id(models)], protocol)
        results[name] = load_evaluated(run.path(*EVALUATED_DIR, f"{name}.pt"), keys[name])
    kept = [name for name, result in results.items() if result is not None]
    if kept:
        log.info("stage 09: %d of %d methods read back from %s (%s)", len(kept), len(methods),
                 run.path(*EVALUATED_DIR), ", ".join(kept))
    todo = [m for m in methods if results[f"{m.name}@{gan_of(m)}"] is None]
    if todo:
        classifier = todo[0].explainer.models.classifier
        device = todo[0].explainer.models.device
        lpips_model = load_lpips(run.cfg.stylex.model.lpips_net, device)
        feature_model = lpips_model if run.cfg.stylex.model.lpips_net == KID_NET else load_lpips(KID_NET, device)
        real_features = lpips_features(feature_model, to_float(data.images[torch.as_tensor(data.indices("test"))]))
        masks = sensitivity = groups = None
        if with_factors:
            factors = data.factors.iloc[rows].reset_index(drop=True)
            target = classify(classifier, evaluation).argmax(1)
            masks = factor_masks(factors, data.resolution)
            sensitivity = factor_sensitivity(classifier, factors, data.resolution, target)
            groups = factor_groups(run.cfg.data.label_rule, run.cfg.data.spurious_factor)
        correlation = oracle_class_correlation(oracle, data) if oracle is not None else None
    encoded: dict[str, Encoded] = {}
    for method in tqdm(todo, desc="GAN baselines", disable=not progress):
        gan = gan_of(method)
        if gan not in encoded:  # every method on one GAN edits the same inverted images: invert them once
            encoded[gan] = encode_images(method.explainer, selection, evaluation)
        result = evaluate_method(method, gan, selection, evaluation, run.cfg.name, lpips_model, real_features, probe,
                                 masks, sensitivity, groups, cfg.top_k, feature_model, oracle, correlation,
                                 encoded[gan])
        result.per_image.index = pd.Index(rows, name="image")  # the dataset's index of each evaluation image
        name = f"{method.name}@{gan}"
        save_evaluated(run.path(*EVALUATED_DIR, f"{name}.pt"), keys[name], result)
        results[name] = result
    return method_table([r.row for r in results.values()]), results


def method_table(rows: list[dict]) -> pd.DataFrame:
    """The methods' rows in ``benchmark/methods.csv`` column order; a score no row has (the factor scores on real
    photographs) is an empty column."""
    table = pd.DataFrame(rows)
    leading = COLUMNS[:3] + ["gan"] + COLUMNS[3:] + EXTRA_COLUMNS[1:]
    return table.reindex(columns=leading + [c for c in table.columns if c not in leading])


def merge_methods(saliency: pd.DataFrame | None, gan_rows: pd.DataFrame) -> pd.DataFrame:
    """``benchmark/methods.csv``: stage 08's rows (saliency maps, and StylEx as its explainer answers per image), then
    stage 09's; StylEx's row keeps stage 08's per-image scores and gains the protocol's columns."""
    if saliency is None or saliency.empty:
        return gan_rows
    saliency = saliency[~saliency["method"].isin([m for m in GAN_METHODS if m != "stylex"])].copy()
    stylex = gan_rows[(gan_rows["method"] == "stylex") & (gan_rows["gan"] == "stylex")]
    mask = saliency["method"] == "stylex"
    if mask.any() and len(stylex):
        for column in CARRIED + ["family"]:
            if column in stylex:
                saliency[column] = saliency[column].astype(object) if column in saliency else None
                saliency.loc[mask, column] = stylex.iloc[0][column]
        gan_rows = gan_rows.drop(stylex.index)
    return pd.concat([saliency, gan_rows], ignore_index=True)


def paired_table(results: dict[str, Evaluated], task: str = "", reference: str = "stylex@stylex") -> pd.DataFrame:
    """``benchmark/paired_gan.csv``: for every per-image score of the protocol, the mean over the same evaluation
    images of ``reference`` (StylEx's AttFind on StylEx's GAN) minus each other method (``method`` on ``gan``), with
    its paired 95% bootstrap interval (:func:`~stylexlib.evaluate.benchmark.paired_differences`).

    Per image: whether the top-k edits flipped the class (``flip_rate_top1/5/10``), the top-1 edit's log-odds drop,
    visible change (``lpips``) and COUT, and its map's factor and faithfulness scores; ``logodds_per_lpips``, a ratio
    of means in the methods table, is paired as that ratio on each resample. An image a method had no edit for has no
    score: ``images`` counts the images both scored (the only ones paired), ``reference_images`` and
    ``method_images`` each method's, ``evaluated`` all of them. Methods scored on different evaluation images raise
    a ValueError. Aggregate scores (KID) have no per-image values and are left out."""
    if reference not in results:
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    per_image = {key: result.per_image for key, result in results.items()}
    table = paired_differences(per_image, reference, task, RATIOS)
    if table.empty:
        return pd.DataFrame(columns=PAIRED_COLUMNS)

    def scored(key: str, score: str) -> int:
        frame = per_image[key]
        columns = list(RATIOS.get(score, (score,)))
        return int(frame[columns].notna().all(axis=1).sum())

    table["reference_images"] = [scored(reference, s) for s in table["score"]]
    table["method_images"] = [scored(m, s) for m, s in zip(table["method"], table["score"])]
    table["evaluated"] = len(per_image[reference])
    table["gan"] = table["method"].str.split("@").str[1]
    table["method"] = table["method"].str.split("@").str[0]
    table["reference"] = reference.split("@")[0]
    return table[PAIRED_COLUMNS]


def sufficiency_figure(results: dict[str, Evaluated]) -> plt.Figure:
    """Flip rate against k for every method (solid: StylEx's GAN, dashed: the classifier-free GAN)."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, result in results.items():
        if result.curve.empty:
            continue
        method, gan = key.split("@")
        ax.plot(result.curve["k"], result.curve["flip_rate"], marker="o", ms=3, ls="-" if gan == "stylex" else "--",
                label=f"{method} ({gan} GAN)")
    ax.set(xlabel="k edits applied together", ylabel="flip rate", ylim=(0, 1),
           title="sufficiency on held-out images")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def method_figure(key: str, result: Evaluated, explainer: DirectionExplainer, shown: int = 4, top: int = 3
                  ) -> plt.Figure:
    """A method's top edits of each class on the same images: the render, then each edit applied alone."""
    images, styles = result.top1["original"][:shown], result.top1["styles"][:shown]
    rows, titles = [images], ["render"] * shown
    for c, group in result.selected.groupby("class_index"):
        for r in group.sort_values("rank").head(top).itertuples():
            picks = torch.full((len(styles), 1), int(r.index))
            signs = torch.full_like(picks, 0 if r.direction == "down" else 1)
            rows.append(explainer.render(explainer.pool.apply(styles, picks, signs, explainer.step)))
            titles += [f"to {r.class_name} #{r.rank}\n{r.label} {r.direction}"] * shown
    return image_grid(torch.cat(rows), titles, ncols=shown, suptitle=f"{key}: top edits, {explainer.step:g} std")


__all__ = ["ALIASES", "EXTRA_COLUMNS", "GAN_METHODS", "PAIRED_FILE", "REALISM", "Gan", "Method", "baseline_explainer",
           "build_methods", "evaluate_all", "evaluate_method", "evaluation_key", "gan_of", "load_evaluated",
           "load_gans", "merge_methods", "method_figure", "paired_table", "protocol_key", "save_evaluated",
           "sufficiency_figure"]
