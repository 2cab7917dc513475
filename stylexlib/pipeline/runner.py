"""Run the numbered notebooks in order with papermill, writing everything to a run folder."""
from __future__ import annotations

import ast
import contextlib
import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import papermill as pm
import yaml

from stylexlib.core.config import Config, ConfigError, dump_config, load_config, save_config, to_dict
from stylexlib.core.install import DEFAULT_NOTEBOOKS
from stylexlib.core.io import read_json, write_json
from stylexlib.core.lock import run_folder_lock
from stylexlib.core.progress import ProgressMirror
from stylexlib.core.provenance import (DATA_MARK, accepts, classifier_fingerprint, recorded_fingerprint,
                                       stylex_fingerprint)
from stylexlib.core.run import CONFIG_FILE

log = logging.getLogger(__name__)

STAGE_PATTERN = re.compile(r"^(\d\d)_[A-Za-z0-9_]+\.ipynb$")
STATE_FILE = "stages.json"
# Config sections only the stages from this number on read: a change there re-runs those stages, no --force needed.
LATE_SECTIONS = {"inversion": "04", "evaluate": "04", "study": "07", "compare": "08"}
# The first stage whose results a config key changes: its section's, unless the key is listed (name, extra: none).
FIRST_READER = {"data": "01", "classifier": "02", "stylex": "03", "attfind": "05", "attfind.seed": "04",
                **LATE_SECTIONS}
# Stages that run only when the config asks for them (the reason is printed when they are skipped).
OPTIONAL_STAGES = {"09": (lambda cfg: cfg.compare.gan_baselines,
                          "compare.gan_baselines is off (make compare, or --set compare.gan_baselines=true)")}
# Parameters every notebook declares that `stylex run` sets itself (or that only matter when a notebook runs alone).
RUNNER_PARAMETERS = {"run_dir": "--out", "config": "the CONFIG argument", "overrides": "--set"}
PARAMETER_TYPES = {"int": int, "float": (int, float), "bool": bool, "list": list, "dict": dict}
PROGRESS_FILE = ".progress.json"  # the running stage's progress bars, mirrored to the terminal


@dataclass(frozen=True)
class Stage:
    """One numbered notebook, e.g. ``02_classifier``."""

    number: str
    name: str
    path: Path

    def matches(self, selector: str) -> bool:
        """True for '02', '2', '02_classifier' or 'classifier'."""
        return selector in (self.number, self.name, self.name.split("_", 1)[1]) or (
            selector.isdigit() and int(selector) == int(self.number)
        )


@dataclass(frozen=True)
class Resumable:
    """An artifact a stage resumes from or reuses: the fingerprint a config gives it (core.provenance), how to read the
    one it records, the files that go with it and, in a folder, what people wrote by hand there (kept)."""

    stage: str
    path: str
    made_from: Callable[[Config], str]
    recorded: Callable[[Path], str | None] = recorded_fingerprint
    companions: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()


def _probe_fingerprint(cfg: Config) -> str:
    from stylexlib.evaluate.factor_probe import probe_fingerprint

    return probe_fingerprint(cfg)


# What --force removes when stale (_remove_stale): a changed schedule or run-time key (stylex.schedule.steps,
# stylex.runtime.device) keeps the models. The caches inside attfind/ and baselines/ carry keys of their own, checked
# where they are read; attribute names and study answers are never removed.
RESUMABLE = (
    Resumable("02", "checkpoints/classifier_train_state.pt", classifier_fingerprint),
    Resumable("02", "classifier.pt", classifier_fingerprint),
    Resumable("03", "checkpoints/stylex.pt", stylex_fingerprint, companions=("stats.jsonl",)),
    Resumable("04", "factor_probe.pt", _probe_fingerprint),
    Resumable("05", "attfind", stylex_fingerprint, lambda folder: recorded_fingerprint(folder / "style_stats.pt", "key",
                                                                                        "stylex"),
              kept=("attribute_names*.csv",)),  # the generator its statistics were made with
)


class StageFailed(RuntimeError):
    """A notebook failed; the message names the notebook, the cell and the executed copy."""

    def __init__(self, stage: Stage, executed: Path, cell: int | None, error: str) -> None:
        where = f"cell {cell}" if cell is not None else "an unknown cell"
        super().__init__(f"stage {stage.name} failed in {where}: {error}\n  executed notebook: {executed}")
        self.stage, self.executed, self.cell, self.error = stage, executed, cell, error


def discover_stages(notebook_dir: str | Path = DEFAULT_NOTEBOOKS) -> list[Stage]:
    """The numbered notebooks of a folder, in order."""
    notebook_dir = Path(notebook_dir)
    if not notebook_dir.is_dir():
        raise FileNotFoundError(f"notebook folder not found: {notebook_dir}")
    stages = [Stage(m.group(1), p.stem, p) for p in sorted(notebook_dir.iterdir()) if (m := STAGE_PATTERN.match(p.name))]
    if not stages:
        raise FileNotFoundError(f"no numbered notebooks (NN_name.ipynb) in {notebook_dir}")
    return stages


