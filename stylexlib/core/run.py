"""A run folder: the resolved config, metrics.json, and the paths every stage reads and writes."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from stylexlib.core.config import Config, ConfigError, load_config, save_config
from stylexlib.core.io import read_json, write_json

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"


class Run:
    """One run folder and its resolved config."""

    def __init__(self, run_dir: str | Path, cfg: Config) -> None:
        self.dir = Path(run_dir)
        self.cfg = cfg

    def path(self, *parts: str) -> Path:
        """A path inside the run folder (parent folders are created)."""
        path = self.dir.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def metrics(self) -> dict[str, Any]:
        return read_json(self.dir / METRICS_FILE, default={})

    def log_metrics(self, **metrics: Any) -> dict[str, Any]:
        """Merge flat metrics into metrics.json (atomically) and return them all."""
        merged = {**self.metrics, **{k: _plain(v) for k, v in metrics.items()}}
        write_json(self.dir / METRICS_FILE, merged)
        return merged

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r}, name={self.cfg.name!r})"


def open_run(run_dir: str | Path, config: str | Path | None = None, overrides: list[str] | None = None) -> Run:
    """Open a run folder: use its config.yaml, or create it from ``config`` + ``overrides``."""
    run_dir = Path(run_dir)
    saved = run_dir / CONFIG_FILE
    if saved.exists():
        if overrides:
            raise ConfigError(
                f"{saved} already holds the run's config; edit it, or start a new run folder to use overrides {overrides}"
            )
        return Run(run_dir, load_config(saved, presets=False))
    cfg = load_config(config, overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, saved)
    return Run(run_dir, cfg)


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA if available, else MPS, else CPU; otherwise the named device (checked)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available; use device=auto or cpu")
    return device


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "item") and not isinstance(value, (list, dict)):
        return value.item()
    return value
