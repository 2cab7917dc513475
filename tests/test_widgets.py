"""The attribute browser and the study runner, driven from Python with a small real generator and classifier."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from test_study import make_examples

import stylexlib.core.io
from stylexlib.classifier.model import build_classifier
from stylexlib.core.stylex_config import stylex_config
from stylexlib.data import to_float
from stylexlib.gan import Encoder, Generator
from stylexlib.report.study import StudyError, generate_studies, read_responses, score_responses
from stylexlib.report.widgets import AttributeBrowser, StudyRunner, load_image_bytes

RES = 16


class TinyEditor:
    """The editor contract over a tiny random generator, encoder and classifier; counts its calls."""

    def __init__(self, num_classes: int = 2, shift: float = 4.0) -> None:
        torch.manual_seed(0)
        cfg = stylex_config(latent_dim=16, mapping_layers=2, channel_base=128, channel_max=16)
        self.generator = Generator(RES, num_classes, cfg).eval()
        self.encoder = Encoder(RES, cfg.model.latent_dim, cfg).eval()
        self.classifier = build_classifier(num_classes, RES, width=8).eval()
        self.class_names = [f"class{i}" for i in range(num_classes)]
        self.resolution, self.shift = RES, shift
        self.calls = {"encode": [], "render": 0}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.calls["encode"].append(images.clone())
        x = to_float(images) if images.dtype == torch.uint8 else images
        return self.generator.styles(self.encoder(x), self.classifier(x).softmax(1))

    def render(self, styles: torch.Tensor) -> torch.Tensor:
        self.calls["render"] += 1
        return self.generator.synthesize(styles).clamp(-1, 1)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(images).softmax(1)

    def edit(self, styles: torch.Tensor, flat: int, direction: str, strength: float = 1.0) -> torch.Tensor:
        edited = styles.clone()
        edited[:, flat] += (1 if direction == "up" else -1) * strength * self.shift
        return edited


def attributes_table(editor: TinyEditor) -> pd.DataFrame:
    """Three attributes of class 0 and two of class 1 (rows deliberately out of order); flats in b4.conv1."""
    rows = [(1, 2, 5, "up"), (0, 1, 3, "down"), (0, 2, 7, "up"), (1, 1, 2, "down"), (0, 3, 1, "up")]
    table = pd.DataFrame(rows, columns=["class_index", "rank", "flat", "direction"])
    table["class_name"] = [editor.class_names[c] for c in table["class_index"]]
    located = [editor.generator.style_index.locate(f) for f in table["flat"]]
    table["layer_name"], table["channel"] = [c.name for c in located], [c.channel for c in located]
    table["mean_effect"], table["fraction_affected"] = 0.1, 0.5
    return table


@pytest.fixture
def browser() -> AttributeBrowser:
    editor = TinyEditor()
    images = torch.randint(0, 256, (6, 3, RES, RES), dtype=torch.uint8)
    return AttributeBrowser(editor, attributes_table(editor), images, image_index=2, display_size=64)


def png_image(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_strength_drives_the_edit(browser: AttributeBrowser) -> None:
    assert browser.last_error is None and browser.current_attribute()["rank"] == 1
    assert png_image(browser.changed_view.value).shape == (64, 64, 3)  # display_size 64 = 4x the 16 px images
    browser.strength.value = 0.0
    assert torch.equal(browser.changed_image, browser.original_image)
    assert browser.changed_view.value == browser.original_view.value and torch.equal(browser.probs_changed, browser.probs_original)
    edits = []
    for strength in (0.5, 1.0, 2.0):
        browser.strength.value = strength
        edits.append((browser.changed_image.clone(), browser.probs_changed.clone(), browser.changed_view.value))
        assert np.isfinite(browser.last_update_seconds) and browser.last_update_seconds > 0
    gaps = [float((img - browser.original_image).abs().mean()) for img, _, _ in edits]
    assert 0 < gaps[0] < gaps[1] < gaps[2]  # further from the original as the strength grows
    assert not torch.allclose(edits[0][1], edits[2][1]) and len({png for _, _, png in edits}) == 3
    assert "p(changed)" in browser.probs_view.value and f"{float(browser.probs_changed[0]):.3f}" in browser.probs_view.value
    renders = browser.editor.calls["render"]
    browser.strength.value = 1.0  # seen before: served from the cache
    assert browser.editor.calls["render"] == renders and torch.equal(browser.changed_image, edits[1][0])
    assert len(browser.update_seconds) == 6 and "updated in" in browser.status.value


def test_class_change_repopulates_the_attributes(browser: AttributeBrowser) -> None:
    labels = [label for label, _ in browser.attribute_choice.options]
    assert [label.split()[0] for label in labels] == ["#1", "#2", "#3"] and "b4.conv1[3] down" in labels[0]
    before = browser.changed_image.clone()
    browser.class_choice.value = 1
    labels = [label for label, _ in browser.attribute_choice.options]
    assert len(labels) == 2 and "b4.conv1[2] down" in labels[0] and "b4.conv1[5] up" in labels[1]
    assert browser.current_attribute()["class_index"] == 1 and not torch.equal(browser.changed_image, before)
    browser.attribute_choice.value = browser.attribute_choice.options[1][1]
    assert browser.current_attribute()["flat"] == 5


def test_a_class_without_attributes_shows_the_original() -> None:
    editor = TinyEditor(num_classes=3)
    images = torch.randint(0, 256, (2, 3, RES, RES), dtype=torch.uint8)
    browser = AttributeBrowser(editor, attributes_table(editor), images)
    browser.class_choice.value = 2
    assert browser.attribute_choice.options == () and torch.equal(browser.changed_image, browser.original_image)
    assert "no attribute for this class" in browser.status.value


def test_images_are_encoded_once_and_index_switches_back_to_the_dataset(browser: AttributeBrowser) -> None:
    encodes = browser.editor.calls["encode"]
    for index in (3, 2, 3, 2):
        browser.image_index.value = index
    assert len(encodes) == 2 and torch.equal(encodes[1], browser.images[3:4])


def test_upload_path(browser: AttributeBrowser) -> None:
    pic = Image.new("RGB", (48, 32), (250, 10, 10))
    pic.paste((10, 10, 250), (0, 0, 4, 32))  # a blue strip that the centre crop removes
    buffer = io.BytesIO()
    pic.save(buffer, format="PNG")
    data = buffer.getvalue()
    expected = load_image_bytes(data, RES)
    assert expected.shape == (1, 3, RES, RES) and (expected[0, 0] > 240).all()
    browser.upload.value = ({"name": "face.png", "type": "image/png", "size": len(data), "content": memoryview(data),
                             "last_modified": pd.Timestamp.now(tz="UTC").to_pydatetime()},)
    assert browser.source.value == "upload" and browser.last_error is None
    assert torch.equal(browser.editor.calls["encode"][-1], expected)
    assert (png_image(browser.input_view.value)[..., 0] > 240).all() and "upload face.png" in browser.status.value
    browser.upload.value = ({"name": "notes.txt", "type": "text/plain", "size": 3, "content": memoryview(b"abc"),
                             "last_modified": pd.Timestamp.now(tz="UTC").to_pydatetime()},)
    assert "could not read notes.txt" in browser.last_error and browser.source.value == "upload"
    browser.image_index.value = 4
    assert browser.source.value == "dataset" and torch.equal(browser.editor.calls["encode"][-1], browser.images[4:5])


def test_bad_attribute_table_is_a_clear_error() -> None:
    editor = TinyEditor()
    with pytest.raises(ValueError, match="lacks column.*'direction'"):
        AttributeBrowser(editor, attributes_table(editor).drop(columns="direction"), torch.zeros(1, 3, RES, RES, dtype=torch.uint8))


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    generate_studies(make_examples(), tmp_path / "study", seed=2)
    return tmp_path / "study"


def test_study_runner_saves_every_answer_and_resumes(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = StudyRunner(study_dir, respondent="ann")
    key = runner.key
    assert runner.current["question_id"] == key["question_id"].iloc[0] and runner.picture.value
    assert runner.picture.format == "png" and [b.description for b in runner.buttons.children] == ["A", "B"]
    for _ in range(3):
        runner.answer(runner.current["correct"])
    with pytest.raises(StudyError, match="must be one of"):
        runner.answer("Z")

    def crash(*_: object) -> None:
        raise KeyboardInterrupt  # the session dies while writing the fourth answer

    monkeypatch.setattr(stylexlib.core.io.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        runner.answer(runner.current["correct"])
    monkeypatch.undo()
    saved = read_responses(study_dir / "responses.csv")
    assert list(saved["question_id"]) == list(key["question_id"].iloc[:3]) and not list(study_dir.glob(".responses*"))

    resumed = StudyRunner(study_dir, respondent="ann")  # a new session
    assert resumed.current["question_id"] == key["question_id"].iloc[3] and "Question 4 of" in resumed.progress.value
    assert StudyRunner(study_dir, respondent="bob").current["question_id"] == key["question_id"].iloc[0]
    while not resumed.done:
        question = resumed.current
        button = next(b for b in resumed.buttons.children if b.description == question["correct"])
        button.click()
        if question["study"] == "match":
            assert resumed.current is None or resumed.picture.format in ("gif", "png")
    assert "Done" in resumed.progress.value
    with pytest.raises(StudyError, match="finished"):
        resumed.answer("A")
    table = score_responses(key, read_responses(study_dir / "responses.csv"))
    total = table[table["study"] == "all"].iloc[0]
    assert total.n == len(key) and total.correct == len(key)
    assert os.path.getsize(study_dir / "responses.csv") > 0


def test_an_upload_decodes_like_the_same_file_in_a_folder(tmp_path) -> None:
    from stylexlib.data.folder import decode_image

    pic = Image.new("RGBA", (40, 40), (200, 30, 30, 255))
    pic.paste((0, 0, 255, 0), (0, 0, 40, 20))  # a fully transparent top half: white, not blue, in both paths
    pic.save(tmp_path / "face.png")
    upload = load_image_bytes((tmp_path / "face.png").read_bytes(), RES)
    folder = torch.from_numpy(decode_image(str(tmp_path / "face.png"), RES)).permute(2, 0, 1)[None]
    assert torch.equal(upload, folder)
    assert (upload[0, :, : RES // 2 - 1] > 250).all()  # transparency composited onto white


def test_the_respondents_notebook_runs_the_study_without_showing_answers(study_dir: Path, tmp_path: Path) -> None:
    import nbformat
    import papermill

    notebooks = Path(__file__).resolve().parents[1] / "notebooks"
    stage = nbformat.read(notebooks / "07_user_study.ipynb", as_version=4)
    assert not any("StudyRunner(" in c.source for c in stage.cells if c.cell_type == "code")  # 07 prints the key
    executed = tmp_path / "runner.ipynb"
    papermill.execute_notebook(str(notebooks / "study_runner.ipynb"), str(executed), kernel_name="python3",
                               parameters={"run_dir": str(study_dir.parent), "respondent": "ann"}, progress_bar=False)
    shown = "\n".join(str(out.get("text", "")) + str(out.get("data", {}).get("text/plain", ""))
                      for cell in nbformat.read(executed, as_version=4).cells for out in cell.get("outputs", []))
    assert "StudyRunner" in shown and "Question 1 of" in shown  # the runner is on screen
    key = pd.read_csv(study_dir / "classification" / "answer_key.csv")
    assert "correct" not in shown and "answer" not in shown.lower() and key.columns[0] not in shown


def test_the_browser_shows_attribute_names_and_the_picked_images_file_label_and_split(tmp_path: Path) -> None:
    from stylexlib.data import ImageDataset
    from stylexlib.explain.attfind.names import read_attribute_names, with_names, write_name_template

    editor = TinyEditor()
    attributes = attributes_table(editor)
    names_file = write_name_template(tmp_path / "attribute_names.csv", attributes)
    template = pd.read_csv(names_file, keep_default_na=False)
    assert len(template) == 5 and (template["name"] == "").all() and read_attribute_names(names_file) == {}
    template.loc[template["flat"] == 3, "name"] = "wide smile"  # what a person does in a spreadsheet
    template.to_csv(names_file, index=False)
    write_name_template(names_file, attributes)  # stage 05 again: the name is kept
    assert read_attribute_names(names_file) == {(3, "down"): "wide smile"}
    data = ImageDataset(torch.randint(0, 256, (3, 3, RES, RES), dtype=torch.uint8), torch.tensor([0, 1, 1]),
                        ["class0", "class1"], np.array(["train", "val", "test"]), files=["a.png", "b.png", "c.png"])
    named = with_names(attributes, read_attribute_names(names_file))
    browser = AttributeBrowser(editor, named, data, image_index=1, class_index=0, display_size=32)
    assert browser.attribute_choice.options[0][0].startswith("#1 wide smile: ")  # class 0's rank 1 is flat 3 down
    assert "#2 wide smile" not in browser.attribute_choice.options[1][0]
    assert "image #1 · b.png · label class1 · val split" in browser.image_info.value
    browser.image_index.value = 2
    assert "c.png · label class1 · test split" in browser.image_info.value
    (tmp_path / "broken.csv").write_text("flat,name\n3,x\n")
    with pytest.raises(ValueError, match=r"broken.csv lacks column\(s\) \['direction'\]"):
        read_attribute_names(tmp_path / "broken.csv")


def test_names_given_for_one_generator_are_set_aside_not_applied_for_a_retrained_one(tmp_path: Path, caplog) -> None:
    """#39: names were keyed by (coordinate, direction) alone, so a retrained generator inherited them for coordinates
    that now mean something else."""
    from stylexlib.explain.attfind.names import read_attribute_names, write_name_template

    attributes = attributes_table(TinyEditor())
    first, second = "1234e567", "89abcdef01234567"  # fingerprints (the first also reads as a number)
    names_file = write_name_template(tmp_path / "attribute_names.csv", attributes, first)
    table = pd.read_csv(names_file, keep_default_na=False, dtype=str)
    table.loc[table["flat"] == "3", "name"] = "wide smile"
    table.to_csv(names_file, index=False)
    write_name_template(names_file, attributes, first)  # the same generator again: kept
    assert read_attribute_names(names_file, first) == {(3, "down"): "wide smile"}
    assert read_attribute_names(names_file, second) == {}  # never applied to another generator's coordinates
    with caplog.at_level("WARNING"):
        write_name_template(names_file, attributes, second)  # stage 05 after retraining
    aside = tmp_path / f"attribute_names.{first}.csv"
    assert read_attribute_names(names_file, second) == {} and read_attribute_names(names_file) == {}
    assert len(pd.read_csv(names_file)) == len(attributes)  # a fresh template for the new generator
    assert read_attribute_names(aside, first) == {(3, "down"): "wide smile"} and aside.name in caplog.text
    legacy = tmp_path / "legacy.csv"  # a file from before names recorded their generator: taken as the current one's
    pd.read_csv(aside, keep_default_na=False).drop(columns="generator").to_csv(legacy, index=False)
    write_name_template(legacy, attributes, second)
    assert read_attribute_names(legacy, second) == {(3, "down"): "wide smile"}
    assert set(pd.read_csv(legacy, dtype=str)["generator"]) == {second}
