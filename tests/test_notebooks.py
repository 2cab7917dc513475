"""Committed notebooks are clean, and every stage runs end to end at tiny sizes."""
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest
import torch

from stylexlib.core.io import read_json, torch_load
from stylexlib.evaluate.gan_baselines import baseline_explainer
from stylexlib.pipeline import cli
from stylexlib.pipeline.runner import discover_stages, run_pipeline
from test_benchmarks import load_benchmark

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_notebooks_say_what_they_do_in_the_order_a_person_reads() -> None:
    """08 counts the methods it runs; 07 warns before it shows any answer; 03 and 05 say they are long."""
    from stylexlib.explain import METHODS

    first = {p.stem[:2]: nbformat.read(p, as_version=4).cells for p in NOTEBOOKS}
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
    assert f"The {words[len(METHODS)]} saliency methods" in first["08"][0].source
    study = [cell.source for cell in first["07"]]
    warning = next(i for i, source in enumerate(study) if "never run the study in it" in source)
    assert warning < min(i for i, source in enumerate(study) if "answer" in source and "print(" in source)
    assert "60 minutes" in first["03"][0].source and "an hour" in first["05"][0].source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs: clear them"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    assert "run_dir" in tagged[0].source
    assignments = [line for line in tagged[0].source.splitlines() if line.strip() and not line.startswith("#")]
    parsed = papermill.inspect_notebook(str(path))
    assert len(parsed) == len(assignments), f"{path.name}: papermill cannot parse every parameter line"


