import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stylexlib.core.config import DataConfig
from stylexlib.data import DataError, folder, load_dataset
from stylexlib.data.folder import load_folder_dataset

CATS_VS_DOGS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cats_vs_dogs"
COLOURS = {"cat": (200, 40, 40), "dog": (40, 40, 200)}


def save_image(path: Path, colour=(200, 40, 40), size=(10, 12), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour if mode == "RGB" else colour[0]).save(path)


@pytest.fixture
def pets(tmp_path: Path) -> Path:
    """root/cat/{0..2}.png, root/dog/{0..2}.jpg, a labels.csv with an `age` column, and clutter."""
    root = tmp_path / "pets"
    rows = ["file,kind,age"]
    for kind, ext in [("cat", "png"), ("dog", "jpg")]:
        for i in range(3):
            save_image(root / kind / f"{i}.{ext}", COLOURS[kind])
            rows.append(f"{kind}/{i}.{ext},{kind == 'dog':d},{10 * i}")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\1")
    (root / "dog" / "._0.jpg").write_bytes(b"AppleDouble")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def config(root: Path, **kwargs) -> DataConfig:
    return DataConfig(**{"source": "folder", "root": str(root), "resolution": 8, "val_fraction": 0.0,
                         "test_fraction": 0.0, **kwargs})


def load(cfg: DataConfig, tmp_path: Path):
    return load_folder_dataset(cfg, cache_dir=tmp_path / "cache")


def test_class_folders(pets: Path, tmp_path: Path) -> None:
    data = load_dataset(config(pets), cache_dir=tmp_path / "cache")
    assert data.class_names == ["cat", "dog"]
    assert data.images.shape == (6, 3, 8, 8) and data.images.dtype == torch.uint8
    assert data.files == [f"cat/{i}.png" for i in range(3)] + [f"dog/{i}.jpg" for i in range(3)]
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.images[0, :, 4, 4].tolist() == list(COLOURS["cat"])
    assert data.info["skipped"] == [] and data.info["labels_csv"] is None
    assert set(data.info) == {"root", "labels_csv", "label_column", "filter", "skipped", "cache", "split"}


def test_csv_labels_filter_and_folder_classes(pets: Path, tmp_path: Path) -> None:
    data = load(config(pets, labels_csv="labels.csv", label_column="kind", filter="age >= 10"), tmp_path)
    assert data.class_names == ["0", "1"] and data.class_counts() == {"0": 2, "1": 2}
    assert data.info["filter"] == "age >= 10" and data.info["label_column"] == "kind"
    by_folder = load(config(pets, labels_csv="labels.csv"), tmp_path)
    assert by_folder.class_names == ["cat", "dog"] and len(by_folder) == 6


def test_centre_crop_resize_and_grayscale_to_rgb(tmp_path: Path) -> None:
    root = tmp_path / "shapes"
    wide = Image.new("RGB", (30, 10), (0, 0, 255))
    wide.paste((255, 0, 0), (10, 0, 20, 10))  # red centre square between blue side bands
    (root / "wide").mkdir(parents=True)
    wide.save(root / "wide" / "a.png")
    save_image(root / "gray" / "g.png", (77,), mode="L")
    save_image(root / "gray" / "p.gif", (5,), mode="P")
    data = load(config(root), tmp_path)
    assert data.images.shape == (3, 3, 8, 8)
    red = data.images[data.files.index("wide/a.png")]
    assert (red[0] > 240).all() and (red[2] < 15).all()  # the blue side bands were cropped away
    gray = data.images[data.files.index("gray/g.png")]
    assert (gray == 77).all()


def test_max_images_is_a_seeded_subset(pets: Path, tmp_path: Path) -> None:
    first = load(config(pets, max_images=4, seed=1), tmp_path)
    again = load(config(pets, max_images=4, seed=1), tmp_path)
    other = [load(config(pets, max_images=4, seed=s), tmp_path).files for s in range(2, 6)]
    assert len(first) == 4 and first.files == again.files
    assert any(files != first.files for files in other)