def select_stages(stages: list[Stage], only: list[str] | None) -> list[Stage]:
    """The stages named in ``only`` (numbers or names), or all."""
    if not only:
        return stages
    chosen = [s for s in stages if any(s.matches(sel) for sel in only)]
    unknown = [sel for sel in only if not any(s.matches(sel) for s in stages)]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; stages are {[s.name for s in stages]}")
    return chosen


def stage_parameters(stage: Stage) -> dict[str, dict]:
    """The parameters a notebook declares in its ``parameters`` cell (name -> type, default, help)."""
    return pm.inspect_notebook(str(stage.path))


def settable_parameters(stage: Stage) -> dict[str, dict]:
    """The parameters of a stage that ``stylex run -p NAME=VALUE`` sets (all but those the runner sets itself)."""
    return {name: spec for name, spec in stage_parameters(stage).items() if name not in RUNNER_PARAMETERS}


def parse_parameters(items: list[str], stages: list[Stage]) -> dict[str, Any]:
    """``NAME=VALUE`` items (values parsed as YAML), checked against what the stages declare."""
    declared = {stage.name: settable_parameters(stage) for stage in stages}
    parsed: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"-p '{item}' must look like NAME=VALUE, e.g. -p num_images=16")
        if name in RUNNER_PARAMETERS:
            raise ConfigError(f"-p {name}: stylex run sets {name} itself; use {RUNNER_PARAMETERS[name]} instead")
        specs = [spec[name] for spec in declared.values() if name in spec]
        if not specs:
            known = "; ".join(f"{stage}: {', '.join(names)}" for stage, names in declared.items() if names) or "none"
            raise ConfigError(f"-p {name}: no selected stage has a parameter '{name}' (settable: {known}; "
                              "see stylex params)")
        value = yaml.safe_load(text) if text.strip() else None
        kind = _type_name(specs[0])
        wanted = PARAMETER_TYPES.get(kind)
        if wanted is not None and (not isinstance(value, wanted) or (wanted is not bool and isinstance(value, bool))):
            raise ConfigError(f"-p {name}={text}: expected {kind} (default {specs[0]['default']})")
        parsed[name] = str(value) if kind == "str" else value
    return parsed


def _type_name(spec: dict) -> str:
    """A parameter's declared type, or the type of its default when it has no annotation."""
    if spec.get("inferred_type_name") in (*PARAMETER_TYPES, "str"):
        return spec["inferred_type_name"]
    try:
        return type(ast.literal_eval(spec["default"])).__name__
    except (ValueError, SyntaxError):
        return ""


def run_pipeline(
    config: str | Path | None,
    overrides: list[str] | None = None,
    out: str | Path | None = None,
    only: list[str] | None = None,
    force: bool = False,
    notebook_dir: str | Path = DEFAULT_NOTEBOOKS,
    kernel_name: str | None = None,
    progress: bool = True,
    parameters: list[str] | None = None,
) -> Path:
    """Execute the selected stages into a run folder; return the folder. Finished stages are skipped unless forced or
    run with other notebook ``parameters`` (``NAME=VALUE``, each passed to the stages that declare it)."""
    from stylexlib.gan.train.loss_terms import check_loss_names  # torch and the networks: only when a run starts

    cfg = load_config(config, overrides)
    check_loss_names(cfg.stylex)  # before any stage: a misspelt weight fails now, not at stage 03
    run_dir = Path(out) if out is not None else Path("runs") / cfg.name
    stages = select_stages(discover_stages(notebook_dir), only)
    given = parse_parameters(parameters or [], stages)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_folder_lock(run_dir):  # a second `stylex run` here fails at once, naming this process
        _prepare_run_dir(run_dir, cfg, force)
        state = read_json(run_dir / STATE_FILE, default={})
        changed = _changed_data(run_dir, cfg)  # the first stage whose artifact other data made
        if changed is not None:
            state = {name: value for name, value in state.items() if name[:2] < changed}
            write_json(run_dir / STATE_FILE, state)
        for stage in stages:
            declared = settable_parameters(stage) if given else {}
            own = {name: value for name, value in given.items() if name in declared}
            done = state.get(stage.name, {})
            if done.get("status") == "done" and not force and done.get("parameters", {}) != own:
                print(f"[stylex] {stage.name}: parameters changed ({own or 'defaults'}): it runs again")
            elif done.get("status") == "done" and not force:
                log.info("skip %s (finished; use --force to re-run)", stage.name)
                print(f"[stylex] skip {stage.name}: already finished (use --force to re-run)")
                continue
            wanted, reason = OPTIONAL_STAGES.get(stage.number, (lambda cfg: True, ""))
            if not wanted(cfg):
                print(f"[stylex] skip {stage.name}: {reason}")
                continue
            _invalidate_later(state, stage)
            if force or (changed is not None and stage.number >= changed):
                _remove_stale(run_dir, stage, cfg)
            print(f"[stylex] run {stage.name}")
            executed = run_dir / "notebooks" / stage.path.name
            executed.parent.mkdir(parents=True, exist_ok=True)
            started = time.time()
            state[stage.name] = {"status": "running", "started": started}
            write_json(run_dir / STATE_FILE, state)
            try:
                with ProgressMirror(run_dir / PROGRESS_FILE) if progress else contextlib.nullcontext():
                    pm.execute_notebook(
                        str(stage.path),
                        str(executed),
                        parameters={"run_dir": str(run_dir.resolve()), **own},
                        kernel_name=kernel_name or "python3",
                        cwd=str(stage.path.parent),
                        progress_bar=progress,
                        log_output=False,
                    )
            except pm.PapermillExecutionError as exc:
                state[stage.name] = {"status": "failed", "cell": exc.exec_count, "error": f"{exc.ename}: {exc.evalue}"}
                write_json(run_dir / STATE_FILE, state)
                raise StageFailed(stage, executed, exc.exec_count, f"{exc.ename}: {exc.evalue}") from None
            seconds = round(time.time() - started, 2)
            state[stage.name] = {"status": "done", "seconds": seconds, "notebook": str(executed), "parameters": own}
            write_json(run_dir / STATE_FILE, state)
            print(f"[stylex] done {stage.name} in {seconds:.1f} s")
        return run_dir


