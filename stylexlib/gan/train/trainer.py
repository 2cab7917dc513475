"""StylexTrainer: puts the training package together (state, real batches, path schedule, phases, loop, callbacks)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from stylexlib.core.config import ConfigError, StylexConfig
from stylexlib.core.distributed import SINGLE, DistInfo
from stylexlib.core.run import pick_device
from stylexlib.data import ImageDataset
from stylexlib.gan.augment import parse_policy
from stylexlib.gan.collapse import COLLAPSE_IMAGES
from stylexlib.gan.losses import classifier_kl_loss, load_lpips
from stylexlib.gan.models import StylexModels
from stylexlib.gan.step_options import StepOptions
from stylexlib.gan.train.batches import RealBatches
from stylexlib.gan.train.callbacks import PREVIEW_COUNT, Checkpoints, CollapseCheck, Previews
from stylexlib.gan.train.forward import StepContext, generate
from stylexlib.gan.train.loss_terms import check_loss_names
from stylexlib.gan.train.loop import TrainingLoop, TrainSummary
from stylexlib.gan.train.phases import run_phases
from stylexlib.gan.train.schedule import PathSchedule
from stylexlib.gan.train.state import TrainingState
from stylexlib.gan.train.stats import finite_values


def _state_attribute(name: str) -> property:
    return property(lambda self: getattr(self.state, name), doc=f"The training state's ``{name}``.")


def _balanced_count(cfg: StylexConfig, data: ImageDataset) -> int:
    """How many images of each real batch ``stylex.schedule.label_balance`` draws by label (0: off)."""
    share, columns = cfg.schedule.label_balance_share, cfg.schedule.label_balance
    if not 0 <= share <= 1:
        raise ConfigError(f"stylex.schedule.label_balance_share must be a share in [0, 1], got {share}")
    if columns and (data.files is None or not data.info.get("labels_csv")):
        raise ConfigError(f"stylex.schedule.label_balance {columns} needs folder data with a labels CSV "
                          "(data.labels_csv)")
    return round(share * cfg.optim.batch_size) if columns else 0


class StylexTrainer:
    """Trains G, E and D against a frozen classifier; checkpoints, logs and previews into ``out_dir``."""

    G, G_ema, E, D = (_state_attribute(name) for name in ("G", "G_ema", "E", "D"))
    opt_g, opt_e, opt_d, opt_mapping = (_state_attribute(name) for name in ("opt_g", "opt_e", "opt_d", "opt_mapping"))
    amp_dtype, mean_path_length, train_seconds = (_state_attribute(name) for name in
                                                  ("amp_dtype", "mean_path_length", "train_seconds"))

    def __init__(self, cfg: StylexConfig, data: ImageDataset, classifier: nn.Module, out_dir: str | Path | None = None,
                 device: torch.device | None = None, dist: DistInfo = SINGLE, lpips_model: nn.Module | None = None,
                 fingerprint: str | None = None, options: StepOptions = StepOptions()) -> None:
        self.schedule = PathSchedule(cfg)
        parse_policy(cfg.regularise.augment)
        check_loss_names(cfg)
        kl_sampling = cfg.schedule.kl_sampling
        if not 0 <= kl_sampling <= 1 or (kl_sampling > 0 and cfg.weight("kl") == 0):
            raise ConfigError(f"stylex.schedule.kl_sampling must be in [0, 1] and needs stylex.loss.kl > 0 (it draws "
                              f"images by their reconstruction's KL); got {kl_sampling} with kl {cfg.weight('kl')}")
        self.balanced = _balanced_count(cfg, data)
        self.cfg, self.dist, self.class_names, self.fingerprint = cfg, dist, list(data.class_names), fingerprint
        self.options, self.device = options, device or pick_device(cfg.runtime.device)
        self.resolution, self.num_classes = data.resolution, data.num_classes
        self.out_dir = Path(out_dir) if out_dir is not None else None
        if self.out_dir is not None and dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.state = TrainingState(cfg, data.resolution, data.num_classes, self.device, dist, options)
        self.classifier = classifier.to(self.device).eval().requires_grad_(False)
        self.batches = RealBatches(data, self.classifier, cfg.optim.batch_size, cfg.seed * 1000 + dist.rank,
                                   cfg.model.condition_on, self.device, self.state.memory_format,
                                   options.folded_classifier, options.cached_real_logits, self.state.autocast,
                                   cfg.schedule.label_balance if self.balanced else None)
        self.lpips = lpips_model if lpips_model is not None else load_lpips(cfg.model.lpips_net, self.device)
        if cfg.runtime.compile:
            self.state.compile()
            self.batches.compile_classifier()
        self.checkpoints = Checkpoints(self)
        self.previews = Previews(self, data.heldout(PREVIEW_COUNT)[0])
        self.collapse = CollapseCheck(self, data.heldout(COLLAPSE_IMAGES)[0])
        torch.manual_seed(cfg.seed * 1000 + dist.rank)  # each rank draws its own z and noise
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    @property
    def step(self) -> int:
        """Completed steps (all sessions)."""
        return self.state.step

    @step.setter
    def step(self, value: int) -> None:
        self.state.step = value

    @property
    def warming_up(self) -> bool:
        """True during the reconstruction-first warm-up (``stylex.schedule.warmup_steps``)."""
        return self.schedule.warming_up(self.state.step)

    @property
    def step_classifier(self) -> nn.Module:
        """The classifier copy the step runs (folded, compiled)."""
        return self.batches.step_classifier

    # ---------------------------------------------------------------- one step
    def run_step(self) -> dict[str, Tensor]:
        """One step: every phase due (D, R1, G+E, path length, mapping match), the EMA update; the losses, detached and
        on the device (unchecked: :meth:`train_step` reads them)."""
        paths = self.schedule.paths(self.state.step)
        prioritised = round(self.cfg.schedule.kl_sampling * self.cfg.optim.batch_size) if paths.encoder else 0
        batch = self.batches.next(prioritised, self.balanced)
        with self.state.autocast():
            generated = generate(self.state, batch, paths)
        context = StepContext(self.state, batch, generated, self.batches.step_classifier, self.lpips, self.options,
                              self.warming_up)
        losses = run_phases(context, self.schedule)
        if self.cfg.schedule.kl_sampling > 0 and paths.encoder:  # each image's KL, for the next draws by KL
            reconstructed = context.generated_logits[0]
            self.batches.sampler.record(batch.positions, classifier_kl_loss(batch.logits, reconstructed, "none"))
        self.state.update_ema()
        self.state.step += 1
        return losses

    def train_step(self) -> dict[str, float]:
        """:meth:`run_step` with its losses read as floats (averaged over ranks; raises TrainingDiverged on NaN/Inf)."""
        return finite_values([(self.state.step + 1, self.run_step())], self.dist, self.checkpoints.kept)[0]

    def train(self, steps: int | None = None, progress: bool = True) -> TrainSummary:
        """Train until ``steps`` (default ``schedule.steps``) or the time limit; checkpoint and preview when due. The
        time limit counts the training time of every session (kept in the checkpoint): a resumed run trains only the
        minutes left. Ctrl-C or SIGTERM stops it after the current step: it writes a checkpoint there, then raises
        :class:`~stylexlib.core.interrupt.Interrupted` (a ``KeyboardInterrupt``)."""
        return TrainingLoop(self).run(steps, progress)

    # ---------------------------------------------------------------- checkpoints, previews, the collapse check
    @property
    def checkpoint_file(self) -> Path | None:
        return self.checkpoints.file

    def state_dict(self) -> dict:
        """Everything needed to continue exactly (every rank must call it: RNG states are gathered)."""
        return self.checkpoints.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (same model sizes; same number of ranks for an exact resume)."""
        self.checkpoints.load_state_dict(state)

    def save_checkpoint(self) -> Path | None:
        """Write the checkpoint atomically (main rank); every rank must call it."""
        return self.checkpoints.save()

    def resume(self) -> bool:
        """Load ``out_dir``'s checkpoint if there is one made from this config and data; True when it did."""
        return self.checkpoints.resume()

    def save_previews(self) -> dict[str, Path]:
        """Save grids of random samples G_ema(z, c) and of (input | reconstruction G(E(x), c)) pairs (main rank)."""
        return self.previews.save()

    def check_collapse(self) -> dict[str, float]:
        """The encoder-collapse detector on held-out images, of the live G and E; warns when it fires."""
        return self.collapse.run()

    def models(self) -> StylexModels:
        """The current EMA generator, encoder and classifier, as later stages load them."""
        return StylexModels(self.G_ema, self.E, self.classifier, self.cfg, self.class_names, self.step, self.device)

    def trained_pair(self) -> StylexModels:
        """The live G with the live E: the pair that trains together, which the collapse check and the reconstruction
        previews read. G_ema + E drifts apart once D joins (docs/experiments.md, "Real photographs"); G_ema gets an
        encoder of its own only after training, by the encoder fit (gan.encoder_fit: G_ema + E_fit)."""
        return StylexModels(self.G, self.E, self.classifier, self.cfg, self.class_names, self.step, self.device)
