"""How far can one StyleSpace coordinate move each labelled attribute? The generator's reach, per label.

Every searched coordinate of a run (stages 01-05 finished, ``evaluate.attribute_columns`` set), both directions,
applied alone to the first ``--images`` searched images and read by the run's labelled-attribute oracle. A label no
coordinate moves (say Eyeglasses by 0.03) is one no StyleSpace explanation of this run can show, however it ranks:
the generator does not draw it as something one coordinate turns on.

    python benchmarks/coordinate_labels.py runs/celeba_smile_shortcut --images 24

Prints, per trusted label, the coordinate and direction that move it most and that change (sorted by |change|);
writes every coordinate's changes to ``<run>/attfind/coordinate_labels.csv``.
"""
from __future__ import annotations

import argparse
import time

import pandas as pd

from stylexlib.core.io import write_table
from stylexlib.core.progress import tqdm
from stylexlib.core.run import open_run
from stylexlib.data import load_dataset
from stylexlib.evaluate.label_oracle import run_label_oracle
from stylexlib.evaluate.label_readings import label_changes
from stylexlib.explain.attfind.effects import DIRECTIONS
from stylexlib.explain.attfind.search import load_attfind, load_editor
from stylexlib.gan.losses import load_lpips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run folder with stages 01-05 finished and evaluate.attribute_columns set")
    parser.add_argument("--images", type=int, default=24, help="searched images each edit is read on")
    args = parser.parse_args()
    run = open_run(args.run_dir)
    data, editor, result = load_dataset(run.cfg.data), load_editor(run), load_attfind(run)
    lpips_model = load_lpips(run.cfg.stylex.model.lpips_net, editor.models.device)
    oracle = run_label_oracle(run, data, lpips_model)
    if oracle is None:
        raise SystemExit(f"{args.run_dir}: evaluate.attribute_columns names no two-valued label column")
    styles = result.styles[: args.images]
    before = oracle.read(lpips_model, editor.render(styles))
    started, rows = time.perf_counter(), []
    for flat in tqdm(result.effects.coords.tolist(), desc="coordinates"):
        for direction in DIRECTIONS:
            after = oracle.read(lpips_model, editor.render(editor.edit(styles, flat, direction)))
            changes = label_changes(oracle.trusted, before, after)
            rows += [{"flat": flat, "direction": direction, "column": c, "change": v}
                     for c, v in zip(changes["column"], changes["change"])]
    table = pd.DataFrame(rows)
    write_table(run.path("attfind", "coordinate_labels.csv"), table)
    strongest = table.loc[table.groupby("column")["change"].apply(lambda s: s.abs().idxmax())]
    print(strongest.sort_values("change", key=abs, ascending=False).round(3).to_string(index=False))
    print(f"{len(result.effects.coords)} coordinates x 2 directions on {len(styles)} images in "
          f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