def test_every_stage_runs_on_tiny_config(tmp_path: Path) -> None:
    run = run_pipeline(REPO / "configs" / "tiny.yaml", out=tmp_path / "tiny", progress=False)
    state = read_json(run / "stages.json")
    assert [name for name, s in state.items() if s["status"] == "done"] == [s.name for s in discover_stages()]
    metrics = read_json(run / "metrics.json")
    assert metrics["data_num_images"] == 240 and 0 <= metrics["classifier_val_accuracy"] <= 1
    assert (run / "figures" / "data_examples.png").exists() and (run / "classifier.pt").exists()
    assert metrics["stylex_steps"] == 4 and metrics["stylex_train_seconds"] > 0 and metrics["stylex_images_per_second"] > 0
    assert 0 <= metrics["encoder_recon_consistency"] <= 1 and metrics["encoder_recon_l1"] > 0  # stage 03: E(x) alone
    assert 0 <= metrics["recon_consistency"] <= 1 and metrics["recon_lpips"] > 0  # stage 04: the inversion stages use
    assert (run / "checkpoints" / "stylex.pt").exists() and (run / "figures" / "stylex_losses.png").exists()
    assert (run / "figures" / "reconstructions_000004.png").exists() and (run / "figures" / "samples_000004.png").exists()
    assert 0 <= metrics["inversion_consistency"] <= 1 and metrics["inversion_refined_lpips"] > 0
    assert (run / "inversion" / "reconstruction.csv").exists() and (run / "figures" / "inversion_pairs.png").exists()
    assert (run / "inversion" / "factor_scores.csv").exists() and 0 <= metrics["inversion_factor_hat"] <= 1
    assert 0 <= metrics["flip_rate_top1"] <= 1 and metrics["attfind_seconds_per_image"] > 0
    assert metrics["class_pathway_coordinates"] >= 1 and 0 <= metrics["attributes_on_class_pathway_top5"] <= 1
    for name in ("attributes.csv", "image_attributes.csv", "sufficiency.csv", "effects.pt"):
        assert (run / "attfind" / name).exists(), name
    assert (run / "figures" / "attfind_summary.png").exists()
    assert (run / "gallery" / "index.html").exists() and (run / "figures" / "gallery_screenshot.png").exists()
    assert metrics["widget_update_seconds"] > 0 and metrics["gallery_num_attributes"] > 0
    assert (run / "attfind" / "coordinate_factors.csv").exists() and (run / "figures" / "factor_map.png").exists()
    assert metrics["factor_label_factor_random"] > 0 and metrics["factor_spurious_factor_enrichment"] > 0
    assert metrics["study_classification_questions"] > 0 and metrics["study_match_questions"] > 0
    assert (run / "study" / "classification" / "answer_key.csv").exists()
    assert 0 <= metrics["study_simulated_accuracy"] <= 1
    assert metrics["attributes_invisible"] >= 0 and (run / "attfind" / "attribute_visibility.csv").exists()
    assert "LPIPS" in (run / "gallery" / "index.html").read_text()
    assert metrics["truth_mouth_curve_mean_lpips"] > 0 and metrics["truth_glasses_mean_prob_change"] >= 0
    assert "own changes: mouth_curve" in (run / "gallery" / "index.html").read_text()  # the yardstick in the subtitle
    methods = pd.read_csv(run / "benchmark" / "methods.csv")  # stage 08's explainers, then stage 09's baselines
    expected = {"occlusion", "loo_superpixels", "gradient", "guided_backprop", "gradcam", "guided_gradcam",
                "smoothgrad", "integrated_gradients", "blur_ig", "stylex", "wu_attfind", "wu_positives",
                "voynov_babenko", "ganspace", "sefa", "random_directions", "random_coordinates", "constant_guess"}
    assert set(methods["method"]) == expected and (methods["method"] == "stylex").sum() == 1
    gan_rows = methods[methods["family"].isin(["attribute", "direction"])]
    assert set(gan_rows["gan"]) == {"stylex", "plain"} and gan_rows["flip_rate_top1"].between(0, 1).all()
    assert (gan_rows["logodds_per_lpips"].notna()).all() and (gan_rows["kid_lpips_squeeze"] > -1).all()
    assert gan_rows["cout"].between(-1, 1).all() and (gan_rows["realism"] == gan_rows["kid_lpips_squeeze"]).all()
    paired = pd.read_csv(run / "benchmark" / "paired.csv")  # StylEx minus each stage-08 method, per score
    assert set(paired["method"]) == set(methods.loc[methods["family"].isin(["saliency", "baseline"]), "method"])
    finite = paired.dropna(subset=["difference"])
    assert len(finite) and (finite["low"] <= finite["high"]).all()
    paired_gan = pd.read_csv(run / "benchmark" / "paired_gan.csv")  # StylEx minus each GAN baseline, per image
    assert list(paired_gan.columns) == ["task", "reference", "method", "gan", "score", "images", "reference_images",
                                        "method_images", "evaluated", "difference", "low", "high"]
    others = gan_rows[~((gan_rows["method"] == "stylex") & (gan_rows["gan"] == "stylex"))]
    assert set(zip(paired_gan["method"], paired_gan["gan"])) == set(zip(others["method"], others["gan"]))
    assert {"flip_rate_top1", "logodds_change", "lpips", "logodds_per_lpips", "cout"} <= set(paired_gan["score"])
    assert not paired_gan["score"].str.contains("kid").any()  # aggregate scores have no per-image values
    assert (paired_gan["images"] <= paired_gan[["reference_images", "method_images"]].min(axis=1)).all()
    finite = paired_gan.dropna(subset=["difference"])
    assert len(finite) and (finite["low"] <= finite["high"]).all()
    assert (run / "baselines" / "plain_gan" / "checkpoints" / "stylex.pt").exists()
    assert (run / "figures" / "sufficiency_all.png").exists() and (run / "figures" / "voynov_babenko_plain.png").exists()
    assert 0 <= metrics["gan_wu_attfind_plain_flip_rate_top1"] <= 1 and metrics["gan_stylex_stylex_realism"] > -1
    sefa = baseline_explainer(str(run), "sefa", gan="plain")  # a baseline from the run folder, as users call it
    explained = sefa.attribute(torch.rand(2, 3, 16, 16) * 2 - 1, k=2).to_dataframe()
    assert len(explained) == 4 and set(explained["direction"]) <= {"up", "down"}
    combined = tmp_path / "combined.csv"  # make compare's last step: one table over the tasks' run folders
    assert cli.main(["combine", str(combined), str(run), str(run)]) == 0
    assert len(pd.read_csv(combined)) == 2 * len(methods)
    assert cli.main(["combine", str(combined), str(run), str(run), "--table", "paired_gan.csv"]) == 0
    assert len(pd.read_csv(combined)) == 2 * len(paired_gan)

    # --force with a changed config retrains (it resumed the old model, or crashed, before provenance)
    tiny = REPO / "configs" / "tiny.yaml"
    before = (run / "classifier.pt").read_bytes()
    run_pipeline(tiny, ["classifier.lr=0.01"], out=run, only=["02"], force=True, progress=False)
    assert (run / "classifier.pt").read_bytes() != before
    assert not (run / "checkpoints" / "stylex.pt").exists()  # downstream invalidated with it
    state = read_json(run / "stages.json")
    assert state["02_classifier"]["status"] == "done" and not any(name[:2] > "02" for name in state)  # later: stale
    run_pipeline(tiny, ["classifier.epochs=2", "classifier.width=6"], out=run, only=["02"], force=True, progress=False)
    payload = torch_load(run / "classifier.pt")
    assert len(payload["history"]) == 2 and payload["arch"]["width"] == 6


