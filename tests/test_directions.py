"""GAN-edit baselines: pools of StyleSpace edits, GANSpace / SeFa / Voynov-Babenko directions, Wu et al.'s ranking,
and the one protocol that scores them all."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_explain_stylex import CFG, planted  # noqa: F401 (fixture)

from stylexlib.evaluate.directions import select_edits, separation, sufficiency_curve, top_edits
from stylexlib.explain.attfind.effects import StyleStats, searched_coordinates
from stylexlib.explain.directions import (DirectionExplainer, EditPool, coordinate_pool, ganspace_directions,
                                          latent_pool, pool_logits, sefa_directions, wu_positive_ranking)
from stylexlib.explain.voynov_babenko import DirectionMatrix, VoynovBabenkoTrainer
from stylexlib.gan import Encoder, Generator
from stylexlib.gan.models import StylexModels


@pytest.fixture(scope="module")
def generator() -> Generator:
    torch.manual_seed(0)
    return Generator(16, 2, CFG).eval().requires_grad_(False)


def models_of(explainer_or_generator, classifier=None) -> StylexModels:
    if isinstance(explainer_or_generator, Generator):
        G = explainer_or_generator
        return StylexModels(G, Encoder(16, CFG.model.latent_dim, CFG).eval(), classifier, CFG, ["a", "b"], 0,
                            torch.device("cpu"))
    return explainer_or_generator.models


def test_a_latent_direction_is_one_style_vector(generator) -> None:
    directions, latents = torch.randn(5, CFG.model.latent_dim), torch.randn(100, CFG.model.latent_dim) * 3
    pool = latent_pool("d", generator, directions, latents)
    unit = directions / directions.norm(dim=1, keepdim=True)
    spread = (latents @ unit.T).std(0)
    w, c = torch.randn(7, CFG.model.latent_dim), torch.softmax(torch.randn(7, 2), 1)
    for p in range(5):
        moved = generator.styles(w + spread[p] * unit[p], c) - generator.styles(w, c)
        assert torch.allclose(moved, pool.vectors[p].expand_as(moved), atol=1e-4)
    picks, signs = torch.tensor([[0, 3]] * 7), torch.tensor([[1, 0]] * 7)
    expected = generator.styles(w, c) + 2 * (pool.vectors[0] - pool.vectors[3])
    assert torch.allclose(pool.apply(generator.styles(w, c), picks, signs, 2.0), expected, atol=1e-5)


def test_coordinate_and_dense_paths_give_the_same_logits(generator) -> None:
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 2)).eval()
    styles = generator.styles(torch.randn(3, CFG.model.latent_dim), torch.softmax(torch.randn(3, 2), 1))
    stats = StyleStats.of(styles)
    stats.std = torch.rand(generator.style_dim) + 0.1  # any positive stds
    coords = searched_coordinates(generator, False)[::7]
    fast = coordinate_pool("c", generator, stats, coords)
    dense = EditPool("c", fast.vectors, fast.labels)  # the same edits without the coordinate shortcut
    a = pool_logits(generator, classifier, styles, fast, 1.5, batch_size=16)
    b = pool_logits(generator, classifier, styles, dense, 1.5, batch_size=16)
    assert a.shape == (3, len(coords), 2, 2) and torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a[:, :, 0], a[:, :, 1])  # the two signs differ


def test_sefa_matches_a_numpy_reference_and_ganspace_finds_the_widest_axis(generator) -> None:
    ours = sefa_directions(generator, 4)
    weight = (generator.affine.weight * generator.affine.weight_gain)[:, : CFG.model.latent_dim].numpy().astype(np.float64)
    weight = weight[generator.style_index.exclude_torgb_mask().numpy()]
    weight = (weight / np.linalg.norm(weight, axis=1, keepdims=True)).T  # SeFa's layout: (D, styles), columns unit
    values, vectors = np.linalg.eig(weight @ weight.T)
    reference = vectors[:, np.argsort(-values.real)[:4]].real.T
    cosine = np.abs((ours.numpy() * reference).sum(1))
    assert np.allclose(cosine, 1.0, atol=1e-4)
    axes = ganspace_directions(generator, 3, samples=4000)
    assert torch.allclose(axes @ axes.T, torch.eye(3), atol=1e-4)
    w = generator.mapping(torch.randn(4000, CFG.model.latent_dim))
    spread = lambda d: float(((w - w.mean(0)) @ d).var())  # noqa: E731
    assert spread(axes[0]) >= max(spread(d / d.norm()) for d in torch.randn(20, CFG.model.latent_dim))
    assert spread(axes[0]) > spread(axes[1]) > spread(axes[2])


def test_direction_matrix_kinds() -> None:
    rows = DirectionMatrix(8, 5, "orthogonal")()
    assert rows.shape == (5, 8) and torch.allclose(rows @ rows.T, torch.eye(5), atol=1e-5)
    rows.sum().backward()  # trainable through the parametrisation
    linear = DirectionMatrix(8, 12, "linear")()
    assert linear.shape == (12, 8) and torch.allclose(linear.norm(dim=1), torch.ones(12), atol=1e-6)
    with pytest.raises(ValueError, match="do not fit"):
        DirectionMatrix(8, 9, "orthogonal")


def test_voynov_babenko_resumes_the_same_trajectory(generator, tmp_path) -> None:
    models = models_of(generator)
    conditions = torch.softmax(torch.randn(20, 2), 1)
    straight = VoynovBabenkoTrainer(models, conditions, count=3, batch_size=4, seed=1)
    straight.train(4, progress=False)
    first = VoynovBabenkoTrainer(models, conditions, count=3, batch_size=4, seed=1, checkpoint=tmp_path / "vb.pt",
                                 fingerprint="x")
    first.train(2, progress=False)
    resumed = VoynovBabenkoTrainer(models, conditions, count=3, batch_size=4, seed=1, checkpoint=tmp_path / "vb.pt",
                                   fingerprint="x")
    result = resumed.train(4, progress=False)
    assert resumed.step == 4 and len(result.history) == 4
    assert torch.allclose(result.directions, straight.matrix().detach(), atol=1e-6)
    other = VoynovBabenkoTrainer(models, conditions, count=3, batch_size=4, seed=1, checkpoint=tmp_path / "vb.pt",
                                 fingerprint="another generator")
    assert not other.resume()


def test_wu_ranking_puts_the_channel_the_positives_share_first() -> None:
    gen = torch.Generator().manual_seed(0)
    styles = torch.randn(200, 10, generator=gen)
    positives = torch.arange(200) < 100
    styles[positives, 6] = 2.0 + 0.1 * torch.randn(100, generator=gen)  # positives: consistently high channel 6
    styles[positives, 2] = -1.0 + 0.1 * torch.randn(100, generator=gen)  # ... and low channel 2
    ranking = wu_positive_ranking(styles, StyleStats.of(styles), positives, torch.arange(10))
    assert set(ranking["flat"][:2]) == {6, 2}
    assert dict(zip(ranking["flat"], ranking["direction"]))[6] == "up"
    assert dict(zip(ranking["flat"], ranking["direction"]))[2] == "down"


def test_the_protocol_selects_and_scores_the_planted_coordinate(planted) -> None:  # noqa: F811
    explainer, flat, images = planted
    coords = torch.arange(explainer.generator.style_dim)
    full = DirectionExplainer(models_of(explainer), explainer.stats,
                              coordinate_pool("all", explainer.generator, explainer.stats, coords), step=2.0)
    others = coords[coords != flat][:8]
    control = DirectionExplainer(models_of(explainer), explainer.stats,
                                 coordinate_pool("control", explainer.generator, explainer.stats, others), step=2.0)
    pool_images = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1
    styles, _ = full.encode(pool_images)
    selected = select_edits(full, styles, k=2)
    top = selected[selected["rank"] == 1].set_index("class_index")
    assert (top["index"] == flat).all()  # position == flat in a pool of every coordinate
    assert top.loc[1, "direction"] == "up" and top.loc[0, "direction"] == "down"
    curve = sufficiency_curve(full, styles, selected, max_k=2)
    baseline = sufficiency_curve(control, styles, select_edits(control, styles, k=2), max_k=2)
    assert curve["flip_rate"].iloc[0] > 0.3 and curve["flip_rate"].iloc[0] > baseline["flip_rate"].iloc[0]
    explained = full.attribute(images, target=1, k=1).to_dataframe()
    assert (explained["index"] == flat).all() and (explained["direction"] == "down").all()
    picks, signs, usable = top_edits(selected, torch.tensor([0, 1, 1]), 1)
    assert usable.all() and (picks[:, 0] == flat).all() and signs[:, 0].tolist() == [0, 1, 1]


def test_separation_needs_the_rule_and_the_shortcut_in_different_edits() -> None:
    groups = {"label_factor": ["mouth"], "spurious_factor": ["glasses"]}
    both = pd.DataFrame({"class_name": ["a", "a", "b"], "rank": [1, 2, 1], "factor": ["mouth", "hair", "glasses"]})
    assert separation(both, groups)["rule_and_shortcut_separate"] is True
    one = both.assign(factor=["mouth", "hair", "mouth"])
    assert separation(one, groups)["rule_and_shortcut_separate"] is False
    assert separation(both, groups)["top_factors"] == "a#1:mouth a#2:hair b#1:glasses"


def test_edit_measures_score_the_usable_edits_visible_change_cout_and_named_kid() -> None:
    from stylexlib.evaluate.directions import edit_measures
    from stylexlib.evaluate.quality import feature_kid, lpips_features
    from stylexlib.evaluate.scores import cout
    from stylexlib.gan.losses import load_lpips, lpips_distance, visible_change

    gen = torch.Generator().manual_seed(0)
    original = torch.rand(6, 3, 16, 16, generator=gen) * 2 - 1
    edited = original.clone()
    edited[:, :, 4:10, 4:10] = 1.0  # a bright square
    edited[5] = -original[5]  # the one image without an edit: left out of every measure
    usable = torch.tensor([True] * 5 + [False])
    top1 = {"original": original, "edited": edited, "usable": usable, "drop": torch.tensor([1.0] * 5 + [9.0]),
            "target": torch.zeros(6, dtype=torch.long), "toward": torch.ones(6, dtype=torch.long)}
    torch.manual_seed(0)
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 2)).eval()
    lpips_model = load_lpips("squeeze")
    real = lpips_features(lpips_model, torch.rand(8, 3, 16, 16, generator=gen) * 2 - 1)
    out = edit_measures(top1, lpips_model, real, classifier)
    seen = visible_change(lpips_model, original[:5], edited[:5]).mean()
    assert out["lpips"] == pytest.approx(float(seen), rel=1e-5) and out["logodds_change"] == 1.0
    assert out["lpips"] != pytest.approx(float(lpips_distance(lpips_model, original[:5], edited[:5]).mean()), rel=0.05)
    assert out["kid_lpips_squeeze"] == pytest.approx(feature_kid(lpips_features(lpips_model, edited[:5]), real))
    assert "kid_lpips_squeeze_unedited" in out
    expected = cout(classifier, original[:5], edited[:5], 0, 1)
    assert out["cout"] == pytest.approx(float(expected.mean()), rel=1e-5) and out["cout_low"] <= out["cout"]
    assert "cout" not in edit_measures(top1, lpips_model, real)  # no classifier, no COUT


def test_methods_table_keeps_one_stylex_row_with_both_stages_scores() -> None:
    from stylexlib.evaluate.gan_baselines import merge_methods

    saliency = pd.DataFrame({"method": ["occlusion", "stylex", "ganspace"], "family": ["saliency", "attribute", "x"],
                             "task": "t", "factor_top1": [0.2, 0.5, 0.9]})  # an old stage-09 row is replaced
    gan_rows = pd.DataFrame({"method": ["stylex", "ganspace", "ganspace"],
                             "family": ["attribute", "direction", "direction"], "task": "t",
                             "gan": ["stylex", "stylex", "plain"],
                             "factor_top1": [0.1, 0.3, 0.4], "flip_rate_top1": [0.6, 0.2, 0.1],
                             "cout": [0.7, 0.1, 0.2], "kid_lpips_squeeze": [0.05, 0.3, 0.2],
                             "realism": [0.05, 0.3, 0.2]})
    table = merge_methods(saliency, gan_rows)
    assert list(table["method"]) == ["occlusion", "stylex", "ganspace", "ganspace"]
    stylex = table[table["method"] == "stylex"].iloc[0]
    assert stylex["factor_top1"] == 0.5 and stylex["flip_rate_top1"] == 0.6 and stylex["gan"] == "stylex"
    assert stylex["cout"] == 0.7 and stylex["kid_lpips_squeeze"] == 0.05 and stylex["realism"] == 0.05
    assert list(table.loc[table["method"] == "ganspace", "factor_top1"]) == [0.3, 0.4]
    assert merge_methods(None, gan_rows).equals(gan_rows)


def _evaluated(per_image: pd.DataFrame):
    from stylexlib.evaluate.gan_baselines import Evaluated

    return Evaluated({}, pd.DataFrame(), pd.DataFrame(), {}, per_image)


def test_paired_table_is_stylex_minus_each_method_on_the_same_resampled_images() -> None:
    """Images share a difficulty both methods see: the paired interval is tight around the planted +1; resampling
    each method's images apart (unpaired) would span about +-0.5; a method scored on other images is refused."""
    from stylexlib.evaluate.gan_baselines import PAIRED_COLUMNS, paired_table
    from stylexlib.evaluate.scores import paired_bootstrap_interval

    rng = np.random.default_rng(0)
    n, images = 40, pd.Index(range(100, 140), name="image")
    hard = rng.normal(size=n)
    lpips = rng.uniform(0.2, 0.4, size=n)
    stylex = pd.DataFrame({"flip_rate_top1": (hard > -0.5).astype(float), "logodds_change": hard + 1.0,
                           "lpips": lpips, "cout": 0.1 * hard}, index=images)
    other = pd.DataFrame({"flip_rate_top1": (hard > 0.5).astype(float),
                          "logodds_change": hard + 0.05 * rng.normal(size=n), "lpips": lpips,
                          "cout": 0.1 * hard}, index=images)
    other.iloc[3] = np.nan  # an image this method had no edit for
    results = {"stylex@stylex": _evaluated(stylex), "ganspace@plain": _evaluated(other),
               "ganspace@stylex": _evaluated(stylex.copy())}
    paired = paired_table(results, "task")
    assert list(paired.columns) == PAIRED_COLUMNS and set(paired["task"]) == {"task"}
    assert set(paired["reference"]) == {"stylex"} and set(zip(paired["method"], paired["gan"])) == {
        ("ganspace", "plain"), ("ganspace", "stylex")}
    assert set(paired["score"]) == {"flip_rate_top1", "logodds_change", "lpips", "cout", "logodds_per_lpips"}
    row = paired.set_index(["method", "gan", "score"]).loc[("ganspace", "plain", "logodds_change")]
    keep = np.arange(n) != 3
    assert row["difference"] == pytest.approx(float((stylex["logodds_change"] - other["logodds_change"])[keep].mean()))
    assert 0.9 < row["low"] < row["difference"] < row["high"] < 1.1  # sign: StylEx minus the method; paired: tight
    assert (row["images"], row["reference_images"], row["method_images"], row["evaluated"]) == (n - 1, n, n - 1, n)
    ratio = paired.set_index(["method", "gan", "score"]).loc[("ganspace", "plain", "logodds_per_lpips")]
    expected = (stylex["logodds_change"][keep].mean() / stylex["lpips"][keep].mean()
                - other["logodds_change"][keep].mean() / other["lpips"][keep].mean())
    assert ratio["difference"] == pytest.approx(expected) and ratio["low"] > 0
    same = paired[paired["gan"] == "stylex"]  # the same scores: no difference, no width
    assert (same["difference"] == 0).all() and (same["low"] == 0).all() and (same["high"] == 0).all()
    flips = paired.set_index(["gan", "score"]).loc[("plain", "flip_rate_top1")]
    assert (flips["difference"], flips["low"], flips["high"]) == pytest.approx(
        paired_bootstrap_interval(stylex["flip_rate_top1"][keep], other["flip_rate_top1"][keep]))
    shifted = other.set_axis(range(200, 240)).rename_axis("image")  # scored on other images: no pairs
    with pytest.raises(ValueError, match="other images"):
        paired_table({**results, "sefa@plain": _evaluated(shifted)}, "task")
    assert paired_table({"ganspace@plain": _evaluated(other)}).empty  # no StylEx, nothing to pair


