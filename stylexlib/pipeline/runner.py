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
from typing import Any

import papermill as pm
import yaml

from stylexlib.core.config import Config, ConfigError, dump_config, load_config, save_config, to_dict
from stylexlib.core.install import shipped
from stylexlib.core.io import read_json, write_json
from stylexlib.core.progress import ProgressMirror
from stylexlib.core.run import CONFIG_FILE

log = logging.getLogger(__name__)

STAGE_PATTERN = re.compile(r"^(\d\d)_[A-Za-z0-9_]+\.ipynb$")
STATE_FILE = "stages.json"
# What a forced stage and every stage after it start without: resume states, trained models and caches (study
# answers are never deleted). Artifacts also record fingerprints: a stale one is refused or redone without --force.
FORCED_FRESH = {
    "02": ("checkpoints/classifier_train_state.pt", "classifier.pt"),
    "03": ("checkpoints/stylex.pt", "stats.jsonl"),
    "05": ("attfind",),
    "06": ("factor_probe.pt",),
    "09": ("baselines",),
}
# What people wrote by hand inside those: kept (attribute names are keyed by coordinate and direction).
KEPT = ("attfind/attribute_names.csv",)
# Config sections only the stages from this number on read: a change there re-runs those stages, no --force needed.
LATE_SECTIONS = {"inversion": "04", "evaluate": "04", "study": "07", "compare": "08"}
# Stages that run only when the config asks for them (the reason is printed when they are skipped).
OPTIONAL_STAGES = {"09": (lambda cfg: cfg.compare.gan_baselines,
                          "compare.gan_baselines is off (make compare, or --set compare.gan_baselines=true)")}
# Parameters every notebook declares that `stylex run` sets itself (or that only matter when a notebook runs alone).
RUNNER_PARAMETERS = {"run_dir": "--out", "config": "the CONFIG argument", "overrides": "--set"}
PARAMETER_TYPES = {"int": int, "float": (int, float), "bool": bool, "list": list, "dict": dict}
PROGRESS_FILE = ".progress.json"  # the running stage's progress bars, mirrored to the terminal
DEFAULT_NOTEBOOKS = shipped("notebooks")


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
    cfg = load_config(config, overrides)
    run_dir = Path(out) if out is not None else Path("runs") / cfg.name
    stages = select_stages(discover_stages(notebook_dir), only)
    given = parse_parameters(parameters or [], stages)
    _prepare_run_dir(run_dir, cfg, force)
    state = read_json(run_dir / STATE_FILE, default={})
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
        if force:
            _remove_resume_state(run_dir, stage)
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
            if not force and all(late):  # only later stages read what changed: those run again
                first = min(late)
                state = read_json(run_dir / STATE_FILE, default={})
                write_json(run_dir / STATE_FILE, {k: v for k, v in state.items() if k[:2] < first})
                print(f"[stylex] {', '.join(changed)} changed: stages from {first} on run again")
            elif not force:
                raise ConfigError(
                    f"run folder {run_dir} was made with a different config (changed: {', '.join(changed)}); "
                    "use --force to re-run its stages with the new config, or --out for a new folder"
                )
            else:
                write_json(run_dir / STATE_FILE, {})
    run_dir.mkdir(parents=True, exist_ok=True)
    if not saved.exists() or dump_config(cfg) != saved.read_text():
        save_config(cfg, saved)


def _remove_resume_state(run_dir: Path, stage: Stage) -> None:
    """--force: the stage and everything downstream start afresh instead of resuming what an earlier run left."""
    kept = {run_dir / name for name in KEPT}
    for name in (name for number, names in FORCED_FRESH.items() if number >= stage.number for name in names):
        path = run_dir / name
        for item in (list(path.iterdir()) if path.is_dir() and any(k.parent == path for k in kept) else [path]):
            if item in kept:
                continue
            if item.is_dir():
                shutil.rmtree(item)
            elif item.exists():
                item.unlink()


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
