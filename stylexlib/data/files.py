"""Image files named by the user (paths or folders) as one uint8 batch, read with the project's one decoder."""
from __future__ import annotations

from pathlib import Path

import torch

from stylexlib.data.dataset import DataError
from stylexlib.data.folder import IMAGE_EXTENSIONS, decode_image


def image_paths(sources: list[str | Path]) -> list[Path]:
    """The image files among ``sources``: files as given, folders as their images (sorted, hidden files skipped)."""
    found: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            inside = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith(".")
                            and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not inside:
                raise DataError(f"no images in folder {source} ({' '.join(sorted(IMAGE_EXTENSIONS))})")
            found += inside
        elif source.is_file():
            found.append(source)
        else:
            raise DataError(f"image file not found: {source}")
    if not found:
        raise DataError("no image files given")
    return found


def load_images(sources: list[str | Path], resolution: int) -> tuple[torch.Tensor, list[Path]]:
    """uint8 images (N, 3, resolution, resolution) decoded as the datasets are (``decode_image``) and their paths."""
    paths = image_paths(sources)
    images = torch.empty((len(paths), 3, resolution, resolution), dtype=torch.uint8)
    for i, path in enumerate(paths):
        try:
            images[i] = torch.from_numpy(decode_image(path, resolution)).permute(2, 0, 1)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None
    return images, paths


__all__ = ["image_paths", "load_images"]
