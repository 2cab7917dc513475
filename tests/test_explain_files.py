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
from stylexlib.gan.train import train_stylex
from stylexlib.pipeline.cli import main
from stylexlib.report.explain_files import unexplained_files

TINY = ["data.num_images=120", "data.resolution=16", "classifier.width=4", "classifier.epochs=1",
        "classifier.batch_size=32", "stylex.model.latent_dim=8", "stylex.model.mapping_layers=1", "stylex.model.channel_base=64",
        "stylex.model.channel_max=8", "stylex.optim.batch_size=4", "stylex.schedule.steps=2", "stylex.runtime.sample_every=0",
        "stylex.runtime.checkpoint_every=0", "stylex.runtime.device=cpu", "stylex.runtime.log_every=1", "attfind.stats_images=16",
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


def test_load_images_recurses_into_sub_folders_in_path_order(pictures: Path) -> None:
    for nested in ["b/inner/deep.png", "a/one.png", ".hidden/secret.png", "b/.dot.png"]:
        (pictures / nested).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (0, 200, 0)).save(pictures / nested)
    _, paths = load_images([pictures], 8)
    assert [p.relative_to(pictures).as_posix() for p in paths] == ["a/one.png", "b/inner/deep.png", "blue.jpg",
                                                                   "red.png"]
    (pictures.parent / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match="no images in folder .*empty or its sub-folders"):
        load_images([pictures.parent / "empty"], 8)


