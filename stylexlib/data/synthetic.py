"""The embedded default dataset: procedural cartoon faces rendered from ground-truth factors.

Every image is a pure function of its factor row (:data:`FACTORS`), so any face can be re-rendered with one
factor changed (:func:`intervene`). Shapes are signed-distance functions composited with a one-pixel
anti-aliased edge, vectorised over the batch in numpy, at any power-of-two resolution >= 16.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stylexlib.core.config import DataConfig
from stylexlib.core.io import torch_load, torch_save, write_table
from stylexlib.data.cache import cache_root
from stylexlib.data.dataset import SPLITS, DataError, ImageDataset, random_split

log = logging.getLogger(__name__)

RENDER_VERSION = 1  # bump when the drawing changes, to invalidate cached datasets
MIN_RESOLUTION = 16
PIXELS_PER_BATCH = 2**18  # images are drawn in chunks of about this many pixels


@dataclass(frozen=True)
class Factor:
    """One ground-truth factor: continuous values in [low, high], or binary 0/1."""

    name: str
    kind: str  # "continuous" or "binary"
    low: float
    high: float
    description: str
    nuisance: bool = False  # small jitter, not meant as a concept
    gap: float = 0.0  # continuous factors: values with |value| < gap are never sampled

    @property
    def sampling(self) -> str:
        if self.kind == "binary":
            return "Bernoulli(0.5)"
        if self.gap:
            return f"uniform on [{self.low:g}, {-self.gap:g}] ∪ [{self.gap:g}, {self.high:g}]"
        return f"uniform on [{self.low:g}, {self.high:g}]"


FACTORS: list[Factor] = [
    Factor("skin_tone", "continuous", 0.0, 1.0, "face colour, light (0) to dark (1)"),
    Factor("face_width", "continuous", 0.0, 1.0, "face ellipse width, narrow (0) to wide (1)"),
    Factor("hair_hue", "continuous", 0.0, 0.8, "hair colour hue (red 0, green 0.33, blue 0.67)"),
    Factor("background_hue", "continuous", 0.0, 0.8, "pastel background hue (red 0, green 0.33, blue 0.67)"),
    Factor("eye_size", "continuous", 0.0, 1.0, "eye radius, small (0) to large (1)"),
    Factor("mouth_curve", "continuous", -1.0, 1.0, "mouth curvature: < 0 frown, > 0 smile", gap=0.15),
    Factor("glasses", "binary", 0, 1, "dark round glasses with a bridge across the eyes"),
    Factor("hat", "binary", 0, 1, "dark top hat with a red band"),
    Factor("offset_x", "continuous", -1.0, 1.0, "horizontal head position jitter (±3.5% of the image)", True),
    Factor("offset_y", "continuous", -1.0, 1.0, "vertical head position jitter (±3.5% of the image)", True),
]
FACTOR_NAMES = [f.name for f in FACTORS]
_BY_NAME = {f.name: f for f in FACTORS}


def factor_table() -> pd.DataFrame:
    """The factor spec as a table (one row per factor)."""
    rows = [{**asdict(f), "sampling": f.sampling} for f in FACTORS]
    return pd.DataFrame(rows)[["name", "kind", "low", "high", "sampling", "nuisance", "description"]]


# ---------------------------------------------------------------------------- factors


def sample_factors(n: int, seed: int) -> pd.DataFrame:
    """``n`` independent factor rows (continuous: float64, binary: int64), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({f.name: _sample(f, n, rng) for f in FACTORS})


def _sample(spec: Factor, n: int, rng: np.random.Generator) -> np.ndarray:
    if spec.kind == "binary":
        return rng.integers(0, 2, n).astype(np.int64)
    if not spec.gap:
        return rng.uniform(spec.low, spec.high, n)
    below = -spec.gap - spec.low  # length of [low, -gap]; [gap, high] follows it
    u = rng.uniform(0.0, below + spec.high - spec.gap, n)
    return np.where(u < below, spec.low + u, spec.gap + u - below)


