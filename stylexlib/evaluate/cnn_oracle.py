"""A labelled-attribute oracle that is a small multi-label CNN trained on the real training images (``evaluate.oracle:
cnn``), as ACE's and DiME's MNAC oracle is: the built-in classifier's architecture
(:class:`stylexlib.classifier.model.SmallCNN`) with one output per binary label column, masked BCE (unknown labels
left out), horizontal flips, early stopping on the val split's mean AUC. Read like the LPIPS-feature probes of
:mod:`.label_oracle` (``read``, ``trusted``, ``table``, ``class_columns``, ``probes``): each column's held-out ROC
AUC on the test split decides whether it is trusted.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from stylexlib.classifier.model import ClassifierWrapper, SmallCNN
from stylexlib.core.progress import tqdm
from stylexlib.data import ImageDataset, to_float
from stylexlib.evaluate.label_columns import MIN_AUC, OracleColumns, binary_targets, oracle_rows, roc_auc

log = logging.getLogger(__name__)

CNN_ORACLE_FILE = ("evaluate", "label_oracle_cnn.pt")
# what run_label_oracle trains it with (part of the cached oracle's key: a change retrains it)
CNN_SETTINGS = {"width": 16, "epochs": 6, "patience": 2, "batch_size": 128, "lr": 2e-3, "weight_decay": 1e-4,
                "train_images": None, "test_images": 1000}


@dataclass
class CNNLabelOracle(OracleColumns):
    """A multi-label CNN (one logit per column), with each column's held-out AUC on real images."""

    model: ClassifierWrapper  # images in [-1, 1] -> (N, len(columns)) logits
    columns: list[str]
    auc: dict[str, float]  # ROC AUC on held-out real test images
    positive_rate: dict[str, float]  # share of the positive value on the training images
    class_columns: list[str] = field(default_factory=list)  # read, but never an attribute's main label
    min_auc: float = MIN_AUC
    history: list[dict] = field(default_factory=list)  # per epoch: train loss, val mean AUC, seconds so far
    seconds: float = 0.0  # training and held-out scoring

    @property
    def probes(self) -> dict[str, int]:
        """The columns the oracle reads, each with its output index (as the probes oracle's ``probes``)."""
        return {c: k for k, c in enumerate(self.columns)}

    @torch.no_grad()
    def probabilities(self, images: Tensor, columns: list[str] | None = None, batch_size: int = 256) -> Tensor:
        """(N, len(columns)) probability of each column's positive value (default: the trusted columns) for images
        in [-1, 1] or uint8 (on the CPU)."""
        columns = self.trusted if columns is None else columns
        pick = torch.tensor([self.columns.index(c) for c in columns], dtype=torch.long)
        return predict_logits(self.model, images, batch_size)[:, pick].sigmoid()

    def read(self, lpips_model: torch.nn.Module | None, images: Tensor) -> Tensor:
        """:meth:`probabilities` of the trusted columns (``lpips_model`` is not needed: the probes' signature)."""
        return self.probabilities(images)

    def to_dict(self) -> dict:
        """Plain tensors, numbers and strings (for ``torch_save`` / ``weights_only`` loading)."""
        net = self.model.model
        return {"kind": "cnn", "arch": net.arch, "state_dict": net.state_dict(), "columns": self.columns,
                "auc": self.auc, "positive_rate": self.positive_rate, "class_columns": self.class_columns,
                "min_auc": self.min_auc, "history": self.history, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict) -> "CNNLabelOracle":
        net = SmallCNN(**d["arch"])
        net.load_state_dict(d["state_dict"])
        return cls(ClassifierWrapper(net, input_size=d["arch"]["resolution"]).eval(), d["columns"], d["auc"],
                   d["positive_rate"], d["class_columns"], d["min_auc"], d["history"], d["seconds"])


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """The model's logits (on the CPU, float) for uint8 or [-1, 1] images, in eval mode, batch by batch."""
    model.eval()
    device = next(model.parameters()).device
    parts = [model((to_float(b) if b.dtype == torch.uint8 else b.float()).to(device)).float().cpu()
             for b in images.split(batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, model.model.arch["num_classes"])


def column_aucs(truth: np.ndarray, scores: np.ndarray, columns: list[str]) -> dict[str, float]:
    """Per column: :func:`roc_auc` of ``scores`` (N, K) against 0/1 ``truth`` (N, K) over the rows where it is known."""
    known = ~np.isnan(truth)
    return {c: roc_auc(truth[known[:, k], k] > 0.5, scores[known[:, k], k]) for k, c in enumerate(columns)}


def masked_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy of (N, K) logits against 0/1 targets, averaged over the known (not NaN) entries."""
    known = ~targets.isnan()
    loss = F.binary_cross_entropy_with_logits(logits, targets.nan_to_num(0.0), reduction="none")
    return (loss * known).sum() / known.sum().clamp_min(1)


def fit_cnn_oracle(data: ImageDataset, columns: list[str], class_cols: list[str], seed: int = 0,
                   width: int = 16, epochs: int = 6, patience: int = 2, batch_size: int = 128, lr: float = 2e-3,
                   weight_decay: float = 1e-4, train_images: int | None = None, test_images: int = 1000,
                   min_auc: float = MIN_AUC, device: torch.device | str = "cpu") -> CNNLabelOracle:
    """A multi-label CNN over the binary ``columns`` (and the class columns, read but never named) trained on up to
    ``train_images`` real training images (None: all) with AdamW, a one-cycle schedule and horizontal flips for up to
    ``epochs``, kept at the epoch of the best mean AUC on the val split (stopping after ``patience`` epochs without
    a gain), scored by each column's AUC on up to ``test_images`` held-out images (:func:`oracle_rows`)."""
    started = time.perf_counter()
    train, held = oracle_rows(data, seed, train_images, test_images)
    positives = binary_targets(data, list(dict.fromkeys([*columns, *class_cols])), train)
    kept = list(positives)
    targets = torch.tensor(np.stack([positives[c] for c in kept], 1), dtype=torch.float32)
    val = data.indices("val")
    torch.manual_seed(seed)
    model = ClassifierWrapper(SmallCNN(len(kept), data.resolution, width), input_size=data.resolution).to(device)
    steps = epochs * -(-len(train) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1))
    generator = torch.Generator().manual_seed(seed)
    history, best, best_state, stale = [], -np.inf, None, 0
    bar = tqdm(total=steps, desc="label oracle (CNN)")
    for epoch in range(epochs):
        model.train()
        total = 0.0
        for batch in torch.as_tensor(train)[torch.randperm(len(train), generator=generator)].split(batch_size):
            x = to_float(data.images[batch])
            flip = torch.rand(len(x), generator=generator) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x).to(device)
            loss = masked_bce(model(x), targets[batch].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
            bar.update()
        score = (np.nanmean(list(column_aucs(targets[val].numpy(), predict_logits(model, data.images[val]).numpy(),
                                             kept).values())) if len(val) else float(epoch))  # no val: the last
        history.append({"epoch": epoch + 1, "train_loss": total / len(train), "val_mean_auc": float(score),
                        "seconds": time.perf_counter() - started})
        bar.set_postfix(val_auc=f"{score:.3f}")
        log.info("label oracle CNN epoch %d: %s", epoch + 1, history[-1])
        if score > best:
            best, stale = score, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= patience:
                break
    bar.close()
    model.load_state_dict(best_state)
    model = model.cpu().eval()
    auc = column_aucs(targets[held].numpy(), predict_logits(model, data.images[torch.as_tensor(held)]).numpy(), kept)
    rate = {c: float(np.nanmean(positives[c][train])) for c in kept}
    return CNNLabelOracle(model, kept, auc, rate, [c for c in class_cols if c in kept], min_auc, history,
                          time.perf_counter() - started)
