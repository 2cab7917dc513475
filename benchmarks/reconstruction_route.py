"""Where a label sways the classifier, what do the reconstructions draw to keep its decision?

StylEx's generator is conditioned on the classifier's output, and its KL term asks the reconstruction to keep that
output. A classifier that reads a label the generator seldom draws (a shortcut: glasses for a smile classifier) can
have its decision kept through something else the generator draws well (the class itself: a smile). Then no
StyleSpace attribute shows the label, whatever the search. This reads a finished run (stage 04's oracle; the refined
inversions from the run's store, refined where missing): held-out images in the four groups of ``--class-column``
(a binary labels-CSV column the classes follow) x ``--label``, and per group the classifier's probability of its
second class and the oracle's reading of both columns, on the originals, on E(x)'s and on the refined
reconstructions.

    python benchmarks/reconstruction_route.py runs/celeba_smile_shortcut --label Eyeglasses --class-column Smiling
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch

from stylexlib.core.run import open_run
from stylexlib.data import load_dataset
from stylexlib.data.labels import attribute_table, has_label
from stylexlib.evaluate.label_oracle import run_label_oracle
from stylexlib.explain.attfind.search import load_editor
from stylexlib.gan.losses import load_lpips
from stylexlib.stylespace.inversion import invert, render_inverted


def route(run_dir: str, label: str, class_column: str, per_group: int = 32, seed: int = 0) -> pd.DataFrame:
    """Per group (``class_column``, ``label``: 0 or 1) and image (original, E(x), refined), the mean classifier
    probability of the second class and the oracle's readings of the two columns (those it trusts)."""
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
    rows = []
    for name, rendered in renders.items():
        p = editor.probabilities(rendered.clamp(-1, 1))[:, 1].numpy()
        readings = oracle.read(lpips_model, rendered.clamp(-1, 1))[:, [oracle.trusted.index(c) for c in read]].numpy()
        for i, (in_class, with_label) in enumerate(groups):
            rows.append({class_column: int(in_class), label: int(with_label), "image": name,
                         f"p({editor.class_names[1]})": p[i], **{f"oracle {c}": readings[i, j] for j, c in enumerate(read)}})
    summary = pd.DataFrame(rows).groupby([class_column, label, "image"], sort=False).mean()
    return summary.sort_index(level=[0, 1], sort_remaining=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--label", required=True, help="a binary labels-CSV column the oracle trusts")
    parser.add_argument("--class-column", required=True, help="the binary column the classes are drawn from")
    parser.add_argument("--per-group", type=int, default=32, help="held-out images per class x label group")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(route(args.run_dir, args.label, args.class_column, args.per_group, args.seed).round(3).to_string())


if __name__ == "__main__":
    main()