def _protocol_inputs(planted) -> tuple:  # noqa: F811
    """The planted generator's explainer over every coordinate, 24 selection and 12 evaluation images, LPIPS and the
    real images' features: what evaluate_method takes."""
    from stylexlib.evaluate.quality import lpips_features
    from stylexlib.gan.losses import load_lpips

    explainer, _, _ = planted
    coords = torch.arange(explainer.generator.style_dim)
    full = DirectionExplainer(models_of(explainer), explainer.stats,
                              coordinate_pool("all", explainer.generator, explainer.stats, coords), step=2.0)
    gen = torch.Generator().manual_seed(5)
    selection, evaluation = (torch.rand(m, 3, 16, 16, generator=gen) * 2 - 1 for m in (24, 12))
    lpips_model = load_lpips("squeeze")
    real = lpips_features(lpips_model, torch.rand(8, 3, 16, 16, generator=gen) * 2 - 1)
    return full, selection, evaluation, lpips_model, real


def test_evaluate_method_keeps_per_image_scores_whose_means_are_the_row(planted) -> None:  # noqa: F811
    from stylexlib.evaluate.gan_baselines import Method, evaluate_method

    full, selection, evaluation, lpips_model, real = _protocol_inputs(planted)
    result = evaluate_method(Method("stylex", "attribute", "attfind", full), "stylex", selection, evaluation, "t",
                             lpips_model, real, top_k=2)
    per_image, row = result.per_image, result.row
    assert len(per_image) == len(evaluation) and "kid_lpips_squeeze" not in per_image
    for score in ("flip_rate_top1", "logodds_change", "lpips", "cout", "deletion_auc", "insertion_auc"):
        assert per_image[score].mean() == pytest.approx(row[score], rel=1e-5, nan_ok=True), score
    assert per_image["flip_rate_top5"].isna().all()  # no 5 edits selected: not scored, not a miss
    assert per_image["logodds_change"].notna().sum() == int(result.top1["usable"].sum())


