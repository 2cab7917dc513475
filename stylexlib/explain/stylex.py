"""StylEx as an explainer: ``StylEx(...).attribute(images, target=None, k=5)``, like every other explainer.

Built from in-memory parts (generator, encoder, any classifier ``nn.Module``, StyleSpace statistics) or from a run
folder (:meth:`StylEx.from_run`). An attribute is one StyleSpace coordinate moved in one :class:`Direction` to its
AttFind shift (Lang et al., ICCV 2021); its effect is the change of the target's one-vs-rest log-odds.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stylexlib.core.config import AttFindConfig, InversionConfig
from stylexlib.core.stylex_config import stylex_config
from stylexlib.explain.attfind.editor import AttributeEditor
from stylexlib.explain.attfind.effects import (DIRECTIONS, Effects, StyleStats, apply_attributes, class_score,
                                               compute_effects, edited_logits_fast, predict_styles,
                                               searched_coordinates, shift_targets, top_edits)
from stylexlib.explain.attfind.selection import class_attributes, default_thresholds
from stylexlib.explain.attfind.visibility import VisibilityRule, class_swap_yardstick, saved_rule, visibility_rule
from stylexlib.gan import Encoder, Generator
from stylexlib.gan.losses import load_lpips, visible_change
from stylexlib.gan.models import StylexModels
from stylexlib.stylespace.inversion import invert


class Direction(str, Enum):
    """Which way an attribute moves its coordinate: towards the dataset minimum (down) or maximum (up)."""

    DOWN = "down"
    UP = "up"

    @property
    def index(self) -> int:
        """The position in effect tensors (..., 2): 0 down, 1 up."""
        return DIRECTIONS.index(self.value)

    @classmethod
    def of(cls, value: Direction | str | int) -> Direction:
        """A Direction from itself, "up"/"down" or 0/1."""
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(DIRECTIONS[value])
        return cls(value)


@dataclass(frozen=True)
class Attribute:
    """One StyleSpace coordinate (flat index) and a direction."""

    flat: int
    direction: Direction


@dataclass
class StylexAttribution:
    """Per image, the top-k attributes for the target: a table, the changed images and the probabilities."""

    images: Tensor  # (N, 3, H, W) the inputs
    reconstructions: Tensor  # (N, 3, H, W) G(E(x), C(x)): what the edits start from
    target: Tensor  # (N,)
    table: pd.DataFrame  # image, rank, flat, layer, channel, direction, effect
    edited: Tensor  # (N, k, 3, H, W)
    probs_original: Tensor  # (N, C) on the reconstructions
    probs_edited: Tensor  # (N, k, C)
    seconds_per_image: float

    def to_dataframe(self) -> pd.DataFrame:
        """The table, with the target's probability before and after each edit."""
        n, k = self.probs_edited.shape[:2]
        index = self.target[:, None].expand(n, k)
        return self.table.assign(
            target=self.target.repeat_interleave(k).numpy(),
            prob_original=self.probs_original.gather(1, self.target[:, None]).repeat_interleave(k).numpy(),
            prob_edited=self.probs_edited.gather(2, index[..., None])[..., 0].flatten().numpy())


