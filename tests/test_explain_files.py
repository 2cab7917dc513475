"""StylEx on the user's image files: StylEx.from_run, load_images (the one decoder) and `stylex explain`."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from stylexlib.classifier.training import fit_run_classifier
from stylexlib.core.run import open_run
from stylexlib.data import DataError, load_dataset
from stylexlib.data.files import load_images
from stylexlib.data.folder import decode_image
from stylexlib.explain import StylEx
from stylexlib.explain.attfind.search import run_statistics
from stylexlib.gan.models import load_stylex
from stylexlib.gan.training import train_stylex
from stylexlib.pipeline.cli import main
from stylexlib.report.explain_files import unexplained_files

TINY = ["data.num_images=120", "data.resolution=16", "classifier.width=4", "classifier.epochs=1",
        "classifier.batch_size=32", "stylex.latent_dim=8", "stylex.mapping_layers=1", "stylex.channel_base=64",
        "stylex.channel_max=8", "stylex.batch_size=4", "stylex.steps=2", "stylex.sample_every=0",
        "stylex.checkpoint_every=0", "stylex.device=cpu", "stylex.log_every=1", "attfind.stats_images=16",
        "attfind.num_images=4", "attfind.top_k=2", "attfind.sufficiency_k=2", "attfind.random_trials=1",
        "attfind.drop_inconsistent=false"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder with stages 02, 03 and 05's statistics done at toy sizes (what from_run needs)."""
    run = open_run(tmp_path_factory.mktemp("run") / "run", None, TINY)
    data = load_dataset(run.cfg.data)
    fit_run_classifier(run, data)
    train_stylex(run, data, progress=False)
    run_statistics(run, data, load_stylex(run, "cpu", data), run.cfg.attfind)
    return run.dir


@pytest.fixture
def pictures(tmp_path: Path) -> Path:
    folder = tmp_path / "pictures"
    folder.mkdir()
    Image.new("RGB", (40, 30), (220, 30, 30)).save(folder / "red.png")  # not square: centre-cropped
    Image.new("RGB", (20, 20), (30, 30, 220)).save(folder / "blue.jpg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_load_images_decodes_files_and_folders_like_the_datasets(pictures: Path) -> None:
    images, paths = load_images([pictures], 16)
    assert [p.name for p in paths] == ["blue.jpg", "red.png"] and images.shape == (2, 3, 16, 16)
    assert torch.equal(images[1], torch.from_numpy(decode_image(pictures / "red.png", 16)).permute(2, 0, 1))
    single, _ = load_images([pictures / "red.png"], 8)
    assert single.shape == (1, 3, 8, 8) and single.dtype == torch.uint8
    with pytest.raises(DataError, match="image file not found: .*missing.png"):
        load_images([pictures / "missing.png"], 16)
    with pytest.raises(DataError, match="cannot read image .*notes.txt"):
        load_images([pictures / "notes.txt"], 16)


def test_from_run_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a run folder"):
        StylEx.from_run(tmp_path)
    assert not (tmp_path / "config.yaml").exists()  # nothing written into the wrong folder


def test_stylex_explain_writes_pairs_and_a_table(run_dir: Path, pictures: Path, tmp_path: Path, capsys) -> None:
    explainer = StylEx.from_run(run_dir, "cpu")
    assert explainer.generator.resolution == 16 and explainer.models.class_names == ["frown", "smile"]
    out = tmp_path / "explained"
    assert main(["explain", str(run_dir), str(pictures), "--out", str(out), "-k", "2", "--target", "smile",
                 "--visible-only"]) == 0
    table = pd.read_csv(out / "attributes.csv")
    assert len(table) == 4 and table["rank"].tolist() == [1, 2, 1, 2] and set(table["class"]) == {"smile"}
    assert table["p_before"].between(0, 1).all() and table["p_after"].between(0, 1).all()
    assert (table["effect"].diff().iloc[[1, 3]] >= 0).all()  # the strongest edit (most negative effect) first
    assert all((out / png).exists() for png in table["png"]) and "2 images explained" in (said := capsys.readouterr().out)
    moved = (table["p_after"] - table["p_before"]).abs()
    assert (table["visible_change"] >= 0).all() and table["invisible"].dtype == bool
    assert (table["explains"] == ((moved >= 0.1) & ~table["invisible"])).all()
    assert said.count("no attribute both changes it visibly") == len(unexplained_files(table))
    pair = Image.open(out / table["png"][0])
    assert pair.width > 3 * 16 * 8  # input | original | changed, enlarged
    assert main(["explain", str(run_dir), str(pictures), "--out", str(out), "--target", "grin"]) == 2
    assert "--target 'grin' is not a class of this run; use one of ['frown', 'smile']" in capsys.readouterr().err


def test_unexplained_files_are_those_without_one_explaining_edit() -> None:
    table = pd.DataFrame({"file": ["a.png", "a.png", "b.png", "b.png"], "explains": [False, True, False, False]})
    assert unexplained_files(table) == ["b.png"]


def test_attribute_names_reach_the_gallery_and_the_studies_and_survive_a_forced_rerun(run_dir: Path,
                                                                                       tmp_path: Path) -> None:
    from stylexlib.explain.attfind.examples import collect_examples
    from stylexlib.explain.attfind.search import load_attfind, load_editor, run_attfind
    from stylexlib.pipeline.runner import Stage, _remove_resume_state
    from stylexlib.report.gallery import write_gallery
    from stylexlib.report.study import generate_studies

    run = open_run(run_dir)
    data = load_dataset(run.cfg.data)
    found = run_attfind(run, data, load_stylex(run, "cpu", data), progress=False)
    names_file = run_dir / "attfind" / "attribute_names.csv"
    template = pd.read_csv(names_file, keep_default_na=False)
    assert len(template) == len(found.attributes) and (template["name"] == "").all()
    template.loc[0, "name"] = "rosy cheeks"
    template.to_csv(names_file, index=False)
    result = load_attfind(run)
    examples = collect_examples(run, load_editor(run, "cpu"), top=2, per_attribute=3, result=result)
    named = [ex for ex in examples if ex.flat == template.loc[0, "flat"] and ex.label.endswith(template.loc[0, "direction"])]
    assert named and all(ex.label.startswith("rosy cheeks: ") for ex in named)
    assert "rosy cheeks" in write_gallery(examples, tmp_path / "gallery").read_text()
    key = generate_studies(examples, tmp_path / "study", seed=0, min_gap=0.0)
    assert key.astype(str).apply(lambda column: column.str.contains("rosy cheeks")).any().any()
    _remove_resume_state(run_dir, Stage("05", "05_attribute_search", Path("05_attribute_search.ipynb")))
    assert names_file.exists() and not (run_dir / "attfind" / "effects.pt").exists()  # --force keeps the names
