"""Ground truth for the attributes found on synthetic faces: a CNN that reads every factor off an image.

Every real synthetic face comes with its factors (:data:`stylexlib.data.synthetic.FACTORS`), a generated one does
not. A probe trained to regress the factors from rendered faces (independent factors, so it cannot learn the
dataset's shortcut) reads them off reconstructions and their edits. Applied to every StyleSpace coordinate, it maps
what each one does to each factor; AttFind's attributes are then named by the factor they change most and compared
with a random pick and with the best single coordinate: a measured check that AttFind found the label rule's factor
and the planted shortcut (the paper asks human raters instead).
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stylexlib.classifier.model import SmallCNN
from stylexlib.core.io import torch_load, torch_save, write_table
from stylexlib.core.progress import tqdm
from stylexlib.core.provenance import accepts, data_fingerprint, with_data
from stylexlib.data import ImageDataset, to_float
from stylexlib.data.synthetic import FACTORS, Factor, render, sample_factors
from stylexlib.explain.attfind.editor import AttributeEditor
from stylexlib.explain.attfind.effects import DIRECTIONS, edited_logits_fast, searched_coordinates, shift_targets
from stylexlib.explain.attfind.examples import attribute_label

PROBE_FILE = "factor_probe.pt"
PROBE_RECIPE = 2  # bump when the probe's training changes: saved probes of another recipe are retrained
PROBE_SEED_OFFSET = 1_000_003  # the probe's faces come from a factor stream no dataset seed draws


class FactorProbe(nn.Module):
    """``probe(images in [-1, 1]) -> factors (N, F)``, each scaled to [0, 1] by its range (binary: 0 / 1)."""

    def __init__(self, resolution: int, width: int = 16, factors: Sequence[Factor] = FACTORS) -> None:
        super().__init__()
        self.names = [f.name for f in factors]
        self.binary = [f.kind == "binary" for f in factors]
        self.config = {"resolution": resolution, "width": width}
        self.net = SmallCNN(len(self.names), resolution, width)
        self.register_buffer("low", torch.tensor([float(f.low) for f in factors]))
        self.register_buffer("high", torch.tensor([float(f.high) for f in factors]))

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def normalise(self, factors: pd.DataFrame) -> Tensor:
        """A factor table as the probe's targets (N, F) in [0, 1]."""
        values = torch.tensor(factors[self.names].to_numpy(dtype=np.float32))
        return (values - self.low.cpu()) / (self.high - self.low).cpu()

    @torch.no_grad()
    def read(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """Scaled factor readings (N, F) of float images in [-1, 1] or uint8 images."""
        self.eval()
        device = self.low.device
        parts = [self(to_float(b) if b.dtype == torch.uint8 else b).float().cpu()
                 for b in images.to(device).split(batch_size)]
        return torch.cat(parts) if parts else torch.empty(0, len(self.names))


def smooth(images: Tensor) -> Tensor:
    """A 3x3 binomial blur: augments the probe's training images towards a young GAN's soft renders."""
    kernel = torch.tensor([1.0, 2.0, 1.0], device=images.device)
    kernel = (kernel[:, None] * kernel[None, :] / 16).expand(images.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel, groups=images.shape[1])


def train_factor_probe(data: ImageDataset, epochs: int = 8, width: int = 16, batch_size: int = 128, lr: float = 3e-3,
                       seed: int = 0, num_images: int | None = None,
                       device: torch.device | str = "cpu") -> FactorProbe:
    """Regress every factor from freshly rendered faces (MSE on scaled factors, half of each batch blurred).

    The faces are drawn with independent factors (``num_images``, default twice the train split), not taken from the
    dataset: the dataset ties the label rule's factor to the planted shortcut, and a probe trained on it learns that
    tie as a shortcut of its own. On the demo data such a probe read the mouth 0.23 of its range higher on faces with
    glasses (test R^2 0.50 against 0.90 at the same cost), so edits of the glasses read as edits of the mouth.
    """
    if data.factors is None:
        raise ValueError("the factor probe needs synthetic data with ground-truth factors (data.source: synthetic)")
    count = num_images if num_images is not None else 2 * len(data.indices("train"))
    factors = sample_factors(count, seed + PROBE_SEED_OFFSET)
    images = render(factors, data.resolution)
    torch.manual_seed(seed)
    probe = FactorProbe(data.resolution, width).to(device)
    targets = probe.normalise(factors)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(count / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    order_gen = torch.Generator().manual_seed(seed)
    probe.train()
    for _ in tqdm(range(epochs), desc="factor probe"):
        for batch in torch.randperm(count, generator=order_gen).split(batch_size):
            x = to_float(images[batch]).to(device)
            half = len(x) // 2
            x = torch.cat([smooth(x[:half]), x[half:]])
            loss = F.mse_loss(probe(x), targets[batch].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return probe.eval()


def probe_scores(probe: FactorProbe, data: ImageDataset, split: str = "val") -> pd.DataFrame:
    """How well the probe reads each factor on held-out faces (see :func:`factor_scores`)."""
    rows = data.indices(split)
    return factor_scores(probe, data.images[torch.as_tensor(rows)], data.factors.iloc[rows])


def factor_scores(probe: FactorProbe, images: Tensor, factors: pd.DataFrame) -> pd.DataFrame:
    """Per factor, the probe's reading of ``images`` against their true ``factors``: R^2 (continuous) or accuracy
    (binary), with the mean truth and the mean reading (scaled). On reconstructions of held-out faces it says which
    factors survive the round trip through E and G (for instance a hat on every reconstruction: hat read 1.0)."""
    read = probe.read(images).numpy()
    truth = probe.normalise(factors).numpy()
    out = []
    for k, name in enumerate(probe.names):
        if probe.binary[k]:
            score, metric = float(((read[:, k] > 0.5) == (truth[:, k] > 0.5)).mean()), "accuracy"
        else:
            score, metric = 1.0 - float(((read[:, k] - truth[:, k]) ** 2).mean() / max(truth[:, k].var(), 1e-12)), "r2"
        out.append({"factor": name, "metric": metric, "score": score, "truth_mean": float(truth[:, k].mean()),
                    "read_mean": float(read[:, k].mean())})
    return pd.DataFrame(out)


def save_probe(probe: FactorProbe, path: str | Path, fingerprint: str | None = None) -> Path:
    """Save the probe (with the fingerprint of the data it was trained on)."""
    return torch_save(path, {"config": probe.config, "state": probe.state_dict(), "fingerprint": fingerprint})


def load_probe(path: str | Path, device: torch.device | str = "cpu") -> FactorProbe:
    return _probe_from(torch_load(path, map_location="cpu"), device)


def _probe_from(payload: dict, device: torch.device | str) -> FactorProbe:
    probe = FactorProbe(**payload["config"])
    probe.load_state_dict(payload["state"])
    return probe.to(device).eval()


def probe_fingerprint(cfg) -> str:
    """What a run's probe records it was made from: the data and the recipe."""
    return with_data(f"/probe-{PROBE_RECIPE}", data_fingerprint(cfg))


def fit_run_probe(run, data: ImageDataset, device: torch.device | str = "cpu") -> FactorProbe:
    """The run's probe: loaded from ``factor_probe.pt`` when made for this data by this recipe, else trained and saved
    there."""
    path, made_from = run.path(PROBE_FILE), probe_fingerprint(run.cfg)
    payload = torch_load(path, map_location="cpu") if path.exists() else None
    if payload is not None and accepts(payload.get("fingerprint"), made_from):
        return _probe_from(payload, device)
    probe = train_factor_probe(data, seed=run.cfg.data.seed, device=device)
    save_probe(probe, path, made_from)
    return probe


# ---------------------------------------------------------------------------- every coordinate vs factors
def coordinate_factor_changes(probe: FactorProbe, editor: AttributeEditor, styles: Tensor,
                              coords: Tensor | None = None, batch_size: int = 256) -> pd.DataFrame:
    """What every single-coordinate edit does to the factors: the mean change of each scaled factor reading over the
    images with ``styles`` (N, S), for each coordinate (default: AttFind's, toRGB excluded) and direction.

    The unbiased reference for the attributes AttFind selects: it says how much any one coordinate can change a
    factor (the generator's disentanglement) and what a random coordinate does. Columns: flat, direction, label,
    one per factor.
    """
    generator = editor.models.generator
    coords = coords if coords is not None else searched_coordinates(generator, include_torgb=False)
    targets = shift_targets(styles, editor.stats, editor.shift, editor.shift_std)
    head = nn.Sequential(nn.Hardtanh(), probe).eval()  # renders clamped to [-1, 1], as the editor shows them
    base = probe.read(editor.render(styles))
    edited = edited_logits_fast(generator, head, styles, targets, coords, batch_size, num_outputs=len(probe.names))
    change = (edited - base[:, None, None]).mean(0)  # (K, 2, F)
    rows = []
    for k, flat in enumerate(coords.tolist()):
        where = generator.style_index.locate(flat)
        for d, direction in enumerate(DIRECTIONS):
            rows.append({"flat": flat, "direction": direction, "label": attribute_label(where.name, where.channel, direction),
                         **dict(zip(probe.names, change[k, d].tolist()))})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- attributes vs factors
FACTOR_NAMES = [f.name for f in FACTORS]
CONCEPTS = [f.name for f in FACTORS if not f.nuisance]


def attribute_factors(changes: pd.DataFrame, attributes: pd.DataFrame) -> pd.DataFrame:
    """AttFind's attributes (class_index, class_name, rank, flat, direction) named by the factor they change most.

    ``changes`` comes from :func:`coordinate_factor_changes`. Columns: key, class, rank, label, one per factor,
    ``factor`` (the non-nuisance factor with the largest mean |change|) and ``change`` (its signed mean change, in units
    of the factor's range).
    """
    chosen = attributes[["class_index", "class_name", "rank", "flat", "direction"]].merge(
        changes, on=["flat", "direction"], how="left", validate="many_to_one")
    if chosen[CONCEPTS].isna().any().any():
        missing = chosen.loc[chosen[CONCEPTS].isna().any(axis=1), "flat"].tolist()
        raise ValueError(f"coordinates {missing} of the attributes are not in the coordinate-factor table")
    top = chosen[CONCEPTS].abs().idxmax(axis=1)
    return pd.DataFrame({
        "key": [f"c{c}_r{r:02d}" for c, r in zip(chosen["class_index"], chosen["rank"])],
        "class": chosen["class_name"], "rank": chosen["rank"], "label": chosen["label"],
        **{name: chosen[name] for name in FACTOR_NAMES},
        "factor": top, "change": [chosen.at[i, name] for i, name in top.items()],
    })


def factor_notes(table: pd.DataFrame) -> dict[str, str]:
    """Row notes for :func:`stylexlib.report.viz.summary_figure`: the factor each attribute changes most, and by how much."""
    return {row.key: f"changes {row.factor} {row.change:+.2f}" for row in table.itertuples()}


def rule_factors(rule: str) -> list[str]:
    """The factors a label rule (a pandas expression) mentions."""
    return [name for name in CONCEPTS if re.search(rf"\b{re.escape(name)}\b", rule)]


def factor_groups(label_rule: str, spurious: str | None) -> dict[str, list[str]]:
    """The factors to look for: ``label_factor`` (those the label rule mentions) and ``spurious_factor``."""
    groups = {"label_factor": rule_factors(label_rule), "spurious_factor": [spurious] if spurious else []}
    return {name: factors for name, factors in groups.items() if factors}


def ground_truth_summary(table: pd.DataFrame, label_rule: str, spurious: str | None) -> dict[str, int | None]:
    """Metrics: how many attributes change the label rule's factors / the planted shortcut most, and the best rank
    among them (None: no such attribute)."""
    out: dict[str, int | None] = {}
    for group, factors in factor_groups(label_rule, spurious).items():
        hit = table["factor"].isin(factors)
        out[f"attributes_on_{group}"] = int(hit.sum())
        out[f"attributes_best_rank_{group}"] = int(table.loc[hit, "rank"].min()) if hit.any() else None
    return out


def factor_enrichment(changes: pd.DataFrame, attributes: pd.DataFrame, label_rule: str,
                      spurious: str | None) -> dict[str, float]:
    """Do AttFind's attributes change the label rule's factor and the planted shortcut more than chance?

    With ``changes`` from :func:`coordinate_factor_changes` and ``attributes`` (flat, direction per attribute), per
    group: ``factor_<group>_attfind`` (mean |change| of the selected attributes), ``..._random`` (mean over every
    coordinate and direction: a random pick), ``..._enrichment`` (their ratio), ``..._attfind_max`` (the most one
    selected attribute changes it) and ``..._stylespace_max`` (the most any one coordinate changes it). A group of
    several factors counts each edit's largest |change| among them.
    """
    chosen = attributes[["flat", "direction"]].merge(changes, on=["flat", "direction"], how="left")
    out: dict[str, float] = {}
    for group, factors in factor_groups(label_rule, spurious).items():
        everywhere = changes[factors].abs().max(axis=1)
        selected = chosen[factors].abs().max(axis=1)
        out[f"factor_{group}_attfind"] = float(selected.mean())
        out[f"factor_{group}_random"] = float(everywhere.mean())
        out[f"factor_{group}_enrichment"] = float(selected.mean() / max(everywhere.mean(), 1e-12))
        out[f"factor_{group}_attfind_max"] = float(selected.max())
        out[f"factor_{group}_stylespace_max"] = float(everywhere.max())
    return out


@dataclass
class AttributeFactors:
    """What stage 06 learns from the probe: its held-out scores, every coordinate's factor changes, each attribute's
    main factor, the metrics, and the two factors (label rule, shortcut) the factor map plots, when there are two."""

    probe_scores: pd.DataFrame
    changes: pd.DataFrame
    attributes: pd.DataFrame
    metrics: dict
    map_factors: tuple[str, str] | None

    @property
    def notes(self) -> dict[str, str]:
        """Row notes for the summary figure (:func:`factor_notes`)."""
        return factor_notes(self.attributes)


def analyse_attributes(run, data: ImageDataset, editor: AttributeEditor, styles: Tensor, coords: Tensor,
                       attributes: pd.DataFrame) -> AttributeFactors:
    """The run's probe (trained once) reads every single-coordinate edit of ``styles`` (searched images) and names
    AttFind's ``attributes`` by the factor they change most; writes ``attfind/coordinate_factors.csv`` and
    ``attfind/attribute_factors.csv``."""
    probe = fit_run_probe(run, data, editor.models.device)
    changes = coordinate_factor_changes(probe, editor, styles, coords)
    write_table(run.path("attfind", "coordinate_factors.csv"), changes)
    named = attribute_factors(changes, attributes)
    write_table(run.path("attfind", "attribute_factors.csv"), named)
    rule, spurious = run.cfg.data.label_rule, run.cfg.data.spurious_factor
    metrics = {**ground_truth_summary(named, rule, spurious), **factor_enrichment(changes, attributes, rule, spurious)}
    groups = [names[0] for names in factor_groups(rule, spurious).values()]
    return AttributeFactors(probe_scores(probe, data), changes, named, metrics,
                            tuple(groups) if len(groups) == 2 else None)


def factor_map_figure(changes: pd.DataFrame, attributes: pd.DataFrame, x_factor: str, y_factor: str) -> plt.Figure:
    """Every coordinate and direction (grey) by its |change| of two factors; AttFind's attributes on top, labelled."""
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    ax.scatter(changes[x_factor].abs(), changes[y_factor].abs(), s=8, c="0.7", label="every coordinate and direction")
    chosen = attributes.merge(changes, on=["flat", "direction"], how="left", suffixes=("", "_map"))
    for (class_name, group), color in zip(chosen.groupby("class_name", sort=False), plt.cm.tab10.colors):
        ax.scatter(group[x_factor].abs(), group[y_factor].abs(), s=36, color=color, edgecolor="k",
                   label=f"AttFind: {class_name}")
        for row in group.itertuples():
            ax.annotate(f"#{row.rank}", (abs(getattr(row, x_factor)), abs(getattr(row, y_factor))), fontsize=7,
                        xytext=(3, 2), textcoords="offset points")
    ax.set_xlabel(f"|mean change of {x_factor}| (fraction of its range)")
    ax.set_ylabel(f"|mean change of {y_factor}| (fraction of its range)")
    ax.set_title("What each StyleSpace coordinate does to two factors")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def factor_heatmap(table: pd.DataFrame) -> plt.Figure:
    """Attributes (rows) x factors (columns): mean change of each factor reading, red up, blue down."""
    values = table[CONCEPTS].to_numpy()
    limit = max(float(np.abs(values).max()), 1e-6)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(CONCEPTS), 0.8 + 0.32 * len(table)))
    image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(CONCEPTS)), CONCEPTS, rotation=35, ha="right")
    ax.set_yticks(range(len(table)), [f"{r['class']} #{r['rank']} {r['label']}" for _, r in table.iterrows()], fontsize=8)
    fig.colorbar(image, ax=ax, label="mean change of the factor reading (fraction of its range)")
    ax.set_title("Which ground-truth factor does each attribute change?")
    fig.tight_layout()
    return fig