class DarkVsBright(torch.nn.Module):
    """A user's classifier: output 0 is 'dark', output 1 is 'bright' (not the data's sorted order bright, dark)."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold  # mean brightness in [-1, 1], the range a user model gets without mean/std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x.mean(dim=(1, 2, 3)) - self.threshold) * 20
        return torch.stack([-score, score], dim=1)


SHARED_CELEBA = REPO.parent / "shared" / "data" / "celeba"


def test_every_default_stage_and_explain_run_on_real_photographs_with_a_users_torchscript_classifier(
        tmp_path: Path, monkeypatch, capsys) -> None:
    """A new user's path end to end: 48 real photographs (CelebA, ../shared) in a folder with a labels CSV and splits,
    a TorchScript classifier named by a path relative to the config (no module Grad-CAM can hook), classes in the
    model's unsorted order; every stage `stylex run` runs by default (01-08; 09 is off), then `stylex explain` on a
    folder of photographs."""
    import numpy as np
    import yaml
    from PIL import Image

    if not SHARED_CELEBA.exists():
        pytest.skip(f"{SHARED_CELEBA} not found: CI clones beside ../shared")
    project = tmp_path / "project"
    (project / "images").mkdir(parents=True)
    (project / "models").mkdir()
    rng = np.random.default_rng(0)
    photos = []
    for i, path in enumerate(sorted((SHARED_CELEBA / "images").iterdir())[:48]):
        pixels = np.array(Image.open(path).convert("RGB").resize((16, 16), Image.BILINEAR))
        if i % 4 < 2:  # a two-valued labelled attribute beside the class (the oracle reads it): a white bar on top
            pixels[1:4] = 255
        photos.append(pixels)
    brightness = np.array([p.mean() / 127.5 - 1 for p in photos])
    threshold = float(np.median(brightness))  # the classifier's border: half the photographs on each side
    rows = ["file,label,split,redness,bar"]  # and a number (the probes read it)
    for n, i in enumerate(rng.permutation(48)):
        label = "bright" if brightness[i] > threshold else "dark"
        Image.fromarray(photos[i]).save(project / "images" / f"{n:02d}.png")
        split = "train" if n < 32 else "val" if n < 40 else "test"
        rows.append(f"{n:02d}.png,{label},{split},{photos[i][..., 0].mean():.1f},{int(i % 4 < 2)}")
    (project / "images" / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.warns(FutureWarning):
        torch.jit.script(DarkVsBright(threshold)).save(str(project / "models" / "dark_vs_bright.ts"))
    tiny = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    config = {"name": "folder_smoke",
              "data": {"source": "folder", "root": "images", "labels_csv": "labels.csv", "label_column": "label",
                       "split_column": "split", "resolution": 16},
              "classifier": {"source": "models/dark_vs_bright.ts", "class_names": ["dark", "bright"]},
              "stylex": {**tiny["stylex"], "steps": 2, "sample_every": 2, "checkpoint_every": 2,
                         "encoder_fit_minutes": 0.02},  # folder data: the real preset, with a second of encoder fit
              "inversion": {"num_images": 8, "refine_images": 1, "refine_steps": 2},
              "attfind": {"num_images": 4, "stats_images": 16, "top_k": 2, "sufficiency_k": 2, "random_trials": 1,
                          "examples_per_attribute": 2, "drop_inconsistent": False},
              "evaluate": {"attribute_columns": "all"}}
    (project / "smoke.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)  # not the config's folder: the relative paths resolve against the config file
    run = tmp_path / "run"
    assert cli.main(["run", str(project / "smoke.yaml"), "--out", str(run), "-p", "num_images=8",
                     "-p", "direction_columns=[bar, redness]"]) == 0  # redness: a number, no direction
    state = read_json(run / "stages.json")
    assert all(state[s.name]["status"] == "done" for s in discover_stages() if s.number <= "08")
    assert "09_gan_baselines" not in state and "skip 09_gan_baselines: compare.gan_baselines is off" in capsys.readouterr().out
    metrics = read_json(run / "metrics.json")
    assert metrics["classifier_val_accuracy"] == 1.0 and metrics["classifier_test_accuracy"] == 1.0  # order applied
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["classifier"]["source"] == str(project / "models" / "dark_vs_bright.ts")
    from stylexlib.core.run import open_run
    from stylexlib.data import load_dataset

    data = load_dataset(open_run(run).cfg.data)
    assert data.class_names == ["bright", "dark"] and [(data.split == s).sum() for s in ("train", "val", "test")] == [32, 8, 8]
    assert (run / "attfind" / "attribute_names.csv").exists() and (run / "gallery" / "index.html").exists()
    assert {"orig_attr_redness", "recon_attr_redness"} <= set(metrics)  # stage 04's probes, then stage 06's readings
    oracle = pd.read_csv(run / "evaluate" / "label_oracle.csv").set_index("column")
    assert list(oracle.index) == ["bar", "label"] and oracle.loc["bar", "trusted"] and oracle.loc["label", "class_column"]
    assert metrics["oracle_columns_trusted"] == 1 and 0 < metrics["recon_label_auc_ratio"] <= 1.5
    assert {"recon_consistency_encoder", "recon_consistency_no_kl", "attr_mnac_top5"} <= set(metrics)
    readings = pd.read_csv(run / "attfind" / "attribute_readings.csv")
    assert set(readings["main_label"]) == {"bar"} and set(readings["rank"]) == {1, 2}
    assert set(readings["attribute"]) == {f"c{c}_r{r:02d}" for c in (0, 1) for r in (1, 2)}
    probe_readings = pd.read_csv(run / "attfind" / "attribute_probe_readings.csv")
    assert set(probe_readings["column"]) == {"redness"}
    assert (run / "figures" / "attribute_labels.png").exists()
    assert list(pd.read_csv(run / "attfind" / "label_reliance.csv")["column"]) == ["bar"]  # the class's own left out
    slices = pd.read_csv(run / "attfind" / "label_slices.csv")
    assert slices.empty and "kept" in slices  # 8 test images: too few with and without "bar"; stage 04's table read
    assert {"mean_original", "mean_reconstruction"} <= set(pd.read_csv(run / "inversion" / "label_auc.csv"))
    assert metrics["label_slice_shortcut"] == "none"
    directions = pd.read_csv(run / "attfind" / "label_directions.csv")  # asked for: bar drawn on and taken off
    assert list(directions["edit"]) == ["add", "remove"] and set(directions["column"]) == {"bar"}
    assert metrics["label_direction_column"] == "bar"
    identities = sorted(p.name for p in (run / "inversions").iterdir())
    route = load_benchmark("reconstruction_route").route(str(run), "bar", "label", per_group=2, refinements=[(2, 0.5)])
    assert set(route.index.get_level_values("image")) == {"original", "E(x)", "refined", "refined 2@0.5"}
    originals = route.xs("original", level="image")["oracle bar"]  # the trusted oracle reads the bar on the photographs
    assert originals.xs(1, level="bar").min() > originals.xs(0, level="bar").max()
    distance = route["lpips"].groupby(level="image").mean()
    assert distance["original"] < 1e-6 < distance["refined 2@0.5"] and distance["refined 2@0.5"] != distance["refined"]
    assert sorted(p.name for p in (run / "inversions").iterdir()) == identities  # other settings: no store of their own
    page = (run / "gallery" / "index.html").read_text()
    assert "read by the probes: main label: bar " in page and "; redness " in page  # the oracle's, then the probes'

    assert saved["stylex"]["preset"] == "real" and "E_fit" in torch.load(run / "checkpoints" / "stylex.pt",
                                                                        weights_only=True)
    methods = set(pd.read_csv(run / "benchmark" / "methods.csv")["method"])  # stage 08 without Grad-CAM's hooks
    assert "stylex" in methods and "integrated_gradients" in methods and not methods & {"gradcam", "guided_gradcam"}
    assert (run / "study" / "index.html").exists() and (run / "figures" / "compare_maps.png").exists()

    labels = pd.read_csv(project / "images" / "labels.csv").set_index("file")["label"]
    folder = tmp_path / "to_explain"
    (folder / "nested").mkdir(parents=True)
    shown = {"00.png": folder / "00.png", "01.png": folder / "nested" / "01.png"}  # explain finds nested files too
    for name, copy in shown.items():
        copy.write_bytes((project / "images" / name).read_bytes())
    out = tmp_path / "explained"
    assert cli.main(["explain", str(run), str(folder), "--out", str(out), "-k", "2", "--target", "bright"]) == 0
    table = pd.read_csv(out / "attributes.csv").groupby("file").first()
    assert sorted(table.index) == sorted(str(copy) for copy in shown.values())
    for name, copy in shown.items():  # the user's model, classes in its order: p(bright) high only on bright ones
        assert (table.loc[str(copy), "p_input"] > 0.5) == (labels[name] == "bright")