def test_unreadable_files_and_decompression_bombs_are_skipped_and_named(pictures: Path, monkeypatch,
                                                                       caplog) -> None:
    (pictures / "garbage.png").write_bytes(b"\x89PNG not really")
    png = (pictures / "red.png").read_bytes()
    (pictures / "cut.png").write_bytes(png[: len(png) // 2])
    Image.new("RGB", (60, 60), (0, 200, 0)).save(pictures / "zbomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1300)  # 3600 pixels > 2 x 1300: DecompressionBombError
    with caplog.at_level("WARNING"):
        images, paths = load_images([pictures], 16)
    assert [p.name for p in paths] == ["blue.jpg", "red.png"] and images.shape == (2, 3, 16, 16)
    said = {line.split(" (not explained)")[0]: line for line in caplog.messages}
    assert set(said) == {f"skipped {pictures / name}" for name in ["cut.png", "garbage.png", "zbomb.png"]}
    assert "DecompressionBombError" in said[f"skipped {pictures / 'zbomb.png'}"]
    assert "UnidentifiedImageError" in said[f"skipped {pictures / 'garbage.png'}"]
    with pytest.raises(DataError, match=r"cannot read image .*garbage.png: UnidentifiedImageError.* \(and 1 more"):
        load_images([pictures / "garbage.png", pictures / "zbomb.png"], 16)


class _OutputsSwapped(torch.nn.Module):
    """A user's model: the run's trained classifier with its two outputs in the other order (smile, frown)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).flip(1)


@pytest.fixture(scope="module")
def user_run_dir(run_dir: Path, tmp_path_factory) -> Path:
    """A run folder explaining a user's TorchScript classifier whose outputs are not in the data's class order."""
    from stylexlib.classifier.model import load_trained_classifier

    trained, _ = load_trained_classifier(run_dir / "classifier.pt")
    folder = tmp_path_factory.mktemp("user_run")
    with pytest.warns(FutureWarning):  # TorchScript is deprecated
        torch.jit.trace(_OutputsSwapped(trained.model), torch.zeros(2, 3, 16, 16)).save(str(folder / "swapped.ts"))
    user = [f"classifier.source={folder / 'swapped.ts'}", "classifier.class_names=[smile, frown]",
            "classifier.check_accuracy=false"]
    run = open_run(folder / "run", None, TINY + user)
    data = load_dataset(run.cfg.data)
    train_stylex(run, data, progress=False)  # stage 03 checks the classifier on the data and records its classes
    run_statistics(run, data, load_stylex(run, "cpu", data), run.cfg.attfind)
    return run.dir


def _no_data(*_, **__):
    raise AssertionError("opening a run for explaining loaded the data set")


def test_opening_a_run_for_explaining_loads_no_data(user_run_dir: Path, run_dir: Path, pictures: Path,
                                                    tmp_path: Path, monkeypatch) -> None:
    """Issue #41: StylEx.from_run and `stylex explain` read the data's class order from the run folder (the StylEx
    checkpoint stage 03 made with the checked classifier), not by loading every image of the data set; a user model's
    outputs are still put in that order."""
    from stylexlib.classifier.model import load_trained_classifier

    x = load_dataset(open_run(run_dir).cfg.data).tensors()[0][:6]
    trained, _ = load_trained_classifier(run_dir / "classifier.pt")
    monkeypatch.setattr("stylexlib.data.load_dataset", _no_data)
    explainer = StylEx.from_run(user_run_dir, "cpu")
    assert explainer.models.class_names == ["frown", "smile"]  # the data's order, not the model's
    assert torch.allclose(explainer.models.classifier(x), trained(x))  # the model's outputs reordered to it
    out = tmp_path / "explained"
    assert main(["explain", str(user_run_dir), str(pictures), "--out", str(out), "-k", "1", "--target", "smile"]) == 0
    assert set(pd.read_csv(out / "attributes.csv")["class"]) == {"smile"}


def test_a_run_whose_checkpoint_records_no_checked_classes_reads_them_from_the_data(user_run_dir: Path, tmp_path: Path,
                                                                                    monkeypatch, caplog) -> None:
    """A checkpoint without a fingerprint (made before fingerprints) proves nothing about the data: the data is loaded,
    as before, with a log line; one made from another config stops before its classes are trusted."""
    import shutil

    from stylexlib.core.config import apply_overrides, save_config
    from stylexlib.core.io import torch_load, torch_save
    from stylexlib.core.provenance import StaleArtifact
    from stylexlib.data import load_dataset as real_load_dataset

    old = tmp_path / "old_run"
    shutil.copytree(user_run_dir, old)
    state = torch_load(old / "checkpoints" / "stylex.pt")
    torch_save(old / "checkpoints" / "stylex.pt", {**state, "fingerprint": None, "class_names": ["smile", "frown"]})
    loads = []
    monkeypatch.setattr("stylexlib.data.load_dataset", lambda cfg: loads.append(cfg) or real_load_dataset(cfg))
    with caplog.at_level("INFO", logger="stylexlib.classifier.training"):
        explainer = StylEx.from_run(old, "cpu")
    assert len(loads) == 1 and "loading the data to read it" in caplog.text
    x = real_load_dataset(open_run(old).cfg.data).tensors()[0][:4]
    assert torch.equal(explainer.models.classifier(x), explainer.models.classifier.model(x).flip(1))
    torch_save(old / "checkpoints" / "stylex.pt", state)
    run = open_run(old)
    save_config(apply_overrides(run.cfg, ["data.num_images=100"]), old / "config.yaml")
    monkeypatch.setattr("stylexlib.data.load_dataset", _no_data)
    with pytest.raises(StaleArtifact, match="stylex.pt was made from another config.*re-run stage 03"):
        StylEx.from_run(old, "cpu")


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


def test_stylex_explain_reads_sub_folders_and_goes_on_past_a_bad_file(run_dir: Path, pictures: Path, tmp_path: Path,
                                                                      caplog) -> None:
    (pictures / "day2").mkdir()
    Image.new("RGB", (20, 20), (30, 200, 30)).save(pictures / "day2" / "green.png")
    (pictures / "day2" / "broken.jpg").write_bytes(b"not a JPEG")
    out = tmp_path / "explained"
    with caplog.at_level("WARNING"):
        assert main(["explain", str(run_dir), str(pictures), "--out", str(out), "-k", "1"]) == 0
    table = pd.read_csv(out / "attributes.csv")
    assert [Path(f).relative_to(pictures).as_posix() for f in table["file"]] == ["blue.jpg", "day2/green.png",
                                                                                 "red.png"]
    assert f"skipped {pictures / 'day2' / 'broken.jpg'} (not explained): UnidentifiedImageError" in caplog.text


def test_unexplained_files_are_those_without_one_explaining_edit() -> None:
    table = pd.DataFrame({"file": ["a.png", "a.png", "b.png", "b.png"], "explains": [False, True, False, False]})
    assert unexplained_files(table) == ["b.png"]


def test_attribute_names_reach_the_gallery_and_the_studies_and_survive_a_forced_rerun(run_dir: Path,
                                                                                       tmp_path: Path) -> None:
    from stylexlib.core.config import apply_overrides
    from stylexlib.core.io import torch_load, torch_save
    from stylexlib.core.provenance import stylex_fingerprint
    from stylexlib.explain.attfind.examples import collect_examples
    from stylexlib.explain.attfind.search import load_attfind, load_editor, run_attfind
    from stylexlib.pipeline.runner import Stage, _remove_stale
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
    stage = Stage("05", "05_attribute_search", Path("05_attribute_search.ipynb"))
    _remove_stale(run_dir, stage, run.cfg)  # --force with the same config: AttFind's results still match
    assert (run_dir / "attfind" / "effects.pt").exists()
    assert load_attfind(run).attributes["name"].iloc[0] == "rosy cheeks"
    stats_file = run_dir / "attfind" / "style_stats.pt"
    stats = torch_load(stats_file)
    torch_save(stats_file, {**stats, "key": {**stats["key"], "stylex": "0123abcd"}})  # results of another generator
    assert (load_attfind(run).attributes["name"] == "").all()  # whose coordinates the names were not given for
    aside = run_dir / "attfind" / f"attribute_names.{stylex_fingerprint(run.cfg)}.csv"
    assert aside.exists() and "rosy cheeks" in aside.read_text()  # set aside, not lost
    _remove_stale(run_dir, stage, apply_overrides(run.cfg, ["stylex.optim.lr_g=0.001"]))  # --force after retraining
    assert not (run_dir / "attfind" / "effects.pt").exists() and names_file.exists() and aside.exists()
