"""AttFind (Lang et al., ICCV 2021, Alg. 1): the StyleSpace coordinates whose change moves the classifier most.

For every image, every searched coordinate and both directions, the coordinate is set to a shifted value
(the dataset min / max, or +- k std) and the classifier is run on the re-rendered image. The fast path
exploits the explicit StyleSpace: an edit in layer ``l`` leaves every activation before ``l`` unchanged, so
the prefix is computed once per image and batches of edits go through the suffix and the classifier only.

Conventions: ``effects`` hold the classifier's *logits* on every edit; scores toward a class are derived
from them, as probability changes or as one-vs-rest log-odds changes (``output``). A class's attributes are
the edits that most increase that class's output on images the classifier assigns to other classes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .checkpoint import StylexModels
from .config import AttFindConfig
from .distributed import SINGLE, DistInfo, gather_objects
from .inversion import invert
from .io import torch_load, torch_save
from .accelerate import inference_copies
from .models.stylegan2 import Generator, SynthesisState

log = logging.getLogger(__name__)

SHIFT_MODES = ("minmax", "std")
OUTPUTS = ("probs", "logits")
METHODS = ("greedy", "ranking")
DIRECTIONS = ("down", "up")  # index 0: towards the minimum / minus; 1: towards the maximum / plus


# ---------------------------------------------------------------------------- StyleSpace statistics
@dataclass
class StyleStats:
    """Per-coordinate StyleSpace statistics over a set of images (each a (S,) tensor)."""

    minimum: Tensor
    maximum: Tensor
    mean: Tensor
    std: Tensor
    count: int

    @classmethod
    def of(cls, styles: Tensor) -> StyleStats:
        """Statistics of styles (N, S)."""
        styles = styles.float()
        return cls(styles.amin(0), styles.amax(0), styles.mean(0), styles.std(0, unbiased=len(styles) > 1), len(styles))

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict) -> StyleStats:
        return cls(**state)


def style_statistics(models: StylexModels, images: Tensor, batch_size: int = 256) -> StyleStats:
    """StyleSpace min / max / mean / std of the encoded ``images``."""
    return StyleStats.of(invert(models, images, batch_size).styles)


def shift_targets(styles: Tensor, stats: StyleStats, mode: str = "minmax", shift_std: float = 2.0) -> Tensor:
    """The value each coordinate is set to, per direction: (2, N, S); [0] down, [1] up.

    "minmax": the dataset minimum / maximum (the paper); "std": the image's value -/+ ``shift_std`` std.
    """
    if mode == "minmax":
        return torch.stack([stats.minimum.expand_as(styles), stats.maximum.expand_as(styles)]).clone()
    if mode == "std":
        delta = shift_std * stats.std
        return torch.stack([styles - delta, styles + delta])
    raise ValueError(f"attfind.shift must be one of {SHIFT_MODES}, got '{mode}'")


def searched_coordinates(generator: Generator, include_torgb: bool) -> Tensor:
    """Flat indices of the coordinates AttFind tries (toRGB layers included or not)."""
    if include_torgb:
        return torch.arange(generator.style_dim)
    return generator.style_index.exclude_torgb_mask().nonzero().flatten()


# ---------------------------------------------------------------------------- effects of every edit
def single_edits(styles: Tensor, targets: Tensor, coords: Tensor) -> Tensor:
    """Copies of one image's styles (1, S), each with one coordinate set to its target: (2K, S), order (coord, dir).

    ``targets`` is that image's (2, S) slice of :func:`shift_targets`.
    """
    count = len(coords)
    edits = styles.expand(2 * count, -1).clone()
    rows = torch.arange(2 * count)
    columns = coords.repeat_interleave(2)
    edits[rows, columns] = targets[torch.arange(2).repeat(count), columns]
    return edits


@torch.no_grad()
def edited_logits_fast(generator: Generator, classifier: nn.Module, styles: Tensor, targets: Tensor, coords: Tensor,
                       batch_size: int = 256, only: Tensor | None = None) -> Tensor:
    """Logits (N, K, 2, C) of every single-coordinate edit: prefix cached per layer, edits batched through the suffix.

    ``only`` (N, K, 2) bool restricts the work to those edits (screening); the others are NaN.
    """
    device = next(generator.parameters()).device
    layer_of = generator.style_index.layer_ids()[coords]
    results: list[Tensor] = []
    for n in range(len(styles)):
        s = styles[n : n + 1].to(device)
        t = targets[:, n].to(device)
        per_image = torch.full((len(coords), 2, generator.num_classes), float("nan"))
        for layer in torch.unique(layer_of).tolist():
            positions = (layer_of == layer).nonzero().flatten()
            wanted = only[n, positions].flatten() if only is not None else torch.ones(2 * len(positions), dtype=torch.bool)
            if not wanted.any():
                continue
            state = generator.synthesize_prefix(s, layer)
            edits = single_edits(s, t, coords[positions].to(device))[wanted.to(device)]
            logits = torch.cat([
                classifier(generator.synthesize_from(_materialise(state, len(chunk)), chunk, layer)).float().cpu()
                for chunk in edits.split(batch_size)
            ])
            block = per_image[positions].view(-1, generator.num_classes)  # rows in (coord, direction) order
            block[wanted] = logits
            per_image[positions] = block.view(len(positions), 2, -1)
        results.append(per_image)
    return torch.stack(results)


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


def screen(estimates: Tensor, fraction: float) -> Tensor:
    """The edits (N, K, 2) bool worth evaluating exactly: per image, the ``fraction`` with the largest |estimate|."""
    flat = estimates.abs().amax(-1).flatten(1)  # (N, K*2)
    keep = max(1, math.ceil(fraction * flat.shape[1]))
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask.scatter_(1, flat.topk(keep, dim=1).indices, True)
    return mask.view(estimates.shape[:-1])


def _materialise(state: SynthesisState, batch: int) -> SynthesisState:
    """A batch-1 state repeated ``batch`` times as real (channels_last) memory: compiled layers want no zero strides."""
    x = state.x.expand(batch, -1, -1, -1).contiguous(memory_format=torch.channels_last)
    img = None if state.img is None else state.img.expand(batch, -1, -1, -1).contiguous(memory_format=torch.channels_last)
    return SynthesisState(x, img)


@torch.no_grad()
def edited_logits_naive(generator: Generator, classifier: nn.Module, styles: Tensor, targets: Tensor,
                        coords: Tensor) -> Tensor:
    """The reference: one full generator + classifier pass per image, coordinate and direction (as public code)."""
    device = next(generator.parameters()).device
    out = []
    for n in range(len(styles)):
        per_image = []
        for coord in coords.tolist():
            for direction in range(2):
                s = styles[n : n + 1].clone().to(device)
                s[0, coord] = targets[direction, n, coord]
                per_image.append(classifier(generator.synthesize(s)).float().cpu())
        out.append(torch.cat(per_image).view(len(coords), 2, -1))
    return torch.stack(out)


@dataclass
class Effects:
    """The classifier's logits on every single-coordinate edit of a set of images."""

    edited_logits: Tensor  # (N, K, 2, C)
    base_logits: Tensor  # (N, C): C(G(s)), the unedited reconstruction
    input_logits: Tensor  # (N, C): C(x), the real image
    coords: Tensor  # (K,) flat StyleSpace indices
    image_indices: Tensor  # (N,) dataset indices

    @property
    def predicted(self) -> Tensor:
        """The classifier's class on the unedited reconstructions (N,)."""
        return self.base_logits.argmax(1)

    @property
    def consistent(self) -> Tensor:
        """True where C agrees on the image and its reconstruction (N,)."""
        return self.base_logits.argmax(1) == self.input_logits.argmax(1)

    def toward(self, target: int | Tensor, output: str = "probs") -> Tensor:
        """Change of class ``target``'s output on every edit (N, K, 2); ``target`` an int or one class per image."""
        target = torch.as_tensor(target)
        if target.ndim == 0:
            target = target.expand(len(self.base_logits))
        edited = class_score(self.edited_logits, target[:, None, None], output)
        return edited - class_score(self.base_logits, target, output)[:, None, None]

    def subset(self, mask: Tensor) -> Effects:
        """The effects of the images where ``mask`` (N,) is True."""
        return Effects(self.edited_logits[mask], self.base_logits[mask], self.input_logits[mask], self.coords,
                       self.image_indices[mask])

    def state_dict(self) -> dict:
        return asdict(self)