def intervene(factors: pd.DataFrame, name: str, value: float | Sequence[float] | np.ndarray) -> pd.DataFrame:
    """A copy of ``factors`` with factor ``name`` set to ``value`` (a scalar, or one value per row)."""
    spec = factor_spec(name)
    values = np.asarray(value, dtype=np.float64)
    if values.ndim and values.shape != (len(factors),):
        raise DataError(f"intervene: {values.size} values of '{name}' for {len(factors)} rows; give 1 or 1 per row")
    values = np.broadcast_to(values, (len(factors),))
    _check_values(spec, values)
    out = factors.copy()
    out[name] = values.astype(np.int64) if spec.kind == "binary" else values.copy()
    return out


def factor_spec(name: str) -> Factor:
    """The spec of factor ``name`` (a clear error naming the factors for an unknown one)."""
    if name not in _BY_NAME:
        raise DataError(f"unknown factor '{name}'; factors: {', '.join(FACTOR_NAMES)}")
    return _BY_NAME[name]


def _check_values(spec: Factor, values: np.ndarray) -> None:
    if spec.kind == "binary":
        bad = values[(values != 0) & (values != 1)]
        valid = "0 or 1 (binary)"
    else:
        bad = values[~((values >= spec.low) & (values <= spec.high))]
        valid = f"in [{spec.low:g}, {spec.high:g}] (continuous)"
    if len(bad):
        raise DataError(f"factor '{spec.name}' must be {valid}, got {bad[0]!r}")


def _factor_frame(factors: pd.DataFrame | pd.Series) -> pd.DataFrame:
    """The factor columns of a table (or one row), checked and typed."""
    frame = factors.to_frame().T if isinstance(factors, pd.Series) else factors
    missing = [name for name in FACTOR_NAMES if name not in frame.columns]
    if missing:
        raise DataError(f"factor table lacks columns {missing}; factors: {', '.join(FACTOR_NAMES)}")
    out = pd.DataFrame(index=frame.index)
    for spec in FACTORS:
        values = frame[spec.name].to_numpy(dtype=np.float64)
        _check_values(spec, values)
        out[spec.name] = values.astype(np.int64) if spec.kind == "binary" else values
    return out


# ---------------------------------------------------------------------------- labels and shortcut


def apply_label_rule(factors: pd.DataFrame, rule: str) -> np.ndarray:
    """Evaluate a pandas expression over the factor columns: booleans -> 0/1, integers -> class index."""
    names = ", ".join(map(str, factors.columns))
    try:
        result = factors.eval(rule)
    except Exception as exc:  # pandas raises many types for bad expressions
        raise DataError(f"label rule '{rule}' failed: {exc}. Factors: {names}") from None
    if np.ndim(result) > 1:
        raise DataError(f"label rule '{rule}' must be an expression (one value per image), not an assignment")
    values = np.broadcast_to(np.asarray(result), (len(factors),))
    if values.dtype == bool:
        return values.astype(np.int64)
    if not np.issubdtype(values.dtype, np.integer):
        raise DataError(
            f"label rule '{rule}' gives {values.dtype} values; it must give booleans (2 classes) "
            f"or integer class indices, e.g. 'mouth_curve > 0'. Factors: {names}"
        )
    if len(values) and values.min() < 0:
        raise DataError(f"label rule '{rule}' gives negative class index {values.min()}; indices start at 0")
    return values.astype(np.int64)