def test_the_protocol_reads_edits_with_the_label_oracle(planted, tmp_path) -> None:  # noqa: F811
    from stylexlib.data import ImageDataset
    from stylexlib.evaluate.gan_baselines import Method, evaluate_method
    from stylexlib.evaluate.label_oracle import fit_label_oracle
    from stylexlib.evaluate.quality import lpips_features
    from stylexlib.gan.losses import load_lpips

    explainer, flat, _ = planted
    coords = torch.arange(explainer.generator.style_dim)
    full = DirectionExplainer(models_of(explainer), explainer.stats,
                              coordinate_pool("all", explainer.generator, explainer.stats, coords), step=2.0)
    gen = torch.Generator().manual_seed(7)
    lpips_model = load_lpips("squeeze")
    with torch.no_grad():  # label the generator's own renders: "reddish" is what the planted coordinate drives
        renders = full.render(full.encode(torch.rand(160, 3, 16, 16, generator=gen) * 2 - 1)[0]
                              + 2 * explainer.stats.std * torch.randn(160, explainer.generator.style_dim, generator=gen)
                              * (torch.arange(explainer.generator.style_dim) == flat))
    red = renders[:, 0].mean((1, 2))
    table = pd.DataFrame({"file": [f"{i}.png" for i in range(160)], "reddish": (red > red.median()).int().numpy(),
                          "coin": (torch.rand(160, generator=gen) < 0.5).int().numpy()})
    table.to_csv(tmp_path / "labels.csv", index=False)
    data = ImageDataset(((renders + 1) * 127.5).round().to(torch.uint8), torch.zeros(160, dtype=torch.long), ["low", "high"],
                        np.array(["train"] * 120 + ["test"] * 40), files=list(table["file"]),
                        info={"labels_csv": str(tmp_path / "labels.csv")})
    oracle = fit_label_oracle(data, lpips_model, ["reddish", "coin"], [], test_images=40)
    assert oracle.trusted == ["reddish"]
    selection, evaluation = (torch.rand(m, 3, 16, 16, generator=gen) * 2 - 1 for m in (24, 12))
    real = lpips_features(lpips_model, torch.rand(8, 3, 16, 16, generator=gen) * 2 - 1)
    result = evaluate_method(Method("stylex", "attribute", "attfind", full), "stylex", selection, evaluation, "t",
                             lpips_model, real, top_k=2, oracle=oracle, label_correlation={"reddish": 0.9})
    row = result.row
    assert row["top_labels"].split() == ["low#1:reddish", "low#2:reddish", "high#1:reddish", "high#2:reddish"]
    assert row["attr_distinct_labels_top5"] == 1 and row["attr_main_label_change_top5"] > 0.1
    assert result.per_image["label_mnac"].mean() == pytest.approx(row["label_mnac"], rel=1e-6)
    assert "label_cd" not in row  # no class column among the oracle's: nothing to correlate the flips with


