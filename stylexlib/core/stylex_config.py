"""The ``stylex:`` section: StylEx's model, optimiser, regularisers, schedule, encoder fit and run-time settings, one
group each, and the migration of the flat keys it had before (``stylex.lr_g`` is ``stylex.optim.lr_g``).

Where a setting goes: a network size or what G is conditioned on in ``model``; a learning rate or batch size in
``optim``; a regulariser of D or G (R1, path length, mixing, DiffAugment) in ``regularise``; how long, and which path
trains when, in ``schedule``; the encoder fit after training in ``encoder_fit``; what changes how a session runs but
not the model (device, precision, logging, checkpoints) in ``runtime``; a loss term's weight in ``loss``.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the fix."""

PAPER_LOSS_WEIGHTS = {"adv": 1.0, "l1": 1.0, "lpips": 0.1, "latent": 0.1, "kl": 1.0}  # Lang et al. 2021, Sec. 3


@dataclass
class ModelConfig:
    """The networks' sizes and what the generator is conditioned on."""

    latent_dim: int = 128
    mapping_layers: int = 4
    channel_base: int = 2048  # channels(res) = min(channel_base // res, channel_max)
    channel_max: int = 128
    condition_on: Literal["probs", "logits", "none"] = "probs"  # "probs" or "logits" of the classifier, concatenated
    # to w; "none": a GAN trained without the classifier (c = 0, D unconditional, no KL terms; stage 09's baseline)
    lpips_net: Literal["squeeze", "alex", "vgg"] = "squeeze"  # the LPIPS loss's feature network


@dataclass
class OptimConfig:
    """Batch size, Adam and the EMA of G."""

    batch_size: int = 16
    lr_g: float = 2e-3
    lr_d: float = 2e-3
    lr_e: float = 2e-3
    beta1: float = 0.0
    beta2: float = 0.99
    ema_half_life_images: float = 2000.0


@dataclass
class RegulariseConfig:
    """D's and G's regularisers (lazy: every ``*_every`` steps) and the random path's own levers."""

    r1_gamma: float = 1.0
    r1_every: int = 16
    pl_weight: float = 0.0  # path-length regularisation weight (0 disables)
    pl_every: int = 4
    mixing_prob: float = 0.0  # style-mixing regularisation on the random path (StyleGAN2: 0.9)
    augment: str = ""  # DiffAugment policy for D's inputs, a comma-separated subset of "color,translation,cutout"
    mapping_match: bool = False  # not in the paper: each step, mapping(z) also steps towards E(x)'s distribution
    # (kernel MMD against the detached encoder latents), so random samples land where the decoder renders faces. It
    # moves the mapping network only, never E; its own Adam at lr_g / 0.01 sets the step size (a switch: Adam's steps
    # do not scale with a loss weight; it was `weight_mapping_match`, any value > 0 on)
    class_share_max: float = 1.0  # with stylex.loss.class_share > 0: the largest share of the class pathway one
    # StyleSpace coordinate may carry (losses.class_pathway_share_excess; 0.1 spreads the class over >= 10 coordinates)


@dataclass
class ScheduleConfig:
    """How long training runs and which path trains on which step."""

    steps: int = 2000
    time_limit_minutes: float | None = None  # stop (and checkpoint) after this much training time, all sessions
    # together (a resumed run trains the minutes left)
    # "alternate": the encoder path (x -> E -> G, reconstruction losses) on steps where step % encoder_every == 0,
    # the random path (z -> mapping -> G) on the others, as the public StylEx reproduction trains: each step half the
    # work; "mix": both paths every step (docs/experiments.md, "Training throughput")
    path_mode: Literal["mix", "alternate"] = "alternate"
    encoder_every: int = 2  # path_mode "alternate" only
    warmup_steps: int = 0  # reconstruction-first: E and G learn to autoencode (no D, no random path) for these steps
    kl_sampling: float = 0.0  # the share of each encoder-path batch drawn in proportion to the image's last
    # reconstruction KL(C(x) || C(x')) (the rest uniformly): the images whose reconstructions lose what the classifier
    # reads (a rare attribute it leans on) come back more often; one host sync per encoder step (docs/experiments.md:
    # on the shortcut task no measurable difference at an equal 6,000 steps, one seed each)
    label_balance: list[str] = field(default_factory=list)  # binary labels-CSV columns (folder data): this share
    # of every real batch (label_balance_share) is drawn column by column in turn with each column's two values
    # equally likely, so that G, E and D see a rare attribute the classifier reads (the label audit's candidates,
    # attfind/label_slices.csv) as often as its absence; the rest uniformly (docs/experiments.md: on the shortcut
    # task at 2,829 steps G then draws glasses, but on the smile coordinate, not as an attribute of their own)
    label_balance_share: float = 0.5


@dataclass
class EncoderFitConfig:
    """Stage two (gan.encoder_fit): E alone fitted to the frozen G_ema that later stages render with."""

    minutes: float = 0.0  # the last minutes of the time limit (0: off; without a time limit, these minutes after
    # training)
    lr: float = 1e-3
    weight_sample_cycle: float = 0.1  # the fit's latent cycle |E(G_ema(w, c)) - w| on fresh samples


