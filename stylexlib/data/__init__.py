"""Datasets: the embedded synthetic default and real image folders."""
from stylexlib.data.dataset import DataError, ImageDataset, random_split, summary_table, to_float, to_uint8

__all__ = ["DataError", "ImageDataset", "random_split", "summary_table", "to_float", "to_uint8", "load_dataset"]


def load_dataset(cfg, cache_dir=None) -> ImageDataset:
    """Load the dataset a ``DataConfig`` describes (synthetic or folder)."""
    if cfg.source == "synthetic":
        from stylexlib.data.synthetic import make_synthetic_dataset

        return make_synthetic_dataset(cfg, cache_dir=cache_dir)
    if cfg.source == "folder":
        from stylexlib.data.folder import load_folder_dataset

        return load_folder_dataset(cfg, cache_dir=cache_dir)
    raise DataError(f"data.source must be 'synthetic' or 'folder', got '{cfg.source}'")
