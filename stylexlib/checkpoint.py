"""What StylEx training leaves in a run folder: the checkpoint, stats.jsonl, and the trained models.

Later stages load the models with :func:`load_stylex`. A checkpoint is one file (``checkpoints/stylex.pt`` in the run folder), written atomically and
loaded with ``weights_only=True``: it holds only tensors, dicts, lists, numbers and strings.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .classify import load_run_classifier
from .config import StylexConfig, from_dict
from .data import ImageDataset, to_float
from .io import torch_load
from .models import Discriminator, Encoder, FeatureDiscriminator, Generator
from .provenance import check, stylex_fingerprint
from .run import Run, pick_device

log = logging.getLogger(__name__)

CHECKPOINT_FILE = ("checkpoints", "stylex.pt")
CHECKPOINT_FORMAT = 1
STATS_FILE = "stats.jsonl"  # one JSON line per logged training step


def checkpoint_path(run_dir: str | Path) -> Path:
    """Where a run folder keeps its StylEx checkpoint."""
    return Path(run_dir).joinpath(*CHECKPOINT_FILE)


def build_networks(resolution: int, num_classes: int, cfg: StylexConfig
                   ) -> tuple[Generator, Encoder, Discriminator | FeatureDiscriminator]:
    """Fresh G, E and D for images of ``resolution`` and a classifier with ``num_classes`` outputs."""
    return (
        Generator(resolution, num_classes, cfg),
        Encoder(resolution, cfg.latent_dim, cfg),
        FeatureDiscriminator(resolution, num_classes, cfg) if cfg.discriminator == "features"
        else Discriminator(resolution, num_classes, cfg),
    )


def capture_rng(device: torch.device) -> dict[str, Tensor]:
    """The global torch RNG states this process uses (CPU, and the current GPU's)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Tensor], device: torch.device) -> None:
    """Restore states from :func:`capture_rng`."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def load_checkpoint(path: str | Path) -> dict:
    """Read a StylEx checkpoint (``weights_only``) and check its format."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no StylEx checkpoint at {path}; run stage 03_train_stylex first")
    state = torch_load(path)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {state.get('format')!r} (expected {CHECKPOINT_FORMAT})")
    return state


def class_input(logits: Tensor, condition_on: str) -> Tensor:
    """The generator's class input c for classifier logits: the probabilities, the logits, or zeros for a GAN trained
    without the classifier (``stylex.condition_on``: "probs", "logits", "none")."""
    if condition_on == "none":
        return torch.zeros_like(logits)
    return logits.softmax(dim=1) if condition_on == "probs" else logits


@dataclass
class StylexModels:
    """The trained StylEx models, frozen and ready for inversion: EMA generator, encoder, classifier (and D)."""

    generator: Generator
    encoder: Encoder
    classifier: nn.Module
    cfg: StylexConfig
    class_names: list[str]
    step: int
    device: torch.device
    discriminator: Discriminator | None = None  # for AttFind's optional realism filter

    def condition(self, logits: Tensor) -> Tensor:
        """The generator's class input for classifier logits (``cfg.condition_on``)."""
        return class_input(logits, self.cfg.condition_on)

    def prepare(self, images: Tensor) -> Tensor:
        """uint8 or [-1, 1] images -> float images on the models' device."""
        return (to_float(images) if images.dtype == torch.uint8 else images.float()).to(self.device)

    @torch.no_grad()
    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Images -> (w = E(x), c = the classifier's output on x, as the generator takes it)."""
        x = self.prepare(images)
        return self.encoder(x), self.condition(self.classifier(x).float())

    @torch.no_grad()
    def reconstruct(self, images: Tensor, noise_mode: str = "const") -> Tensor:
        """G(E(x), C(x)) for uint8 or [-1, 1] images."""
        w, c = self.encode(images)
        return self.generator(w, c, noise_mode=noise_mode)


def load_stylex(run: Run, device: torch.device | str | None = None, data: ImageDataset | None = None) -> StylexModels:
    """Load a run's EMA generator and encoder (from ``checkpoints/stylex.pt``) and its frozen classifier."""
    return load_models(checkpoint_path(run.dir), load_run_classifier(run, data), stylex_fingerprint(run.cfg), "03",
                       device)


def load_models(path: Path, classifier: nn.Module, expected: str | None, stage: str,
                device: torch.device | str | None = None) -> StylexModels:
    """The frozen EMA generator, encoder and discriminator of the checkpoint at ``path``, with ``classifier``; refuses a
    checkpoint whose fingerprint is not ``expected`` (naming ``stage`` to re-run)."""
    state = load_checkpoint(path)
    if expected is not None:
        check(state.get("fingerprint"), expected, path, stage)
    cfg = from_dict(state["config"], StylexConfig, "stylex")
    device = torch.device(device) if device is not None else pick_device(cfg.device)
    generator, encoder, discriminator = build_networks(state["resolution"], state["num_classes"], cfg)
    generator.load_state_dict(state["G_ema"])
    encoder.load_state_dict(state.get("E_ema", state["E"]))  # the encoder EMA pairs with G_ema when it was kept
    discriminator.load_state_dict(state["D"])
    generator, encoder, classifier, discriminator = (
        m.to(device).eval().requires_grad_(False) for m in (generator, encoder, classifier, discriminator))
    log.info("loaded the models of step %d from %s", state["step"], path)
    return StylexModels(generator, encoder, classifier, cfg, list(state["class_names"]), int(state["step"]), device,
                        discriminator)


def read_stats(run_dir: str | Path) -> list[dict]:
    """The records of a run's stats.jsonl (empty when there is none)."""
    path = Path(run_dir) / STATS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
