"""Stage 09's evaluations kept as they finish: one file per method (``baselines/evaluated/<method>@<gan>.pt``), keyed by
what it was made from (the method, its GAN's weights, the images' pixels, the settings), never by floats computed on
the way, so an interrupted stage resumes after the last finished method and a changed input evaluates it again."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from stylexlib.core.io import torch_load, torch_save
from stylexlib.core.provenance import fingerprint
from stylexlib.core.run import Run
from stylexlib.gan.inversion_store import tensor_bytes, weights_digest

log = logging.getLogger(__name__)

EVALUATED_DIR = ("baselines", "evaluated")  # one file per finished method: <method>@<gan>.pt
EVALUATED_VERSION = 1  # bump when evaluate_method's scores change: every kept evaluation is made again


@dataclass
class Evaluated:
    row: dict
    curve: pd.DataFrame
    selected: pd.DataFrame
    top1: dict
    per_image: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per evaluation image, NaN: not scored


def _content(value: Any) -> Any:
    """``value`` as JSON-able parts, each tensor, array, module or table replaced by a digest of its contents."""
    if isinstance(value, torch.nn.Module):
        return weights_digest(value)
    if isinstance(value, (pd.DataFrame, pd.Series)):
        value = pd.util.hash_pandas_object(value, index=True).to_numpy()
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, Tensor):
        return hashlib.sha1(f"{tuple(value.shape)}{value.dtype}".encode() + tensor_bytes(value)).hexdigest()[:16]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _content(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _content(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_content(v) for v in value]
    return value


def protocol_key(run: Run, data, selection: Tensor, rows, lpips_nets: list[str], probe=None, oracle=None) -> dict:
    """What every method's evaluation in :func:`evaluate_all` reads besides its own GAN and pool: the images (their
    pixels), the settings of ``compare`` and ``attfind`` stage 09 uses, the LPIPS networks, the factor probe (and the
    evaluation images' factors) and the label oracle. Inputs only (configs, files' contents), never floats computed
    on the way, which a GPU does not reproduce bit for bit."""
    compare = {k: v for k, v in dataclasses.asdict(run.cfg.compare).items() if k not in ("methods", "gan_baselines")}
    attfind = {k: getattr(run.cfg.attfind, k) for k in ("split", "stats_images", "seed", "include_torgb", "batch_size")}
    test = data.indices("test")
    return {"version": EVALUATED_VERSION, "task": run.cfg.name, "compare": compare, "attfind": attfind,
            "lpips": list(lpips_nets), "selection": _content(selection),
            "evaluation": _content(data.images[torch.as_tensor(rows)]), "rows": [int(r) for r in rows],
            "real": _content(data.images[torch.as_tensor(test)]),
            "probe": _content(probe) if probe is not None else None,
            "factors": _content(data.factors.iloc[rows]) if probe is not None else None,
            "groups": [run.cfg.data.label_rule, run.cfg.data.spurious_factor] if probe is not None else None,
            "oracle": _content(oracle.to_dict()) if oracle is not None else None}


def evaluation_key(method, gan: str, weights: str, protocol: dict) -> str:
    """The fingerprint of one method's evaluation (a ``gan_baselines.Method``): the method and its selection rule, its
    GAN (``gan``: its name; the weights that invert, render and classify, its checkpoint step) and the ``protocol``
    (:func:`protocol_key`)."""
    models = method.explainer.models
    gan = {"name": gan, "weights": weights, "step": models.step, "condition_on": models.cfg.model.condition_on,
           "class_names": list(models.class_names)}
    return fingerprint("gan-baseline-evaluation", [method.name, method.family, method.rule], gan, protocol)


def _frame_state(frame: pd.DataFrame) -> dict:
    """A table as plain lists (for ``torch_save`` / ``weights_only`` loading), its column types and index kept."""
    return {"columns": list(frame.columns), "dtypes": [str(t) for t in frame.dtypes],
            "values": [frame[c].tolist() for c in frame.columns], "index": frame.index.tolist(),
            "index_name": frame.index.name}


def _frame_from(state: dict) -> pd.DataFrame:
    columns = {c: pd.Series(v, dtype=t) for c, v, t in zip(state["columns"], state["values"], state["dtypes"])}
    index = pd.Index(state["index"], name=state["index_name"])
    return pd.DataFrame({c: s.set_axis(index) for c, s in columns.items()}, index=index, columns=state["columns"])


def save_evaluated(path, key: str, result: Evaluated) -> None:
    """Keep one method's evaluation (atomically), with the ``key`` it was made under."""
    torch_save(path, {"key": key, "row": json.dumps(result.row, default=lambda v: v.item()),
                      "curve": _frame_state(result.curve), "selected": _frame_state(result.selected),
                      "per_image": _frame_state(result.per_image),
                      "top1": {k: v.detach().cpu() for k, v in result.top1.items()}})


def load_evaluated(path, key: str) -> Evaluated | None:
    """A method's kept evaluation when it was made under ``key``; None when there is none, or another."""
    if not path.exists():
        return None
    try:
        state = torch_load(path)
    except Exception as exc:  # a damaged file: evaluated again
        log.warning("ignoring %s (%s): the method is evaluated again", path, exc)
        return None
    if state.get("key") != key:
        log.info("%s was made from other inputs: the method is evaluated again", path)
        return None
    return Evaluated(json.loads(state["row"]), _frame_from(state["curve"]), _frame_from(state["selected"]),
                     state["top1"], _frame_from(state["per_image"]))
