"""``stylex run --plan CONFIG``: what a config will cost on this machine, estimated from a few timed steps of the
models the config builds (on random images; nothing is trained or written), per stage."""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from stylexlib.classifier.model import build_classifier, load_user_classifier
from stylexlib.core.config import Config
from stylexlib.core.run import pick_device
from stylexlib.core.stylex_config import replace_keys
from stylexlib.data import ImageDataset
from stylexlib.explain.attfind.effects import edited_logits_fast, edited_logits_naive, searched_coordinates
from stylexlib.gan.pace import duration, training_time
from stylexlib.gan.train import StylexTrainer
from stylexlib.stylespace.accelerate import inference_copies

TIMED_STEPS = 4  # timed StylEx steps (and warm-up steps), each after one untimed step (allocations, autotuning)
TIMED_CLASSIFIER_STEPS = 2  # the classifier's steps vary little
TIMED_EDITS = 128  # AttFind edits timed on one image (coordinates spread over every layer)


@dataclasses.dataclass
class DataSize:
    """How many images a config's data has, how many of them train, and its number of classes."""

    images: int
    train: int
    classes: int
    note: str = ""


def data_size(cfg: Config) -> DataSize:
    """How many images (and train images) the config's data has, without decoding them."""
    d = cfg.data
    if d.source == "synthetic":
        images, classes, note = d.num_images, len(d.class_names), ""
    else:
        from stylexlib.data.folder import folder_rows

        rows = folder_rows(d)
        images, classes, note = len(rows), rows["label"].nunique(), " (listed; unreadable files are skipped later)"
        if "split" in rows:
            return DataSize(images, int((rows["split"] == "train").sum()), classes, note)
    return DataSize(images, max(1, round(images * (1 - d.val_fraction - d.test_fraction))), classes, note)


