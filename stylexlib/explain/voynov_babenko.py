"""Unsupervised discovery of interpretable directions in a GAN's latent space (Voynov & Babenko, ICML 2020).

A matrix of K directions A in W and a reconstructor R are trained jointly: R sees the pair (G(w), G(w + eps A_k))
and must tell which direction k was taken (cross-entropy) and how far (L1 on eps, weight 0.25). Directions that R can
tell apart are ones that change the image in distinct ways. The generator stays frozen; no classifier is involved.

Differences from the public code, on purpose: A is either the first K columns of a full D x D orthogonal matrix
(torch's orthogonal parametrisation; never zero-padded) or K free unit columns ("linear"); shifts live in W with
their range scaled to W's spread; the device follows the models; training resumes from its checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import orthogonal

from stylexlib.core.io import torch_load, torch_save
from stylexlib.core.progress import tqdm
from stylexlib.core.provenance import accepts
from stylexlib.gan.models import StylexModels

KINDS = ("orthogonal", "linear")
SHIFT_WEIGHT = 0.25  # the paper's weight of the shift regression


class DirectionMatrix(nn.Module):
    """``count`` unit directions in a ``dim``-dimensional latent space; ``forward()`` gives them as rows (K, D)."""

    def __init__(self, dim: int, count: int, kind: str = "orthogonal") -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"the direction matrix must be one of {KINDS}, got '{kind}'")
        if kind == "orthogonal" and count > dim:
            raise ValueError(f"{count} orthogonal directions do not fit in {dim} dimensions: use fewer, or 'linear'")
        self.kind, self.count = kind, count
        if kind == "orthogonal":
            self.square = orthogonal(nn.Linear(dim, dim, bias=False))
        else:
            self.raw = nn.Parameter(torch.randn(dim, count))

    def forward(self) -> Tensor:
        if self.kind == "orthogonal":
            return self.square.weight[:, : self.count].T
        return (self.raw / self.raw.norm(dim=0, keepdim=True)).T


class Reconstructor(nn.Module):
    """A LeNet-sized CNN: (image, shifted image) -> (logits over the K directions, the shift)."""

    def __init__(self, count: int, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(6, width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(64 * width, 256), nn.ReLU())
        self.direction = nn.Linear(256, count)
        self.shift = nn.Linear(256, 1)

    def forward(self, image: Tensor, shifted: Tensor) -> tuple[Tensor, Tensor]:
        h = self.features(torch.cat([image, shifted], 1))
        return self.direction(h), self.shift(h)[:, 0]


@dataclass
class VoynovBabenko:
    """What training leaves: the directions (K, D), R's accuracy on fresh pairs, and the training curves."""

    directions: Tensor
    accuracy: float
    chance: float
    history: pd.DataFrame


