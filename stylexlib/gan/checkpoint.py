"""What StylEx training leaves in a run folder: the checkpoint (with the RNG state it resumes from) and stats.jsonl.

Later stages load the models with :func:`stylexlib.gan.models.load_stylex`. A checkpoint is one file (``checkpoints/stylex.pt`` in the run folder), written atomically and
loaded with ``weights_only=True``: it holds only tensors, dicts, lists, numbers and strings.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import Tensor

from stylexlib.core.io import torch_load

log = logging.getLogger(__name__)

CHECKPOINT_FILE = ("checkpoints", "stylex.pt")
CHECKPOINT_FORMAT = 1
STATS_FILE = "stats.jsonl"  # one JSON line per logged training step


def checkpoint_path(run_dir: str | Path) -> Path:
    """Where a run folder keeps its StylEx checkpoint."""
    return Path(run_dir).joinpath(*CHECKPOINT_FILE)


def capture_rng(device: torch.device) -> dict[str, Tensor]:
    """The global torch RNG states this process uses (CPU, and the current GPU's)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Tensor], device: torch.device) -> None:
    """Restore states from :func:`capture_rng`."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def load_checkpoint(path: str | Path) -> dict:
    """Read a StylEx checkpoint (``weights_only``) and check its format."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no StylEx checkpoint at {path}; run stage 03_train_stylex first")
    state = torch_load(path)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {state.get('format')!r} (expected {CHECKPOINT_FORMAT})")
    return state


def read_stats(run_dir: str | Path) -> list[dict]:
    """The records of a run's stats.jsonl (empty when there is none)."""
    path = Path(run_dir) / STATS_FILE
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number < len(lines):
                raise ValueError(f"{path} line {number} is not JSON ({exc}); the file is damaged") from None
            log.warning("%s: dropped its torn last line (a process killed while writing it): %.60r", path, line)
    return records
