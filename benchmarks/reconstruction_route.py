"""Where a label sways the classifier, what do the reconstructions draw to keep its decision?

StylEx's generator is conditioned on the classifier's output, and its KL term asks the reconstruction to keep that
output. A classifier that reads a label the generator seldom draws (a shortcut: glasses for a smile classifier) can
have its decision kept through something else the generator draws well (the class itself: a smile). Then no
StyleSpace attribute shows the label, whatever the search. This reads a finished run (stage 04's oracle; the refined
inversions from the run's store, refined where missing): held-out images in the four groups of ``--class-column``
(a binary labels-CSV column the classes follow) x ``--label``, and per group the classifier's probability of its
second class and the oracle's reading of both columns, on the originals, on E(x)'s and on the refined
reconstructions. ``--refine STEPS@LR`` (repeatable) adds the reconstructions of a stronger (or weaker) per-image
refinement than the run's (``inversion.per_image_steps`` / ``per_image_lr``; not stored), to see whether the label
is lost by the generator or by a refinement that stopped short.

    python benchmarks/reconstruction_route.py runs/celeba_smile_shortcut --label Eyeglasses --class-column Smiling \
        --refine 100@0.1 --refine 200@0.15
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from stylexlib.core.run import open_run
from stylexlib.data import load_dataset
from stylexlib.data.labels import attribute_table, has_label
from stylexlib.evaluate.label_oracle import run_label_oracle
from stylexlib.explain.attfind.search import load_editor
from stylexlib.gan.losses import load_lpips, lpips_distance
from stylexlib.stylespace.inversion import invert, render_inverted


def route(run_dir: str, label: str, class_column: str, per_group: int = 32, seed: int = 0,
          refinements: Sequence[tuple[int, float]] = ()) -> pd.DataFrame:
    """Per group (``class_column``, ``label``: 0 or 1) and image (original, E(x), refined, and ``refined S@LR`` for
    each (steps, lr) of ``refinements``), the mean classifier probability of the second class, the oracle's readings
    of the two columns (those it trusts) and the LPIPS distance to the original."""
    run = open_run(run_dir)
    data = load_dataset(run.cfg.data)
    editor = load_editor(run, torch.device("cpu"))
    lpips_model = load_lpips(run.cfg.stylex.model.lpips_net, torch.device("cpu"))
    oracle = run_label_oracle(run, data, lpips_model)
    read = [c for c in (class_column, label) if c in oracle.trusted]
    test = data.indices("test")
    table = attribute_table(data, [class_column, label], "--label / --class-column").iloc[test].reset_index(drop=True)
    for column in (class_column, label):
        if has_label(table[column]) is None:
            raise SystemExit(f"reconstruction_route: column '{column}' of {data.info.get('labels_csv')} needs exactly "
                             f"two values among the test images; name a binary column")
    rng = np.random.default_rng(seed)
    chosen, groups = [], []
    for in_class in (False, True):
        for with_label in (False, True):
            where = np.flatnonzero((has_label(table[class_column]) == in_class) & (has_label(table[label]) == with_label))
            pick = rng.choice(where, min(per_group, len(where)), replace=False)
            chosen += list(pick)
            groups += [(in_class, with_label)] * len(pick)
    images = data.images[torch.as_tensor(test[chosen])]
    renders = {"original": editor.models.prepare(images).cpu(),
               "E(x)": render_inverted(editor.models, invert(editor.models, images, refine=False)).cpu(),
               "refined": render_inverted(editor.models, invert(editor.models, images, lpips_model=lpips_model)).cpu()}
    shipped = editor.models.inversion
    for steps, lr in refinements:  # outside the run's store, whose identity is the run's settings
        models = dataclasses.replace(editor.models, store=None,
                                     inversion=dataclasses.replace(shipped, per_image_steps=steps, per_image_lr=lr))
        inverted = invert(models, images, lpips_model=lpips_model)
        renders[f"refined {steps}@{lr:g}"] = render_inverted(models, inverted).cpu()
    rows = []
    for name, rendered in renders.items():
        rendered = rendered.clamp(-1, 1)
        p = editor.probabilities(rendered)[:, 1].numpy()
        readings = oracle.read(lpips_model, rendered)[:, [oracle.trusted.index(c) for c in read]].numpy()
        with torch.no_grad():
            distance = lpips_distance(lpips_model, rendered, renders["original"]).numpy()
        for i, (in_class, with_label) in enumerate(groups):
            rows.append({class_column: int(in_class), label: int(with_label), "image": name,
                         f"p({editor.class_names[1]})": p[i], **{f"oracle {c}": readings[i, j] for j, c in enumerate(read)},
                         "lpips": distance[i]})
    summary = pd.DataFrame(rows).groupby([class_column, label, "image"], sort=False).mean()
    return summary.sort_index(level=[0, 1], sort_remaining=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--label", required=True, help="a binary labels-CSV column the oracle trusts")
    parser.add_argument("--class-column", required=True, help="the binary column the classes are drawn from")
    parser.add_argument("--per-group", type=int, default=32, help="held-out images per class x label group")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--refine", action="append", default=[], metavar="STEPS@LR",
                        help="also a per-image refinement of STEPS steps at learning rate LR, e.g. 100@0.1")
    args = parser.parse_args()
    try:
        refinements = [(int(steps), float(lr)) for steps, lr in (r.split("@") for r in args.refine)]
    except ValueError:
        parser.error(f"--refine takes STEPS@LR, e.g. 100@0.1; got {args.refine}")
    print(route(args.run_dir, args.label, args.class_column, args.per_group, args.seed, refinements)
          .round(3).to_string())


if __name__ == "__main__":
    main()