@dataclass
class RuntimeConfig:
    """Where and how a session runs, and what it writes: none of it changes the model a checkpoint continues."""

    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", "mps"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # "auto": bf16 on CUDA if supported, else fp16;
    # fp32 elsewhere
    channels_last: bool = True
    compile: bool = False  # torch.compile G's synthesis layers, E, D's trunk and the classifier for training (compile
    # time counts against the time limit; benchmarks/train_step.py --variants measures whether it wins)
    log_every: int = 10  # steps between progress-bar updates and stats.jsonl lines
    sample_every: int = 250  # steps between preview grids (samples, reconstructions); 0: none
    checkpoint_every: int = 250
    collapse_every: int = 250  # steps between encoder-collapse checks (gan.collapse) in stats.jsonl; 0: none


@dataclass
class StylexConfig:
    """StylEx model sizes, losses and training schedule (defaults: paper weights), one group each."""

    preset: Literal["none", "real"] = "none"  # settings filled in beneath the file's own stylex keys (core.presets):
    # "real" for photographs (the default for folder data), "none" (the defaults here) for the synthetic data
    seed: int = 0
    loss: dict[str, float] = field(default_factory=lambda: dict(PAPER_LOSS_WEIGHTS))  # each loss term's weight, by
    # its name in gan.train.loss_terms (a term not named here: 0, off); a file's entries replace these one by one.
    # The paper's: adv, l1, lpips, latent, kl. Ours: sample_kl, KL(c || C(G(mapping(z), c))) on the random path's
    # samples; class_sparsity, a group lasso on the generator's class columns (losses.class_pathway_sparsity), so that
    # the classifier's output reaches few StyleSpace coordinates, which AttFind can then find
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    regularise: RegulariseConfig = field(default_factory=RegulariseConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    encoder_fit: EncoderFitConfig = field(default_factory=EncoderFitConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def weight(self, term: str) -> float:
        """The weight of the loss term ``term`` (0 when ``loss`` does not name it)."""
        return float(self.loss.get(term, 0.0))


GROUPS: dict[str, type] = {name: hint for name, hint in typing.get_type_hints(StylexConfig).items()
                           if dataclasses.is_dataclass(hint)}
TOP_KEYS = tuple(f.name for f in dataclasses.fields(StylexConfig) if f.name not in GROUPS)  # preset, seed, loss
# The flat key each grouped key had before the groups (its name, except the encoder fit's).
_RENAMED = {("encoder_fit", "minutes"): "encoder_fit_minutes", ("encoder_fit", "lr"): "encoder_fit_lr"}
FLAT_KEYS: dict[str, tuple[str, str]] = {
    _RENAMED.get((group, f.name), f.name): (group, f.name) for group, cls in GROUPS.items()
    for f in dataclasses.fields(cls)}
GROUPED_KEYS: dict[tuple[str, str], str] = {grouped: flat for flat, grouped in FLAT_KEYS.items()}


def group_flat_keys(raw: dict[str, Any], where: str = "stylex", warn: bool = True) -> dict[str, Any]:
    """A ``stylex`` mapping with its flat keys (``lr_g``, as before the groups) moved into their groups (``optim``),
    each over its group's entry (``warn``: say so, naming the group)."""
    grouped: dict[str, Any] = {}
    moved: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        if key in FLAT_KEYS:
            group, name = FLAT_KEYS[key]
            moved.setdefault(group, {})[name] = value
            if warn:
                log.warning("%s.%s is now %s.%s.%s (read as that)", where, key, where, group, name)
        else:
            grouped[key] = value
    for group, keys in moved.items():
        section = grouped.get(group) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{where}.{group}: expected a mapping, got {section!r}")
        grouped[group] = {**section, **keys}
    return grouped


def flat_stylex(stylex: StylexConfig) -> dict[str, Any]:
    """The section as the flat mapping it was before the groups (``{"lr_g": ..., "loss": {...}, ...}``): what
    checkpoints were fingerprinted with (core.provenance)."""
    flat = {key: copy.copy(getattr(stylex, key)) for key in TOP_KEYS}
    for group in GROUPS:
        for f in dataclasses.fields(getattr(stylex, group)):  # a key added to a group later counts too
            flat[GROUPED_KEYS.get((group, f.name), f.name)] = getattr(getattr(stylex, group), f.name)
    return flat


def replace_keys(stylex: StylexConfig, **keys: Any) -> StylexConfig:
    """A copy of ``stylex`` with the given keys, grouped or flat (``lr_g=1e-3`` sets ``optim.lr_g``)."""
    groups: dict[str, dict[str, Any]] = {}
    top = {}
    for key, value in keys.items():
        if key in FLAT_KEYS:
            group, name = FLAT_KEYS[key]
            groups.setdefault(group, {})[name] = value
        elif key in GROUPS or key in TOP_KEYS:
            top[key] = value
        else:
            raise ConfigError(f"stylex.{key}: unknown key (known: {', '.join([*FLAT_KEYS, *GROUPS])})")
    for group, values in groups.items():
        top[group] = dataclasses.replace(top.get(group, getattr(stylex, group)), **values)
    return dataclasses.replace(stylex, **top)


def stylex_config(**keys: Any) -> StylexConfig:
    """A StylexConfig from its defaults and the given keys, flat or grouped: ``stylex_config(latent_dim=16,
    batch_size=4)``."""
    return replace_keys(StylexConfig(), **keys)