class StylEx:
    """The StylEx explainer of a classifier: encode images into StyleSpace and find the coordinates that move it."""

    def __init__(self, generator: Generator, encoder: Encoder, classifier: nn.Module, stats: StyleStats,
                 class_names: list[str] | None = None, condition_on: str = "probs", shift: str = "minmax",
                 shift_std: float = 2.0, include_torgb: bool = False, batch_size: int = 64,
                 device: torch.device | str | None = None, visible_only: bool = False,
                 rule: VisibilityRule | None = None, inversion: InversionConfig | None = None) -> None:
        device = torch.device(device) if device is not None else next(generator.parameters()).device
        names = class_names or [str(i) for i in range(generator.num_classes)]
        nets = [m.to(device).eval().requires_grad_(False) for m in (generator, encoder, classifier)]
        # inversion: how images are inverted (None: E(x) alone; a run's refines each image, see stylespace.inversion)
        self.models = StylexModels(*nets, stylex_config(condition_on=condition_on, latent_dim=generator.latent_dim),
                                   names, 0, device, inversion=inversion or InversionConfig())
        self.editor = AttributeEditor(self.models, stats, shift, shift_std, batch_size)  # renders, reads C, edits
        self.include_torgb, self.batch_size = include_torgb, batch_size
        # visible_only: attribute() ranks the edits the visibility rule calls invisible last (``rule``; None: measured
        # on the first images explained, against the generator's own class change)
        self.visible_only, self.rule = visible_only, rule
        self._lpips: nn.Module | None = None

    @property
    def stats(self) -> StyleStats:
        """The StyleSpace statistics the AttFind shift is taken from."""
        return self.editor.stats

    @stats.setter
    def stats(self, stats: StyleStats) -> None:
        self.editor.stats = stats

    @classmethod
    def from_run(cls, run_dir: str | Path, device: torch.device | str | None = None,
                 visible_only: bool = False) -> StylEx:
        """The trained models and StyleSpace statistics of a run folder (stages 03 and 05), inverting images as the run
        does (its ``inversion`` section, read from and added to its store of inversions) and judging visibility with the
        yardstick stage 06 saved (``visible_only``: see :meth:`attribute`)."""
        from stylexlib.core.run import open_run
        from stylexlib.explain.attfind.search import load_editor

        if not (Path(run_dir) / "config.yaml").is_file():
            raise FileNotFoundError(f"{run_dir} is not a run folder (no config.yaml): give the folder stylex run wrote "
                                    "(stylex run CONFIG --out RUN_DIR, stages 01-05)")
        run = open_run(run_dir)
        editor = load_editor(run, device)
        m, a = editor.models, run.cfg.attfind
        explainer = cls(m.generator, m.encoder, m.classifier, editor.stats, m.class_names, m.cfg.model.condition_on,
                        editor.shift, editor.shift_std, a.include_torgb, a.batch_size or 64, m.device, visible_only,
                        saved_rule(run.metrics), m.inversion)
        explainer.models.store = m.store
        return explainer

    @property
    def generator(self) -> Generator:
        return self.models.generator

    def check_images(self, images: Tensor) -> Tensor:
        """Images as the generator expects them: (N, 3, R, R), uint8 or float in [-1, 1]; a single (3, H, W) image
        gains a batch axis and another square size is resized (with a warning). Anything else raises ValueError."""
        res = self.generator.resolution
        if not isinstance(images, Tensor):
            raise TypeError(f"StylEx expects images as a torch.Tensor (N, 3, {res}, {res}), got {type(images).__name__};"
                            " load image files with stylexlib.data.files.load_images")
        images = images[None] if images.ndim == 3 else images
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"StylEx expects RGB images shaped (N, 3, {res}, {res}), got {tuple(images.shape)}")
        if images.shape[-1] != images.shape[-2]:
            raise ValueError(f"StylEx expects square images ({res} x {res}), got {images.shape[-2]} x {images.shape[-1]}"
                             "; centre-crop them (stylexlib.data.files.load_images does)")
        if images.dtype != torch.uint8:
            if not images.is_floating_point():
                raise ValueError(f"StylEx expects uint8 images or float images in [-1, 1], got {images.dtype}")
            low, high = float(images.min()), float(images.max())
            if low < -1.01 or high > 1.01:
                raise ValueError(f"StylEx expects float images in [-1, 1], got values in [{low:.3g}, {high:.3g}]; "
                                 "scale [0, 255] images with x / 127.5 - 1, or pass them as uint8")
            if low >= 0:
                raise ValueError(f"these images look like [0, 1] images (values in [{low:.3g}, {high:.3g}]); StylEx "
                                 "expects [-1, 1]: pass x * 2 - 1")
        if images.shape[-1] != res:
            warnings.warn(f"StylEx resized the images from {images.shape[-1]} x {images.shape[-1]} to the generator's "
                          f"{res} x {res}", stacklevel=3)
            x = images.float() if images.dtype != torch.uint8 else images.float() / 127.5 - 1
            images = F.interpolate(x, size=(res, res), mode="bilinear", antialias=True, align_corners=False).clamp(-1, 1)
        return images

    def check_target(self, target: int | Tensor, count: int) -> Tensor:
        """One class index per image, from one index or one per image (ValueError naming what was expected)."""
        names = self.models.class_names
        target = torch.as_tensor(target).long().flatten()
        if len(target) not in (1, count):
            raise ValueError(f"target has {len(target)} entries for {count} images: give one class index (0 to "
                             f"{len(names) - 1}: {names}) or one per image")
        if ((target < 0) | (target >= len(names))).any():
            raise ValueError(f"target {target.tolist()} holds a class index outside 0 to {len(names) - 1} ({names})")
        return target.expand(count)

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Images in [-1, 1] or uint8 -> (StyleSpace styles (N, S), the classifier's logits on the images (N, C))."""
        inverted = invert(self.models, self.check_images(images), self.batch_size)
        return inverted.styles, inverted.logits

    def render(self, styles: Tensor) -> Tensor:
        """Styles (N, S) -> images in [-1, 1] (N, 3, H, W)."""
        return self.editor.render(styles)

    def probabilities(self, images: Tensor) -> Tensor:
        """The classifier's softmax (N, C) of images in [-1, 1]."""
        return self.editor.probabilities(images)

    def attribute(self, inputs: Tensor, target: int | Tensor | None = None, k: int = 5) -> StylexAttribution:
        """Per image, the ``k`` attributes whose edit lowers the target's log-odds most (the StyleSpace attributes the
        decision for ``target`` rests on; None: the predicted class), with the edited images and probabilities. With
        ``visible_only`` the edits the visibility rule calls invisible on that image come after the visible ones
        (among the ``4k`` strongest)."""
        started = time.perf_counter()
        inputs = self.check_images(inputs)
        styles, _ = self.encode(inputs)
        reconstructions = self.render(styles)
        probs = self.probabilities(reconstructions)
        target = probs.argmax(1) if target is None else self.check_target(target, len(styles))
        change, apply, describe = self._candidates(styles, target)
        effects, picks, signs = top_edits(-change, max(4 * k, 20) if self.visible_only else k)
        edited = torch.stack([self.render(apply(picks[:, j:j + 1], signs[:, j:j + 1]))
                              for j in range(picks.shape[1])], 1)
        if self.visible_only:
            order = self.visible_first(inputs, reconstructions, probs, target, edited)[:, :k]
            effects, picks, signs = (t.gather(1, order) for t in (effects, picks, signs))
            edited = edited[torch.arange(len(edited))[:, None], order]
        rows = [dict(image=i, rank=j + 1, **describe(int(p)), direction=DIRECTIONS[int(d)], effect=-float(e))
                for i in range(len(styles)) for j, (p, d, e) in enumerate(zip(picks[i], signs[i], effects[i]))]
        return StylexAttribution(inputs, reconstructions, target, pd.DataFrame(rows), edited, probs,
                                 self.probabilities(edited.flatten(0, 1)).view(*edited.shape[:2], -1),
                                 (time.perf_counter() - started) / max(len(styles), 1))

    @property
    def lpips(self) -> nn.Module:
        """The LPIPS model visible changes are measured with (loaded on first use)."""
        if self._lpips is None:
            self._lpips = load_lpips(self.models.cfg.model.lpips_net, self.models.device)
        return self._lpips

    def visibility_rule(self, inputs: Tensor) -> VisibilityRule:
        """The rule that calls an edit invisible: ``rule`` if given (a run's saved yardstick), else calibrated once on
        the generator's class change for ``inputs`` (:func:`class_swap_yardstick`)."""
        if self.rule is None:
            self.rule = visibility_rule(class_swap_yardstick(self.models, inputs, self.lpips))
        return self.rule

    @torch.no_grad()
    def judge_edits(self, inputs: Tensor, reconstructions: Tensor, probs_original: Tensor, probs_edited: Tensor,
                    target: Tensor, edited: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For edits ``edited`` (N, M, 3, H, W) of ``reconstructions`` (N, 3, H, W): the |change of p(target)| (from
        ``probs_original`` (N, C) to ``probs_edited`` (N, M, C)), the :func:`visible_change` and whether the visibility
        rule calls the edit invisible, each (N, M)."""
        rule = self.visibility_rule(inputs)
        n, m = edited.shape[:2]
        rows = torch.arange(n)
        moved = (probs_edited[rows, :, target] - probs_original[rows, target][:, None]).abs()
        seen = torch.cat([visible_change(self.lpips, a.to(self.models.device), b.to(self.models.device)).cpu()
                          for a, b in zip(reconstructions.repeat_interleave(m, 0).split(self.batch_size),
                                          edited.flatten(0, 1).split(self.batch_size))]).view(n, m)
        invisible = torch.tensor([[rule.invisible(float(p), float(v)) for p, v in zip(*row)]
                                  for row in zip(moved, seen)], dtype=torch.bool).view(n, m)
        return moved, seen, invisible

    def visible_first(self, inputs: Tensor, reconstructions: Tensor, probs: Tensor, target: Tensor,
                      edited: Tensor) -> Tensor:
        """Per image, the positions of its candidate edits ``edited`` (N, M, 3, H, W) with those the visibility rule
        calls invisible (:meth:`judge_edits`) moved last, in order otherwise."""
        n, m = edited.shape[:2]
        probs_edited = self.probabilities(edited.flatten(0, 1)).view(n, m, -1)
        invisible = self.judge_edits(inputs, reconstructions, probs, probs_edited, target, edited)[2]
        return torch.sort(invisible.int(), dim=1, stable=True).indices

    def _candidates(self, styles: Tensor, target: Tensor) -> tuple[Tensor, Callable, Callable]:
        """The candidate edits of :meth:`attribute`: the change of the target's log-odds under each (N, K, 2), how to
        apply candidates (positions (N, k), directions (N, k)) to ``styles``, and a candidate's table columns. Here:
        every searched coordinate, moved to its AttFind shift."""
        coords = searched_coordinates(self.generator, self.include_torgb)
        targets = shift_targets(styles, self.stats, self.editor.shift, self.editor.shift_std)
        logits = edited_logits_fast(self.generator, self.models.classifier, styles, targets, coords, self.batch_size)
        index = self.generator.style_index

        def describe(position: int) -> dict:
            flat = int(coords[position])
            return dict(flat=flat, layer=index.locate(flat).name, channel=index.locate(flat).channel)

        return (self.log_odds_change(logits, styles, target),
                lambda picks, signs: apply_attributes(styles, targets, coords[picks], signs), describe)

    def log_odds_change(self, logits: Tensor, styles: Tensor, target: Tensor) -> Tensor:
        """Change of the target's one-vs-rest log-odds (N, K, 2) from G(styles), unclamped like the edits, to the edits'
        ``logits`` (N, K, 2, C)."""
        base = predict_styles(self.generator, self.models.classifier, styles, self.batch_size)
        return class_score(logits, target[:, None, None], "logits") - class_score(base, target, "logits")[:, None, None]

    def class_attributes(self, images: Tensor, target: int, k: int = 10, method: str = "greedy") -> pd.DataFrame:
        """AttFind's top-``k`` attributes of class ``target`` over a set of images (the paper's Algorithm 1)."""
        styles, logits = self.encode(images)
        cfg = AttFindConfig(shift=self.editor.shift, shift_std=self.editor.shift_std, include_torgb=self.include_torgb,
                            batch_size=self.batch_size, output="logits", method=method)
        effects: Effects = compute_effects(self.models, styles, logits, torch.arange(len(styles)), self.stats, cfg,
                                           progress=False)
        table = class_attributes(effects, target, k, cfg.output, cfg.method, *default_thresholds(cfg))
        index = self.generator.style_index
        return table.assign(layer=[index.locate(f).name for f in table["flat"]],
                            channel=[index.locate(f).channel for f in table["flat"]])

    def edit(self, images: Tensor, attribute: Attribute, strength: float = 1.0) -> Tensor:
        """The images with one attribute applied (strength 1: the AttFind shift, 0: the reconstruction)."""
        styles, _ = self.encode(images)
        return self.render(self.editor.edit(styles, attribute.flat, Direction.of(attribute.direction).value, strength))
