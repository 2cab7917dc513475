"""``stylex explain``: a run's StylEx explanation of the user's own image files, as pair PNGs and one CSV."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from stylexlib.core.io import write_table
from stylexlib.data.files import load_images
from stylexlib.explain.stylex import StylEx, StylexAttribution
from stylexlib.report.viz import caption, display_scale, save_png, stack, to_pil

TABLE = "attributes.csv"


def explain_files(run_dir: str | Path, sources: list[str | Path], out_dir: str | Path, k: int = 5,
                  target: int | str | None = None, device: torch.device | str | None = None,
                  visible_only: bool = False) -> pd.DataFrame:
    """Per image file (or every image in a folder): the top-``k`` StylEx attributes of the run for ``target`` (a class
    index or name; None: the predicted class) with p(class) before and after, as input | original | changed PNGs
    and ``attributes.csv`` in ``out_dir``; returns the table, each edit judged by :func:`judge_visibility`
    (``visible_only``: the edits it calls invisible ranked last, :meth:`StylEx.attribute`)."""
    explainer = StylEx.from_run(run_dir, device, visible_only)
    names = explainer.models.class_names
    images, paths = load_images(sources, explainer.generator.resolution)
    result = explainer.attribute(images, class_index(target, names), k)
    p_input = explainer.probabilities(explainer.models.prepare(images)).cpu()
    table = judge_visibility(result, explainer)
    out_dir = Path(out_dir)
    scale = display_scale(explainer.generator.resolution)
    pngs = []
    for row in table.itertuples():
        i, cls = int(row.image), int(row.target)
        stem = f"{i:03d}_{paths[i].stem}_top{row.rank}"
        pics = [caption(to_pil(images[i], scale), f"input p={float(p_input[i, cls]):.2f}", size=10),
                caption(to_pil(result.reconstructions[i], scale), f"original p={row.prob_original:.2f}", size=10),
                caption(to_pil(result.edited[i, row.rank - 1], scale), f"changed p={row.prob_edited:.2f}", size=10)]
        title = f"{names[cls]} #{row.rank}: {row.layer}:{row.channel} {row.direction} ({row.effect:+.2f} log-odds)"
        pngs.append(save_png(caption(stack(pics), title, size=10, above=True), out_dir / f"{stem}.png").name)
    table = table.assign(file=[str(paths[i]) for i in table["image"]], **{"class": [names[t] for t in table["target"]]},
                         p_input=[float(p_input[i, t]) for i, t in zip(table["image"], table["target"])], png=pngs)
    columns = ["file", "rank", "class", "layer", "channel", "flat", "direction", "effect", "p_input", "prob_original",
               "prob_edited", "visible_change", "invisible", "explains", "png"]
    table = table[columns].rename(columns={"prob_original": "p_before", "prob_edited": "p_after"})
    write_table(out_dir / TABLE, table)
    return table


def judge_visibility(result: StylexAttribution, explainer: StylEx) -> pd.DataFrame:
    """``result``'s table with each edit's ``visible_change`` (LPIPS, enlarged as people see it), whether the
    explainer's visibility rule (:meth:`StylEx.judge_edits`: the run's saved yardstick, else the generator's class
    change) calls it ``invisible``, and whether it ``explains`` the image: it moves p(class) by at least the rule's
    minimum and is not invisible."""
    table = result.to_dataframe()
    moved, seen, invisible = explainer.judge_edits(result.images, result.reconstructions, result.probs_original,
                                                   result.probs_edited, result.target, result.edited)
    image, rank = torch.tensor(table["image"].to_numpy()), torch.tensor(table["rank"].to_numpy()) - 1
    table["visible_change"] = seen[image, rank].numpy()
    table["invisible"] = invisible[image, rank].numpy()
    minimum = explainer.visibility_rule(result.images).min_prob_change  # the rule judge_edits applied
    table["explains"] = (moved[image, rank] >= minimum).numpy() & ~table["invisible"]
    return table


def unexplained_files(table: pd.DataFrame) -> list[str]:
    """The files of an :func:`explain_files` table none of whose edits ``explains`` them."""
    return [file for file, rows in table.groupby("file", sort=False) if not rows["explains"].any()]


def class_index(target: int | str | None, names: list[str]) -> int | None:
    """A class given by index or name as its index (ValueError naming the classes otherwise)."""
    if target is None or isinstance(target, int):
        return target
    if str(target) in names:
        return names.index(str(target))
    if str(target).isdigit() and int(target) < len(names):
        return int(target)
    raise ValueError(f"--target {target!r} is not a class of this run; use one of {names} or an index 0 to "
                     f"{len(names) - 1}")