class VoynovBabenkoTrainer:
    """Trains A and R against a frozen generator; ``conditions`` is a bank of class inputs c drawn with each w."""

    def __init__(self, models: StylexModels, conditions: Tensor, count: int = 32, kind: str = "orthogonal",
                 batch_size: int = 32, lr: float = 1e-3, shift_range: tuple[float, float] = (0.5, 6.0),
                 seed: int = 0, checkpoint: str | Path | None = None, fingerprint: str | None = None) -> None:
        torch.manual_seed(seed)
        self.generator, self.device = models.generator, models.device
        self.matrix = DirectionMatrix(self.generator.latent_dim, count, kind).to(self.device)
        self.reconstructor = Reconstructor(count).to(self.device)
        self.optimizer = torch.optim.Adam([*self.matrix.parameters(), *self.reconstructor.parameters()], lr=lr)
        self.conditions, self.count = conditions.float(), count
        self.batch_size, self.shift_range = batch_size, shift_range
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.fingerprint = fingerprint
        self.random = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # W's spread: the shifts are measured in it
            z = torch.randn(4096, self.generator.latent_dim, generator=self.random)
            w = self.generator.mapping(z.to(self.device))
            self.w_scale = float(w.var(0).mean().sqrt())
        self.step, self.history = 0, []

    def pairs(self, count: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(images, shifted images, directions k, shifts in W-spread units) for ``count`` random draws."""
        z = torch.randn(count, self.generator.latent_dim, generator=self.random).to(self.device)
        c = self.conditions[torch.randint(len(self.conditions), (count,), generator=self.random)].to(self.device)
        k = torch.randint(self.count, (count,), generator=self.random).to(self.device)
        low, high = self.shift_range
        size = low + (high - low) * torch.rand(count, generator=self.random)
        eps = (size * torch.where(torch.rand(count, generator=self.random) < 0.5, -1.0, 1.0)).to(self.device)
        w = self.generator.mapping(z)
        shifted = w + (eps * self.w_scale)[:, None] * self.matrix()[k]
        images = self.generator(torch.cat([w, shifted]), torch.cat([c, c]))
        return images[:count], images[count:], k, eps

    def train_step(self) -> dict[str, float]:
        image, shifted, k, eps = self.pairs(self.batch_size)
        logits, shift = self.reconstructor(image, shifted)
        direction_loss, shift_loss = F.cross_entropy(logits, k), F.l1_loss(shift, eps)
        self.optimizer.zero_grad(set_to_none=True)
        (direction_loss + SHIFT_WEIGHT * shift_loss).backward()
        self.optimizer.step()
        self.step += 1
        return {"step": self.step, "direction_loss": direction_loss.item(), "shift_loss": shift_loss.item(),
                "accuracy": (logits.argmax(1) == k).float().mean().item()}

    def train(self, steps: int, checkpoint_every: int = 200, progress: bool = True) -> VoynovBabenko:
        """Train to ``steps`` (resuming from the checkpoint), then measure R's accuracy on 512 fresh pairs."""
        self.resume()
        bar = tqdm(total=steps, initial=self.step, desc="Voynov-Babenko", disable=not progress)
        while self.step < steps:
            record = self.train_step()
            self.history.append(record)
            bar.update(1)
            if self.step % 20 == 0:
                recent = pd.DataFrame(self.history[-100:])
                bar.set_postfix(accuracy=f"{recent['accuracy'].mean():.2f}", shift=f"{recent['shift_loss'].mean():.2f}")
            if self.step % checkpoint_every == 0 or self.step == steps:
                self.save()
        bar.close()
        return VoynovBabenko(self.matrix().detach().cpu(), self.accuracy(), 1 / self.count, pd.DataFrame(self.history))

    @torch.no_grad()
    def accuracy(self, count: int = 512) -> float:
        hits = 0
        for start in range(0, count, self.batch_size * 4):
            image, shifted, k, _ = self.pairs(min(self.batch_size * 4, count - start))
            hits += int((self.reconstructor(image, shifted)[0].argmax(1) == k).sum())
        return hits / count

    def state_dict(self) -> dict:
        return {"fingerprint": self.fingerprint, "step": self.step, "matrix": self.matrix.state_dict(),
                "reconstructor": self.reconstructor.state_dict(), "optimizer": self.optimizer.state_dict(),
                "history": self.history, "random": self.random.get_state()}

    def save(self) -> None:
        if self.checkpoint is not None:
            torch_save(self.checkpoint, self.state_dict())

    def resume(self) -> bool:
        """Continue from the checkpoint when it was made for the same generator and settings."""
        if self.checkpoint is None or not self.checkpoint.exists():
            return False
        state = torch_load(self.checkpoint)
        if not accepts(state.get("fingerprint"), self.fingerprint):
            return False
        self.matrix.load_state_dict(state["matrix"])
        self.reconstructor.load_state_dict(state["reconstructor"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.history = int(state["step"]), list(state["history"])
        self.random.set_state(state["random"])
        return True


def training_curves(history: pd.DataFrame, chance: float, window: int = 50):
    """R's accuracy (with chance) and the shift loss over training, smoothed over ``window`` steps."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    smooth = history.rolling(window, min_periods=1).mean()
    axes[0].plot(history["step"], smooth["accuracy"], label="reconstructor")
    axes[0].axhline(chance, color="gray", ls="--", label=f"chance (1/{round(1 / chance)})")
    axes[0].set(xlabel="step", ylabel="direction accuracy", ylim=(0, 1))
    axes[0].legend()
    axes[1].plot(history["step"], smooth["shift_loss"])
    axes[1].set(xlabel="step", ylabel="shift L1 (W-spread units)")
    fig.suptitle("Voynov & Babenko: can R tell the directions apart?")
    fig.tight_layout()
    return fig


__all__ = ["DirectionMatrix", "Reconstructor", "VoynovBabenko", "VoynovBabenkoTrainer", "training_curves"]