def add_label_noise(labels: np.ndarray, rows: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """Annotation noise: exactly round(rate * n) of the ``rows`` (bool mask) relabelled to another class, seeded."""
    if not 0.0 <= rate < 0.5:
        raise DataError(f"data.label_noise must be in [0, 0.5), got {rate}")
    rng = np.random.default_rng(seed)
    candidates = np.flatnonzero(rows)
    noisy = rng.permutation(candidates)[: int(round(rate * len(candidates)))]
    num_classes = int(labels.max()) + 1
    out = np.asarray(labels).copy()
    out[noisy] = (out[noisy] + rng.integers(1, num_classes, len(noisy))) % num_classes
    return out


def plant_spurious(
    factors: pd.DataFrame,
    labels: np.ndarray,
    factor: str,
    agreement: float,
    seed: int,
    rule: str | None = None,
) -> pd.DataFrame:
    """Copy of ``factors`` where binary ``factor`` equals ``labels == 1`` in exactly round(agreement * n) rows.

    The agreeing rows are a seeded random choice. ``rule``, when given, must not mention the factor.
    """
    spec = factor_spec(factor)
    if spec.kind != "binary":
        raise DataError(f"spurious factor '{factor}' must be binary; binary factors: {_binary_names()}")
    if rule is not None and re.search(rf"\b{re.escape(factor)}\b", rule):
        raise DataError(f"spurious factor '{factor}' is used by the label rule '{rule}'; pick another factor")
    if not 0.0 <= agreement <= 1.0:
        raise DataError(f"spurious agreement for '{factor}' must be in [0, 1], got {agreement}")
    n = len(factors)
    target = (np.asarray(labels) == 1).astype(np.int64)
    agree = np.zeros(n, dtype=bool)
    agree[np.random.default_rng(seed).permutation(n)[: int(round(agreement * n))]] = True
    out = factors.copy()
    out[factor] = np.where(agree, target, 1 - target)
    return out


def _binary_names() -> str:
    return ", ".join(f.name for f in FACTORS if f.kind == "binary")


# ---------------------------------------------------------------------------- rendering


def render(factors: pd.DataFrame | pd.Series, resolution: int) -> torch.Tensor:
    """Draw one face per factor row: uint8 tensor N x 3 x H x W (RGB), in chunks to bound memory."""
    _check_resolution(resolution)
    frame = _factor_frame(factors)
    chunk = max(1, PIXELS_PER_BATCH // resolution**2)
    out = torch.empty(len(frame), 3, resolution, resolution, dtype=torch.uint8)
    for start in range(0, len(frame), chunk):
        part = frame.iloc[start : start + chunk]
        out[start : start + len(part)] = _draw(part, resolution)
    return out


def render_interventions(
    factors: pd.DataFrame | pd.Series, name: str, values: Sequence[float], resolution: int
) -> torch.Tensor:
    """Each sample rendered once per value of factor ``name``: (samples * len(values)) x 3 x H x W, sample-major."""
    frame = _factor_frame(factors)
    repeated = frame.iloc[np.repeat(np.arange(len(frame)), len(values))]
    return render(intervene(repeated, name, np.tile(np.asarray(values, dtype=np.float64), len(frame))), resolution)


def _check_resolution(resolution: int) -> None:
    if resolution < MIN_RESOLUTION or resolution & (resolution - 1):
        raise DataError(f"data.resolution must be a power of two >= {MIN_RESOLUTION}, got {resolution}")


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    return frame[name].to_numpy(np.float32).reshape(-1, 1, 1, 1)


def _colour(rgb: np.ndarray | list[float]) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float32).reshape(-1, 3, 1, 1)


def _hsv(h: np.ndarray, s: float, v: float) -> np.ndarray:
    """HSV -> RGB in [0, 1], one row per hue."""
    k = (np.array([5.0, 3.0, 1.0]) + h[:, None] * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


SKIN_LIGHT, SKIN_DARK = np.array([1.0, 0.87, 0.75]), np.array([0.42, 0.27, 0.18])
WHITE, PUPIL = _colour([0.97, 0.97, 0.97]), _colour([0.08, 0.08, 0.12])
LIPS, FRAME = _colour([0.45, 0.06, 0.1]), _colour([0.06, 0.06, 0.08])
HAT, BAND, SHIRT = _colour([0.12, 0.12, 0.16]), _colour([0.8, 0.1, 0.12]), _colour([0.3, 0.34, 0.42])


def _draw(frame: pd.DataFrame, res: int) -> torch.Tensor:
    """Composite the face layers back to front (float32 numpy, single-threaded), then round to uint8."""
    g = _Geometry(frame, res)
    skin = _colour(SKIN_LIGHT + frame["skin_tone"].to_numpy()[:, None] * (SKIN_DARK - SKIN_LIGHT))
    hair = _colour(_hsv(frame["hair_hue"].to_numpy(), 0.8, 0.55))
    img = np.repeat(np.repeat(_colour(_hsv(frame["background_hue"].to_numpy(), 0.35, 0.93)), res, 2), res, 3)
    paint, x, y = g.paint, g.x - g.cx, g.y - g.cy
    paint(img, _ellipse(x, g.y - 1.3, 0.85, 0.5), SHIRT)
    paint(img, _box(x, y - 0.55, 0.13, 0.25), skin * 0.85)
    paint(img, np.maximum(_ellipse(x, y + 0.06, g.rx + 0.11, 0.76), y - 0.28), hair)
    paint(img, _ellipse(g.ax - g.rx, y - 0.02, 0.1, 0.14), skin * 0.9)
    face = _ellipse(x, y, g.rx, 0.64)
    paint(img, face - 0.04, skin * 0.55)
    paint(img, face, skin)
    fringe = (y + 0.2 + 0.15 * x) * 0.989  # slanted hairline, as a signed distance
    paint(img, np.maximum(face - 0.045, fringe), hair)
    _draw_eyes(img, g, frame)
    paint(img, _ellipse(x, y - 0.08, 0.045, 0.06), skin * 0.8)
    paint(img, _mouth(g, frame), LIPS)
    _draw_glasses(img, g, _column(frame, "glasses"))
    _draw_hat(img, g, _column(frame, "hat"))
    return torch.from_numpy(np.rint(img * 255.0).clip(0, 255).astype(np.uint8))


class _Geometry:
    """Pixel-centre coordinates in [-1, 1] (y down) and the per-image head placement."""

    def __init__(self, frame: pd.DataFrame, res: int) -> None:
        coords = ((np.arange(res) + 0.5) * (2.0 / res) - 1.0).astype(np.float32)
        self.x, self.y = coords.reshape(1, 1, 1, res), coords.reshape(1, 1, res, 1)
        self.pixel = 2.0 / res
        self.cx = 0.07 * _column(frame, "offset_x")
        self.cy = 0.1 + 0.07 * _column(frame, "offset_y")
        self.rx = 0.44 + 0.16 * _column(frame, "face_width")
        self.ax = np.abs(self.x - self.cx)  # mirrored x for symmetric left/right features
        self.eye_x = 0.15 + 0.3 * self.rx
        self.eye_y = self.cy - 0.08

    def paint(self, img: np.ndarray, sdf: np.ndarray, colour: np.ndarray, where: np.ndarray | None = None) -> None:
        """Blend ``colour`` over ``img`` inside the shape, with a one-pixel anti-aliased edge."""
        alpha = np.clip(0.5 - sdf / self.pixel, 0.0, 1.0)
        if where is not None:
            alpha = alpha * where
        img += (colour - img) * alpha


def _draw_eyes(img: np.ndarray, g: _Geometry, frame: pd.DataFrame) -> None:
    radius = 0.06 + 0.08 * _column(frame, "eye_size")
    dist = _length(g.ax - g.eye_x, g.y - g.eye_y)
    g.paint(img, dist - radius, WHITE)
    g.paint(img, dist - 0.55 * radius, PUPIL)


def _draw_glasses(img: np.ndarray, g: _Geometry, on: np.ndarray) -> None:
    if not on.any():
        return
    rim, lens = 0.2, _length(g.ax - g.eye_x, g.y - g.eye_y)
    g.paint(img, lens - rim, FRAME, on * 0.22)  # tinted lenses
    bridge = _box(g.x - g.cx, g.y - g.eye_y + 0.03, g.eye_x - rim, 0.03)
    temple_x = g.ax - (g.eye_x + rim + g.rx) / 2
    temple = _box(temple_x, g.y - g.eye_y, np.maximum((g.rx - g.eye_x - rim) / 2, 0.02), 0.03)
    g.paint(img, np.minimum(np.abs(lens - rim) - 0.04, np.minimum(bridge, temple)), FRAME, on)


def _draw_hat(img: np.ndarray, g: _Geometry, on: np.ndarray) -> None:
    if not on.any():
        return
    x, brim_y = g.x - g.cx, g.y - g.cy + 0.42
    shape = np.minimum(_box(x, brim_y, g.rx + 0.16, 0.05), _box(x, brim_y + 0.3, 0.75 * g.rx, 0.3))
    g.paint(img, shape, HAT, on)
    g.paint(img, _box(x, brim_y + 0.11, 0.75 * g.rx, 0.05), BAND, on)


def _mouth(g: _Geometry, frame: pd.DataFrame) -> np.ndarray:
    """Distance to a parabolic stroke: centre 0.15 * curve below, corners above, its mid-line (y down)."""
    sag = 0.15 * _column(frame, "mouth_curve")
    half_width, mid = 0.45 * g.rx + 0.07, g.cy + 0.34
    t = np.clip((g.x - g.cx) / half_width, -1.0, 1.0)
    curve_y = mid + sag * (1.0 - 2.0 * t * t)
    slope = -4.0 * sag * t / half_width
    along = np.abs(g.y - curve_y) / np.sqrt(1.0 + slope * slope)
    corner = _length(g.ax - half_width, g.y - (mid - sag))
    return np.where(g.ax <= half_width, along, corner) - 0.055


def _length(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    return np.sqrt(dx * dx + dy * dy)


def _ellipse(dx: np.ndarray, dy: np.ndarray, rx: np.ndarray | float, ry: np.ndarray | float) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse (accurate near its boundary)."""
    k0 = _length(dx / rx, dy / ry)
    k1 = np.maximum(_length(dx / (rx * rx), dy / (ry * ry)), 1e-6)
    return k0 * (k0 - 1.0) / k1


def _box(dx: np.ndarray, dy: np.ndarray, hx: np.ndarray | float, hy: np.ndarray | float) -> np.ndarray:
    """Signed distance to an axis-aligned box of half-sizes (hx, hy)."""
    qx, qy = np.abs(dx) - hx, np.abs(dy) - hy
    outside = _length(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    return outside + np.minimum(np.maximum(qx, qy), 0.0)


# ---------------------------------------------------------------------------- dataset


def make_synthetic_dataset(cfg: DataConfig, cache_dir: str | Path | None = None) -> ImageDataset:
    """Sample, label, split, plant the shortcut and render ``cfg.num_images`` faces (cached on disk)."""
    _check_resolution(cfg.resolution)
    if cfg.num_images < 2:
        raise DataError(f"data.num_images must be at least 2, got {cfg.num_images}")
    path = cache_root(cache_dir) / f"synthetic-{_cache_key(cfg)}.pt"
    payload = _read_cache(path)
    if payload is None:
        payload = _build(cfg)
        torch_save(path, payload)
    factors = pd.DataFrame({name: payload["factors"][name].numpy() for name in FACTOR_NAMES})
    labels, split = payload["labels"], np.asarray(payload["split"])
    info = {
        "label_rule": cfg.label_rule,
        "spurious_factor": cfg.spurious_factor,
        "spurious_agreement": _agreement(factors, labels.numpy(), split, cfg.spurious_factor),
        "label_noise": cfg.label_noise,
        "cache": str(path),
    }
    return ImageDataset(
        images=payload["images"],
        labels=labels,
        class_names=_class_names(cfg, labels.numpy()),
        split=split,
        factors=factors,
        info=info,
    )


def _build(cfg: DataConfig) -> dict:
    """The cache payload: images, factors (dict of tensors), labels and split."""
    factors = sample_factors(cfg.num_images, cfg.seed)
    labels = apply_label_rule(factors, cfg.label_rule)
    _class_names(cfg, labels)  # fail before rendering
    split = random_split(cfg.num_images, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    if cfg.label_noise:
        labels = add_label_noise(labels, split != "test", cfg.label_noise, cfg.seed + 100)
    if cfg.spurious_factor is not None:
        factors = _plant_per_split(factors, labels, split, cfg)
    return {
        "images": render(factors, cfg.resolution),
        "factors": {name: torch.tensor(factors[name].to_numpy()) for name in FACTOR_NAMES},
        "labels": torch.as_tensor(labels),
        "split": split.tolist(),
    }


def _plant_per_split(factors: pd.DataFrame, labels: np.ndarray, split: np.ndarray, cfg: DataConfig) -> pd.DataFrame:
    """Plant the shortcut separately in each split, so every split has the exact configured rate."""
    out = factors.copy()
    for k, name in enumerate(SPLITS):
        rows = np.flatnonzero(split == name)
        rate = cfg.spurious_agreement_test if name == "test" else cfg.spurious_agreement
        planted = plant_spurious(
            factors.iloc[rows], labels[rows], cfg.spurious_factor, rate, cfg.seed + 1 + k, rule=cfg.label_rule
        )
        out.iloc[rows, out.columns.get_loc(cfg.spurious_factor)] = planted[cfg.spurious_factor].to_numpy()
    return out


def _class_names(cfg: DataConfig, labels: np.ndarray) -> list[str]:
    """``cfg.class_names`` after checking them against the classes the rule produces."""
    if len(np.unique(labels)) < 2:
        raise DataError(
            f"label rule '{cfg.label_rule}' gives only one class ({labels[0]}) over all {len(labels)} images"
        )
    num_classes = int(labels.max()) + 1
    if len(cfg.class_names) != num_classes:
        raise DataError(
            f"label rule '{cfg.label_rule}' gives {num_classes} classes but data.class_names has "
            f"{len(cfg.class_names)}: {cfg.class_names}; give one name per class index 0..{num_classes - 1}"
        )
    return list(cfg.class_names)


def _agreement(factors: pd.DataFrame, labels: np.ndarray, split: np.ndarray, factor: str | None) -> dict | None:
    """Measured fraction of images per split where the spurious factor equals ``label == 1``."""
    if factor is None:
        return None
    agree = factors[factor].to_numpy() == (labels == 1)
    return {name: float(agree[split == name].mean()) if (split == name).any() else None for name in SPLITS}


def _cache_key(cfg: DataConfig) -> str:
    fields = ("resolution", "seed", "num_images", "label_rule", "val_fraction", "test_fraction")
    spurious = ("spurious_factor", "spurious_agreement", "spurious_agreement_test")
    key = {name: getattr(cfg, name) for name in fields + spurious}
    key["version"] = RENDER_VERSION
    if cfg.label_noise:
        key["label_noise"] = cfg.label_noise
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _read_cache(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return torch_load(path)
    except Exception as exc:  # a truncated or foreign file: rebuild it
        log.warning("ignoring unreadable cache file %s (%s); rebuilding", path, exc)
        return None


def save_factors_csv(dataset: ImageDataset, path: str | Path) -> Path:
    """Write one row per image: its factors, label, class name and split (atomically)."""
    if dataset.factors is None:
        raise DataError("this dataset has no ground-truth factors (only synthetic data does)")
    table = dataset.factors.copy()
    labels = dataset.labels.numpy()
    table["label"] = labels
    table["class_name"] = np.asarray(dataset.class_names)[labels]
    table["split"] = dataset.split
    return write_table(path, table, index=True, index_label="image")
