"""What each artifact was made from: fingerprints of the config sections, the data and the upstream artifacts behind it.

Every artifact a stage writes (the classifier, the StylEx checkpoint, the StyleSpace statistics, the factor probe)
records its fingerprint. A resume continues only when the fingerprint matches; a loader that finds an artifact made
from another config refuses with a message naming the stage to re-run. So ``config.yaml`` never describes artifacts
that were not made with it.

Folder data is more than its config: its files and labels CSV can change under the same config. A fingerprint of
something made from folder data ends in ``+data-<identity>`` (core.data_identity: the images' paths, sizes and
contents and the CSV's content); the part before it is the config's, computed as before data identities existed.
Synthetic data is determined by its config, so its fingerprints carry no data part and are unchanged. Use
:func:`accepts` (not ``==``) to compare a recorded fingerprint with the one the run's config and data give now: it also
accepts records made before data identities existed, and records made before the StylEx run-time keys left the
fingerprint (see :func:`accepts`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from stylexlib.core.config import STYLEX_FLAT_LOSS_WEIGHTS, Config, to_dict
from stylexlib.core.data_identity import folder_identity
from stylexlib.core.install import default_cache
from stylexlib.core.io import read_json, torch_load, write_json
from stylexlib.core.stylex_config import StylexConfig, flat_stylex

log = logging.getLogger(__name__)

# StylEx keys that do not change what a checkpoint is: training longer, logging differently or compiling (a lossless
# speed-up) continues it.
STYLEX_SCHEDULE_KEYS = ("steps", "time_limit_minutes", "log_every", "sample_every", "checkpoint_every", "device",
                        "collapse_every", "preset", "compile")  # a preset counts through the values it sets
# StylEx keys that change how a session runs or what happens after training, not the model a checkpoint continues:
# the autocast precision and memory layout, and the encoder fit that follows training (gan.encoder_fit). They were in
# the fingerprint once (a change of precision restarted training from step 0); now they are fingerprinted at their
# defaults, so that records made with the defaults keep their value, and the earlier formula's value is accepted too
# (see _ALIASES): run folders made before keep resuming.
STYLEX_RUNTIME_KEYS = ("precision", "channels_last", "encoder_fit_minutes", "encoder_fit_lr")
# The StylEx keys checkpoints were first fingerprinted with: always counted. A key added since counts only when set
# (not at its default), so that adding a key, e.g. a loss term's weight, leaves every existing checkpoint valid.
STYLEX_FIRST_FINGERPRINTED = frozenset({
    "latent_dim", "mapping_layers", "channel_base", "channel_max", "condition_on", "batch_size", "lr_g", "lr_d", "lr_e",
    "beta1", "beta2", "r1_gamma", "r1_every", "pl_weight", "pl_every", "ema_half_life_images", "encoder_ema",
    "weight_adv", "weight_l1", "weight_lpips", "weight_latent", "weight_kl", "weight_sample_kl", "weight_w_prior",
    "w_prior", "path_mode", "encoder_every", "warmup_steps", "mixing_prob", "discriminator", "augment", "lpips_net",
    "precision", "channels_last", "seed"})
# StylEx keys removed since (core.config.STYLEX_REMOVED_KEYS) that checkpoints were first fingerprinted with: they
# count at the one value left, so that fingerprints made before their removal stay valid.
STYLEX_REMOVED_FINGERPRINTED = {"encoder_ema": False, "weight_w_prior": 0.0, "w_prior": "moments",
                                "discriminator": "residual"}
# The same for the data and classifier sections; and classifier keys that only check, never change, the model.
DATA_ADDED_KEYS = ("label_queries", "split_column", "group_column")
CLASSIFIER_ADDED_KEYS = ("class_names",)
CLASSIFIER_CHECK_KEYS = ("check_accuracy",)
DATA_MARK = "+data-"  # a fingerprint of something made from folder data ends in this and the data's identity
ADOPTED_FILE = "data-adopted.json"  # in $STYLEX_CACHE: per folder, the data that records without a data part mean
_SOURCES: dict[str, str] = {}  # data identity -> the folder (and labels CSV) it was computed from, in this process
_ALIASES: dict[str, set[str]] = {}  # fingerprint -> what an earlier formula gave for the same thing (accepted too), in
# this process; passed on to the fingerprints made from it
_WARNED: set[str] = set()


class StaleArtifact(RuntimeError):
    """An artifact in the run folder was made from another config, or other folder data, than the run's; the message
    says what to re-run."""


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (dataclass configs included). Parts that carry a data identity (the
    fingerprint of something made from folder data) pass it on: the hash is of the parts without it, and it is
    appended (``<hash>+data-<identity>``)."""
    plain = [to_dict(p) if dataclasses.is_dataclass(p) else p for p in parts]
    made = _digest(plain)
    earlier = {_digest(variant) for variant in _alias_variants(plain)} - {made}
    if earlier:  # made from something an earlier formula named otherwise: so was this, then
        _ALIASES.setdefault(made, set()).update(earlier)
    return made


