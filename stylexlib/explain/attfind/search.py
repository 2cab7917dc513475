"""Stage 05 in a run folder: AttFind end to end, cached and resumable, and what later stages read back.

``stylex attfind RUN_DIR`` runs it outside the notebooks; under ``torchrun`` the images are sharded over the ranks (their
inversion and their effects), and the main rank selects and scores while the others wait and read its results.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from stylexlib.core.config import AttFindConfig
from stylexlib.core.distributed import SINGLE, DistInfo, barrier
from stylexlib.core.io import torch_load, torch_save, write_table
from stylexlib.core.provenance import accepts, fingerprint, stylex_fingerprint
from stylexlib.explain.attfind.editor import AttributeEditor
from stylexlib.explain.attfind.effects import (Effects, StyleStats, cache_key, compute_effects, edit_batch_size,
                                               remove_partials, searched_coordinates, shift_targets, style_statistics)
from stylexlib.explain.attfind.screen import complete, screened_edits
from stylexlib.explain.attfind.names import NAMES_FILE, read_attribute_names, with_names, write_name_template
from stylexlib.explain.attfind.selection import (class_attributes, default_thresholds, describe, image_attributes,
                                                 image_sufficiency, realism_check, sufficiency)
from stylexlib.explain.attfind.visibility import class_swap_yardstick, visibility_check, visibility_rule
from stylexlib.gan.losses import load_lpips
from stylexlib.gan.models import StylexModels, load_stylex
from stylexlib.stylespace.inversion import invert
from stylexlib.gan.inversion_store import image_keys, weights_digest

log = logging.getLogger(__name__)


ATTFIND_DIR = "attfind"
MAX_COMPLETIONS = 5  # rounds of select -> evaluate the picks on every image (a screened search; 2 on five runs)


@dataclass
class AttFindResult:
    """What stage 05 leaves in ``attfind/``: effects, class attributes, per-image attributes, sufficiency."""

    effects: Effects
    styles: Tensor  # (N, S) styles of the searched images
    stats: StyleStats
    attributes: pd.DataFrame
    image_attributes: pd.DataFrame
    sufficiency: pd.DataFrame
    seconds_per_image: float


def subset_indices(data, split: str, count: int, seed: int) -> Tensor:
    """A seeded random subset (at most ``count``) of a split's dataset indices, in a fixed order."""
    positions = torch.as_tensor(data.indices(split))
    if len(positions) == 0:
        raise ValueError(f"the '{split}' split is empty; choose another split in the attfind/inversion config")
    order = torch.randperm(len(positions), generator=torch.Generator().manual_seed(seed))
    return positions[order[:count]]


def searched_indices(data, cfg: AttFindConfig) -> Tensor:
    """The dataset indices of the images AttFind searches (stage 05; stage 04 inverts them first)."""
    return subset_indices(data, cfg.split, cfg.num_images, cfg.seed)


def held_out_indices(data, cfg: AttFindConfig) -> Tensor:
    """The dataset indices of the held-out images the selected attributes are scored on (sufficiency; stage 08)."""
    return subset_indices(data, "test" if len(data.indices("test")) else cfg.split, cfg.num_images, cfg.seed + 1)


def inverted_identity(models: StylexModels, images: Tensor) -> str:
    """What inverted ``images`` with ``models``, as text: the run's inversion store (weights, settings) and the images'
    pixels, or for the encoder alone the weights; never the inverted floats."""
    made_by = models.store.identity if models.store is not None else weights_digest(models.generator, models.encoder,
                                                                                    models.classifier)
    return fingerprint("inverted", made_by, image_keys(images))


def run_statistics(run, data, models: StylexModels, cfg: AttFindConfig, searched: Tensor | None = None,
                   searched_identity: str | None = None) -> StyleStats:
    """StyleSpace statistics over train images as the encoder places them, cached in ``attfind/style_stats.pt`` (per
    checkpoint step), their min / max widened to cover the ``searched`` styles AttFind edits (refined per image, they
    reach beyond the encoder's range; ``searched_identity``: what made them, :func:`inverted_identity`). Without
    ``searched``: the encoder's statistics alone."""
    path = run.path(ATTFIND_DIR, "style_stats.pt")
    key = {"step": models.step, "images": cfg.stats_images, "seed": cfg.seed, "stylex": stylex_fingerprint(run.cfg)}
    state = torch_load(path) if path.exists() else {}
    if accepts(state.get("key"), key):
        encoder_stats = StyleStats.from_state_dict(state.get("encoder_stats", state["stats"]))
        if state.get("covers") == searched_identity:
            return StyleStats.from_state_dict(state["stats"])
        if searched is None:  # the encoder's own range (stage 09 edits E(x) styles); stage 05's widened one is kept
            return encoder_stats
    else:
        indices = subset_indices(data, "train", cfg.stats_images, cfg.seed)
        encoder_stats = style_statistics(models, data.images[indices])
    stats = encoder_stats.covering(searched) if searched is not None else encoder_stats
    torch_save(path, {"key": key, "stats": stats.state_dict(), "encoder_stats": encoder_stats.state_dict(),
                      "covers": searched_identity})
    return stats