def test_methods_on_one_gan_share_its_inversion_and_score_as_if_each_inverted(planted, monkeypatch) -> None:  # noqa: F811
    """evaluate_all inverts the selection and evaluation images once per GAN (each refined inversion costs seconds per
    image on real data): a method given that encoding scores exactly as one that inverts them itself."""
    from stylexlib.evaluate.gan_baselines import Method, encode_images, evaluate_method

    full, selection, evaluation, lpips_model, real = _protocol_inputs(planted)
    method = Method("stylex", "attribute", "attfind", full)
    alone = evaluate_method(method, "stylex", selection, evaluation, "t", lpips_model, real, top_k=2)
    encoded = encode_images(full, selection, evaluation)
    monkeypatch.setattr(DirectionExplainer, "encode", lambda *a, **k: pytest.fail("inverted again"))
    shared = evaluate_method(method, "stylex", selection, evaluation, "t", lpips_model, real, top_k=2, encoded=encoded)
    timing = {"seconds_per_image", "selection_seconds"}
    assert {k: v for k, v in shared.row.items() if k not in timing} == pytest.approx(
        {k: v for k, v in alone.row.items() if k not in timing}, nan_ok=True)
    assert shared.row["selection_seconds"] >= encoded.selection_seconds > 0
    pd.testing.assert_frame_equal(shared.per_image, alone.per_image)


