"""Named sets of settings (``stylex.preset``), applied beneath a config file's own keys and its ``--set`` overrides,
section by section.

- ``real``: photographs (the default for folder data): the training settings that keep the encoder path on real
  faces, an inversion refined per image (E(x) alone loses who is in the photograph), measured in
  docs/experiments.md ("Real photographs"), and AttFind's screened search (its selection measured against the
  exhaustive one there, "A screened search").
- ``none``: the dataclass defaults (the paper's loss weights), the default for the synthetic data, whose configs set
  their own keys (configs/demo.yaml).
"""
from __future__ import annotations

from typing import Any

REAL: dict[str, Any] = {
    # sizes for 2 CPU cores at 32-64 px
    "model": {"latent_dim": 64, "mapping_layers": 4, "channel_base": 2048, "channel_max": 64},
    "optim": {"batch_size": 16},
    # the encoder path on real images (docs/experiments.md, "Real photographs"): E is fitted to the frozen G_ema in the
    # last minutes of the budget, since during the adversarial game E co-adapts with the live G and drifts from G_ema
    "encoder_fit": {"minutes": 8},
    # the demo's time-to-quality levers that carry over (the warm-up below too)
    "regularise": {"mapping_match": True, "mixing_prob": 0.9, "augment": "color,translation,cutout", "r1_every": 16},
    # loss weights, entry by entry beneath a file's own: the demo's time-to-quality levers (lpips, kl, sample_kl), and
    # class_sparsity routes the classifier's output through few StyleSpace coordinates (a group lasso on the class
    # columns of A([w, c])): on UTKFace AttFind's top-10 flip rate 0.19 -> 1.00 and age on reconstructions 0.87x ->
    # 0.83x of the originals (docs/experiments.md, "the class-sparsity lever"; weight 10 cost age: 0.79x)
    "loss": {"lpips": 1.0, "kl": 0.1, "sample_kl": 0.1, "class_sparsity": 3.0},
    # a 2-core CPU budget: the time limit ends training (a GPU config raises both)
    "schedule": {"warmup_steps": 1000, "steps": 20000, "time_limit_minutes": 60},
    "runtime": {"log_every": 50, "sample_every": 500, "checkpoint_every": 250},
}

REAL_INVERSION: dict[str, Any] = {
    # the StyleSpace vector refined per image from G.styles(E(x), C(x)) wherever images are inverted; on UTKFace at
    # 64 px (docs/experiments.md, "Per-image inversion"): self-retrieval 0.48 -> 1.00, LPIPS 0.122 -> 0.033, age R^2 on
    # reconstructions 0.12 -> 0.56 of the originals' 0.70 (25 steps of w instead: 0.98, 0.080, 0.33)
    "per_image_steps": 50,
    "per_image_space": "stylespace",
    "per_image_lr": 0.03,
}

REAL_ATTFIND: dict[str, Any] = {
    # AttFind's screened search (explain.attfind.screen): on celeba_smile the same 20 attributes in the same order and
    # the same flip rates as the exhaustive search, the search 1.8 s per image against 24.7 (docs/experiments.md, "A
    # screened search"); on five finished runs offline, 9 of 10 class selections identical, the tenth its top 5
    "screen": True,
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "real": {"stylex": REAL, "inversion": REAL_INVERSION, "attfind": REAL_ATTFIND}, "none": {}}


def preset_name(raw_stylex: dict[str, Any], data_source: str) -> str:
    """The preset a config's ``stylex:`` section asks for: its ``preset`` key, else ``real`` for folder data and
    ``none`` for the synthetic data."""
    name = raw_stylex.get("preset") or ("real" if data_source == "folder" else "none")
    if name not in PRESETS:
        raise ValueError(f"stylex.preset must be one of {sorted(PRESETS)}, got '{name}'")
    return name


def with_preset(raw: dict[str, Any]) -> dict[str, Any]:
    """A raw config dict with its preset's settings filled in beneath the keys it sets itself, section by section."""
    stylex = dict(raw.get("stylex") or {})
    data_source = (raw.get("data") or {}).get("source", "synthetic")
    name = preset_name(stylex, data_source)
    filled = {**raw, **{section: _beneath(keys, raw.get(section) or {}) for section, keys in PRESETS[name].items()}}
    filled["stylex"] = {**filled.get("stylex", {}), "preset": name}
    return filled


def _beneath(preset: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """A section's own keys over the preset's; a mapping (``loss``, a ``stylex`` group) entry by entry."""
    merged = {**preset, **own}
    for key, value in preset.items():
        if isinstance(value, dict) and isinstance(own.get(key), dict):
            merged[key] = {**value, **own[key]}
    return merged
