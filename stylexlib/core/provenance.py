"""What each artifact was made from: fingerprints of the config sections and upstream artifacts behind it.

Every artifact a stage writes (the classifier, the StylEx checkpoint, the StyleSpace statistics, the factor probe)
records its fingerprint. A resume continues only when the fingerprint matches; a loader that finds an artifact made
from another config refuses with a message naming the stage to re-run. So ``config.yaml`` never describes artifacts
that were not made with it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from stylexlib.core.config import Config, to_dict

# StylEx keys that do not change what a checkpoint is: training longer, logging differently or compiling (a lossless
# speed-up) continues it.
STYLEX_SCHEDULE_KEYS = ("steps", "time_limit_minutes", "log_every", "sample_every", "checkpoint_every", "device",
                        "collapse_every", "preset", "compile")  # a preset counts through the values it sets
# StylEx keys added after run folders existed: fingerprinted only when set, so that earlier checkpoints stay valid.
STYLEX_ADDED_KEYS = ("weight_mapping_match", "encoder", "encoder_offset", "beta1_e", "adv_on_reconstructions",
                     "encoder_fit_minutes", "encoder_fit_lr", "weight_sample_cycle",
                     "weight_class_sparsity", "kl_noise_std")
# The same for the data and classifier sections; and classifier keys that only check, never change, the model.
DATA_ADDED_KEYS = ("label_queries", "split_column", "group_column")
CLASSIFIER_ADDED_KEYS = ("class_names",)
CLASSIFIER_CHECK_KEYS = ("check_accuracy",)


class StaleArtifact(RuntimeError):
    """An artifact in the run folder was made from another config than the run's; the message says what to re-run."""


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (dataclass configs included)."""
    plain = [to_dict(p) if dataclasses.is_dataclass(p) else p for p in parts]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _section(section: Any, added: tuple[str, ...], skipped: tuple[str, ...] = ()) -> dict[str, Any]:
    """A config section as a dict without ``skipped`` keys and without ``added`` keys left at their defaults."""
    defaults = to_dict(type(section)())
    return {k: v for k, v in to_dict(section).items()
            if k not in skipped and not (k in added and v == defaults.get(k))}


def data_fingerprint(cfg: Config) -> str:
    return fingerprint("data", _section(cfg.data, DATA_ADDED_KEYS))


def classifier_fingerprint(cfg: Config) -> str:
    """The data and the classifier section (a user's model file is identified by its path, size and mtime)."""
    source = cfg.classifier.source
    identity = None
    if source != "train" and Path(source).exists():
        stat = Path(source).stat()
        identity = [stat.st_size, stat.st_mtime_ns]
    section = _section(cfg.classifier, CLASSIFIER_ADDED_KEYS, CLASSIFIER_CHECK_KEYS)
    return fingerprint("classifier", data_fingerprint(cfg), section, identity)


def stylex_fingerprint(cfg: Config) -> str:
    """The classifier it explains and the StylEx section, schedule keys aside (a longer run continues the same one)."""
    section = _section(cfg.stylex, STYLEX_ADDED_KEYS, STYLEX_SCHEDULE_KEYS)
    return fingerprint("stylex", classifier_fingerprint(cfg), section)


def check(found: str | None, expected: str, artifact: Path | str, stage: str) -> None:
    """Raise :class:`StaleArtifact` when an artifact records another fingerprint than the run's config gives."""
    if found is not None and found != expected:
        raise StaleArtifact(
            f"{artifact} was made from another config than this run's config.yaml; re-run stage {stage} "
            f"(stylex run CONFIG --out RUN --only {stage} --force) or use a new run folder")