def test_cache_hit_skips_decoding_and_file_change_invalidates(pets: Path, tmp_path: Path, monkeypatch) -> None:
    first = load(config(pets), tmp_path)
    assert Path(first.info["cache"]).exists()

    def no_decoding(*args):
        raise AssertionError("decoded although cached")

    with monkeypatch.context() as patch:
        patch.setattr(folder, "_decode_all", no_decoding)
        second = load(config(pets), tmp_path)
    assert torch.equal(first.images, second.images) and second.info["cache"] == first.info["cache"]

    save_image(pets / "cat" / "0.png", (0, 255, 0))
    stamp = time.time() + 5
    os.utime(pets / "cat" / "0.png", (stamp, stamp))
    changed = load(config(pets), tmp_path)
    assert changed.info["cache"] != first.info["cache"]
    assert changed.images[0, :, 0, 0].tolist() == [0, 255, 0]


def test_damaged_cache_file_is_rebuilt(pets: Path, tmp_path: Path, caplog) -> None:
    first = load(config(pets), tmp_path)
    Path(first.info["cache"]).write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING):
        again = load(config(pets), tmp_path)
    assert "ignoring unreadable cache file" in caplog.text and torch.equal(first.images, again.images)



def test_missing_and_corrupt_files_are_skipped_and_reported(pets: Path, tmp_path: Path, caplog) -> None:
    (pets / "dog" / "text.jpg").write_text("I am not a JPEG")
    jpeg = (pets / "dog" / "0.jpg").read_bytes()
    (pets / "dog" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    with open(pets / "labels.csv", "a") as csv:
        csv.write("dog/gone.jpg,1,5\ndog/text.jpg,1,5\ndog/cut.jpg,1,5\ncat/2.png,,5\n")
    with caplog.at_level(logging.WARNING):
        data = load(config(pets, labels_csv="labels.csv", label_column="kind"), tmp_path)
    skipped = {entry["file"]: entry["reason"] for entry in data.info["skipped"]}
    assert set(skipped) == {"dog/gone.jpg", "dog/text.jpg", "dog/cut.jpg", "cat/2.png"}
    assert "not found" in skipped["dog/gone.jpg"] and "kind" in skipped["cat/2.png"]
    assert "cannot identify image" in skipped["dog/text.jpg"] and "truncated" in skipped["dog/cut.jpg"].lower()
    assert len(data) == 6 and "dog/cut.jpg" not in data.files and data.class_names == ["0", "1"]
    assert "1 files listed but not found" in caplog.text and "dog/gone.jpg" in caplog.text
    assert "2 unreadable images skipped: dog/cut.jpg, dog/text.jpg" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING):  # a cached load reports the same skips
        again = load(config(pets, labels_csv="labels.csv", label_column="kind"), tmp_path)
    assert again.info["skipped"] == data.info["skipped"] and "unreadable images skipped" in caplog.text


def test_bad_root_raises_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not found: .*nowhere \(check data\.root\)"):
        load(config(tmp_path / "nowhere"), tmp_path)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match=r"data.root must be a folder.*file.txt"):
        load(config(tmp_path / "file.txt"), tmp_path)
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "readme.txt").write_text("x")
    save_image(tmp_path / "empty" / "loose.png")
    with pytest.raises(DataError, match=r"no images found in .*empty; 1 images lie directly in it"):
        load(config(tmp_path / "empty"), tmp_path)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"labels_csv": "labls.csv"}, r"labels CSV not found: .*labls.csv"),
        ({"labels_csv": "labels.csv", "label_column": "kinds"},
         r"data.label_column: column 'kinds' is not in .*labels.csv \(did you mean 'kind'\?\); "
         r"available columns: file, kind, age"),
        ({"labels_csv": "labels.csv", "file_column": "path"}, r"data.file_column: column 'path'.*available columns"),
        ({"labels_csv": "labels.csv", "filter": "agee > 3"}, r"data.filter 'agee > 3' failed .*agee"),
        ({"labels_csv": "labels.csv", "filter": "age >>= 3"}, r"data.filter 'age >>= 3' failed"),
        ({"labels_csv": "labels.csv", "filter": "age > 99"}, r"data.filter 'age > 99' kept none of the 6 rows"),
        ({"labels_csv": "labels.csv", "label_column": "kind", "filter": "kind == 1"},
         r"only one class \(1\).*needs at least two; check data.label_column / data.filter"),
        ({"filter": "label == 'cat'"}, r"only one class \(cat\)"),
        ({"label_column": "kind"}, "data.label_column='kind' needs data.labels_csv"),
        ({"max_images": 0}, "data.max_images must be a positive"),
    ],
)
def test_bad_config_raises_data_error(pets: Path, tmp_path: Path, overrides: dict, match: str) -> None:
    with pytest.raises(DataError, match=match):
        load(config(pets, **overrides), tmp_path)


