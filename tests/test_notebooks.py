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

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


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
    assert 0 <= metrics["recon_consistency"] <= 1 and metrics["recon_lpips"] > 0 and metrics["recon_l1"] > 0
    assert (run / "checkpoints" / "stylex.pt").exists() and (run / "figures" / "stylex_losses.png").exists()
    assert (run / "figures" / "reconstructions_000004.png").exists() and (run / "figures" / "samples_000004.png").exists()
    assert 0 <= metrics["inversion_consistency"] <= 1 and metrics["inversion_refined_lpips"] > 0
    assert (run / "inversion" / "reconstruction.csv").exists() and (run / "figures" / "inversion_pairs.png").exists()
    assert (run / "inversion" / "factor_scores.csv").exists() and 0 <= metrics["inversion_factor_hat"] <= 1
    assert 0 <= metrics["flip_rate_top1"] <= 1 and metrics["attfind_seconds_per_image"] > 0
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
    assert (run / "baselines" / "plain_gan" / "checkpoints" / "stylex.pt").exists()
    assert (run / "figures" / "sufficiency_all.png").exists() and (run / "figures" / "voynov_babenko_plain.png").exists()
    assert 0 <= metrics["gan_wu_attfind_plain_flip_rate_top1"] <= 1 and metrics["gan_stylex_stylex_realism"] > -1
    sefa = baseline_explainer(str(run), "sefa", gan="plain")  # a baseline from the run folder, as users call it
    explained = sefa.attribute(torch.rand(2, 3, 16, 16) * 2 - 1, k=2).to_dataframe()
    assert len(explained) == 4 and set(explained["direction"]) <= {"up", "down"}
    combined = tmp_path / "combined.csv"  # make compare's last step: one table over the tasks' run folders
    assert cli.main(["combine", str(combined), str(run), str(run)]) == 0
    assert len(pd.read_csv(combined)) == 2 * len(methods)

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