def test_the_methods_table_keeps_its_columns_without_factor_scores() -> None:
    """On real photographs no row has the synthetic factor scores: stage 09's table keeps those columns, empty (it
    raised a KeyError after every method had been evaluated)."""
    from stylexlib.evaluate.gan_baselines import method_table

    table = method_table([{"method": "stylex", "gan": "stylex", "flip_rate_top1": 0.5, "label_mnac": 1.2}])
    assert list(table.columns[:4]) == ["method", "family", "task", "gan"] and table["top_factors"].isna().all()
    assert table.loc[0, "label_mnac"] == 1.2 and table.columns[-1] == "label_mnac"


def _stage09_inputs(planted, tmp_path) -> tuple:  # noqa: F811
    """A run folder, a 48-image data set and two methods on the planted GAN: what evaluate_all takes."""
    from stylexlib.core.config import Config, CompareConfig
    from stylexlib.core.run import Run
    from stylexlib.data import ImageDataset
    from stylexlib.evaluate.gan_baselines import Method

    full = _protocol_inputs(planted)[0]
    explainer, flat, _ = planted
    others = torch.arange(explainer.generator.style_dim)
    control = DirectionExplainer(models_of(explainer), explainer.stats, coordinate_pool(
        "random_coordinates", explainer.generator, explainer.stats, others[others != flat][:8]), step=2.0)
    cfg = Config(name="t", compare=CompareConfig(selection_images=24, evaluation_images=12, top_k=2))
    cfg.attfind.split, cfg.stylex.model.lpips_net = "train", "squeeze"
    images = (torch.rand(48, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 255).to(torch.uint8)
    data = ImageDataset(images, torch.zeros(48, dtype=torch.long), ["low", "high"],
                        np.array(["train"] * 32 + ["test"] * 16))
    methods = [Method("stylex", "attribute", "attfind", full),
               Method("random_coordinates", "attribute", "attfind", control)]
    return Run(tmp_path / "run", cfg), data, methods


def test_stage09_keeps_each_evaluated_method_and_resumes_after_an_interruption(planted, tmp_path,  # noqa: F811
                                                                                monkeypatch) -> None:
    """evaluate_all keeps each method's evaluation as it finishes (baselines/evaluated/<method>@<gan>.pt): a re-run
    after an interruption evaluates only the methods left and gives the uninterrupted run's table; another config
    evaluates them again (25 minutes were lost once on CelebA when the last method failed)."""
    from stylexlib.evaluate import gan_baselines

    run, data, methods = _stage09_inputs(planted, tmp_path)
    full_table, full_results = gan_baselines.evaluate_all(run, data, methods, progress=False)  # uninterrupted
    for kept in run.dir.joinpath("baselines", "evaluated").glob("*.pt"):
        kept.unlink()
    evaluated, real = [], gan_baselines.evaluate_method

    def stop_after_one(method, *args, **kwargs):
        if evaluated:
            raise KeyboardInterrupt
        evaluated.append(method.name)
        return real(method, *args, **kwargs)

    monkeypatch.setattr(gan_baselines, "evaluate_method", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        gan_baselines.evaluate_all(run, data, methods, progress=False)
    assert evaluated == ["stylex"] and run.dir.joinpath("baselines", "evaluated", "stylex@stylex.pt").exists()

    def counted(method, *args, **kwargs):
        evaluated.append(method.name)
        return real(method, *args, **kwargs)

    evaluated.clear()
    monkeypatch.setattr(gan_baselines, "evaluate_method", counted)
    table, results = gan_baselines.evaluate_all(run, data, methods, progress=False)
    assert evaluated == ["random_coordinates"]  # the first method is read back, not evaluated again
    timing = ["seconds_per_image", "selection_seconds"]
    pd.testing.assert_frame_equal(table.drop(columns=timing), full_table.drop(columns=timing))
    assert list(results) == list(full_results) == ["stylex@stylex", "random_coordinates@stylex"]
    for key, result in results.items():
        for name in ("curve", "selected", "per_image"):
            pd.testing.assert_frame_equal(getattr(result, name), getattr(full_results[key], name))
        assert all(torch.equal(result.top1[k], full_results[key].top1[k].cpu()) for k in full_results[key].top1)
    evaluated.clear()
    gan_baselines.evaluate_all(run, data, methods, progress=False)
    assert evaluated == []  # everything kept
    run.cfg.compare.top_k = 1  # another config never reuses the kept results
    gan_baselines.evaluate_all(run, data, methods, progress=False)
    assert evaluated == ["stylex", "random_coordinates"]