def class_score(logits: Tensor, target: Tensor, output: str) -> Tensor:
    """Class ``target``'s probability, or its one-vs-rest log-odds log p / (1 - p), from logits (..., C)."""
    index = target.unsqueeze(-1).expand(*logits.shape[:-1], 1)
    if output == "probs":
        return logits.softmax(-1).gather(-1, index).squeeze(-1)
    if output == "logits":
        chosen = logits.gather(-1, index).squeeze(-1)
        others = logits.scatter(-1, index, float("-inf")).logsumexp(-1)
        return chosen - others
    raise ValueError(f"attfind.output must be one of {OUTPUTS}, got '{output}'")


def compute_effects(models: StylexModels, styles: Tensor, input_logits: Tensor, image_indices: Tensor,
                    stats: StyleStats, cfg: AttFindConfig, cache: str | Path | None = None, dist: DistInfo = SINGLE,
                    progress: bool = True, chunk: int = 8) -> Effects:
    """Effects of every searched coordinate on every image; resumable through ``cache``, sharded over ranks.

    Images are processed in chunks; after each chunk the partial result is written atomically to
    ``cache`` (one file per rank), so an interrupted run continues where it stopped. Under
    ``torch.distributed`` rank r takes images r, r + world, ...; every rank returns the whole result.
    """
    generator, classifier = models.generator, models.classifier
    coords = searched_coordinates(generator, cfg.include_torgb)
    targets = shift_targets(styles, stats, cfg.shift, cfg.shift_std)
    mine = torch.arange(dist.rank, len(styles), dist.world_size)
    key = _cache_key(styles, coords, targets, cfg)
    part_file = Path(cache).with_suffix(f".rank{dist.rank}.partial.pt") if cache is not None else None
    done = _load_partial(part_file, key)
    bar = tqdm(total=len(mine), initial=len(done), desc="AttFind effects", unit="img",
               disable=not (progress and dist.is_main))
    if cfg.fast and len(done) < len(mine):
        fast_generator, fast_classifier = inference_copies(generator, classifier, cfg.compile)
    for start in range(len(done), len(mine), chunk):
        todo = mine[start : start + chunk]
        only = None
        if cfg.screen_fraction is not None:
            estimates = estimated_effects(generator, classifier, styles[todo], targets[:, todo], coords, cfg.output)
            only = screen(estimates, cfg.screen_fraction)
        if cfg.fast:
            logits = edited_logits_fast(fast_generator, fast_classifier, styles[todo], targets[:, todo], coords,
                                        cfg.batch_size, only)
        else:
            logits = edited_logits_naive(generator, classifier, styles[todo], targets[:, todo], coords)
        done.extend(logits.unbind(0))
        if part_file is not None:
            torch_save(part_file, {"key": key, "logits": torch.stack(done)})
        bar.update(len(todo))
    bar.close()
    edited = _assemble(gather_objects(torch.stack(done) if done else None, dist), len(styles), dist.world_size)
    base = predict_styles(generator, classifier, styles, cfg.batch_size)
    unevaluated = edited.isnan().any(-1)  # screened out: counted as no effect
    edited[unevaluated] = base[:, None, None, :].expand_as(edited)[unevaluated]
    return Effects(edited, base, input_logits.float().cpu(), coords, torch.as_tensor(image_indices))


