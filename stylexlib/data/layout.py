"""How image files are laid out: class folders, split folders (``train/``, ``val/``, ``test/``) holding class
folders (the Hugging Face ``imagefolder`` convention), and recursive image listings."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from stylexlib.core.data_identity import IMAGE_EXTENSIONS, is_image_name  # one list: the loader's and the fingerprint's
from stylexlib.data.dataset import DataError

log = logging.getLogger(__name__)

SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "dev": "val", "test": "test", "testing": "test"}  # folder name (any case) -> split
SHOW_NAMES = 5  # names quoted in a message


def extensions() -> str:
    return " ".join(sorted(IMAGE_EXTENSIONS))


def list_images(folder: Path) -> list[Path]:
    """The non-hidden images in ``folder`` and its non-hidden sub-folders, sorted by their path inside ``folder``."""
    found = []
    for parent, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(parent) / f for f in files if is_image_name(f)]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def split_of(name: str) -> str | None:
    """The split a folder name stands for (train / val / test), or None."""
    return SPLIT_FOLDERS.get(name.lower())


def folder_table(root: Path) -> pd.DataFrame:
    """``file``/``label`` rows for ``<root>/<class>/`` images, or ``file``/``label``/``split`` rows when every folder
    of ``root`` is a split folder (``<root>/train/<class>/``, ``<root>/test/<class>/``, ...); a mix of split folders
    and other folders is ambiguous and raises :class:`DataError`."""
    tops = _subfolders(root)
    named = [name for name in tops if split_of(name)]
    if not named:
        rows, loose = _class_rows(root, root)
        if not rows:
            where = f"; {len(loose)} images lie directly in it" if loose else ""
            raise DataError(f"no images found in {root}{where}: expected <root>/<class>/<image> folders "
                            f"({extensions()}) or a labels CSV (data.labels_csv)")
        _warn_loose(loose, root)
        return pd.DataFrame(rows, columns=["file", "label"])
    others = [name for name in tops if not split_of(name)]
    if others:
        raise DataError(f"{root} is ambiguous: its folders {named} are split names but {others[:SHOW_NAMES]} are not; "
                        "put every class folder inside split folders (<root>/train/<class>/, <root>/test/<class>/), "
                        "or rename the split-named folders if they are classes")
    return _split_rows(root, named)


def _split_rows(root: Path, named: list[str]) -> pd.DataFrame:
    """``file``/``label``/``split`` rows of the class folders inside the split folders ``named``."""
    folder_of: dict[str, str] = {}
    rows, classes = [], {}
    for name in named:
        split = split_of(name)
        if split in folder_of:
            raise DataError(f"{root}: folders '{folder_of[split]}' and '{name}' are both the {split} split; merge them")
        folder_of[split] = name
        found, loose = _class_rows(root, root / name)
        _warn_loose(loose, root / name)
        if not found:
            log.warning("split folder %s holds no class folders with images; ignored", root / name)
        rows += [(file, label, split) for file, label in found]
        classes[split] = {label for _, label in found}
    if not classes.get("train"):
        raise DataError(f"{root} has split folders {named} but no train/ folder with class folders of images: "
                        "expected <root>/train/<class>/<image>")
    for split, names in classes.items():
        unknown = sorted(names - classes["train"])
        if unknown:
            raise DataError(f"classes {unknown[:SHOW_NAMES]} are in {root / folder_of[split]} but not in "
                            f"{root / folder_of['train']}: the classifier could not learn them; add training images of "
                            "them or remove those folders")
        missing = sorted(classes["train"] - names)
        if names and missing:
            log.warning("split folder %s has no images of classes %s", root / folder_of[split], missing[:SHOW_NAMES])
    log.info("splits from the folders %s of %s (data.val_fraction / test_fraction unused)", named, root)
    return pd.DataFrame(rows, columns=["file", "label", "split"])


def _subfolders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _class_rows(root: Path, base: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(root-relative file, class) for the images in each class folder of ``base``, and the images directly in it."""
    rows = []
    for name in _subfolders(base):
        files = [p.relative_to(root).as_posix() for p in list_images(base / name)]
        if not files:
            log.warning("class folder %s has no images (%s); ignored", base / name, extensions())
        rows += [(file, name) for file in files]
    loose = sorted(e.name for e in os.scandir(base) if e.is_file() and is_image_name(e.name))
    return rows, loose


def _warn_loose(loose: list[str], folder: Path) -> None:
    if loose:
        log.warning("%d images directly in %s are ignored (not in a class folder): %s", len(loose), folder,
                    loose[:SHOW_NAMES])


def path_classes(files: pd.Series, source: str) -> tuple[pd.Series, pd.Series | None]:
    """Each file path's class from its folders (``<class>/...`` or ``<split>/<class>/...``) and, for the latter,
    its split (else None); mixing the two is ambiguous and raises :class:`DataError`."""
    parts = files.map(lambda f: Path(f).parts)
    flat = files[parts.map(len) < 2]
    if len(flat):
        raise DataError(f"{source}: data.label_column is not set, so the class is the file's folder, but "
                        f"'{flat.iloc[0]}' has no folder; set data.label_column to the CSV's label column")
    split = parts.map(lambda p: split_of(p[0]))
    if split.isna().all():
        return parts.map(lambda p: p[0]), None
    if split.notna().all():
        shallow = files[parts.map(len) < 3]
        if len(shallow):
            raise DataError(f"{source}: '{shallow.iloc[0]}' lies directly in a split folder; the class is the folder "
                            "inside it (<split>/<class>/<image>), or set data.label_column")
        return parts.map(lambda p: p[1]), split
    mixed = sorted({p[0] for p in parts[split.isna()]})[:SHOW_NAMES]
    raise DataError(f"{source}: ambiguous folders: some files lie in split folders ({', '.join(sorted(SPLIT_FOLDERS))})"
                    f" and others in {mixed}; use one layout (<class>/<image> or <split>/<class>/<image>) or set "
                    "data.label_column")


def check_unique_files(files: pd.Series, rows: pd.Index, source: str) -> None:
    """Refuse a labels table listing one image in two rows (paths compared after normalising ``./`` and ``//``).

    Refused, not de-duplicated: the rows may disagree on the label, split or group, and only the user knows which
    is right; keeping one silently could also put the same image in both train and test."""
    keys = files.map(os.path.normpath)
    twice = keys[keys.duplicated(keep=False)]
    if len(twice):
        first = twice.iloc[0]
        lines = [int(r) for r in rows[(keys == first).to_numpy()]]
        raise DataError(f"{source} lists the image '{first}' more than once (CSV rows {lines}); "
                        f"{twice.nunique()} images are listed twice or more: keep one row per image, so that no image "
                        "is in two splits or has two labels")
