"""Real image datasets: ``<root>/<class>/<image>`` folders or a labels CSV, decoded once and cached."""
from __future__ import annotations

import difflib
import hashlib
import json
import logging
import multiprocessing
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from stylexlib.core.config import DataConfig
from stylexlib.core.io import torch_load, torch_save
from stylexlib.data.cache import cache_root
from stylexlib.data.dataset import SPLITS, DataError, ImageDataset, group_split, random_split
from stylexlib.data.layout import check_unique_files, folder_table, path_classes

log = logging.getLogger(__name__)

DECODE_WORKERS = 2
PARALLEL_MIN_FILES = 1000  # below this, starting worker processes costs more than it saves
CACHE_VERSION = 2  # bump when decoding changes, to invalidate old cache files
SHOW_NAMES = 5  # file names quoted in a skip warning
HIGH_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # Pillow's modes for 16-bit (and 32-bit int) greyscale


def load_folder_dataset(cfg: DataConfig, cache_dir: str | Path | None = None) -> ImageDataset:
    """Load ``cfg.root`` (class folders, split folders holding class folders, or ``cfg.labels_csv``) as square RGB
    uint8 images.

    Missing, unreadable or unlabelled files are skipped, logged and listed in ``info['skipped']``;
    the decoded images are cached under :func:`cache_root`, keyed on the files and the config.
    """
    root = _check_root(cfg)
    skipped: list[dict] = []
    table = _csv_table(root, cfg, skipped) if cfg.labels_csv else _folder_table(root, cfg)
    table = _stat_files(root, table, skipped)
    table = _subset(table, cfg.max_images, cfg.seed)
    _check_classes(table["label"], root)
    path = cache_root(cache_dir) / f"folder-{_cache_key(root, table, cfg)}.pt"
    payload = _read_cache(path)
    if payload is None:
        payload = _decode_table(root, table, cfg.resolution)
        torch_save(path, payload)
    _warn_skipped(payload["skipped"], "unreadable images skipped")
    info = {
        "root": str(root),
        "labels_csv": str(root / cfg.labels_csv) if cfg.labels_csv else None,
        "label_column": cfg.label_column,
        "filter": cfg.filter or None,
        "skipped": skipped + payload["skipped"],
        "cache": str(path),
        "split": _split_source(cfg, table),
    }
    return ImageDataset(
        images=payload["images"],
        labels=payload["labels"],
        class_names=payload["class_names"],
        split=_splits(table, payload["files"], cfg),
        files=payload["files"],
        info=info,
    )


def folder_rows(cfg: DataConfig) -> pd.DataFrame:
    """The ``file``/``label`` rows :func:`load_folder_dataset` would decode (after the CSV, its filter and
    ``max_images``), without decoding any image: what ``stylex run --plan`` counts."""
    root = _check_root(cfg)
    skipped: list[dict] = []
    table = _csv_table(root, cfg, skipped) if cfg.labels_csv else _folder_table(root, cfg)
    return _subset(_stat_files(root, table, skipped), cfg.max_images, cfg.seed)


def _check_root(cfg: DataConfig) -> Path:
    """The dataset folder, after checking it and the options that do not depend on its contents."""
    if not cfg.root:
        raise DataError("data.root is not set: give the dataset folder (data.root=/path/to/images)")
    root = Path(cfg.root).expanduser().resolve()
    if not root.exists():
        raise DataError(f"dataset folder not found: {root} (check data.root)")
    if not root.is_dir():
        raise DataError(f"data.root must be a folder, but {root} is a file")
    for key in ("label_column", "split_column", "group_column"):
        if getattr(cfg, key) and not cfg.labels_csv:
            raise DataError(f"data.{key}='{getattr(cfg, key)}' needs data.labels_csv (a CSV inside {root})")
    if cfg.label_queries and not cfg.labels_csv:
        raise DataError(f"data.label_queries needs data.labels_csv (a CSV inside {root}) to run the queries on")
    if cfg.max_images is not None and cfg.max_images < 1:
        raise DataError(f"data.max_images must be a positive number of images, got {cfg.max_images}")
    if cfg.resolution < 1:
        raise DataError(f"data.resolution must be a positive image size, got {cfg.resolution}")
    return root


# ---------------------------------------------------------------------------- listing


def _folder_table(root: Path, cfg: DataConfig) -> pd.DataFrame:
    """``file``/``label`` (and ``split``, for split folders) rows of the images in ``root``, filtered."""
    return _apply_filter(folder_table(root), cfg.filter, f"the file list of {root}")