def _assemble(parts: list[Tensor | None], total: int, world: int) -> Tensor:
    """Interleave the ranks' shards (rank r holds images r, r + world, ...) back into image order."""
    shape = next(p for p in parts if p is not None).shape[1:]
    out = torch.empty(total, *shape)
    for rank, part in enumerate(parts):
        if part is not None:
            out[rank::world] = part
    return out


def _cache_key(styles: Tensor, coords: Tensor, targets: Tensor, cfg: AttFindConfig) -> str:
    digest = hashlib.sha1()
    for tensor in (styles, coords, targets):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(json.dumps([cfg.shift, cfg.shift_std, cfg.include_torgb, cfg.screen_fraction, cfg.output]).encode())
    return digest.hexdigest()


def _load_partial(path: Path | None, key: str) -> list[Tensor]:
    if path is None or not path.exists():
        return []
    state = torch_load(path)
    if state.get("key") != key:
        log.info("ignoring %s: it was computed for other images or settings", path)
        return []
    log.info("resuming AttFind from %s (%d images done)", path, len(state["logits"]))
    return list(state["logits"].unbind(0))


# ---------------------------------------------------------------------------- selection
def default_thresholds(cfg: AttFindConfig) -> tuple[float, float]:
    """(max_image_effect, affected_threshold) for the configured output, defaults filled in."""
    probs = cfg.output == "probs"
    max_effect = cfg.max_image_effect if cfg.max_image_effect is not None else (0.2 if probs else 1.0)
    affected = cfg.affected_threshold if cfg.affected_threshold is not None else (0.05 if probs else 0.25)
    return max_effect, affected


