"""The labelled-attribute oracle (binary label columns read from LPIPS features) and what it says of attributes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from stylexlib.core.config import ConfigError, DataConfig, from_dict
from stylexlib.data import ImageDataset
from stylexlib.evaluate.label_oracle import (LabelOracle, class_columns, fit_label_oracle, fit_logistic_columns,
                                             label_auc_ratio, resolve_attribute_columns, roc_auc)
from stylexlib.evaluate.label_readings import (class_label_correlation, flip_scores, label_reliance, reading_metrics,
                                               reading_notes, summarise_changes)
from stylexlib.gan.losses import load_lpips


def test_roc_auc_matches_scikit_learn_with_ties() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random(300) < 0.2
    scores = np.round(rng.normal(truth * 0.8, 1.0), 1)  # rounded: many ties
    assert roc_auc(truth, scores) == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
    assert roc_auc(truth, -scores) == pytest.approx(1 - roc_auc_score(truth, scores), abs=1e-12)
    assert np.isnan(roc_auc(np.zeros(5, bool), np.arange(5)))


def test_logistic_columns_match_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 6))
    targets = np.stack([(x[:, 0] - x[:, 2] + rng.normal(size=400) > 0), (x[:, 4] + 0.5 * rng.normal(size=400) > 0.3)],
                       1).astype(float)
    targets[:25, 1] = np.nan  # unknown labels are left out of that column's loss only
    ridge = np.array([1e-2, 1e-1])
    weight = fit_logistic_columns(torch.tensor(x), torch.tensor(targets), torch.tensor(ridge)).numpy()
    for k in range(2):
        known = ~np.isnan(targets[:, k])
        # scikit-learn minimises C * sum(log loss) + |w|^2 / 2, ours mean(log loss) + ridge * |w|^2 / 2
        reference = LogisticRegression(C=1 / (ridge[k] * known.sum()), tol=1e-10, max_iter=1000)
        reference.fit(x[known], targets[known, k])
        np.testing.assert_allclose(weight[:-1, k], reference.coef_[0], atol=2e-3)
        assert weight[-1, k] == pytest.approx(reference.intercept_[0], abs=2e-3)


def test_all_columns_leave_out_the_file_split_and_class_columns(tmp_path) -> None:
    csv = tmp_path / "labels.csv"
    pd.DataFrame({"file": ["a.png"], "split": ["train"], "Smiling": [1], "Male": [0], "Eyeglasses": [1]}).to_csv(
        csv, index=False)
    data = ImageDataset(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), torch.tensor([0]), ["x", "y"],
                        np.array(["train"]), files=["a.png"], info={"labels_csv": str(csv)})
    cfg = DataConfig(source="folder", labels_csv="labels.csv", split_column="split",
                     label_queries={"not smiling": "Smiling == 0", "smiling": "Smiling == 1"})
    assert class_columns(cfg, ["file", "split", "Smiling", "Male", "Eyeglasses"]) == ["Smiling"]
    assert resolve_attribute_columns("all", cfg, data) == ["Male", "Eyeglasses"]
    assert resolve_attribute_columns(["Male"], cfg, data) == ["Male"]
    labelled = DataConfig(source="folder", labels_csv="labels.csv", label_column="Male")
    assert resolve_attribute_columns("all", labelled, data) == ["split", "Smiling", "Eyeglasses"]
    assert from_dict({"evaluate": {"attribute_columns": "all"}}).evaluate.attribute_columns == "all"
    with pytest.raises(ConfigError, match="attribute_columns.*'all'"):
        from_dict({"evaluate": {"attribute_columns": "Male"}})


def _striped_faces(count: int, seed: int = 0) -> tuple[torch.Tensor, pd.DataFrame]:
    """Noise images where column ``bar`` draws a white bar across the top and ``coin`` is drawn at random."""
    rng = np.random.default_rng(seed)
    images = rng.integers(40, 160, (count, 3, 32, 32)).astype(np.uint8)
    table = pd.DataFrame({"bar": rng.random(count) < 0.4, "coin": rng.random(count) < 0.5}).astype(int)
    images[table["bar"].to_numpy().astype(bool), :, 4:9, :] = 250
    return torch.from_numpy(images), table


def test_oracle_trusts_a_visible_label_and_not_a_coin_flip(tmp_path) -> None:
    images, table = _striped_faces(240)
    files = [f"{i}.png" for i in range(240)]
    table.assign(file=files).to_csv(tmp_path / "labels.csv", index=False)
    split = np.array(["train"] * 160 + ["test"] * 80)
    data = ImageDataset(images, torch.zeros(240, dtype=torch.long), ["x", "y"], split, files=files,
                        info={"labels_csv": str(tmp_path / "labels.csv")})
    lpips_model = load_lpips("squeeze", "cpu")
    oracle = fit_label_oracle(data, lpips_model, ["bar", "coin"], [], test_images=80)
    assert oracle.auc["bar"] > 0.95 and 0.3 < oracle.auc["coin"] < 0.7 and oracle.trusted == ["bar"]
    again = LabelOracle.from_dict(oracle.to_dict())
    test = torch.as_tensor(np.flatnonzero(split == "test"))
    x = images[test].float() / 127.5 - 1
    truth = table.iloc[test.numpy()].reset_index(drop=True)
    ratio, scores = label_auc_ratio(again, lpips_model, x, x, truth)
    assert ratio == pytest.approx(1.0) and list(scores["column"]) == ["bar"]
    barless = x.clone()
    barless[:, :, 4:9, :] = x[:, :, 12:17, :]  # reconstructions that lose the bar
    lost_ratio, lost = label_auc_ratio(again, lpips_model, x, barless, truth)
    assert lost_ratio < 0.75 and lost["mean_reconstruction"][0] < 0.5 * lost["mean_original"][0]
    bars = truth["bar"].to_numpy() == 1
    assert scores["mean_original"][0] == pytest.approx(float(again.read(lpips_model, x[bars])[:, 0].mean()), abs=1e-5)


def test_main_label_leaves_out_the_class_and_mnac_counts_changes() -> None:
    changes = pd.DataFrame({"column": ["Smiling", "Eyeglasses", "Mouth_Slightly_Open", "Male"],
                            "before": [0.2, 0.1, 0.3, 0.5], "after": [0.9, 0.5, 0.1, 0.55],
                            "change": [0.7, 0.4, -0.2, 0.05], "pairs_changed": [1.0, 0.8, 0.6, 0.1]})
    summary = summarise_changes(changes, ["Smiling"])
    assert summary["main_label"] == "Eyeglasses" and summary["main_change"] == pytest.approx(0.4)
    assert summary["second_label"] == "Mouth_Slightly_Open" and summary["mnac"] == 2
    assert summary["class_change"] == pytest.approx(0.7)
    rows = [{"class": c, "rank": r, "attribute": f"{c}{r}", "main_label": label, "main_change": change, "mnac": m,
             "class_change": 0.5, "second_label": "", "second_change": float("nan")}
            for c, r, label, change, m in [("a", 1, "Eyeglasses", 0.4, 2), ("a", 2, "Eyeglasses", -0.2, 4),
                                           ("a", 3, "Bangs", 0.3, 1), ("b", 1, "Male", 0.1, 0),
                                           ("b", 2, "Bald", 0.2, 1), ("b", 6, "Goatee", 0.9, 9)]]
    metrics = reading_metrics(pd.DataFrame(rows), top=5)
    assert metrics["attr_distinct_labels_top5"] == 2  # class a: Eyeglasses, Bangs; b: Male, Bald (rank 6 not shown)
    assert metrics["attr_main_label_change_top5"] == pytest.approx(np.mean([0.4, 0.2, 0.3, 0.1, 0.2]))
    assert metrics["attr_mnac_top5"] == pytest.approx(np.mean([2, 4, 1, 0, 1]))
    assert reading_notes(pd.DataFrame(rows))["a1"] == "main label: Eyeglasses +0.40; MNAC 2"


def test_a_label_the_attributes_follow_beyond_the_data_leads_the_reliance_table() -> None:
    readings = pd.DataFrame({"attribute": ["c0_r01", "c0_r02", "c1_r01", "c1_r02"], "class": ["no", "no", "yes", "yes"],
                             "rank": [1, 2, 1, 2]})
    change = {"Mouth_Slightly_Open": [-0.5, -0.1, 0.6, 0.1],  # follows the class, as the data does
              "Eyeglasses": [-0.05, -0.4, 0.1, 0.45],  # follows the class, which the data does not
              "Blurry": [0.3, 0.0, 0.3, 0.0]}  # every edit blurs: an artefact, not a direction
    changes = pd.DataFrame([{"attribute": a, "class": c, "rank": r, "column": column, "change": v}
                            for column, values in change.items()
                            for a, c, r, v in zip(readings["attribute"], readings["class"], readings["rank"], values)])
    rng = np.random.default_rng(0)
    classes = rng.random(2000) < 0.5
    labels = pd.DataFrame({"Mouth_Slightly_Open": (classes & (rng.random(2000) < 0.9)) | (rng.random(2000) < 0.1),
                           "Eyeglasses": rng.random(2000) < 0.07, "Blurry": rng.random(2000) < 0.05}).astype(int)
    correlation = class_label_correlation(labels, classes.astype(int))
    assert correlation["Mouth_Slightly_Open"] > 0.7 and abs(correlation["Eyeglasses"]) < 0.1
    table = label_reliance(changes, readings, ["no", "yes"], correlation, top=3).set_index("column")
    assert list(table.index) == ["Eyeglasses", "Blurry", "Mouth_Slightly_Open"]
    assert table.loc["Eyeglasses", "toward_no"] == pytest.approx(-0.4)
    assert table.loc["Eyeglasses", ["rank_no", "rank_yes"]].tolist() == [2, 2]  # which attribute: the #2s
    assert table.loc["Mouth_Slightly_Open", ["rank_no", "rank_yes"]].tolist() == [1, 1]
    assert table.loc["Eyeglasses", "follows"] == pytest.approx(0.425) and table.loc["Blurry", "follows"] == 0


def test_flip_scores_count_flips_and_the_correlation_difference_as_ace() -> None:
    rng = np.random.default_rng(3)
    before = rng.random((50, 3))
    after = before.copy()
    after[:30, 0] = 1 - before[:30, 0]  # the class column flips on 30 images
    after[:20, 1] = 1 - before[:20, 1]  # "lips" flips with it on 20 of them
    scores = flip_scores(before, after, ["Smiling", "lips", "hat"], ["Smiling"], {"lips": 0.4, "hat": -0.1})
    flips = (after > 0.5).astype(float) - (before > 0.5).astype(float)
    assert scores["label_mnac"] == pytest.approx(np.abs(flips[:, 1:]).sum(1).mean())
    expected = abs(np.corrcoef(flips[:, 1], flips[:, 0])[0, 1] - 0.4) + abs(0 - (-0.1))  # hat never flips: 0
    assert scores["label_cd"] == pytest.approx(expected)
    assert "label_cd" not in flip_scores(before, after, ["Smiling", "lips", "hat"], [])


def _reddish_data(tmp_path, count: int = 360, seed: int = 0) -> tuple[ImageDataset, pd.DataFrame]:
    """16 px noise images in train / val / test: ``red`` is 1 when the red channel is raised (unknown on a tenth of
    the rows), ``coin`` is drawn at random; the class column ``Smiling`` equals ``red``."""
    rng = np.random.default_rng(seed)
    images = rng.integers(30, 200, (count, 3, 16, 16)).astype(np.int64)
    red = rng.random(count) < 0.4
    images[red, 0] += 45
    table = pd.DataFrame({"file": [f"{i}.png" for i in range(count)], "coin": (rng.random(count) < 0.5).astype(int),
                          "red": red.astype(float), "Smiling": red.astype(int)})
    table.loc[rng.random(count) < 0.1, "red"] = np.nan
    table.to_csv(tmp_path / "labels.csv", index=False)
    split = np.array(["train"] * (count // 2) + ["val"] * (count // 4) + ["test"] * (count - count // 2 - count // 4))
    data = ImageDataset(torch.from_numpy(images.clip(0, 255).astype(np.uint8)), torch.from_numpy(red.astype(int)),
                        ["x", "y"], split, files=list(table["file"]), info={"labels_csv": str(tmp_path / "labels.csv")})
    return data, table


TINY_CNN = {"width": 8, "epochs": 6, "patience": 6, "batch_size": 32, "lr": 1e-2}


def test_cnn_oracle_learns_a_planted_label_and_distrusts_a_coin_flip(tmp_path) -> None:
    from stylexlib.evaluate.cnn_oracle import CNNLabelOracle, column_aucs, fit_cnn_oracle, predict_logits

    data, table = _reddish_data(tmp_path)
    oracle = fit_cnn_oracle(data, ["coin", "red"], ["Smiling"], seed=0, **TINY_CNN)
    assert oracle.columns == ["coin", "red", "Smiling"] and oracle.class_columns == ["Smiling"]
    assert oracle.auc["red"] > 0.9 and 0.3 < oracle.auc["coin"] < 0.7 and oracle.trusted == ["red", "Smiling"]
    assert "coin" in oracle.probes and list(oracle.table()["trusted"]) == [False, True, True]
    assert oracle.positive_rate["red"] == pytest.approx(table["red"].iloc[:180].mean())  # unknown rows left out
    val = torch.as_tensor(data.indices("val"))
    kept = column_aucs(table[oracle.columns].to_numpy(float)[val.numpy()], predict_logits(oracle.model,
                       data.images[val]).numpy(), oracle.columns)
    scores = [h["val_mean_auc"] for h in oracle.history]
    assert np.mean(list(kept.values())) == pytest.approx(max(scores)) and scores[-1] < max(scores)  # the best epoch
    assert oracle.seconds > 0
    test = torch.as_tensor(data.indices("test"))
    x = data.images[test].float() / 127.5 - 1
    read = oracle.read(None, x)
    assert read.shape == (len(test), 2) and read.device.type == "cpu"
    truth = data.labels[test].bool()
    assert read[truth, 0].mean() > read[~truth, 0].mean() + 0.3  # the trusted column it reads first is red
    assert roc_auc(truth.numpy(), read[:, 0].numpy()) > 0.9
    again = CNNLabelOracle.from_dict(oracle.to_dict())  # plain tensors: loads with weights_only
    torch.testing.assert_close(again.read(None, x), read)
    ratio, _ = label_auc_ratio(again, None, x, x, table.iloc[test.numpy()].reset_index(drop=True))
    assert ratio == pytest.approx(1.0)


def test_masked_bce_leaves_unknown_labels_out() -> None:
    from stylexlib.evaluate.cnn_oracle import masked_bce

    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0], [-2.0, 0.0]])
    targets = torch.tensor([[1.0, float("nan")], [0.0, 1.0], [float("nan"), 0.0]])
    known = ~targets.isnan()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[known], targets[known])
    assert masked_bce(logits, targets) == pytest.approx(float(expected))
    assert torch.isfinite(masked_bce(logits, torch.full_like(logits, float("nan"))))


def test_run_label_oracle_caches_the_cnn_apart_from_the_probes_and_refits_on_new_settings(tmp_path,
                                                                                         monkeypatch) -> None:
    from stylexlib.core.run import Run
    from stylexlib.evaluate import cnn_oracle, label_oracle

    data, _ = _reddish_data(tmp_path)
    cfg = from_dict({"data": {"source": "folder", "root": str(tmp_path / "absent"), "labels_csv": "labels.csv",
                              "label_queries": {"x": "Smiling == 0", "y": "Smiling == 1"}},
                     "evaluate": {"attribute_columns": "all", "oracle": "cnn"}})
    run = Run(tmp_path / "run", cfg)
    monkeypatch.setattr(label_oracle, "CNN_SETTINGS", {**cnn_oracle.CNN_SETTINGS, **TINY_CNN})
    fits = []
    monkeypatch.setattr(label_oracle, "fit_cnn_oracle",
                        lambda *a, **k: fits.append(k) or cnn_oracle.fit_cnn_oracle(*a, **k))
    first = label_oracle.run_label_oracle(run, data, None)
    assert isinstance(first, cnn_oracle.CNNLabelOracle) and len(fits) == 1 and fits[0]["width"] == 8
    assert (run.dir / "evaluate" / "label_oracle_cnn.pt").exists()
    assert not (run.dir / "evaluate" / "label_oracle.pt").exists()  # the probes' cache is another file
    assert pd.read_csv(run.dir / "evaluate" / "label_oracle_cnn.csv")["column"].tolist() == ["coin", "red", "Smiling"]
    assert run.metrics["oracle_columns"] == 3 and run.metrics["oracle_columns_trusted"] == 1  # red (Smiling: class)
    x = data.images[:20].float() / 127.5 - 1
    second = label_oracle.run_label_oracle(run, data, None)  # from the cache
    assert len(fits) == 1
    torch.testing.assert_close(second.read(None, x), first.read(None, x))
    monkeypatch.setattr(label_oracle, "CNN_SETTINGS", {**label_oracle.CNN_SETTINGS, "epochs": 2})
    label_oracle.run_label_oracle(run, data, None)  # other settings: trained again
    assert len(fits) == 2 and fits[1]["epochs"] == 2


def test_the_oracle_kind_is_a_validated_config_key() -> None:
    import inspect

    from stylexlib.evaluate.cnn_oracle import CNN_SETTINGS, fit_cnn_oracle

    assert from_dict({}).evaluate.oracle == "probes"
    assert from_dict({"evaluate": {"oracle": "cnn"}}).evaluate.oracle == "cnn"
    with pytest.raises(ConfigError, match="evaluate.oracle"):
        from_dict({"evaluate": {"oracle": "resnet"}})
    defaults = {k: p.default for k, p in inspect.signature(fit_cnn_oracle).parameters.items()}
    assert {k: defaults[k] for k in CNN_SETTINGS} == CNN_SETTINGS  # the library default is what a run trains


def test_the_cnn_oracle_is_trained_once_per_data_set_and_copied_into_each_run(tmp_path, monkeypatch) -> None:
    """The CNN oracle depends on the data, the columns and its settings only (~14 CPU-minutes per CelebA run): a
    second run folder on the same data reads it from the cache folder and keeps its own copy; other columns or
    settings train it again."""
    from stylexlib.core.run import Run
    from stylexlib.evaluate import cnn_oracle, label_oracle

    monkeypatch.setenv("STYLEX_CACHE", str(tmp_path / "cache"))
    (tmp_path / "data").mkdir()
    data, _ = _reddish_data(tmp_path / "data")

    def run(name: str, columns="all") -> Run:
        return Run(tmp_path / name, from_dict({
            "data": {"source": "folder", "root": str(tmp_path / "data"), "labels_csv": "labels.csv",
                     "label_queries": {"x": "Smiling == 0", "y": "Smiling == 1"}},
            "evaluate": {"attribute_columns": columns, "oracle": "cnn"}}))

    monkeypatch.setattr(label_oracle, "CNN_SETTINGS", {**cnn_oracle.CNN_SETTINGS, **TINY_CNN, "epochs": 2})
    fits = []
    monkeypatch.setattr(label_oracle, "fit_cnn_oracle",
                        lambda *a, **k: fits.append(k) or cnn_oracle.fit_cnn_oracle(*a, **k))
    first = label_oracle.run_label_oracle(run("first"), data, None)
    second = label_oracle.run_label_oracle(run("second"), data, None)
    assert len(fits) == 1  # the second run on the same data did not train it again
    assert (tmp_path / "second" / "evaluate" / "label_oracle_cnn.pt").exists()  # the run keeps its own copy
    x = data.images[:20].float() / 127.5 - 1
    torch.testing.assert_close(second.read(None, x), first.read(None, x))
    assert len(list((tmp_path / "cache" / "label-oracles").glob("*.pt"))) == 1
    label_oracle.run_label_oracle(run("columns", ["red"]), data, None)  # other columns: trained again
    assert len(fits) == 2
    monkeypatch.setattr(label_oracle, "CNN_SETTINGS", {**label_oracle.CNN_SETTINGS, "epochs": 1})
    label_oracle.run_label_oracle(run("settings"), data, None)  # other settings: trained again
    assert len(fits) == 3
    label_oracle.run_label_oracle(run("again"), data, None)
    assert len(fits) == 3