def _digest(plain: list[Any]) -> str:
    identities: set[str] = set()
    plain = _without_data(plain, identities)
    digest = hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]
    if len(identities) > 1:  # made from two data sets: one identity for both
        identities = {hashlib.sha256(json.dumps(sorted(identities)).encode()).hexdigest()[:16]}
    return digest + "".join(DATA_MARK + identity for identity in identities)


def _alias_variants(value: Any) -> list[Any]:
    """``value`` with one fingerprint in it replaced by one of its earlier values (_ALIASES), every way there is."""
    if isinstance(value, str):
        return sorted(_ALIASES.get(value, ()))
    if isinstance(value, dict):
        return [{**value, key: variant} for key, item in value.items() for variant in _alias_variants(item)]
    if isinstance(value, (list, tuple)):
        return [[*value[:i], variant, *value[i + 1:]]
                for i, item in enumerate(value) for variant in _alias_variants(item)]
    return []


def with_data(text: str, fingerprint_: str) -> str:
    """``fingerprint_`` with ``text`` inserted before its data part (a recipe tag that keeps the data identity last)."""
    made, mark, identity = fingerprint_.partition(DATA_MARK)
    return f"{made}{text}{mark}{identity}"


def _without_data(value: Any, identities: set[str]) -> Any:
    """``value`` with the data part of every string in it removed (and collected in ``identities``)."""
    if isinstance(value, str) and DATA_MARK in value:
        made, _, identity = value.partition(DATA_MARK)
        identities.add(identity)
        return made
    if isinstance(value, dict):
        return {key: _without_data(item, identities) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_data(item, identities) for item in value]
    return value


def _section(section: Any, added: tuple[str, ...], skipped: tuple[str, ...] = ()) -> dict[str, Any]:
    """A config section as a dict without ``skipped`` keys and without ``added`` keys left at their defaults."""
    defaults = to_dict(type(section)())
    return {k: v for k, v in to_dict(section).items()
            if k not in skipped and not (k in added and v == defaults.get(k))}


def data_fingerprint(cfg: Config) -> str:
    """The data section and, for folder data, the identity of its files and labels CSV (core.data_identity)."""
    made = fingerprint("data", _section(cfg.data, DATA_ADDED_KEYS))
    if cfg.data.source != "folder" or not cfg.data.root:
        return made  # synthetic data: the config determines the images and labels
    identity = folder_identity(cfg.data.root, cfg.data.labels_csv)
    if identity is None:  # the folder is not here (a run folder opened elsewhere): accepts() cannot check the data
        return made
    _SOURCES[identity] = json.dumps([str(Path(cfg.data.root).expanduser().resolve()), cfg.data.labels_csv])
    return made + DATA_MARK + identity


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
    """The classifier it explains and the StylEx section, schedule keys aside (a longer run continues the same one) and
    run-time keys at their defaults (STYLEX_RUNTIME_KEYS); the value the earlier formula (run-time keys as set) gives is
    accepted too (:func:`accepts`)."""
    upstream = classifier_fingerprint(cfg)
    defaults = flat_stylex(type(cfg.stylex)())
    flat = flat_stylex(cfg.stylex)
    runtime_at_defaults = {**flat, **{k: defaults[k] for k in STYLEX_RUNTIME_KEYS}}
    made = fingerprint("stylex", upstream, _stylex_section(runtime_at_defaults))
    before = fingerprint("stylex", upstream, _stylex_section(flat))
    if before != made:
        _ALIASES.setdefault(made, set()).add(before)
    return made


def _stylex_section(flat: dict[str, Any]) -> dict[str, Any]:
    """The StylEx section (:func:`flat_stylex`) as fingerprinted: under the flat keys first fingerprinted (removed keys
    at their one value left, ``mapping_match`` as the ``weight_mapping_match`` it was), schedule keys aside, keys added
    since (not in STYLEX_FIRST_FINGERPRINTED) only when set."""
    defaults = {**_flat_loss(flat_stylex(StylexConfig())), "weight_mapping_match": 0.0}
    named = {**_flat_loss(flat), **STYLEX_REMOVED_FINGERPRINTED}
    named["weight_mapping_match"] = float(named.pop("mapping_match"))
    return {k: v for k, v in named.items()
            if k not in STYLEX_SCHEDULE_KEYS and (k in STYLEX_FIRST_FINGERPRINTED or v != defaults.get(k, 0.0))}


