"""The trained StylEx models: fresh networks from a config, a checkpoint's frozen models, and
:class:`StylexModels`, the object inversion, AttFind and every explainer use (encode, reconstruct)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from stylexlib.classifier.training import load_run_classifier
from stylexlib.core.config import InversionConfig, StylexConfig, from_dict
from stylexlib.core.provenance import check, stylex_fingerprint
from stylexlib.core.run import Run, pick_device
from stylexlib.data import ImageDataset, to_float
from stylexlib.gan import Discriminator, Encoder, Generator
from stylexlib.gan.checkpoint import checkpoint_path, load_checkpoint
from stylexlib.gan.inversion_store import STORE_DIR, InversionStore, store_identity

log = logging.getLogger(__name__)


def build_networks(resolution: int, num_classes: int, cfg: StylexConfig
                   ) -> tuple[Generator, Encoder, Discriminator]:
    """Fresh G, E and D for images of ``resolution`` and a classifier with ``num_classes`` outputs."""
    return (
        Generator(resolution, num_classes, cfg),
        Encoder(resolution, cfg.model.latent_dim, cfg),
        Discriminator(resolution, num_classes, cfg),
    )


def class_input(logits: Tensor, condition_on: str) -> Tensor:
    """The generator's class input c for classifier logits: the probabilities, the logits, or zeros for a GAN trained
    without the classifier (``stylex.model.condition_on``: "probs", "logits", "none")."""
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
    inversion: InversionConfig = field(default_factory=InversionConfig)  # how stylespace.inversion.invert inverts
    store: InversionStore | None = None  # where refined inversions are kept and read back (a run's, or none)

    def condition(self, logits: Tensor) -> Tensor:
        """The generator's class input for classifier logits (``cfg.model.condition_on``)."""
        return class_input(logits, self.cfg.model.condition_on)

    def prepare(self, images: Tensor) -> Tensor:
        """uint8 or [-1, 1] images -> float images on the models' device."""
        return (to_float(images) if images.dtype == torch.uint8 else images.float()).to(self.device)

    @torch.no_grad()
    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Images -> (w = E(x), c = the classifier's output on x, as the generator takes it): the encoder alone
        (``stylespace.inversion.invert`` adds the refinement ``inversion.per_image_steps`` asks for)."""
        x = self.prepare(images)
        return self.encoder(x), self.condition(self.classifier(x).float())

    @torch.no_grad()
    def reconstruct(self, images: Tensor, noise_mode: str = "const") -> Tensor:
        """G(E(x), C(x)) for uint8 or [-1, 1] images: the encoder alone (``stylespace.inversion.reconstruct`` refines)."""
        w, c = self.encode(images)
        return self.generator(w, c, noise_mode=noise_mode)


def load_stylex(run: Run, device: torch.device | str | None = None, data: ImageDataset | None = None) -> StylexModels:
    """Load a run's EMA generator and encoder (from ``checkpoints/stylex.pt``) and its frozen classifier, inverting
    images as the run's ``inversion`` section says. Without ``data`` the data set is not loaded: a user classifier's
    outputs take the data's class order the checkpoint records (stage 03 checked that classifier on the data)."""
    path, expected = checkpoint_path(run.dir), stylex_fingerprint(run.cfg)
    state = load_checkpoint(path)
    made_from = state.get("fingerprint")
    if made_from is not None and run.cfg.classifier.source != "train":  # (the built-in one is checked first: stage 02)
        check(made_from, expected, path, "03")  # before its record of the data's classes is trusted
    # the data's classes as stage 03 read them; a checkpoint without a fingerprint proves nothing (the data is read)
    recorded = list(state["class_names"]) if made_from is not None else None
    models = load_models(path, load_run_classifier(run, data, recorded), expected, "03", device, state)
    models.inversion = run.cfg.inversion
    models.store = run_store(run, models)
    return models


def run_store(run: Run, models: StylexModels) -> InversionStore | None:
    """The run's store of ``models``' refined inversions (``inversions/<identity>/``), or None when the run's inversion
    is the encoder alone (cheap: nothing to keep)."""
    cfg = run.cfg.inversion
    if not cfg.per_image_steps:
        return None
    settings = {"per_image_steps": cfg.per_image_steps, "per_image_lr": cfg.per_image_lr,
                "per_image_space": cfg.per_image_space, "weight_kl": cfg.weight_kl}
    source = Path(run.cfg.classifier.source)
    if run.cfg.classifier.source != "train" and source.is_file():  # a user's model: its weights may be no parameters
        settings["classifier_file"] = [str(source.resolve()), source.stat().st_size, source.stat().st_mtime_ns]
    return InversionStore(run.dir / STORE_DIR, store_identity(models, settings))


def load_models(path: Path, classifier: nn.Module, expected: str | None, stage: str,
                device: torch.device | str | None = None, state: dict | None = None) -> StylexModels:
    """The frozen EMA generator, encoder and discriminator of the checkpoint at ``path`` (``state``: its contents,
    already loaded), with ``classifier``; refuses a checkpoint whose fingerprint is not ``expected`` (naming ``stage``
    to re-run)."""
    state = load_checkpoint(path) if state is None else state
    if expected is not None:
        check(state.get("fingerprint"), expected, path, stage)
    cfg = from_dict(state["config"], StylexConfig, "stylex")
    device = torch.device(device) if device is not None else pick_device(cfg.runtime.device)
    generator, encoder, discriminator = build_networks(state["resolution"], state["num_classes"], cfg)
    generator.load_state_dict(state["G_ema"])
    # the encoder fitted to G_ema (gan.encoder_fit) when there is one, else the encoder EMA, else E as trained
    encoder.load_state_dict(state.get("E_fit", state.get("E_ema", state["E"])))
    discriminator.load_state_dict(state["D"])
    generator, encoder, classifier, discriminator = (
        m.to(device).eval().requires_grad_(False) for m in (generator, encoder, classifier, discriminator))
    log.info("loaded the models of step %d from %s", state["step"], path)
    return StylexModels(generator, encoder, classifier, cfg, list(state["class_names"]), int(state["step"]), device,
                        discriminator)