def plan(cfg: Config, say: Callable[[str], None] = print, timed_steps: int = TIMED_STEPS) -> float:
    """Print (through ``say``) the estimated cost of stages 02, 03 and 05 of ``cfg`` on this machine; returns their
    total seconds."""
    device = pick_device(cfg.stylex.runtime.device)
    size = data_size(cfg)
    res = cfg.data.resolution
    where = f"{device}, {torch.get_num_threads()} threads" if device.type == "cpu" else str(device)
    say(f"[stylex] plan for {cfg.name}: an estimate from a few timed steps of each model on this machine ({where}), "
        "on random images; nothing is trained or written")
    say(f"[stylex]   data: {size.images} images{size.note}, about {size.train} to train on, {res}x{res}, "
        f"{size.classes} classes")
    torch.manual_seed(0)
    total = 0.0
    c = cfg.classifier
    if c.source == "train":
        classifier = build_classifier(size.classes, res, c.width).to(device)
        optimizer = torch.optim.AdamW(classifier.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        per_step = _time(lambda: _classifier_step(classifier, optimizer, c.batch_size, res, size.classes, device),
                         TIMED_CLASSIFIER_STEPS, device)
        steps = math.ceil(size.train / c.batch_size)
        seconds = c.epochs * steps * per_step
        total += seconds
        say(f"[stylex]   02 classifier: {c.epochs} epochs x {steps} steps (batch {c.batch_size}) at "
            f"{per_step:.3g} s/step ({TIMED_CLASSIFIER_STEPS} timed): ~{duration(seconds)}")
    else:
        classifier = load_user_classifier(c.source, c.input_size, c.mean, c.std).to(device)
        say(f"[stylex]   02 classifier: your model ({c.source}): loaded and checked only")
    classifier.eval().requires_grad_(False)

    s = replace_keys(cfg.stylex, compile=False)  # compiling takes a minute and changes little on CPUs
    images = max(2 * s.optim.batch_size, 64)
    data = ImageDataset(images=torch.randint(0, 256, (images, 3, res, res), dtype=torch.uint8),
                        labels=torch.arange(images) % size.classes,
                        class_names=[str(i) for i in range(size.classes)],
                        split=np.array(["train"] * (images - 16) + ["val"] * 16))
    trainer = StylexTrainer(s, data, classifier, out_dir=None, device=device)
    warmup, schedule, every = (0, 0.0), s.schedule, s.regularise.r1_every
    if schedule.warmup_steps > 0:
        trainer.step = 0
        warmup = (schedule.warmup_steps, _time(trainer.train_step, timed_steps, device))
    trainer.step = math.ceil(schedule.warmup_steps / every) * every + 1  # the lazy R1 steps left out (1 in 16)
    per_step = _time(trainer.train_step, timed_steps, device)
    limit = schedule.time_limit_minutes * 60 if schedule.time_limit_minutes else None
    fit = s.encoder_fit.minutes * 60 if s.encoder_fit.minutes and limit else 0.0
    end, seconds = training_time(0, schedule.steps, per_step, limit - fit if limit else None, warmup)
    speeds = f"{per_step:.3g} s/step" + (f", {warmup[1]:.3g} s/step in the {schedule.warmup_steps}-step warm-up"
                                         if schedule.warmup_steps else "") + f"; {timed_steps} timed"
    if end < schedule.steps:
        what = (f"about {end} of {schedule.steps} steps fit in the {schedule.time_limit_minutes:g}-minute limit "
                f"({speeds})")
    else:
        what = f"{schedule.steps} steps ({speeds})"
    total += seconds + fit
    say(f"[stylex]   03 StylEx: {what}: ~{duration(seconds)}"
        + (f", then {duration(fit)} of encoder fit" if fit else "")
        + (" (stylex.runtime.compile is on: not timed compiled)" if cfg.stylex.runtime.compile else ""))

    a = cfg.attfind
    generator = trainer.G_ema
    coords = searched_coordinates(generator, a.include_torgb)
    edits = a.num_images * len(coords) * 2
    per_edit = _attfind_seconds_per_edit(generator, classifier, coords, a.batch_size or 64, a.fast, device)
    exact = min(1.0, trainer.num_classes * (a.screen_candidates + a.screen_per_image) / (2 * len(coords))) \
        if a.screen else 1.0  # at most this share of each image's edits
    seconds = edits * exact * per_edit
    total += seconds
    screened = f", at most {exact:.0%} of them evaluated (attfind.screen)" if a.screen else ""
    say(f"[stylex]   05 AttFind: {a.num_images} images x {len(coords)} coordinates x 2 edits = {edits} edits"
        f"{screened} at {per_edit * 1000:.3g} ms/edit ({min(len(coords), TIMED_EDITS // 2) * 2} timed): "
        f"~{duration(seconds)}")
    say(f"[stylex]   these stages: ~{duration(total)} in all; the others (inversion, gallery, studies, comparisons) "
        "are not estimated")
    return total


def _time(step: Callable[[], object], count: int, device: torch.device) -> float:
    """Seconds per call of ``step``, from ``count`` calls after an untimed one."""
    step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(count):
        step()
    _sync(device)
    return (time.perf_counter() - started) / count


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _classifier_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: int, res: int, classes: int,
                     device: torch.device) -> float:
    """One training step of the built-in CNN on a random batch (what stage 02 repeats)."""
    model.train()
    x = torch.rand(batch, 3, res, res, device=device) * 2 - 1
    y = torch.randint(0, classes, (batch,), device=device)
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


@torch.no_grad()
def _attfind_seconds_per_edit(generator, classifier, coords: torch.Tensor, batch_size: int, fast: bool,
                              device: torch.device) -> float:
    """Seconds per edit of AttFind's search (its fast or naive path) on one image, over coordinates spread across
    every layer."""
    picked = coords[torch.linspace(0, len(coords) - 1, min(len(coords), TIMED_EDITS // 2)).long().unique()]
    w = generator.mapping(torch.randn(1, generator.latent_dim, device=device))
    styles = generator.styles(w, torch.full((1, generator.num_classes), 1 / generator.num_classes,
                                            device=device)).cpu()
    targets = torch.stack([styles - 1, styles + 1])  # (2, 1, S)
    if fast:
        G, C = inference_copies(generator, classifier, compile=False)
        run = lambda: edited_logits_fast(G, C, styles, targets, picked, batch_size)  # noqa: E731
    else:
        run = lambda: edited_logits_naive(generator, classifier, styles, targets, picked)  # noqa: E731
    return _time(run, 1, device) / (2 * len(picked))