def _csv_table(root: Path, cfg: DataConfig, skipped: list[dict]) -> pd.DataFrame:
    """``file``/``label`` rows from the labels CSV, filtered, with unlabelled rows skipped."""
    csv = root / cfg.labels_csv
    if not csv.is_file():
        raise DataError(f"labels CSV not found: {csv} (check data.labels_csv: a path inside data.root, relative to "
                        "the config file's folder, or absolute)")
    try:
        frame = pd.read_csv(csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read labels CSV {csv}: {exc}") from exc
    _check_column(frame, cfg.file_column, "data.file_column", csv)
    for key in ("label_column", "split_column", "group_column"):
        if getattr(cfg, key):
            _check_column(frame, getattr(cfg, key), f"data.{key}", csv)
    frame = _apply_filter(frame, cfg.filter, str(csv))
    for column in filter(None, [cfg.file_column, cfg.label_column, cfg.split_column, cfg.group_column]):
        frame = _drop_missing_values(frame, column, cfg.file_column, skipped)
    if cfg.label_queries:
        frame = frame.assign(_label=_query_labels(frame, cfg.label_queries, csv))
        frame = frame[frame["_label"].notna()]
    files = frame[cfg.file_column].astype(str)
    if not len(files):
        raise DataError(f"no labelled rows left in {csv} (see the warnings above)")
    check_unique_files(files, frame.index + 2, str(csv))
    folder_split = None
    if cfg.label_queries:
        labels = frame["_label"]
    elif cfg.label_column:
        labels = _integral(frame[cfg.label_column])
    else:
        labels, folder_split = path_classes(files, f"{csv} (column '{cfg.file_column}')")
    table = pd.DataFrame({"file": files.to_numpy(), "label": labels.to_numpy()})
    if cfg.split_column:
        table["split"] = _split_values(frame[cfg.split_column], cfg.split_column, csv)
    elif folder_split is not None:
        table["split"] = folder_split.to_numpy()
    if cfg.group_column:
        table["group"] = frame[cfg.group_column].astype(str).to_numpy()
    return table


def _split_values(values: pd.Series, column: str, csv: Path) -> np.ndarray:
    """The split column's values as train / val / test (case and surrounding spaces ignored)."""
    clean = values.astype(str).str.strip().str.lower()
    bad = sorted(set(values[~clean.isin(SPLITS)].astype(str)))
    if bad:
        raise DataError(f"data.split_column: column '{column}' of {csv} holds {bad[:SHOW_NAMES]}; "
                        f"use {', '.join(SPLITS)} (or leave data.split_column unset for a random split)")
    return clean.to_numpy()


def _split_source(cfg: DataConfig, table: pd.DataFrame) -> str:
    if cfg.split_column:
        return f"column '{cfg.split_column}'"
    if "split" in table:
        return "split folders"
    return f"random, groups of column '{cfg.group_column}' kept whole" if cfg.group_column else "random"


def _splits(table: pd.DataFrame, files: list[str], cfg: DataConfig) -> np.ndarray:
    """Each decoded file's split: the CSV's split column, the split folders, a group-keeping random split, or a
    random split."""
    if "split" in table:
        source = f"data.split_column '{cfg.split_column}'" if cfg.split_column else "the split folders"
        of_file = dict(zip(table["file"], table["split"]))
        split = np.array([of_file[f] for f in files], dtype=str)
        if cfg.group_column:
            _check_groups_in_one_split(table, cfg.group_column, source)
        if not (split == "train").any():
            raise DataError(f"{source}: no image is in the train split; mark the training images 'train'")
        return split
    if cfg.group_column:
        of_file = dict(zip(table["file"], table["group"]))
        return group_split(np.array([of_file[f] for f in files]), cfg.val_fraction, cfg.test_fraction, cfg.seed)
    return random_split(len(files), cfg.val_fraction, cfg.test_fraction, cfg.seed)


def _check_groups_in_one_split(table: pd.DataFrame, group_column: str, source: str) -> None:
    spread = table.groupby("group")["split"].nunique()
    leaking = spread[spread > 1].index.tolist()
    if leaking:
        raise DataError(f"data.group_column '{group_column}': group(s) {leaking[:SHOW_NAMES]} appear in more than "
                        f"one split of {source}; keep each group in one split")


def _query_labels(frame: pd.DataFrame, queries: dict[str, str], csv: Path) -> pd.Series:
    """Each row's class from ``data.label_queries`` (None where no query matches)."""
    labels = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    for name, query in queries.items():
        try:
            hit = frame.index.isin(frame.query(query).index)
        except Exception as exc:  # pandas raises many types for a bad expression
            raise DataError(f"data.label_queries['{name}'] = '{query}' failed on {csv}: {type(exc).__name__}: {exc}; "
                            f"columns: {', '.join(map(str, frame.columns))}") from exc
        both = hit & labels.notna().to_numpy()
        if both.any():
            first = frame.index[both][0]
            raise DataError(f"data.label_queries: CSV row {first + 2} of {csv} matches both '{labels[first]}' and "
                            f"'{name}'; make the queries exclusive")
        labels[hit] = name
    if labels.isna().all():
        raise DataError(f"data.label_queries {dict(queries)} match no row of {csv}")
    return labels


def _check_column(frame: pd.DataFrame, column: str, key: str, csv: Path) -> None:
    if column in frame.columns:
        return
    names = [str(c) for c in frame.columns]
    close = difflib.get_close_matches(column, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise DataError(f"{key}: column '{column}' is not in {csv}{hint}; available columns: {', '.join(names)}")


def _apply_filter(frame: pd.DataFrame, expr: str | None, source: str) -> pd.DataFrame:
    """Rows of ``frame`` kept by the pandas query ``expr`` (all rows when it is empty)."""
    if not expr:
        return frame
    try:
        kept = frame.query(expr)
    except Exception as exc:  # pandas raises many types for a bad expression
        raise DataError(
            f"data.filter '{expr}' failed on {source}: {type(exc).__name__}: {exc}; "
            f"columns: {', '.join(map(str, frame.columns))}"
        ) from exc
    if kept.empty:
        raise DataError(f"data.filter '{expr}' kept none of the {len(frame)} rows of {source}")
    return kept


def _drop_missing_values(frame: pd.DataFrame, column: str, file_column: str, skipped: list[dict]) -> pd.DataFrame:
    """Rows with a value in ``column``; the others are recorded in ``skipped`` and logged."""
    empty = frame[column].isna()
    if not empty.any():
        return frame
    reason = f"no value in column '{column}'"
    names = [f"CSV row {i + 2}" if pd.isna(f) else str(f) for i, f in frame.loc[empty, file_column].items()]
    entries = [{"file": name, "reason": reason} for name in names]
    _warn_skipped(entries, f"CSV rows with {reason} skipped")
    skipped += entries
    return frame[~empty]


def _integral(labels: pd.Series) -> pd.Series:
    """Float labels that are whole numbers (a CSV column with gaps) as ints, so 1.0 is named '1'."""
    if pd.api.types.is_float_dtype(labels) and (labels % 1 == 0).all():
        return labels.astype(np.int64)
    return labels


def _stat_files(root: Path, table: pd.DataFrame, skipped: list[dict]) -> pd.DataFrame:
    """Rows whose file exists, sorted by file, with its size and mtime; missing files are skipped."""
    sizes, mtimes, missing = [], [], []
    for file in table["file"]:
        try:
            stat = os.stat(os.path.join(root, file))
        except OSError:
            missing.append(file)
            stat = None
        sizes.append(stat.st_size if stat else -1)
        mtimes.append(stat.st_mtime_ns if stat else -1)
    table = table.assign(size=sizes, mtime=mtimes)
    if missing:
        entries = [{"file": f, "reason": f"file not found in {root}"} for f in missing]
        _warn_skipped(entries, f"files listed but not found in {root} skipped")
        skipped += entries
    table = table[table["size"] >= 0]
    if table.empty:
        raise DataError(
            f"none of the {len(missing)} listed files exist in {root} (check data.root / data.file_column)"
        )
    return table.sort_values("file", kind="stable").reset_index(drop=True)


def _subset(table: pd.DataFrame, max_images: int | None, seed: int) -> pd.DataFrame:
    """A seeded random subset of ``max_images`` rows, in file order."""
    if max_images is None or max_images >= len(table):
        return table
    keep = np.sort(np.random.default_rng(seed).choice(len(table), size=max_images, replace=False))
    return table.iloc[keep].reset_index(drop=True)


def _check_classes(labels: pd.Series, root: Path) -> None:
    names = _class_names(labels)
    if len(names) < 2:
        raise DataError(
            f"only one class ({names[0]}) in {root} after filtering/skipping: "
            "a classifier needs at least two; check data.label_column / data.filter"
        )


def _class_names(labels: pd.Series) -> list[str]:
    """Sorted distinct labels (numerically for numbers), as strings."""
    return [str(v) for v in sorted(labels.unique())]


def _warn_skipped(entries: list[dict], what: str) -> None:
    if entries:
        names = ", ".join(e["file"] for e in entries[:SHOW_NAMES])
        more = ", ..." if len(entries) > SHOW_NAMES else ""
        log.warning("%d %s: %s%s (first reason: %s)", len(entries), what, names, more, entries[0]["reason"])


# ---------------------------------------------------------------------------- decoding and cache


def _cache_key(root: Path, table: pd.DataFrame, cfg: DataConfig) -> str:
    """Hash of everything the decoded tensors depend on."""
    columns = [table["file"], table["size"].tolist(), table["mtime"].tolist(), table["label"].astype(str)]
    rows = list(zip(*columns))
    settings = [str(root), cfg.labels_csv, cfg.file_column, cfg.label_column, cfg.filter or None]
    settings += [cfg.max_images, cfg.seed, cfg.resolution]
    text = json.dumps([CACHE_VERSION, settings, rows])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _read_cache(path: Path) -> dict | None:
    """The cached payload, or None when there is none or it cannot be read (it is then rebuilt)."""
    if not path.exists():
        return None
    try:
        payload = torch_load(path)
    except Exception as exc:  # a damaged file or one from an incompatible torch: decode again
        log.warning("ignoring unreadable cache file %s (%s: %s)", path, type(exc).__name__, exc)
        return None
    log.info("loaded %d cached images from %s", len(payload["files"]), path)
    return payload


def _decode_table(root: Path, table: pd.DataFrame, resolution: int) -> dict:
    """Decode every file of ``table`` into the cache payload (tensors, lists and strings only)."""
    arrays, skipped = _decode_all([str(root / f) for f in table["file"]], resolution)
    bad = [index for index, _ in skipped]
    kept = table.drop(index=bad)
    if kept.empty:
        raise DataError(f"none of the {len(table)} images in {root} could be read; first error: {skipped[0][1]}")
    _check_classes(kept["label"], root)
    names = _class_names(kept["label"])
    lookup = {name: i for i, name in enumerate(names)}
    images = torch.empty((len(kept), 3, resolution, resolution), dtype=torch.uint8)
    for i, array in enumerate(a for a in arrays if a is not None):
        images[i] = torch.from_numpy(array).permute(2, 0, 1)
    return {
        "images": images,
        "labels": torch.tensor([lookup[str(v)] for v in kept["label"]], dtype=torch.int64),
        "class_names": names,
        "files": kept["file"].tolist(),
        "skipped": [{"file": table["file"][i], "reason": f"unreadable image: {reason}"} for i, reason in skipped],
    }


def _decode_all(paths: list[str], resolution: int) -> tuple[list[np.ndarray | None], list[tuple[int, str]]]:
    """Decoded arrays (None where unreadable) and (index, error) for the unreadable files."""
    jobs = [(p, resolution) for p in paths]
    workers = min(DECODE_WORKERS, os.cpu_count() or 1)
    bar = dict(total=len(jobs), desc="decoding images", unit="img", leave=False)
    if len(jobs) < PARALLEL_MIN_FILES or workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        results = [_try_decode(job) for job in tqdm(jobs, **bar)]
    else:  # fork: the workers need no fresh import of torch
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = list(tqdm(pool.imap(_try_decode, jobs, chunksize=64), **bar))
    arrays = [array for array, _ in results]
    errors = [(i, error) for i, (_, error) in enumerate(results) if error is not None]
    return arrays, errors


def _try_decode(job: tuple[str, int]) -> tuple[np.ndarray | None, str | None]:
    try:
        return decode_image(*job), None
    except Exception as exc:  # any failure on one user file is reported, not fatal
        return None, f"{type(exc).__name__}: {exc}"


def decode_image(source: str | Path | BinaryIO, resolution: int) -> np.ndarray:
    """One image file (a path or an open binary file, e.g. an upload's bytes) -> uint8 array (resolution, resolution,
    3): EXIF-rotated, transparency composited onto white, centre square crop, LANCZOS resize. The one decoder for
    folders and uploads, so an image reads the same either way."""
    with Image.open(source) as img:
        img.draft("RGB", (resolution, resolution))  # JPEG: decode at a reduced scale, still >= resolution
        rgb = _to_rgb(ImageOps.exif_transpose(img))
        return np.array(ImageOps.fit(rgb, (resolution, resolution), Image.Resampling.LANCZOS))


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB: 16-bit greyscale scaled to 8 bits (not clipped), any transparency composited onto white."""
    if img.mode in HIGH_BIT_MODES:
        img = _high_bit_to_8bit(img)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return img.convert("RGB")


def _high_bit_to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit greyscale image as 8-bit "L" (or "LA" with its transparent value), value / 257 so 65535 -> 255; a
    32-bit "I" image beyond 0..65535 is stretched from its own minimum to its maximum instead."""
    values = np.asarray(img).astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if img.mode != "I" or (low >= 0 and high <= 65535):
        scaled = values / 257.0
    else:
        scaled = (values - low) * (255.0 / max(high - low, 1.0))
    grey = Image.fromarray(np.round(scaled).clip(0, 255).astype(np.uint8))
    transparent = img.info.get("transparency")
    if isinstance(transparent, int):
        alpha = Image.fromarray(np.where(values == transparent, 0, 255).astype(np.uint8))
        return Image.merge("LA", (grey, alpha))
    return grey