def _prepare_run_dir(run_dir: Path, cfg: Config, force: bool) -> None:
    """Write the resolved config; refuse to mix two different configs in one folder unless forced."""
    saved = run_dir / CONFIG_FILE
    if saved.exists():
        previous = load_config(saved, presets=False)
        if to_dict(previous) != to_dict(cfg):
            changed = _changed_keys(to_dict(previous), to_dict(cfg))
            late = [LATE_SECTIONS.get(key.split(".")[0]) for key in changed]
            first = min(_first_reader(key) or "01" for key in changed)
            if not force and all(late):  # only later stages read what changed: those run again
                print(f"[stylex] {', '.join(changed)} changed: stages from {first} on run again")
            elif not force:
                raise ConfigError(_refusal(run_dir, changed))
            state = read_json(run_dir / STATE_FILE, default={})  # the stages before `first` stay done
            write_json(run_dir / STATE_FILE, {k: v for k, v in state.items() if k[:2] < first})
    run_dir.mkdir(parents=True, exist_ok=True)
    if not saved.exists() or dump_config(cfg) != saved.read_text():
        save_config(cfg, saved)


def _refusal(run_dir: Path, changed: list[str]) -> str:
    """Why a changed config is refused without --force, and the command that applies it."""
    readers = {_first_reader(key) for key in changed}
    if len(readers) == 1 and None not in readers:
        stage = readers.pop()
        how = (f"use --only {stage} --force to re-run stage {stage} with it (the stages after it run again on the next "
               "stylex run)")
    else:
        how = "use --force to re-run its stages with it"
    return (f"run folder {run_dir} was made with a different config (changed: {', '.join(changed)}); {how}: what the "
            "change leaves valid (a model whose fingerprint still matches) is kept; or use --out for a new folder")


def _first_reader(key: str) -> str | None:
    return FIRST_READER.get(key, FIRST_READER.get(key.split(".")[0]))


def _remove_stale(run_dir: Path, stage: Stage, cfg: Config) -> None:
    """--force: remove what the stage and the stages after it would resume from where ``cfg`` would not have made it
    (it records another fingerprint, or none); what still matches is kept, and its stage continues or reuses it."""
    for artifact in RESUMABLE:
        path = run_dir / artifact.path
        if artifact.stage < stage.number or not path.exists() or accepts(artifact.recorded(path),
                                                                         artifact.made_from(cfg)):
            continue
        inside = [item for item in path.iterdir() if not any(item.match(k) for k in artifact.kept)] if path.is_dir() \
            else [path]
        for item in (*inside, *(run_dir / other for other in artifact.companions)):
            if item.is_dir():
                shutil.rmtree(item)
            else:
                item.unlink(missing_ok=True)
        print(f"[stylex] removed {artifact.path}: made from another config or other data")


def _changed_data(run_dir: Path, cfg: Config) -> str | None:
    """The first stage with an artifact made from the same config but other folder data than ``data.root`` holds now
    (files added, removed or changed, labels CSV edited), after printing what changed; None when there is none.
    (A changed config is found by :func:`_prepare_run_dir`; synthetic data is its config.)"""
    for artifact in RESUMABLE:
        path = run_dir / artifact.path
        expected = artifact.made_from(cfg) if path.exists() else ""
        if DATA_MARK not in expected:
            continue
        recorded = artifact.recorded(path)
        if recorded and recorded.partition(DATA_MARK)[0] == expected.partition(DATA_MARK)[0] \
                and not accepts(recorded, expected):
            print(f"[stylex] {artifact.path} was made from other data (the images or labels under {cfg.data.root} "
                  f"changed since): stages from {artifact.stage} on run again")
            return artifact.stage
    return None


def _invalidate_later(state: dict, stage: Stage) -> None:
    """A stage that runs again makes the stages after it stale."""
    for name in list(state):
        if name[:2].isdigit() and name[:2] > stage.number:
            state.pop(name)


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict) and key != "extra":
            keys += _changed_keys(a, b, path + ".")
        elif a != b:
            keys.append(path)
    return keys