def run_attfind(run, data, models: StylexModels, dist: DistInfo = SINGLE, progress: bool = True) -> AttFindResult:
    """Stage 05: statistics, effects (cached, resumable, sharded), selection per class and per image, sufficiency."""
    cfg = run.cfg.attfind
    cfg = dataclasses.replace(cfg, batch_size=edit_batch_size(models.generator, models.classifier, cfg.batch_size))
    indices = searched_indices(data, cfg)
    images = data.images[indices]
    inverted = invert(models, images, dist=dist)
    identity = inverted_identity(models, images)
    stats = run_statistics(run, data, models, cfg, inverted.styles, identity)
    final = run.path(ATTFIND_DIR, "effects.pt")
    key = cache_key(models.generator, cfg, identity)
    saved = torch_load(final) if final.exists() else {}
    if saved.get("key") == key:
        effects, seconds = Effects(**saved["effects"]), float(saved["seconds_per_image"])
    else:
        started = time.perf_counter()
        targets = shift_targets(inverted.styles, stats, cfg.shift, cfg.shift_std)
        coords = searched_coordinates(models.generator, cfg.include_torgb)
        screen = screened_edits(models, inverted.styles, targets, coords, inverted.logits, cfg, dist) \
            if cfg.screen else None
        effects = compute_effects(models, inverted.styles, inverted.logits, indices, stats, cfg, cache=final,
                                  dist=dist, progress=progress, identity=identity, screen=screen)
        seconds = (time.perf_counter() - started) * dist.world_size / max(len(indices), 1)
        if dist.is_main:
            torch_save(final, {"key": key, "effects": effects.state_dict(), "seconds_per_image": seconds})
            remove_partials(final)
    held_out_styles = invert(models, data.images[held_out_indices(data, cfg)], dist=dist).styles  # sharded too
    if not dist.is_main:  # the main rank selects, scores and writes; the others read what it wrote
        barrier(dist)
        return load_attfind(run)
    result = _select_and_score(run, data, models, cfg, stats, effects, inverted.styles, held_out_styles, seconds)
    if result.effects is not effects:  # a screened search's picks, evaluated on every image since
        torch_save(final, {"key": key, "effects": result.effects.state_dict(), "seconds_per_image": seconds})
    barrier(dist)
    return result


def _select_and_score(run, data, models: StylexModels, cfg: AttFindConfig, stats: StyleStats, effects: Effects,
                      styles: Tensor, held_out_styles: Tensor, seconds: float) -> AttFindResult:
    max_effect, affected = default_thresholds(cfg)
    all_targets = shift_targets(styles, stats, cfg.shift, cfg.shift_std)
    rule = lpips_model = None
    if cfg.visible_only:  # judged as the gallery flags attributes
        lpips_model = load_lpips(models.cfg.model.lpips_net, models.device)
        rule = visibility_rule(class_swap_yardstick(models, data.images[effects.image_indices], lpips_model))
        log.info("attfind.visible_only: an attribute is rejected when its %s", rule.describe())
    for rounds in range(MAX_COMPLETIONS + 1):  # a screened search: select, evaluate the picks everywhere, again
        tables = _class_tables(models, cfg, stats, effects, styles, all_targets, max_effect, affected, lpips_model,
                               rule)
        picked = sorted({int(flat) for table in tables for flat in table["flat"]})
        completed = complete(effects, models, styles, all_targets, picked, cfg)
        if completed is effects or rounds == MAX_COMPLETIONS:
            break
        effects = completed
    attributes = describe(pd.concat(tables, ignore_index=True), models.generator)
    leading = ["class_index", "class_name", "rank", "flat", "layer", "layer_name", "channel", "resolution",
               "is_torgb", "direction", "mean_effect", "fraction_affected", "flip_fraction", "pool_images", "method"]
    attributes = attributes[leading]
    per_image = pd.concat([image_attributes(effects, i, 5, cfg.output) for i in range(len(effects.base_logits))],
                          ignore_index=True)
    scores = sufficiency(models.generator, models.classifier, held_out_styles,
                         shift_targets(held_out_styles, stats, cfg.shift, cfg.shift_std), attributes,
                         searched_coordinates(models.generator, cfg.include_torgb), cfg.sufficiency_k,
                         cfg.random_trials, cfg.seed, cfg.batch_size)
    own = image_sufficiency(models.generator, models.classifier, styles,
                            shift_targets(styles, stats, cfg.shift, cfg.shift_std), effects, cfg.sufficiency_k,
                            cfg.output, cfg.batch_size)
    scores = scores.merge(own, on="k", how="outer")
    for name, table in (("attributes", attributes), ("image_attributes", per_image), ("sufficiency", scores)):
        write_table(run.path(ATTFIND_DIR, f"{name}.csv"), table)
    torch_save(run.path(ATTFIND_DIR, "styles.pt"), {"styles": styles, "image_indices": effects.image_indices})
    write_name_template(run.path(ATTFIND_DIR, NAMES_FILE), attributes, stylex_fingerprint(run.cfg))
    attributes = with_names(attributes, read_attribute_names(run.dir / ATTFIND_DIR / NAMES_FILE,
                                                             stylex_fingerprint(run.cfg)))
    return AttFindResult(effects, styles, stats, attributes, per_image, scores, seconds)