def class_attributes(effects: Effects, target: int, k: int = 10, output: str = "probs", method: str = "greedy",
                     max_image_effect: float = 0.2, affected_threshold: float = 0.05,
                     accept: Callable[[int, int], bool] | None = None) -> pd.DataFrame:
    """The top-``k`` (coordinate, direction) edits that move images of other classes toward class ``target``.

    "greedy" is the paper's coverage procedure: pick the edit with the largest mean effect over the images
    still in the pool, add its effect to each image's tally, and drop images whose tally reaches
    ``max_image_effect``. "ranking" ranks the edits by their mean effect alone. ``accept(flat, direction)``,
    when given, vets each pick (e.g. :func:`realism_check`); a rejected edit is skipped for good.
    """
    if method not in METHODS:
        raise ValueError(f"attfind.method must be one of {METHODS}, got '{method}'")
    pool = effects.predicted != target
    if not pool.any():
        raise ValueError(f"no image is classified as another class than {target}: AttFind needs images of other classes")
    scores = effects.toward(target, output)[pool].flatten(1)  # (M, K*2), column = coord_position * 2 + direction
    flips = (effects.edited_logits[pool].argmax(-1) == target).flatten(1)
    positive = scores.clamp(min=0)
    picked: list[int] = []
    tally = torch.zeros(len(scores))
    for _ in range(scores.shape[1]):
        if len(picked) == k:
            break
        active = tally < max_image_effect if method == "greedy" else torch.ones(len(scores), dtype=torch.bool)
        rows = positive[active] if active.any() else positive
        column = int(rows.mean(0).argmax())
        usable = accept is None or accept(int(effects.coords[column // 2]), column % 2)
        if usable:
            picked.append(column)
            tally += positive[:, column].clamp(min=0)
        positive[:, column] = -1.0  # never again
    return pd.DataFrame([
        dict(rank=rank + 1, flat=int(effects.coords[column // 2]), direction=DIRECTIONS[column % 2],
             mean_effect=float(scores[:, column].mean()),
             fraction_affected=float((scores[:, column] > affected_threshold).float().mean()),
             flip_fraction=float(flips[:, column].float().mean()), pool_images=len(scores))
        for rank, column in enumerate(picked)
    ])


@torch.no_grad()
def realism_scores(generator: Generator, discriminator: nn.Module, classifier: nn.Module, styles: Tensor,
                   batch_size: int = 256) -> Tensor:
    """The discriminator's logit (N,) on G(styles), conditioned on the classifier's probabilities for it."""
    device = next(generator.parameters()).device
    scores = []
    for chunk in styles.split(batch_size):
        images = generator.synthesize(chunk.to(device))
        scores.append(discriminator(images, classifier(images).float().softmax(1)).float().cpu())
    return torch.cat(scores)


def realism_check(models: StylexModels, styles: Tensor, targets: Tensor, quantile: float = 0.05,
                  max_fraction: float = 0.5, batch_size: int = 256) -> Callable[[int, int], bool]:
    """A vetting function for :func:`class_attributes`: rejects an edit that looks unreal to the discriminator.

    An edit is rejected when more than ``max_fraction`` of the edited images score below the ``quantile``
    of the unedited reconstructions' scores (both from StylEx's own discriminator).
    """
    if models.discriminator is None:
        raise ValueError("the realism filter needs the discriminator: load the models with load_stylex")
    score = lambda s: realism_scores(models.generator, models.discriminator, models.classifier, s, batch_size)  # noqa: E731
    floor = score(styles).quantile(quantile)

    def accept(flat: int, direction: int) -> bool:
        column = torch.full((len(styles), 1), flat)
        edited = apply_attributes(styles, targets, column, torch.full_like(column, direction))
        unreal = (score(edited) < floor).float().mean().item()
        if unreal > max_fraction:
            log.info("realism filter: coordinate %d %s rejected (%.0f%% of edits below the floor)", flat,
                     DIRECTIONS[direction], 100 * unreal)
        return unreal <= max_fraction

    return accept


def image_attributes(effects: Effects, image: int, k: int = 5, output: str = "probs",
                     target: int | None = None) -> pd.DataFrame:
    """Per-image top-``k``: the edits that most lower the image's predicted class (or raise ``target``).

    ``image`` is a position in ``effects`` (see ``effects.image_indices`` for the dataset index).
    """
    one = effects.subset(torch.arange(len(effects.base_logits)) == image)
    predicted = int(one.predicted[0])
    score = one.toward(target, output)[0] if target is not None else -one.toward(predicted, output)[0]
    values, columns = score.flatten().topk(min(k, score.numel()))
    flipped = (one.edited_logits[0].argmax(-1) != predicted).flatten()
    return pd.DataFrame([
        dict(image_index=int(one.image_indices[0]), predicted=predicted, rank=rank + 1,
             flat=int(one.coords[column // 2]), direction=DIRECTIONS[column % 2], effect=float(value),
             flips=bool(flipped[column]))
        for rank, (value, column) in enumerate(zip(values.tolist(), columns.tolist()))
    ])


def describe(attributes: pd.DataFrame, generator: Generator) -> pd.DataFrame:
    """Add layer, layer name, channel, resolution and is_torgb columns for the ``flat`` column."""
    located = pd.DataFrame([generator.style_index.locate(f)._asdict() for f in attributes["flat"]])
    located = located.drop(columns="flat").rename(columns={"name": "layer_name"})
    return pd.concat([attributes.reset_index(drop=True), located], axis=1)


def attribute_label(row: pd.Series | dict) -> str:
    """A short name of an attribute, e.g. ``b16.conv1[12] up``."""
    return f"{row['layer_name']}[{row['channel']}] {row['direction']}"


# ---------------------------------------------------------------------------- applying attributes
def apply_attributes(styles: Tensor, targets: Tensor, flats: Tensor, directions: Tensor,
                     strength: float = 1.0) -> Tensor:
    """Styles (N, S) with coordinates ``flats`` (N, k) moved toward their targets (2, N, S) in ``directions`` (N, k)."""
    edited = styles.clone()
    rows = torch.arange(len(styles))[:, None].expand_as(flats)
    goal = targets[directions, rows, flats]
    edited[rows, flats] = styles[rows, flats] + strength * (goal - styles[rows, flats])
    return edited


@torch.no_grad()
def predict_styles(generator: Generator, classifier: nn.Module, styles: Tensor, batch_size: int = 256) -> Tensor:
    """Classifier logits on G(styles) (N, C), in batches."""
    device = next(generator.parameters()).device
    return torch.cat([classifier(generator.synthesize(s.to(device))).float().cpu() for s in styles.split(batch_size)])


def sufficiency(generator: Generator, classifier: nn.Module, styles: Tensor, targets: Tensor,
                attributes: pd.DataFrame, candidates: Tensor, max_k: int = 10, random_trials: int = 5,
                seed: int = 0, batch_size: int = 256) -> pd.DataFrame:
    """Flip rate when the top-k attributes are applied together, k = 1..max_k, next to k random coordinates.

    For an image the classifier assigns to class y, the attributes of the class it is pushed toward
    (the other class; with several classes the runner-up) are applied at once; the flip rate is the
    fraction of images whose predicted class changes. The baseline applies k random searched coordinates
    (``candidates``), each in a random direction, averaged over ``random_trials`` draws.
    """
    base = predict_styles(generator, classifier, styles, batch_size)
    predicted = base.argmax(1)
    toward = base.scatter(1, predicted[:, None], float("-inf")).argmax(1)
    by_class = {int(c): group.sort_values("rank") for c, group in attributes.groupby("class_index")}
    generator_ = torch.Generator().manual_seed(seed)
    rows = []
    for k in range(1, max_k + 1):
        flats = torch.zeros(len(styles), k, dtype=torch.long)
        directions = torch.zeros(len(styles), k, dtype=torch.long)
        usable = torch.zeros(len(styles), dtype=torch.bool)
        for c, group in by_class.items():
            if len(group) < k:
                continue
            mine = toward == c
            usable |= mine
            flats[mine] = torch.tensor(group["flat"].to_numpy()[:k])
            directions[mine] = torch.as_tensor([DIRECTIONS.index(d) for d in group["direction"].to_numpy()[:k]])
        if not usable.any():
            break
        edited = apply_attributes(styles[usable], targets[:, usable], flats[usable], directions[usable])
        flip = (predict_styles(generator, classifier, edited, batch_size).argmax(1) != predicted[usable]).float().mean()
        random_rates = []
        for _ in range(random_trials):
            pick = torch.stack([candidates[torch.randperm(len(candidates), generator=generator_)[:k]]
                                for _ in range(int(usable.sum()))])
            dirs = torch.randint(0, 2, pick.shape, generator=generator_)
            edited = apply_attributes(styles[usable], targets[:, usable], pick, dirs)
            random_rates.append((predict_styles(generator, classifier, edited, batch_size).argmax(1)
                                 != predicted[usable]).float().mean().item())
        rows.append(dict(k=k, flip_rate=float(flip), random_flip_rate=float(np.mean(random_rates)),
                         random_flip_std=float(np.std(random_rates)), images=int(usable.sum())))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- the editor (galleries, widgets)
class AttributeEditor:
    """Encode images, apply one attribute at a chosen strength, render, and read the classifier."""

    def __init__(self, models: StylexModels, stats: StyleStats, shift: str = "minmax", shift_std: float = 2.0,
                 batch_size: int = 64) -> None:
        self.models, self.stats, self.shift, self.shift_std, self.batch_size = models, stats, shift, shift_std, batch_size
        self.class_names = list(models.class_names)
        self.resolution = models.generator.resolution
        self.style_index = models.generator.style_index

    def encode(self, images: Tensor) -> Tensor:
        """uint8 or [-1, 1] images (N, 3, H, W) -> styles (N, S)."""
        return invert(self.models, images, self.batch_size).styles

    @torch.no_grad()
    def render(self, styles: Tensor) -> Tensor:
        """Styles (N, S) -> images in [-1, 1] (N, 3, H, W), on the CPU."""
        device = self.models.device
        return torch.cat([self.models.generator.synthesize(s.to(device)).clamp(-1, 1).cpu()
                          for s in styles.split(self.batch_size)])

    @torch.no_grad()
    def probabilities(self, images: Tensor) -> Tensor:
        """Classifier softmax (N, C) of images in [-1, 1]."""
        return torch.cat([self.models.classifier(self.models.prepare(x)).float().softmax(1).cpu()
                          for x in images.split(self.batch_size)])

    def edit(self, styles: Tensor, flat: int, direction: str, strength: float = 1.0) -> Tensor:
        """Styles with coordinate ``flat`` moved "up" or "down"; strength 1 is the full AttFind shift, 0 none."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got '{direction}'")
        targets = shift_targets(styles, self.stats, self.shift, self.shift_std)
        flats = torch.full((len(styles), 1), int(flat))
        directions = torch.full((len(styles), 1), DIRECTIONS.index(direction))
        return apply_attributes(styles, targets, flats, directions, strength)


# ---------------------------------------------------------------------------- stage 05 in a run folder
ATTFIND_DIR = "attfind"


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


def run_statistics(run, data, models: StylexModels, cfg: AttFindConfig) -> StyleStats:
    """StyleSpace statistics over train images, cached in ``attfind/style_stats.pt`` (per checkpoint step)."""
    path = run.path(ATTFIND_DIR, "style_stats.pt")
    key = {"step": models.step, "images": cfg.stats_images, "seed": cfg.seed}
    if path.exists():
        state = torch_load(path)
        if state.get("key") == key:
            return StyleStats.from_state_dict(state["stats"])
    indices = subset_indices(data, "train", cfg.stats_images, cfg.seed)
    stats = style_statistics(models, data.images[indices])
    torch_save(path, {"key": key, "stats": stats.state_dict()})
    return stats


def run_attfind(run, data, models: StylexModels, dist: DistInfo = SINGLE, progress: bool = True) -> AttFindResult:
    """Stage 05: statistics, effects (cached, resumable, sharded), selection per class and per image, sufficiency."""
    import time

    cfg = run.cfg.attfind
    stats = run_statistics(run, data, models, cfg)
    indices = subset_indices(data, cfg.split, cfg.num_images, cfg.seed)
    inverted = invert(models, data.images[indices])
    final = run.path(ATTFIND_DIR, "effects.pt")
    key = _cache_key(inverted.styles, searched_coordinates(models.generator, cfg.include_torgb),
                     shift_targets(inverted.styles, stats, cfg.shift, cfg.shift_std), cfg)
    saved = torch_load(final) if final.exists() else {}
    if saved.get("key") == key:
        effects, seconds = Effects(**saved["effects"]), float(saved["seconds_per_image"])
    else:
        started = time.perf_counter()
        effects = compute_effects(models, inverted.styles, inverted.logits, indices, stats, cfg, cache=final,
                                  dist=dist, progress=progress)
        seconds = (time.perf_counter() - started) * dist.world_size / max(len(indices), 1)
        if dist.is_main:
            torch_save(final, {"key": key, "effects": effects.state_dict(), "seconds_per_image": seconds})
            for partial in final.parent.glob("effects.rank*.partial.pt"):
                partial.unlink()
    return _select_and_score(run, data, models, cfg, stats, effects, inverted.styles, seconds, dist)


def _select_and_score(run, data, models: StylexModels, cfg: AttFindConfig, stats: StyleStats, effects: Effects,
                      styles: Tensor, seconds: float, dist: DistInfo) -> AttFindResult:
    max_effect, affected = default_thresholds(cfg)
    stable = effects.consistent if cfg.drop_inconsistent else torch.ones_like(effects.consistent)
    usable = effects.subset(stable)
    tables = []
    for index, name in enumerate(models.class_names):
        if not (usable.predicted != index).any():
            log.warning("no image of another class than '%s': no attributes for it", name)
            continue
        accept = None
        if cfg.realism_filter:
            pool = stable & (effects.predicted != index)
            accept = realism_check(models, styles[pool], shift_targets(styles[pool], stats, cfg.shift, cfg.shift_std),
                                   cfg.realism_quantile, cfg.realism_max_fraction, cfg.batch_size)
        table = class_attributes(usable, index, cfg.top_k, cfg.output, cfg.method, max_effect, affected, accept)
        tables.append(table.assign(class_index=index, class_name=name, method=cfg.method))
    attributes = describe(pd.concat(tables, ignore_index=True), models.generator)
    leading = ["class_index", "class_name", "rank", "flat", "layer", "layer_name", "channel", "resolution",
               "is_torgb", "direction", "mean_effect", "fraction_affected", "flip_fraction", "pool_images", "method"]
    attributes = attributes[leading]
    per_image = pd.concat([image_attributes(effects, i, 5, cfg.output) for i in range(len(effects.base_logits))],
                          ignore_index=True)
    held_out = subset_indices(data, "test" if len(data.indices("test")) else cfg.split, cfg.num_images, cfg.seed + 1)
    held_out_styles = invert(models, data.images[held_out]).styles
    scores = sufficiency(models.generator, models.classifier, held_out_styles,
                         shift_targets(held_out_styles, stats, cfg.shift, cfg.shift_std), attributes,
                         searched_coordinates(models.generator, cfg.include_torgb), cfg.sufficiency_k,
                         cfg.random_trials, cfg.seed, cfg.batch_size)
    if dist.is_main:
        from .io import atomic_write

        for name, table in (("attributes", attributes), ("image_attributes", per_image), ("sufficiency", scores)):
            atomic_write(run.path(ATTFIND_DIR, f"{name}.csv"), lambda p, t=table: t.to_csv(p, index=False))
        torch_save(run.path(ATTFIND_DIR, "styles.pt"), {"styles": styles, "image_indices": effects.image_indices})
    return AttFindResult(effects, styles, stats, attributes, per_image, scores, seconds)


def sufficiency_metrics(scores: pd.DataFrame, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """flip_rate_topK and random_flip_rate_topK for the given k (those that were measured)."""
    metrics = {}
    for k in ks:
        row = scores[scores["k"] == k]
        if len(row):
            metrics[f"flip_rate_top{k}"] = float(row["flip_rate"].iloc[0])
            metrics[f"random_flip_rate_top{k}"] = float(row["random_flip_rate"].iloc[0])
    return metrics


def load_attfind(run) -> AttFindResult:
    """Read stage 05's results from a run folder."""
    folder = run.dir / ATTFIND_DIR
    if not (folder / "attributes.csv").exists():
        raise FileNotFoundError(f"no AttFind results in {folder}; run stage 05_attribute_search first")
    saved = torch_load(folder / "effects.pt")
    styles = torch_load(folder / "styles.pt")["styles"]
    stats = StyleStats.from_state_dict(torch_load(folder / "style_stats.pt")["stats"])
    tables = {name: pd.read_csv(folder / f"{name}.csv") for name in ("attributes", "image_attributes", "sufficiency")}
    return AttFindResult(Effects(**saved["effects"]), styles, stats, tables["attributes"],
                         tables["image_attributes"], tables["sufficiency"], float(saved["seconds_per_image"]))


def load_editor(run, device: torch.device | str | None = None) -> AttributeEditor:
    """An :class:`AttributeEditor` for a run's trained models and StyleSpace statistics."""
    from .checkpoint import load_stylex

    cfg = run.cfg.attfind
    stats_file = run.dir / ATTFIND_DIR / "style_stats.pt"
    if not stats_file.exists():
        raise FileNotFoundError(f"no StyleSpace statistics at {stats_file}; run stage 05_attribute_search first")
    return AttributeEditor(load_stylex(run, device), StyleStats.from_state_dict(torch_load(stats_file)["stats"]),
                           cfg.shift, cfg.shift_std)


def collect_examples(run, editor: AttributeEditor, top: int = 4, per_attribute: int = 6,
                     result: AttFindResult | None = None):
    """For each class's top attributes, the images where each acts most, original | changed (AttributeExamples)."""
    from .viz import AttributeExamples

    result = result if result is not None else load_attfind(run)
    effects, output = result.effects, run.cfg.attfind.output
    examples = []
    for row in result.attributes[result.attributes["rank"] <= top].itertuples():
        position = int((effects.coords == row.flat).nonzero()[0, 0])
        score = effects.toward(row.class_index, output)[:, position, DIRECTIONS.index(row.direction)]
        score[effects.predicted == row.class_index] = float("-inf")
        chosen = score.topk(min(per_attribute, int(torch.isfinite(score).sum()))).indices
        styles = result.styles[chosen]
        originals = editor.render(styles)
        changed = editor.render(editor.edit(styles, row.flat, row.direction))
        examples.append(AttributeExamples(
            class_index=int(row.class_index), class_name=row.class_name, rank=int(row.rank), flat=int(row.flat),
            label=attribute_label(row._asdict()), mean_effect=float(row.mean_effect),
            fraction_affected=float(row.fraction_affected), image_indices=effects.image_indices[chosen].tolist(),
            originals=originals, changed=changed, probs_original=editor.probabilities(originals),
            probs_changed=editor.probabilities(changed), class_names=list(editor.class_names),
        ))
    return examples


def main(argv: list[str] | None = None) -> int:
    """``python -m stylexlib.attfind RUN_DIR``: AttFind in a run folder (under torchrun: images sharded over ranks)."""
    import argparse

    from .checkpoint import load_stylex
    from .data import load_dataset
    from .distributed import init_distributed, shutdown_distributed
    from .run import open_run

    parser = argparse.ArgumentParser(description="AttFind over a run folder trained by stages 01-03.")
    parser.add_argument("run_dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run = open_run(args.run_dir)
    info, device = init_distributed(run.cfg.stylex.device)
    try:
        data = load_dataset(run.cfg.data)
        result = run_attfind(run, data, load_stylex(run, device, data), dist=info)
        if info.is_main:
            print(json.dumps({"seconds_per_image": result.seconds_per_image, **sufficiency_metrics(result.sufficiency)}))
    finally:
        shutdown_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
