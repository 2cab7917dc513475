"""Image files named by the user (paths or folders) as one uint8 batch, read with the project's one decoder."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from stylexlib.data.dataset import DataError
from stylexlib.data.folder import decode_image
from stylexlib.data.layout import extensions, list_images

log = logging.getLogger(__name__)


def image_paths(sources: list[str | Path]) -> list[Path]:
    """The image files among ``sources``: files as given, folders as the images in them and their sub-folders
    (sorted by path, hidden files and folders skipped)."""
    found: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            inside = list_images(source)
            if not inside:
                raise DataError(f"no images in folder {source} or its sub-folders ({extensions()})")
            found += inside
        elif source.is_file():
            found.append(source)
        else:
            raise DataError(f"image file not found: {source}")
    if not found:
        raise DataError("no image files given")
    return found


def load_images(sources: list[str | Path], resolution: int) -> tuple[torch.Tensor, list[Path]]:
    """uint8 images (N, 3, resolution, resolution) decoded as the datasets are (``decode_image``) and their paths; a
    file that cannot be read (damaged, not an image, a decompression bomb) is skipped with a warning naming it and
    why, and :class:`DataError` is raised only when none can be read."""
    decoded, paths, failed = [], [], []
    for path in image_paths(sources):
        try:
            decoded.append(torch.from_numpy(decode_image(path, resolution)).permute(2, 0, 1))
            paths.append(path)
        except Exception as exc:  # noqa: BLE001 - any failure on one user file is reported, not fatal
            failed.append(f"cannot read image {path}: {type(exc).__name__}: {exc}")
            log.warning("skipped %s (not explained): %s: %s", path, type(exc).__name__, exc)
    if not decoded:
        more = f" (and {len(failed) - 1} more unreadable files)" if len(failed) > 1 else ""
        raise DataError(f"{failed[0]}{more}")
    return torch.stack(decoded), paths


__all__ = ["image_paths", "load_images"]