def _class_tables(models: StylexModels, cfg: AttFindConfig, stats: StyleStats, effects: Effects, styles: Tensor,
                  all_targets: Tensor, max_effect: float, affected: float, lpips_model, rule) -> list[pd.DataFrame]:
    """Each class's attributes from ``effects``, vetted by the realism and visibility checks the config asks for."""
    stable = effects.consistent if cfg.drop_inconsistent else torch.ones_like(effects.consistent)
    usable = effects.subset(stable)
    tables = []
    for index, name in enumerate(models.class_names):
        if not (usable.predicted != index).any():
            log.warning("no image of another class than '%s': no attributes for it", name)
            continue
        checks = []
        if cfg.realism_filter:
            pool = stable & (effects.predicted != index)
            targets = shift_targets(styles[pool], stats, cfg.shift, cfg.shift_std)
            checks.append(realism_check(models, styles[pool], targets, cfg.realism_quantile, cfg.realism_max_fraction,
                                        cfg.batch_size))
        if cfg.visible_only:
            checks.append(visibility_check(models.generator, models.classifier, lpips_model, styles, all_targets,
                                           effects, index, rule, cfg.examples_per_attribute))  # all images, as shown
        accept = (lambda flat, direction: all(check(flat, direction) for check in checks)) if checks else None
        table = class_attributes(usable, index, cfg.top_k, cfg.output, cfg.method, max_effect, affected, accept)
        tables.append(table.assign(class_index=index, class_name=name, method=cfg.method))
    return tables


def load_attfind(run) -> AttFindResult:
    """Read stage 05's results from a run folder (attributes with the names of ``attfind/attribute_names.csv``)."""
    folder = run.dir / ATTFIND_DIR
    if not (folder / "attributes.csv").exists():
        raise FileNotFoundError(f"no AttFind results in {folder}; run stage 05_attribute_search first")
    saved = torch_load(folder / "effects.pt")
    styles = torch_load(folder / "styles.pt")["styles"]
    stats_state = torch_load(folder / "style_stats.pt")
    stats = StyleStats.from_state_dict(stats_state["stats"])
    generator = stats_state.get("key", {}).get("stylex")  # the generator these attributes were found in
    tables = {name: pd.read_csv(folder / f"{name}.csv") for name in ("attributes", "image_attributes", "sufficiency")}
    names = write_name_template(folder / NAMES_FILE, tables["attributes"], generator)  # made here for older runs too
    return AttFindResult(Effects(**saved["effects"]), styles, stats,
                         with_names(tables["attributes"], read_attribute_names(names, generator)),
                         tables["image_attributes"], tables["sufficiency"], float(saved["seconds_per_image"]))


def load_editor(run, device: torch.device | str | None = None) -> AttributeEditor:
    """An :class:`AttributeEditor` for a run's trained models and StyleSpace statistics."""
    stats_file = run.dir / ATTFIND_DIR / "style_stats.pt"
    if not stats_file.exists():
        raise FileNotFoundError(f"no StyleSpace statistics at {stats_file}; run stage 05_attribute_search first")
    return AttributeEditor.for_attfind(load_stylex(run, device),
                                       StyleStats.from_state_dict(torch_load(stats_file)["stats"]), run.cfg.attfind)
