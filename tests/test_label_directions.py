"""Labelled directions: each label's change of the styles with the others held, and what the classifier does when it
is drawn."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_explain_stylex import CFG, planted  # noqa: F401 (fixture)

from stylexlib.evaluate.label_directions import direction_verdict, label_direction_effects, label_direction_figure
from stylexlib.explain.attfind.editor import AttributeEditor
from stylexlib.explain.directions import DirectionExplainer, EditPool, label_pool

D = CFG.model.latent_dim


def _labelled_styles(shift: torch.Tensor, count: int = 600, seed: int = 0) -> tuple[torch.Tensor, pd.DataFrame,
                                                                                      torch.Tensor]:
    """styles = noise + ``shift`` where ``glasses`` is on + a male shift + a shift along the classifier's output
    ``said``; glasses come with male (60% of men, 10% of women wear them) and raise ``said``, so the plain mean
    difference of glasses wearers carries both other shifts."""
    rng = np.random.default_rng(seed)
    male = rng.random(count) < 0.5
    glasses = rng.random(count) < np.where(male, 0.6, 0.1)
    coin = rng.random(count) < 0.5
    said = torch.as_tensor(0.5 * glasses + rng.random(count), dtype=torch.float32)[:, None]
    other, pathway = torch.zeros(len(shift)), torch.zeros(len(shift))
    other[0], pathway[2] = 4.0, 3.0
    styles = (torch.randn(count, len(shift), generator=torch.Generator().manual_seed(seed)) * 0.3
              + torch.as_tensor(glasses, dtype=torch.float32)[:, None] * shift
              + torch.as_tensor(male, dtype=torch.float32)[:, None] * other + said * pathway)
    labels = pd.DataFrame({"Male": np.where(male, 1, -1), "glasses": glasses.astype(int), "coin": coin.astype(int)})
    return styles, labels, said


def test_a_label_direction_holds_the_labels_and_the_class_input_that_come_with_it() -> None:
    shift = torch.zeros(40)
    shift[1] = 2.0
    styles, labels, said = _labelled_styles(shift)
    pool = label_pool(styles, labels, held=said)
    assert pool.labels == ["Male", "glasses", "coin"] and pool.vectors.shape == (3, 40)
    glasses = pool.vectors[1]
    assert (glasses - shift).norm() < 0.2 * shift.norm() and abs(glasses[1] - 2.0) < 0.1
    wearers = torch.as_tensor(labels["glasses"].to_numpy() == 1)
    naive = styles[wearers].mean(0) - styles[~wearers].mean(0)  # carries the male shift and the classifier's
    assert (naive - shift).norm() > 5 * (glasses - shift).norm()
    unheld = label_pool(styles, labels).vectors[1]  # without the class input held, glasses carry its pathway
    assert unheld[2] > 1.0 and abs(glasses[2]) < 0.15
    assert pool.vectors[2].norm() < 0.2 * shift.norm() and abs(pool.vectors[2][1]) < 0.1  # a coin moves nothing
    labels.loc[3, "coin"] = np.nan  # a missing value drops its row, not the fit
    assert (label_pool(styles, labels, held=said).vectors[1] - glasses).norm() < 0.02 * shift.norm()
    with pytest.raises(ValueError, match="'age' needs a column with two values"):
        label_pool(styles, labels.assign(age=np.arange(len(labels)) % 7))
    with pytest.raises(ValueError, match="'rare': 1 of .* it needs at least 2"):
        label_pool(styles, labels.assign(rare=(np.arange(len(labels)) == 5).astype(int)))


def _drawn_red(explainer) -> tuple[AttributeEditor, torch.Tensor, object]:
    """An editor on the planted generator (red follows one coordinate, the classifier reads red), a label pool whose
    ``glasses`` moves that coordinate, and an oracle that reads glasses as red."""
    G = explainer.generator
    flat = G.style_index.flat(len(G.layers) - 1, 3)
    shift = torch.zeros(G.style_dim)
    shift[flat] = 6.0 * float(explainer.stats.maximum[flat] - explainer.stats.minimum[flat])
    styles, labels, _ = _labelled_styles(shift, count=400, seed=1)
    pool = label_pool(styles, labels)
    editor = AttributeEditor(explainer.models, explainer.stats)
    center = float(explainer.models.classifier.center)

    class RedOracle:
        trusted = ["glasses"]

        def read(self, lpips_model, images: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(8 * (images[:, 0].mean(dim=(1, 2)) - center))[:, None]

    return editor, pool, RedOracle()


def test_drawing_the_label_on_moves_the_classifier_that_reads_it(planted) -> None:  # noqa: F811
    explainer, _, _ = planted
    editor, pool, oracle = _drawn_red(explainer)
    rng = np.random.default_rng(3)
    searched = pd.DataFrame({"glasses": (rng.random(80) < 0.4).astype(int), "coin": (rng.random(80) < 0.5).astype(int)})
    w = torch.randn(80, D, generator=torch.Generator().manual_seed(4))
    styles = explainer.generator.styles(w, torch.full((80, 2), 0.5)).detach()
    effects = label_direction_effects(editor, pool, styles, searched, {"glasses": 1, "coin": 1}, oracle,
                                      strength=1.0).set_index(["column", "edit"])
    add, remove, coin = effects.loc[("glasses", "add")], effects.loc[("glasses", "remove")], effects.loc[("coin", "add")]
    probabilities = editor.probabilities(editor.render(styles))[:, 1]
    lacking = (searched["glasses"].to_numpy() == 0) & (probabilities < 0.5).numpy()
    assert add["images"] == lacking.sum() and add["p_before"] == pytest.approx(float(probabilities[lacking].mean()))
    # the reconstructions' probabilities, when given (the search's base_logits), choose the images: none read again
    given = torch.stack([1 - probabilities, probabilities], 1).flip(1)
    swapped = label_direction_effects(editor, pool, styles, searched, {"glasses": 1}, oracle, probabilities=given)
    assert swapped["images"].iloc[0] == ((searched["glasses"].to_numpy() == 0) & (probabilities >= 0.5).numpy()).sum()
    assert add["push"] > 0.2 and add["push_z"] > 3.5 and add["decided_after"] > add["decided_before"] + 0.3
    assert add["drawn"] > 0.2 and add["label_after"] > add["label_before"]
    assert remove["push"] < -0.2 and remove["decided_after"] < remove["decided_before"]
    assert abs(coin["push"]) < 0.2 * add["push"] and np.isnan(coin["drawn"])  # the oracle does not read coin
    metrics, said = direction_verdict(effects.reset_index())
    assert metrics["label_direction_column"] == "glasses" and metrics["label_direction_push"] == pytest.approx(add["push"])
    assert metrics["label_direction_drawn"] == pytest.approx(add["drawn"]) and metrics["label_direction_push_remove"] < 0
    assert "glasses (drawn, and the classifier follows it)" in said and "coin (the classifier does not follow the edit (the oracle does not read" in said
    faint = effects.reset_index().assign(drawn=0.01)
    assert "glasses (not drawn at this strength: the generator does not show it)" in direction_verdict(faint)[1]
    weak = label_direction_effects(editor, pool, styles, searched, {"glasses": 1}, oracle, strength=0.1)
    assert 0 < weak["push"].iloc[0] < add["push"]  # strength scales the step
    fig = label_direction_figure(editor, pool, styles, searched, "glasses", 1, shown=4)
    assert len([ax for ax in fig.axes if ax.images]) == 8 and "+glasses" in fig.axes[4].get_title()
    # the pool answers the common verb: per image, the labelled edit that lowers the target most (glasses, not coin)
    without_male = EditPool("labels", pool.vectors[1:], pool.labels[1:])
    explained = DirectionExplainer(explainer.models, explainer.stats, without_male, step=1.0).attribute(
        explainer.render(styles[:4]).clamp(-1, 1), target=1, k=1).to_dataframe()
    assert (explained["label"] == "glasses").all()
