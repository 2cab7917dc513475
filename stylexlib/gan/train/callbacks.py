"""What the loop does besides training, each on its own schedule: checkpoints, preview grids and the collapse check."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from torch import Tensor

from stylexlib.core.distributed import gather_objects
from stylexlib.core.figures import image_grid, save_figure
from stylexlib.core.io import torch_save
from stylexlib.core.provenance import accepts
from stylexlib.data import to_float
from stylexlib.gan.checkpoint import CHECKPOINT_FORMAT, capture_rng, checkpoint_path, load_checkpoint, restore_rng
from stylexlib.gan.collapse import collapse_metrics, collapse_warning
from stylexlib.gan.losses import load_lpips

Trainer = Any  # a stylexlib.gan.train.trainer.StylexTrainer (not imported: the trainer imports this module)

log = logging.getLogger(__name__)
PREVIEW_COUNT = 16  # samples in a preview grid; half as many (input | reconstruction) pairs


class Checkpoints:
    """The trainer's checkpoint file: everything needed to continue exactly, written atomically by the main rank."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.file = checkpoint_path(trainer.out_dir) if trainer.out_dir is not None else None
        self.step: int | None = None  # the step of the last checkpoint written or loaded

    def kept(self) -> str:
        """Which checkpoint survives a divergence, in words."""
        if self.step is None:
            return "no checkpoint was written yet"
        return f"the last good checkpoint (step {self.step}) is kept at {self.file}"

    def state_dict(self) -> dict:
        """The checkpoint's contents (every rank must call it: RNG and sampler states are gathered)."""
        t = self.trainer
        return {"format": CHECKPOINT_FORMAT, "resolution": t.resolution, "num_classes": t.num_classes,
                "class_names": t.class_names, "fingerprint": t.fingerprint, **t.state.state_dict(),
                "rng": gather_objects(capture_rng(t.device), t.dist),
                "sampler": gather_objects(t.batches.sampler.state_dict(), t.dist)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (same model sizes; same number of ranks for an exact resume)."""
        t = self.trainer
        if (state["resolution"], state["num_classes"]) != (t.resolution, t.num_classes):
            raise ValueError(f"the checkpoint is for {state['resolution']}px images and {state['num_classes']} classes, "
                             f"the data has {t.resolution}px and {t.num_classes}; use a new run folder")
        t.state.load_state_dict(state)
        self.step = t.state.step
        if state["world_size"] == t.dist.world_size:
            restore_rng(state["rng"][t.dist.rank], t.device)
            t.batches.sampler.load_state_dict(state["sampler"][t.dist.rank])
        else:
            log.warning("checkpoint written by %d ranks, resuming on %d: random draws will differ from an "
                        "uninterrupted run", state["world_size"], t.dist.world_size)
            torch.manual_seed(t.cfg.seed * 1000 + t.dist.rank + t.state.step)

    def save(self) -> Path | None:
        """Write the checkpoint (main rank); every rank must call it."""
        state = self.state_dict()
        if self.trainer.dist.is_main and self.file is not None:
            torch_save(self.file, state)
            log.info("checkpoint at step %d: %s", state["step"], self.file)
        self.step = state["step"]
        return self.file

    def resume(self) -> bool:
        """Load the checkpoint if there is one made from this config and data; True when it did."""
        if self.file is None or not self.file.exists():
            return False
        state = load_checkpoint(self.file)
        if not accepts(state.get("fingerprint"), self.trainer.fingerprint):
            log.warning("%s was made from another config or other data: training StylEx afresh", self.file)
            return False
        self.load_state_dict(state)
        log.info("resuming StylEx training at step %d from %s", self.step, self.file)
        return True


class Previews:
    """Grids of random samples G_ema(z, c) and of (input | reconstruction) pairs by the live G and E, in figures/."""

    def __init__(self, trainer: Trainer, images: Tensor) -> None:
        self.trainer, self.images = trainer, images
        self.z = torch.randn(PREVIEW_COUNT, trainer.cfg.model.latent_dim,
                             generator=torch.Generator().manual_seed(trainer.cfg.seed))

    @torch.no_grad()
    def save(self) -> dict[str, Path]:
        """Save both grids (main rank, with a run folder); their paths."""
        t = self.trainer
        if not (t.dist.is_main and t.out_dir is not None):
            return {}
        models, figures = t.models(), {}
        conditions = models.condition(t.classifier(models.prepare(self.images)).float())
        z = self.z[: len(conditions)].to(t.device)
        samples = t.G_ema(t.G_ema.mapping(z), conditions[: len(z)])
        wanted = [t.class_names[i] for i in conditions.argmax(1).tolist()]
        titles = [f"c={name}\n{label}" for name, label in zip(wanted, self._labels(samples))]
        figures["samples"] = self._grid("samples", samples, titles, "random samples G_ema(z, c): C's output below")
        inputs = models.prepare(self.images[: PREVIEW_COUNT // 2])
        pairs = torch.stack([inputs, t.trained_pair().reconstruct(inputs)], dim=1).flatten(0, 1)
        titles = [f"{'rec' if i % 2 else 'in'} {label}" for i, label in enumerate(self._labels(pairs))]
        figures["reconstructions"] = self._grid("reconstructions", pairs, titles,
                                                "input | reconstruction G(E(x), c), C's output")
        return figures

    def _labels(self, images: Tensor) -> list[str]:
        probs = self.trainer.classifier(images).float().softmax(dim=1)
        top, which = probs.max(dim=1)
        return [f"{self.trainer.class_names[i]} {p:.2f}" for i, p in zip(which.tolist(), top.tolist())]

    def _grid(self, kind: str, images: Tensor, titles: list[str], title: str) -> Path:
        step = self.trainer.step
        fig = image_grid(images.cpu(), titles, ncols=8, suptitle=f"{title} (step {step})")
        path = save_figure(fig, self.trainer.out_dir / "figures" / f"{kind}_{step:06d}.png")
        plt.close(fig)
        return path


class CollapseCheck:
    """The encoder-collapse detector (gan.collapse) on held-out images, of the live G and E (the pair that trains)."""

    def __init__(self, trainer: Trainer, images: Tensor) -> None:
        self.trainer, self.images = trainer, images
        self.lpips: torch.nn.Module | None = None  # chosen on first use
        self.flag: str | None = None  # the last check's self-retrieval when it fired (shown on the progress bar)

    @torch.no_grad()
    def run(self) -> dict[str, float]:
        """The collapse metrics; warns when the detector fires."""
        t = self.trainer
        if self.lpips is None:  # the training LPIPS when it is a real one (tests may pass a stand-in)
            self.lpips = t.lpips if hasattr(t.lpips, "lins") else load_lpips("squeeze", t.device)
        models = t.trained_pair()
        metrics = collapse_metrics(models.generator, models.encoder, t.classifier, to_float(self.images).to(t.device),
                                   self.lpips, models.condition, seed=t.cfg.seed)
        warning = collapse_warning(metrics, refit=bool(t.cfg.encoder_fit.minutes))
        self.flag = f"{metrics['recon_self_retrieval']:.2f}" if warning else None
        if warning:
            log.warning("step %d: %s", t.step, warning)
        return metrics
