"""Dataclass configs: YAML load/save and dotted ``key=value`` overrides."""
from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from stylexlib.core.install import shipped
from stylexlib.core.presets import with_preset
from stylexlib.core.stylex_config import (FLAT_KEYS, GROUPED_KEYS, PAPER_LOSS_WEIGHTS, ConfigError,  # noqa: F401
                                          StylexConfig, group_flat_keys)

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Which images to explain and how they are labelled and split."""

    source: Literal["synthetic", "folder"] = "synthetic"  # "synthetic" (embedded default) or "folder"
    resolution: int = 32  # power of two; images are square
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    # synthetic ------------------------------------------------------------
    num_images: int = 6000
    label_rule: str = "mouth_curve > 0"  # pandas expression over factors: bool -> 2 classes, int -> class index
    class_names: list[str] = field(default_factory=lambda: ["frown", "smile"])
    label_noise: float = 0.0  # fraction of train/val labels flipped to another class (test labels follow the rule)
    spurious_factor: str | None = "glasses"  # binary nuisance factor planted to agree with the label
    spurious_agreement: float = 0.9  # fraction of train/val images where it equals the label
    spurious_agreement_test: float = 0.5  # in the test split (0.5 = no correlation)
    # folder ------------------------------------------------------------------
    root: str = ""  # dataset folder; relative paths are resolved against the config file's folder
    labels_csv: str | None = None  # CSV with a `file` column (inside root, or relative to the config file's folder);
    # None = use <class>/<file> folders
    file_column: str = "file"
    label_column: str | None = None  # CSV column holding the label; None = class folder name
    label_queries: dict[str, str] = field(default_factory=dict)  # class name -> pandas query on the CSV's columns, e.g.
    # {young: "age < 30", old: "age >= 50"}; rows matching none are left out, a row matching two is an error
    filter: str | None = None  # pandas query on the CSV, e.g. "age >= 18"
    split_column: str | None = None  # CSV column of train / val / test: your own splits (val/test_fraction unused)
    group_column: str | None = None  # CSV column of groups (patients, subjects) kept whole in one split
    max_images: int | None = None  # keep a seeded random subset (quick runs)


# DataConfig keys that one data source alone reads (source, resolution, seed and the split fractions: both). A key of
# the other source set to anything but its default is an error (see :func:`source_problem`).
SOURCE_KEYS = {"synthetic": ("num_images", "label_rule", "class_names", "label_noise", "spurious_factor",
                             "spurious_agreement", "spurious_agreement_test"),
               "folder": ("root", "labels_csv", "file_column", "label_column", "label_queries", "filter",
                          "split_column", "group_column", "max_images")}


def source_problem(data: DataConfig) -> str | None:
    """What is wrong when ``data`` sets keys its source never reads (None when nothing is).

    Keys count as set when they differ from their defaults, not when they appear in a file: a run folder's
    ``config.yaml`` (and ``stylex config``'s output) writes every key, the other source's at their defaults."""
    defaults = DataConfig()
    for source, keys in SOURCE_KEYS.items():
        stray = [f"data.{key}" for key in keys if getattr(data, key) != getattr(defaults, key)]
        if stray and source != data.source:
            return (f"{', '.join(stray)} {'is' if len(stray) == 1 else 'are'} read only for {source} data, and "
                    f"data.source is {data.source}: remove {'it' if len(stray) == 1 else 'them'}, or set "
                    f"data.source: {source}")
    return None


@dataclass
class ClassifierConfig:
    """The classifier to explain: trained here, or the user's own."""

    source: str = "train"  # "train", a TorchScript file (relative to the config file's folder), or "package.module:factory"
    class_names: list[str] | None = None  # a user model's classes in the order of its outputs (checked against the
    # data's classes; the outputs are reordered to the data's order). None: the data's order (sorted folder names)
    check_accuracy: bool = True  # a user model at or below chance accuracy on the data stops stage 02
    input_size: int | None = None  # resize inputs to this size inside the wrapper (user models)
    mean: list[float] | None = None  # per-channel normalisation applied to [0, 1] images (user models)
    std: list[float] | None = None
    num_classes: int | None = None  # checked against the data when given
    gradcam_layer: str | None = None  # dotted module name for Grad-CAM (default: the classifier's last nn.Conv2d)
    width: int = 32  # channels of the first conv block of the built-in CNN
    epochs: int = 8
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    augment: bool = True  # random horizontal flips
    seed: int = 0


@dataclass
class InversionConfig:
    """How images are inverted into (w, c) and StyleSpace (stage 04 on, `stylex explain`, the browser), and stage 04's
    evaluation of it."""

    per_image_steps: int = 0  # optimisation steps per image from E(x) (LPIPS + L1 + weight_kl * KL) wherever images
    # are inverted (stages 04-08, `stylex explain`, the browser); 0: the encoder alone, as in the paper; the `real` preset
    # sets 50, in StyleSpace (docs/experiments.md, "Real photographs")
    per_image_lr: float = 0.05
    per_image_space: Literal["w", "stylespace"] = "w"  # what the per-image steps optimise: w, or the StyleSpace vector
    # that AttFind edits (finer detail; the `real` preset's choice, docs/experiments.md "Per-image inversion")
    num_images: int = 256  # held-out images evaluated (from `split`)
    split: Literal["train", "val", "test"] = "val"
    refine_images: int = 16  # stage 04 compares E(x) with w refined for `refine_steps` on this many images (0: skip)
    refine_steps: int = 100
    refine_lr: float = 0.02
    weight_kl: float = 1.0  # KL(C(x) || C(G(w, c))) next to LPIPS + L1 in both refinement objectives
    batch_size: int = 64


@dataclass
class AttFindConfig:
    """Stage 05: AttFind (Lang et al. 2021, Alg. 1) over StyleSpace coordinates."""

    num_images: int = 128  # images whose every coordinate is tried (from `split`)
    split: Literal["train", "val", "test"] = "val"
    stats_images: int = 2000  # images for the StyleSpace min/max/std (from the train split)
    shift: Literal["minmax", "std"] = "minmax"  # "minmax": set the coordinate to its dataset min / max (the paper); "std": +- shift_std * std
    shift_std: float = 2.0
    output: Literal["logits", "probs"] = "logits"  # effects on one-vs-rest "logits" (log-odds: still informative when the classifier is
    # saturated, as the demo's is) or on classifier "probs"
    include_torgb: bool = False  # also search the toRGB layers' style coordinates
    top_k: int = 10
    method: Literal["greedy", "ranking"] = "greedy"  # "greedy" coverage (the paper's AttFind) or "ranking" (independent mean effect)
    max_image_effect: float | None = None  # greedy: an image leaves the pool once covered this much (None: 0.2 probs, 1.0 logits)
    affected_threshold: float | None = None  # an image counts as affected above this effect (None: 0.05 probs, 0.25 logits)
    drop_inconsistent: bool = True  # skip images whose reconstruction the classifier labels differently
    realism_filter: bool = False  # reject attributes whose edits the discriminator finds unreal
    realism_quantile: float = 0.05  # ... an edited image is unreal below this quantile of unedited D scores
    realism_max_fraction: float = 0.5  # ... and an attribute is rejected when more of its edits are unreal
    visible_only: bool = True  # reject attributes the visibility rule calls invisible on the images the gallery shows
    # them on (p(class) moved far more than the generator's own class change per unit of visible change)
    sufficiency_k: int = 10  # flip rate for k = 1..sufficiency_k
    random_trials: int = 5  # random-coordinate baseline draws per k
    batch_size: int = 64  # edits per generator + classifier pass (CPU: 32-128 run fastest; 0: sized from the free
    # GPU memory on a GPU, 64 on a CPU)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # the exact search's autocast: auto is bf16 on a GPU, fp32 on a CPU
    fast: bool = True  # prefix-cached batched path (False: the naive reference, one edit per pass)
    screen: bool = False  # a screened search (explain.attfind.screen): first-order (gradient x shift) estimates
    # choose the edits evaluated exactly, per class the `screen_candidates` of largest mean estimate (on every image)
    # and each image's own `screen_per_image` per class; the selected attributes are then evaluated on every image.
    # On five runs: every class's top 5 as the exhaustive search's, 9 of 10 top 10s, 15-19% of its edits
    # (docs/experiments.md, "A screened search")
    screen_candidates: int = 64
    screen_per_image: int = 32
    compile: bool = False  # fast path: torch.compile the synthesis layers and the classifier (CPU: ~36 s once for
    # ~13% less time per image at 32x32, so worth it for thousands of images; try it on a GPU)
    examples_per_attribute: int = 6  # gallery images per attribute
    seed: int = 0


@dataclass
class StudyConfig:
    """Stage 07: user-study material (classification and match-the-change) and its simulated scoring."""

    seed: int = 0
    top: int = 4  # attributes per class in the studies
    examples_per_attribute: int = 6
    demos: int = 3  # example pairs shown before each classification question
    questions_per_attribute: int = 2
    min_gap: float = 0.05  # classification pairs need this much difference in p(class) to have a clear answer
    simulated_accuracy: float = 0.8  # the headless simulated respondent's accuracy


@dataclass
class EvaluateConfig:
    """Stage 04's checks of real data against its labels."""

    attribute_columns: list[str] | str = field(default_factory=list)  # labels-CSV columns (e.g. age, race) whose
    # linear probe is scored on held-out originals and their reconstructions (metrics orig_attr_<c>, recon_attr_<c>)
    # and reads every attribute (stage 06); "all": every column but the file, split, group and class-label columns
    oracle: Literal["probes", "cnn"] = "probes"  # the labelled-attribute oracle that reads those columns (stages 04, 06,
    # 09): "probes" (logistic on LPIPS features) or "cnn" (a multi-label CNN trained on the real training images)


@dataclass
class CompareConfig:
    """Stage 09: the GAN-direction baselines beside StylEx, under one protocol (``make compare`` turns them on)."""

    gan_baselines: bool = False  # train the classifier-free GAN and the direction baselines (too long for the demo)
    directions: int = 32  # K: directions per direction method, and the random controls' pool size
    step_std: float = 3.0  # every GAN edit moves this many of its own standard deviations over real images
    selection_images: int = 128  # images the edits are selected on (from attfind.split)
    evaluation_images: int = 64  # held-out test images they are scored on
    top_k: int = 10  # edits selected per class (sufficiency k = 1..top_k)
    vb_kind: Literal["orthogonal", "linear"] = "orthogonal"  # Voynov & Babenko's direction matrix
    vb_steps: int = 800
    vb_batch_size: int = 32
    methods: list[str] | None = None  # the methods to compare (None: all of COMPARE_METHODS); each costs an AttFind-like
    # search (coordinates) or a direction search, so on real photographs on a CPU choose, e.g. [stylex, wu_attfind, sefa]
    seed: int = 0


# Stage 09's methods: StylEx's AttFind, AttFind and Wu et al.'s selection on the classifier-free GAN, the direction
# methods on each GAN and the random controls (stylexlib.evaluate.gan_baselines.build_methods).
COMPARE_METHODS = ("stylex", "wu_attfind", "wu_positives", "voynov_babenko", "ganspace", "sefa", "random_directions",
                   "random_coordinates")


@dataclass
class Config:
    """Everything a run needs; saved as ``config.yaml`` in every run folder."""

    name: str = "demo"
    data: DataConfig = field(default_factory=DataConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    stylex: StylexConfig = field(default_factory=StylexConfig)
    inversion: InversionConfig = field(default_factory=InversionConfig)
    attfind: AttFindConfig = field(default_factory=AttFindConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form keys for later stages


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain dicts/lists (YAML- and JSON-ready)."""
    return dataclasses.asdict(cfg)


# StylEx keys removed after the experiment log measured and dropped them (docs/experiments.md), with the one value
# the code still has: a record or file that names one at that value loads as before; another value loads with a
# warning (the lever is gone).
STYLEX_REMOVED_KEYS: dict[str, Any] = {
    "encoder": "residual", "encoder_offset": False, "beta1_e": None, "encoder_ema": False, "weight_w_prior": 0.0,
    "w_prior": "moments", "kl_noise_std": 0.0, "discriminator": "residual", "adv_on_reconstructions": True,
    "weight_class_share_cap": 0.0, "class_share_cap": 0.2}  # the cap: on main for one afternoon, never on
STYLEX_RENAMED_KEYS = {"weight_mapping_match": ("mapping_match", lambda weight: float(weight) > 0)}
# The loss weights that were keys of their own (``weight_kl: 0.1``), now entries of ``loss`` (``loss: {kl: 0.1}``).
STYLEX_FLAT_LOSS_WEIGHTS = ("adv", "l1", "lpips", "latent", "kl", "sample_kl", "class_sparsity")


def migrate_stylex(raw: dict[str, Any], where: str = "stylex", warn_flat: bool = False) -> dict[str, Any]:
    """A ``stylex`` section as today's StylexConfig reads it: removed keys dropped (a warning when one was set to what
    no longer exists), renamed keys renamed, ``weight_<term>`` keys moved into ``loss``, flat keys into their groups
    (``lr_g`` into ``optim``; ``warn_flat``: say so, for a file a person edits)."""
    migrated, flat_weights = {}, {}
    for key, value in raw.items():
        if key in STYLEX_REMOVED_KEYS:
            if value != STYLEX_REMOVED_KEYS[key]:
                log.warning("%s.%s: %r is no longer available (measured and dropped: docs/experiments.md); ignored, "
                            "as if %r", where, key, value, STYLEX_REMOVED_KEYS[key])
        elif key in STYLEX_RENAMED_KEYS:
            new, convert = STYLEX_RENAMED_KEYS[key]
            migrated[new] = convert(value)
        elif key.startswith("weight_") and key.removeprefix("weight_") in STYLEX_FLAT_LOSS_WEIGHTS:
            flat_weights[key.removeprefix("weight_")] = value
        else:
            migrated[key] = value
    if flat_weights:
        if not isinstance(migrated.get("loss") or {}, dict):
            raise ConfigError(f"{where}.loss: expected a mapping of loss-term weights, got {migrated['loss']!r}")
        migrated["loss"] = {**flat_weights, **(migrated.get("loss") or {})}  # `loss`'s own entries win
    return group_flat_keys(migrated, where, warn=warn_flat)


def migrate_attfind(raw: dict[str, Any], where: str = "attfind") -> dict[str, Any]:
    """An ``attfind`` section with the per-image screen (``screen_fraction``, measured to change the selection: 7 of
    the smiling class's top 10 kept at 0.1) replaced by ``screen`` (a fraction given turns the new screen on)."""
    raw = dict(raw)
    fraction = raw.pop("screen_fraction")
    if fraction is not None:
        log.warning("%s.screen_fraction is replaced by %s.screen (docs/experiments.md, \"A screened search\"); "
                    "screening with its defaults", where, where)
        raw.setdefault("screen", True)
    return raw


def from_dict(raw: dict[str, Any], cls: type = Config, where: str = "", presets: bool = True) -> Any:
    """Build a dataclass config from a dict, with an error naming any unknown or mistyped key, or a data key its source
    never reads. ``presets=False`` for a run folder's own record: its preset was applied when it was written, keys added
    since take their defaults, and a record written before the data-source check still loads."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(raw).__name__}")
    if cls is Config and isinstance(raw.get("stylex"), dict):  # before the preset: a file's renamed key wins over it
        raw = {**raw, "stylex": migrate_stylex(raw["stylex"], warn_flat=presets)}
    if cls is Config and presets and isinstance(raw.get("stylex") or {}, dict):
        try:
            raw = with_preset(raw)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if cls is StylexConfig:  # also a checkpoint's own record (gan.models.load_models); migrating twice changes nothing
        raw = migrate_stylex(raw, where or "stylex")
    if cls is AttFindConfig and "screen_fraction" in raw:
        raw = migrate_attfind(raw, where or "attfind")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(_unknown_key_message(path, key, names))
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(value or {}, hint, path)
        elif typing.get_origin(hint) is dict and isinstance(value, dict):  # entries replace the default's one by one
            kwargs[key] = _coerce({**_field_default(cls, key), **value}, hint, path)
        else:
            kwargs[key] = _coerce(value, hint, path)
    built = cls(**kwargs)
    for name, check in FIELD_CHECKS.get(cls.__name__, {}).items():
        problem = check(getattr(built, name))
        if problem:
            raise ConfigError(f"{where + '.' if where else ''}{name}: {problem}")
    if cls is Config and presets and (problem := source_problem(built.data)):
        raise ConfigError(problem)
    return built


def _field_default(cls: type, name: str) -> Any:
    """The default value of the dataclass field ``name`` of ``cls``."""
    spec = next(f for f in dataclasses.fields(cls) if f.name == name)
    return spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default


def find_config(path: str | Path) -> Path:
    """A config file, or the name of a config shipped with the package (``demo`` for ``configs/demo.yaml``)."""
    path = Path(path)
    if path.exists():
        return path
    shipped_configs = shipped("configs")
    named = shipped_configs / path.with_suffix(".yaml").name
    if path.parent == Path(".") and named.exists():
        return named
    names = ", ".join(sorted(p.stem for p in shipped_configs.glob("*.yaml")))
    raise ConfigError(f"config file not found: {path} (a path to a YAML file, or one of the shipped configs: {names})")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, presets: bool = True) -> Config:
    """Load a YAML config (defaults when ``path`` is None) with ``key=value`` overrides set among the file's own keys,
    before the preset fills in the rest (so ``stylex.preset`` and ``data.source`` may be overridden too);
    ``presets=False`` reads a run folder's ``config.yaml`` as the complete record it is (see :func:`from_dict`)."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = find_config(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    try:
        cfg = from_dict(set_overrides(raw, overrides or []), presets=presets)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path is not None else str(exc)) from None
    # a path is resolved where it was given: the file's relative to its folder, an override's to the working directory
    overridden = {item.split("=", 1)[0].strip() for item in overrides or []}
    origins = {key: (Path.cwd(), "override") if path is None or key in overridden else (path.parent, str(path))
               for key in PATH_KEYS}
    resolve_paths(cfg, origins)
    return cfg


FACTORY_PATTERN = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
PATH_KEYS = ("data.root", "data.labels_csv", "classifier.source")


def resolve_paths(cfg: Config, origins: dict[str, tuple[Path, str]]) -> None:
    """Make ``data.root``, ``data.labels_csv`` and ``classifier.source`` absolute: a relative path is looked up in
    its origin's folder (``origins[key]``: the folder and where the value came from, for errors), then in the
    working directory; ``labels_csv`` first inside ``data.root``."""
    d, c = cfg.data, cfg.classifier
    if d.root:
        d.root = _resolve(d.root, *origins["data.root"], "data.root", required=d.source == "folder")
    if d.labels_csv and not (d.root and (Path(d.root) / d.labels_csv).is_file()):
        d.labels_csv = _resolve(d.labels_csv, *origins["data.labels_csv"], "data.labels_csv", required=False)
    base = origins["classifier.source"][0]
    if c.source != "train" and not (FACTORY_PATTERN.fullmatch(c.source) and not _candidates(c.source, base)[0].exists()):
        c.source = _resolve(c.source, *origins["classifier.source"], "classifier.source", required=True)


def _candidates(value: str, base: Path) -> list[Path]:
    return [(base / Path(value).expanduser()).resolve(), Path(value).expanduser().resolve()]


def _resolve(value: str, base: Path, where: str, key: str, required: bool) -> str:
    """An existing relative path as an absolute one (or an error naming the paths tried when ``required``)."""
    if Path(value).expanduser().is_absolute():
        return value
    candidates = _candidates(value, base)
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    if not required:
        return value
    raise ConfigError(f"{where}: {key} '{value}' not found; tried {candidates[0]} (next to the config) and "
                      f"{candidates[1]} (the working directory): give an absolute path or one relative to the "
                      "config file")


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply dotted overrides such as ``data.resolution=64`` (values parsed as YAML) to a built config. A built config
    holds every key, so a preset has nothing left to fill in: another ``stylex.preset`` here is an error (give it to
    :func:`load_config`, as ``stylex run --set`` does)."""
    raw = set_overrides(to_dict(cfg), overrides)
    if raw["stylex"]["preset"] != cfg.stylex.preset:
        raise ConfigError(f"stylex.preset: a built config holds every key, so the '{raw['stylex']['preset']}' preset "
                          "would fill in none of them; load the config file with the override instead "
                          "(load_config(path, overrides), stylex run CONFIG --set stylex.preset=...)")
    return from_dict(raw)


def set_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of a raw config dict with dotted ``key=value`` overrides set (values parsed as YAML; keys checked against
    the config's fields, any key under ``extra``)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping, got {type(raw).__name__}")
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value, e.g. data.resolution=64")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) == 2 and parts[0] == "stylex" and parts[1] in {f"weight_{t}" for t in STYLEX_FLAT_LOSS_WEIGHTS}:
            parts = ["stylex", "loss", parts[1].removeprefix("weight_")]  # stylex.weight_kl=... as it was written
        if len(parts) == 2 and parts[0] == "stylex" and parts[1] in FLAT_KEYS:  # stylex.lr_g=..., before the groups
            log.warning("stylex.%s is now stylex.%s (read as that)", parts[1], ".".join(FLAT_KEYS[parts[1]]))
            parts = ["stylex", *FLAT_KEYS[parts[1]]]
        if len(parts) == 3 and parts[0] == "stylex" and isinstance(raw.get("stylex"), dict):
            raw["stylex"].pop(GROUPED_KEYS.get((parts[1], parts[2]), ""), None)  # the file's flat key: overridden
        node, cls = raw, Config
        for depth, part in enumerate(parts):
            if cls is not None:  # inside a config section (free-form below `extra`)
                names = [f.name for f in dataclasses.fields(cls)]
                if part not in names:
                    raise ConfigError(_unknown_key_message(".".join(parts[: depth + 1]), part, names))
                hint = typing.get_type_hints(cls)[part]
                cls = hint if dataclasses.is_dataclass(hint) else None
                mapping = typing.get_origin(hint) is dict and depth == len(parts) - 2  # e.g. stylex.loss.kl
                if depth < len(parts) - 1 and cls is None and part != "extra" and not mapping:
                    raise ConfigError(f"override '{item}': {'.'.join(parts[: depth + 1])} is a value, not a section")
            if depth == len(parts) - 1:
                node[part] = yaml.safe_load(text) if text.strip() else None
            else:
                if node.get(part) is None:
                    node[part] = {}
                if not isinstance(node[part], dict):
                    raise ConfigError(f"{'.'.join(parts[: depth + 1])}: expected a mapping, got {node[part]!r}")
                node = node[part]
    return raw


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically)."""
    from stylexlib.core.io import write_text

    return write_text(path, dump_config(cfg))


def dump_config(cfg: Config) -> str:
    """The config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
AUGMENTATIONS = ("color", "translation", "cutout")


def _device_problem(value: str) -> str | None:
    return None if DEVICE_PATTERN.fullmatch(value) else f"must be auto, cpu, cuda, cuda:N or mps, got {value!r}"


def augment_problem(value: str) -> str | None:
    unknown = [name.strip() for name in value.split(",") if name.strip() and name.strip() not in AUGMENTATIONS]
    return (f"unknown augmentation(s) {unknown}; use a comma-separated subset of {', '.join(AUGMENTATIONS)} "
            "(or '' for none)") if unknown else None


def _methods_problem(value: list[str] | None) -> str | None:
    unknown = [m for m in value or [] if m not in COMPARE_METHODS]
    if unknown:
        return f"unknown method(s) {unknown}; choose among {list(COMPARE_METHODS)} (or leave it out for all)"
    return "must name at least one method (or be left out for all)" if value is not None and not value else None


def _columns_problem(value: list[str] | str) -> str | None:
    return None if not isinstance(value, str) or value == "all" else (
        f"must be a list of labels-CSV columns or 'all', got {value!r}")


# Checks beyond the field types, run when a config is loaded: each returns the problem or None.
FIELD_CHECKS = {"RuntimeConfig": {"device": _device_problem}, "RegulariseConfig": {"augment": augment_problem},
                "EvaluateConfig": {"attribute_columns": _columns_problem},
                "CompareConfig": {"methods": _methods_problem}}


def _unknown_key_message(path: str, key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(names)})"
    return f"unknown config key '{path}'{hint}"


def _coerce(value: Any, hint: Any, path: str) -> Any:
    """Check a value against a field's type; ints are accepted for floats."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if hint is Any:
        return value
    if hint is str and value is None:
        return ""  # `--set stylex.regularise.augment=` (an empty value) on a text field: the empty text
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{path}.{k}") for k, v in value.items()} if args else dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise ConfigError(f"{path}: expected {hint.__name__}, got {value!r}")
    return value