def test_csv_without_folders_needs_label_column(pets: Path, tmp_path: Path) -> None:
    save_image(pets / "flat.png")
    (pets / "flat.csv").write_text("file,kind\nflat.png,0\ncat/0.png,1\n")
    with pytest.raises(DataError, match=r"'flat.png' has no folder; set data.label_column"):
        load(config(pets, labels_csv="flat.csv"), tmp_path)


def test_all_listed_files_missing_or_unreadable(pets: Path, tmp_path: Path) -> None:
    (pets / "gone.csv").write_text("file,kind\ncat/x.png,0\ndog/y.png,1\n")
    with pytest.raises(DataError, match="none of the 2 listed files exist"):
        load(config(pets, labels_csv="gone.csv", label_column="kind"), tmp_path)
    for path in pets.glob("*/*.*"):
        path.write_text("garbage")
    with pytest.raises(DataError, match="could be read; first error: UnidentifiedImageError"):
        load(config(pets), tmp_path)


def test_single_class_after_skipping_corrupt_files(pets: Path, tmp_path: Path) -> None:
    for path in (pets / "dog").glob("*.jpg"):
        path.write_text("garbage")
    with pytest.raises(DataError, match=r"only one class \(cat\)"):
        load(config(pets), tmp_path)


@pytest.mark.skipif(not CATS_VS_DOGS.exists(), reason="shared datasets are not beside the repository")
def test_cats_vs_dogs_subset(tmp_path: Path) -> None:
    cfg = DataConfig(source="folder", root=str(CATS_VS_DOGS), labels_csv="labels.csv", label_column="label",
                     resolution=32, max_images=200)
    data = load(cfg, tmp_path)
    assert data.images.shape == (200, 3, 32, 32) and data.class_names == ["0", "1"]
    assert min(data.class_counts().values()) > 50 and data.info["skipped"] == []
    assert sorted(np.unique(data.split)) == ["test", "train", "val"]



def test_dataset_invariants_raise_clear_errors() -> None:
    import numpy as np
    import torch

    from stylexlib.data import ImageDataset
    from stylexlib.data.dataset import DataError

    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    split = np.array(["train"] * 4)
    with pytest.raises(DataError, match="uint8 RGB"):
        ImageDataset(images.float(), torch.zeros(4), ["a"], split)
    with pytest.raises(DataError, match="4 images but .*labels"):
        ImageDataset(images, torch.zeros(3), ["a"], split)
    with pytest.raises(DataError, match="validation"):
        ImageDataset(images, torch.zeros(4), ["a"], np.array(["train", "train", "validation", "test"]))


def test_label_queries_name_classes_and_leave_out_unmatched_rows(pets: Path, tmp_path: Path) -> None:
    data = load(config(pets, labels_csv="labels.csv", label_queries={"young": "age < 10", "old": "age >= 20"}),
                tmp_path)
    assert data.class_names == ["old", "young"] and data.class_counts() == {"old": 2, "young": 2}
    assert data.files == ["cat/0.png", "cat/2.png", "dog/0.jpg", "dog/2.jpg"]  # age 10 matches neither
    assert data.labels.tolist() == [1, 0, 1, 0]
    with pytest.raises(DataError, match="matches both 'young' and 'all'"):
        load(config(pets, labels_csv="labels.csv", label_queries={"young": "age < 10", "all": "age >= 0"}), tmp_path)
    with pytest.raises(DataError, match=r"label_queries\['old'\] = 'height > 3' failed"):
        load(config(pets, labels_csv="labels.csv", label_queries={"old": "height > 3"}), tmp_path)
    with pytest.raises(DataError, match="needs data.labels_csv"):
        load(config(pets, label_queries={"old": "age > 3"}), tmp_path)