def _flat_loss(flat: dict[str, Any]) -> dict[str, Any]:
    """The flat StylEx section with its ``loss`` entries as the ``weight_<term>`` keys they once were (every term first
    fingerprinted, named or not, and the others ``loss`` names)."""
    flat = dict(flat)
    loss = flat.pop("loss")
    first = [term for term in STYLEX_FLAT_LOSS_WEIGHTS if f"weight_{term}" in STYLEX_FIRST_FINGERPRINTED]
    return {**flat, **{f"weight_{term}": float(loss.get(term, 0.0)) for term in (*first, *loss)}}


def accepts(found: Any, expected: Any) -> bool:
    """Whether an artifact that records ``found`` may be used where the run's config and data now give ``expected``
    (fingerprints, or dicts and lists holding them).

    Equal, or equal but for the data part where it cannot be checked: a record made before fingerprints named the
    data (no data part) is taken as made from the data as it is the first time this is asked on this machine
    (remembered in ``$STYLEX_CACHE/data-adopted.json``, with a warning), so a later change of the files makes it
    stale; and a folder that is not here now (no data part expected) is not checked. A value an earlier formula gave
    for ``expected`` (the StylEx run-time keys, STYLEX_RUNTIME_KEYS, and what is made from it) is accepted too."""
    if found == expected:
        return True
    if isinstance(found, dict) and isinstance(expected, dict):
        return found.keys() == expected.keys() and all(accepts(found[k], expected[k]) for k in expected)
    if isinstance(found, (list, tuple)) and isinstance(expected, (list, tuple)):
        return len(found) == len(expected) and all(accepts(a, b) for a, b in zip(found, expected))
    if not isinstance(found, str) or not isinstance(expected, str):
        return False
    return any(_accepts_text(found, wanted) for wanted in (expected, *sorted(_ALIASES.get(expected, ()))))


def _accepts_text(found: str, expected: str) -> bool:
    """:func:`accepts` for one recorded fingerprint and one value it may have."""
    if found == expected:
        return True
    made, _, made_data = found.partition(DATA_MARK)
    wanted, _, wanted_data = expected.partition(DATA_MARK)
    if made != wanted or (made_data and wanted_data):
        return False  # another config, or the data changed
    if not wanted_data:
        _warn_once(f"unread:{made_data}", "the data folder cannot be read: artifacts are not checked against it")
        return True
    return _adopt(wanted_data)


def _adopt(identity: str) -> bool:
    """Whether records without a data part count as made from the data of ``identity``: yes the first time (that
    data is remembered for its folder) and whenever it is the remembered data."""
    source = _SOURCES.get(identity)
    if source is None:  # an identity this process did not compute (two data sets mixed): nothing to compare with
        return False
    path = Path(os.environ.get("STYLEX_CACHE") or default_cache()) / ADOPTED_FILE
    try:
        adopted = read_json(path, default={})
    except (OSError, ValueError):
        adopted = {}
    if source not in adopted:
        adopted[source] = identity
        try:
            write_json(path, adopted)
        except OSError as exc:
            log.warning("cannot remember the adopted data in %s (%s)", path, exc)
    if adopted[source] != identity:
        return False
    root, csv = json.loads(source)
    _warn_once(source, f"artifacts recorded before fingerprints named the data files are taken as made from the "
                       f"files of {root}{f' and {csv}' if csv else ''} as they were first seen on this machine; a "
                       "change to those files makes them stale (re-running their stage records the data)")
    return True


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message)


def check(found: str | None, expected: str, artifact: Path | str, stage: str) -> None:
    """Raise :class:`StaleArtifact` when an artifact records another fingerprint than the run's config and data give."""
    if found is not None and not accepts(found, expected):
        data = DATA_MARK in expected and found.partition(DATA_MARK)[0] == expected.partition(DATA_MARK)[0]
        why = "from other data (the files or labels of data.root changed since)" if data else \
            "from another config than this run's config.yaml"
        raise StaleArtifact(
            f"{artifact} was made {why}; re-run stage {stage} "
            f"(stylex run CONFIG --out RUN --only {stage} --force) or use a new run folder")


def recorded_fingerprint(path: Path | str, *keys: str) -> str | None:
    """The fingerprint a saved artifact records under ``keys`` (default: ``fingerprint``); None when it records none or
    cannot be read."""
    try:
        value = torch_load(path)
    except Exception:  # a damaged or foreign file proves nothing about what it was made from
        return None
    for key in keys or ("fingerprint",):
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, str) else None
