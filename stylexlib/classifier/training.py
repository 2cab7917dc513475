"""Train and evaluate the classifier to explain: accuracy, confusion matrix, calibration."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stylexlib.classifier.checks import check_accuracy, check_finite
from stylexlib.classifier.model import (ClassifierWrapper, build_classifier, check_classifier, load_trained_classifier,
                                        load_user_classifier, save_classifier)
from stylexlib.classifier.predict import classify
from stylexlib.core.config import ClassifierConfig
from stylexlib.core.io import torch_load, torch_save
from stylexlib.core.progress import tqdm
from stylexlib.core.provenance import accepts, check, classifier_fingerprint
from stylexlib.data import ImageDataset, to_float

log = logging.getLogger(__name__)

CLASSIFIER_FILE = "classifier.pt"
CLASSIFIER_TRAIN_STATE = ("checkpoints", "classifier_train_state.pt")


@dataclass
class Evaluation:
    """Predictions of a classifier on a labelled set, and the usual summaries."""

    labels: np.ndarray
    probs: np.ndarray
    class_names: list[str]
    loss: float
    predictions: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.predictions = self.probs.argmax(1)

    @property
    def accuracy(self) -> float:
        return float((self.predictions == self.labels).mean())

    def confusion(self) -> np.ndarray:
        """Counts[true class, predicted class]."""
        k = len(self.class_names)
        return np.bincount(self.labels * k + self.predictions, minlength=k * k).reshape(k, k)

    def calibration(self, bins: int = 15) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        """(expected calibration error, bin confidence, bin accuracy, bin count) over max-probability bins."""
        confidence = self.probs.max(1)
        correct = (self.predictions == self.labels).astype(float)
        which = np.minimum((confidence * bins).astype(int), bins - 1)
        count = np.bincount(which, minlength=bins)
        conf = np.bincount(which, confidence, minlength=bins) / np.maximum(count, 1)
        acc = np.bincount(which, correct, minlength=bins) / np.maximum(count, 1)
        ece = float((count / max(len(confidence), 1) * np.abs(acc - conf)).sum())
        return ece, conf, acc, count


@torch.no_grad()
def evaluate(
    model: ClassifierWrapper,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> Evaluation:
    """Run the classifier on uint8 or [-1, 1] images and summarise."""
    model.eval()
    logits_t = classify(model, images, batch_size, device)
    loss = F.cross_entropy(logits_t, labels).item() if len(labels) else float("nan")
    return Evaluation(labels.numpy(), logits_t.softmax(-1).numpy(), class_names, loss)


def train_classifier(
    model: ClassifierWrapper,
    data: ImageDataset,
    cfg: ClassifierConfig,
    device: torch.device | str = "cpu",
    checkpoint: str | Path | None = None,
    fingerprint: str | None = None,
) -> list[dict]:
    """Train with AdamW + cosine schedule; returns per-epoch history. Resumes from ``checkpoint`` if present and made
    with the same ``fingerprint`` (else starts afresh)."""
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    model.to(device)
    train_idx = torch.as_tensor(data.indices("train"))
    images, labels = data.images[train_idx], data.labels[train_idx]
    val_idx = torch.as_tensor(data.indices("val"))
    steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    history: list[dict] = []
    start = 0
    state = torch_load(checkpoint, map_location=device) if checkpoint is not None and Path(checkpoint).exists() else None
    if state is not None and not accepts(state.get("fingerprint"), fingerprint):
        log.warning("%s was made from another config or other data: training the classifier afresh", checkpoint)
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, start = state["history"], state["epoch"]
        torch.set_rng_state(state["rng"])
        log.info("resuming classifier training at epoch %d from %s", start, checkpoint)
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(start):  # keep the shuffling sequence identical after a resume
        torch.randperm(len(train_idx), generator=gen)
    for epoch in tqdm(range(start, cfg.epochs), desc="classifier", initial=start, total=cfg.epochs):
        model.train()
        order = torch.randperm(len(train_idx), generator=gen)
        total_loss, total_correct = 0.0, 0
        for batch in order.split(cfg.batch_size):
            x = to_float(images[batch]).to(device)
            y = labels[batch].to(device)
            if cfg.augment:
                flip = torch.rand(len(x), device=device) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(y)
            total_correct += (logits.argmax(1) == y).sum().item()
        val = evaluate(model, data.images[val_idx], data.labels[val_idx], data.class_names, device=device)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": total_loss / len(train_idx),
                "train_accuracy": total_correct / len(train_idx),
                "val_loss": val.loss,
                "val_accuracy": val.accuracy,
            }
        )
        log.info("epoch %d: %s", epoch + 1, history[-1])
        if checkpoint is not None:
            torch_save(
                checkpoint,
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "history": history,
                    "epoch": epoch + 1,
                    "rng": torch.get_rng_state(),
                    "fingerprint": fingerprint,
                },
            )
    model.eval()
    return history


def fit_run_classifier(run, data: ImageDataset, device: torch.device | str = "cpu") -> tuple[ClassifierWrapper, list[dict]]:
    """Stage 02: train the built-in CNN into the run folder (resumable), or load and check the user's model."""
    c = run.cfg.classifier
    if c.num_classes is not None and c.num_classes != data.num_classes:
        raise ValueError(f"classifier.num_classes is {c.num_classes} but the data has {data.num_classes} classes")
    if c.source != "train":
        return load_run_classifier(run, data), []
    torch.manual_seed(c.seed)  # the initial weights too: the same config gives the same classifier
    model = build_classifier(data.num_classes, data.resolution, c.width)
    made_from = classifier_fingerprint(run.cfg)
    history = train_classifier(model, data, c, device, checkpoint=run.path(*CLASSIFIER_TRAIN_STATE),
                               fingerprint=made_from)
    save_classifier(run.path(CLASSIFIER_FILE), model.cpu(), data.class_names,
                    {"history": history, "fingerprint": made_from})
    return model.eval(), history


def load_run_classifier(run, data: ImageDataset | None = None,
                        data_class_names: list[str] | None = None) -> ClassifierWrapper:
    """The frozen classifier of a run: the one stage 02 trained, or the user's own (``classifier.source``; given
    ``data``: its outputs in the data's class order and checked to beat chance). Without ``data``, a user model's
    outputs are put in ``data_class_names`` order: the data's classes as an artifact checked against the run's config
    and data records them (the StylEx checkpoint's, :func:`stylexlib.gan.models.load_stylex`); without those the data
    is loaded to read them."""
    c = run.cfg.classifier
    if c.source == "train":
        model, _ = load_trained_classifier(run.dir / CLASSIFIER_FILE)
        check(model.made_from, classifier_fingerprint(run.cfg), run.dir / CLASSIFIER_FILE, "02")
    else:
        model = load_user_classifier(c.source, c.input_size, c.mean, c.std)
        if data is None and c.class_names is not None:  # the outputs still need the data's class order
            if data_class_names is None:
                from stylexlib.data import load_dataset

                log.info("no checked artifact of %s records the data's class order: loading the data to read it",
                         run.dir)
                data_class_names = load_dataset(run.cfg.data).class_names
            model.set_class_order(c.class_names, data_class_names)
    if data is not None:
        check_classifier(model, data.num_classes, data.resolution)
        if c.source != "train":
            model.set_class_order(c.class_names, data.class_names)
            if c.check_accuracy:
                check_accuracy(model, data, c.class_names, seed=c.seed)
            else:
                check_finite(model, data, seed=c.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