def _study_csv(root: Path, rows: list[str]) -> None:
    """root/{cat,dog}/N.png for each row 'kind,N,split,subject' and a study.csv listing them."""
    lines = ["file,kind,part,subject"]
    for row in rows:
        kind, i, part, subject = row.split(",")
        save_image(root / kind / f"{i}.png", COLOURS[kind])
        lines.append(f"{kind}/{i}.png,{kind},{part},{subject}")
    (root / "study.csv").write_text("\n".join(lines) + "\n")


def test_split_column_keeps_the_users_splits(tmp_path: Path) -> None:
    root = tmp_path / "study"
    _study_csv(root, ["cat,0,train,a", "cat,1,Test ,b", "dog,0,val,c", "dog,1,train,d", "dog,2,train,e"])
    cfg = config(root, labels_csv="study.csv", label_column="kind", split_column="part", val_fraction=0.5)
    data = load(cfg, tmp_path)
    assert dict(zip(data.files, data.split)) == {"cat/0.png": "train", "cat/1.png": "test", "dog/0.png": "val",
                                                 "dog/1.png": "train", "dog/2.png": "train"}
    assert data.info["split"] == "column 'part'"
    (root / "study.csv").write_text((root / "study.csv").read_text().replace("val,c", "validation,c"))
    with pytest.raises(DataError, match=r"data.split_column: column 'part' .* holds \['validation'\]; use train"):
        load(cfg, tmp_path)


def test_group_column_keeps_each_group_in_one_split(tmp_path: Path) -> None:
    root = tmp_path / "study"
    subjects = [f"s{i // 3}" for i in range(30)]  # 10 subjects with 3 images each
    _study_csv(root, [f"{'cat' if i % 2 else 'dog'},{i},train,{s}" for i, s in enumerate(subjects)])
    data = load(config(root, labels_csv="study.csv", label_column="kind", group_column="subject",
                       val_fraction=0.2, test_fraction=0.2), tmp_path)
    of_file = {f"{'cat' if i % 2 else 'dog'}/{i}.png": s for i, s in enumerate(subjects)}
    splits_of = {}
    for file, split in zip(data.files, data.split):
        splits_of.setdefault(of_file[file], set()).add(split)
    assert all(len(s) == 1 for s in splits_of.values()), splits_of  # no subject in two splits
    assert sorted(np.unique(data.split)) == ["test", "train", "val"]
    assert (data.split == "val").sum() == 6 and (data.split == "test").sum() == 6
    leak = config(root, labels_csv="study.csv", label_column="kind", group_column="subject", split_column="part")
    (root / "study.csv").write_text((root / "study.csv").read_text().replace("cat/1.png,cat,train", "cat/1.png,cat,val"))
    with pytest.raises(DataError, match=r"group\(s\) \['s0'\] appear in more than one split"):
        load(leak, tmp_path)
    with pytest.raises(DataError, match="data.group_column='subject' needs data.labels_csv"):
        load(config(root, group_column="subject"), tmp_path)


def test_split_folders_are_splits_and_their_class_folders_the_classes(tmp_path: Path, caplog) -> None:
    root = tmp_path / "tv"
    for split, n in [("train", 3), ("Validation", 1), ("test", 2)]:
        for kind in COLOURS:
            for i in range(n):
                save_image(root / split / kind / f"{i}.png", COLOURS[kind])
    save_image(root / "test" / "dog" / "sub" / "deep.png", COLOURS["dog"])  # class folders still recurse
    with caplog.at_level(logging.INFO):
        data = load(config(root, val_fraction=0.5), tmp_path)
    assert data.class_names == ["cat", "dog"] and len(data) == 2 * 6 + 1
    assert dict(zip(data.files, data.split))["Validation/dog/0.png"] == "val"
    assert {f: s for f, s in zip(data.files, data.split) if f.startswith("test/")} == {
        "test/cat/0.png": "test", "test/cat/1.png": "test", "test/dog/0.png": "test", "test/dog/1.png": "test",
        "test/dog/sub/deep.png": "test"}
    assert (data.split == "train").sum() == 6 and (data.split == "val").sum() == 2  # folders, not val_fraction
    assert [data.class_names[i] for i in data.labels] == [f.split("/")[1] for f in data.files]
    assert data.info["split"] == "split folders" and "val_fraction / test_fraction unused" in caplog.text

    csv = "\n".join(["file"] + data.files) + "\n"  # a CSV of the same tree: classes and splits from its folders
    (root / "all.csv").write_text(csv)
    by_csv = load(config(root, labels_csv="all.csv"), tmp_path)
    assert by_csv.class_names == ["cat", "dog"] and by_csv.split.tolist() == data.split.tolist()


def test_ambiguous_or_inconsistent_split_folders_raise(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    for place in ["train/cat", "train/dog", "test/cat", "bird"]:
        save_image(root / place / "0.png")
    with pytest.raises(DataError, match=r"mixed is ambiguous: its folders \['test', 'train'\] are split names but "
                                        r"\['bird'\] are not"):
        load(config(root), tmp_path)
    (root / "bird" / "0.png").rename(root / "test" / "cat" / "1.png")
    (root / "bird").rmdir()
    save_image(root / "test" / "fish" / "0.png")
    with pytest.raises(DataError, match=r"classes \['fish'\] are in .*test but not in .*train"):
        load(config(root), tmp_path)
    save_image(root / "val" / "cat" / "0.png")
    save_image(root / "valid" / "cat" / "0.png")
    with pytest.raises(DataError, match="folders 'val' and 'valid' are both the val split"):
        load(config(root), tmp_path)
    (root / "all.csv").write_text("file\ntrain/cat/0.png\ntrain/dog/0.png\nbird/0.png\n")
    with pytest.raises(DataError, match="ambiguous folders: some files lie in split folders"):
        load(config(root, labels_csv="all.csv"), tmp_path)


def test_an_image_listed_twice_in_the_csv_is_refused_naming_the_rows(pets: Path, tmp_path: Path) -> None:
    with open(pets / "labels.csv", "a") as csv:
        csv.write("./cat/1.png,0,70\n")  # the same file as row 3, written differently
    with pytest.raises(DataError, match=r"lists the image 'cat/1.png' more than once \(CSV rows \[3, 8\]\)"):
        load(config(pets, labels_csv="labels.csv", label_column="kind"), tmp_path)
    kept = load(config(pets, labels_csv="labels.csv", label_column="kind", filter="age < 70"), tmp_path)
    assert len(kept) == 6  # a duplicate the filter leaves out is no duplicate


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 64], [257 * 128, 65535]], dtype=np.uint16).repeat(4, 0).repeat(4, 1)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    decoded = folder.decode_image(tmp_path / "g16.png", 8)
    assert decoded[:, :, 0].tolist() == decoded[:, :, 2].tolist()  # grey in all three channels
    assert decoded[1, 1].tolist() == [0, 0, 0] and decoded[1, 6].tolist() == [64, 64, 64]
    assert decoded[6, 1].tolist() == [128, 128, 128] and decoded[6, 6].tolist() == [255, 255, 255]
    Image.fromarray(values).save(tmp_path / "g16t.png", transparency=257 * 64)  # a transparent grey value
    assert folder.decode_image(tmp_path / "g16t.png", 8)[1, 6].tolist() == [255, 255, 255]


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_onto_white(tmp_path: Path, mode: str) -> None:
    rgba = Image.new("RGBA", (8, 8), (40, 40, 200, 255))
    rgba.paste((40, 40, 200, 0), (0, 0, 8, 4))  # the top half fully transparent
    rgba.paste((40, 40, 200, 128), (0, 4, 4, 8))  # a half-transparent quarter
    if mode == "P":
        pic = Image.new("P", (8, 8), 1)
        pic.putpalette([255, 0, 0, 40, 40, 200] + [0] * 762)
        pic.paste(0, (0, 0, 8, 4))
        pic.info["transparency"] = 0  # palette entry 0 (red) is transparent
    else:
        pic = rgba.convert(mode)
    pic.save(tmp_path / "a.png")
    decoded = folder.decode_image(tmp_path / "a.png", 8).astype(int)
    assert (decoded[:4] == 255).all()  # transparent: white, not the hidden colour
    colour = np.array([40, 40, 200]) if mode != "LA" else np.array(rgba.convert("L").getpixel((7, 7)))
    assert (abs(decoded[6, 6] - colour) <= 1).all()
    if mode != "P":
        assert (abs(decoded[6, 1] - (colour + 255) / 2) <= 2).all()  # half alpha: half way to white
