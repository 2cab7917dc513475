"""User-study material and answer keys, responses (runner CSV and form exports), scoring with Wilson intervals."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from stylexlib.explain.attfind.examples import AttributeExamples
from stylexlib.report.study import (StudyError, append_response, export_for_respondents, generate_studies,
                                    load_answer_key, read_responses, score_plot, score_responses, simulate_respondent,
                                    wilson_interval)

NAMES = ["frown", "smile"]
K = 6


def colour(attr: int, i: int, changed: bool) -> tuple[int, int, int]:
    """A colour unique to (attribute, example, original/changed)."""
    return (20 + 37 * attr, 10 + 40 * i, 200 if changed else 60)


def make_examples(res: int = 8) -> list[AttributeExamples]:
    """2 classes x 3 attributes, K solid-colour examples each; attribute 5 changes p(class) by only 0.01."""
    out = []
    for attr in range(6):
        c, rank = divmod(attr, 3)
        imgs = [[torch.tensor(colour(attr, i, ch), dtype=torch.float32).view(3, 1, 1).expand(3, res, res) / 127.5 - 1
                 for i in range(K)] for ch in (False, True)]
        p0 = torch.linspace(0.2, 0.7, K)
        step = 0.01 if attr == 5 else 0.25
        p1 = p0 + torch.tensor([step, -step, step, step, -step, step])
        probs = lambda p: torch.stack([p, 1 - p], 1) if c == 0 else torch.stack([1 - p, p], 1)  # noqa: E731
        out.append(AttributeExamples(c, NAMES[c], rank + 1, 50 + attr, f"b8.conv1[{attr}] {'up' if attr % 2 else 'down'}",
                                     0.1, 0.5, [100 * attr + i for i in range(K)], torch.stack(imgs[0]),
                                     torch.stack(imgs[1]), probs(p0), probs(p1), NAMES))
    return out


def find(examples: list[AttributeExamples], class_name: str, rank: int) -> tuple[int, AttributeExamples]:
    """(attribute number, examples) for a key row's class and rank."""
    return next((n, e) for n, e in enumerate(examples) if e.class_name == class_name and e.rank == rank)


def solid_colour(path: Path, frame: int = 0) -> tuple[int, ...]:
    """The single colour of an option file (raises if it is not one colour)."""
    pic = Image.open(path)
    pic.seek(frame)
    pixels = np.asarray(pic.convert("RGB")).reshape(-1, 3)
    assert (pixels == pixels[0]).all(), f"{path} is not one solid image"
    return tuple(int(v) for v in pixels[0])


def centre_x(pic: Image.Image, rgb: tuple[int, ...], rows: slice = slice(None)) -> tuple[float, float]:
    """Mean (x, y) of the pixels of one exact colour."""
    pixels = np.asarray(pic.convert("RGB"))[rows]
    ys, xs = np.nonzero(np.all(pixels == rgb, axis=-1))
    assert len(xs), f"colour {rgb} not found"
    return float(xs.mean()), float(ys.mean())


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, list[AttributeExamples]]:
    examples = make_examples()
    out = tmp_path_factory.mktemp("study")
    key = generate_studies(examples, out, seed=7, demos=3, questions_per_attribute=2, min_gap=0.05)
    return out, key, examples


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_generation_is_seeded(study, tmp_path: Path) -> None:
    out, key, examples = study
    again = generate_studies(examples, tmp_path / "again", seed=7, demos=3, questions_per_attribute=2)
    pd.testing.assert_frame_equal(key, again)
    assert digest(out) == digest(tmp_path / "again")
    other = generate_studies(examples, tmp_path / "other", seed=8, demos=3, questions_per_attribute=2)
    assert not key[["question_id", "correct", "image_index"]].equals(other[["question_id", "correct", "image_index"]])
    assert set(key["correct"]) == {"A", "B", "C", "D"}  # positions are randomised


def test_classification_key_matches_material(study) -> None:
    out, key, examples = study
    rows = key[key["study"] == "classification"]
    assert len(rows) == 10 and rows["question_id"].is_unique  # attribute 5 (|Δp| = 0.01) has no usable pair
    assert "b8.conv1[5] up" not in set(rows["attribute"])
    for row in rows.itertuples():
        attr, ex = find(examples, row.class_name, row.rank)
        i = ex.image_indices.index(row.image_index)
        p0, p1 = (float(p[i]) for p in ex.class_probs())
        for letter, kind, prob in (("A", row.A_is, row.A_prob), ("B", row.B_is, row.B_prob)):
            assert solid_colour(out / getattr(row, f"{letter}_file")) == colour(attr, i, kind == "changed")
            assert prob == pytest.approx(p1 if kind == "changed" else p0)
        assert {row.A_is, row.B_is} == {"original", "changed"}
        higher = "A" if row.A_prob > row.B_prob else "B"
        assert row.correct == higher and abs(row.A_prob - row.B_prob) >= 0.05
        demos = [int(d) for d in row.demo_image_indices.split(";")]
        assert len(demos) == 3 and row.image_index not in demos
        sheet = Image.open(out / row.file)  # in the sheet, A is left of B in the bottom (question) row
        bottom = slice(sheet.height // 2, None)
        xa, _ = centre_x(sheet, solid_colour(out / row.A_file), bottom)
        xb, _ = centre_x(sheet, solid_colour(out / row.B_file), bottom)
        assert xa < xb


def test_match_key_names_the_odd_one(study) -> None:
    _, key, examples = study
    rows = key[key["study"] == "match"]
    assert len(rows) == 12 and (rows["attribute"] != rows["odd_attribute"]).all()
    for row in rows.itertuples():
        labels = {letter: getattr(row, f"{letter}_attribute") for letter in "ABCD"}
        assert [lt for lt, label in labels.items() if label != row.attribute] == [row.correct]
        assert labels[row.correct] == row.odd_attribute == find(examples, row.odd_class_name, row.odd_rank)[1].label
        shown = [getattr(row, f"{letter}_image_index") for letter in "ABCD"]
        assert len(set(shown)) == 4  # the odd one is never a repeat of a majority image


def test_match_cells_and_grid_show_the_keyed_images(study) -> None:
    out, key, examples = study
    for row in key[key["study"] == "match"].itertuples():
        grid = Image.open(out / row.file)
        for letter, quadrant in zip("ABCD", [(0, 0), (1, 0), (0, 1), (1, 1)]):
            odd = letter == row.correct
            attr, holder = find(examples, row.odd_class_name, row.odd_rank) if odd else find(examples, row.class_name, row.rank)
            i = holder.image_indices.index(getattr(row, f"{letter}_image_index"))
            for frame, changed in ((0, False), (1, True)):
                cell = Image.open(out / getattr(row, f"{letter}_file"))
                cell.seek(frame)
                assert centre_x(cell, colour(attr, i, changed))  # the cell shows that image
                grid.seek(frame)
                x, y = centre_x(grid, colour(attr, i, changed))
                assert (int(x > grid.width / 2), int(y > grid.height / 2)) == quadrant, (row.question_id, letter)
        assert row.image_index == getattr(row, f"{row.correct}_image_index")


def test_regenerating_over_answers_needs_force(study, tmp_path: Path) -> None:
    _, _, examples = study
    out = tmp_path / "s"
    generate_studies(examples, out, seed=1)
    append_response(out / "responses.csv", "ann", "cls-001", "A", 2.5)
    generate_studies(examples, out, seed=1)  # same material: fine
    with pytest.raises(StudyError, match="responses.csv holds answers"):
        generate_studies(examples, out, seed=2)
    assert load_answer_key(out).equals(load_answer_key(out)) and not (out / ".new-material").exists()
    generate_studies(examples, out, seed=2, force=True)
    assert (out / "responses.csv").exists() and (out / "index.html").read_text().count("<section>") == len(load_answer_key(out))


def test_wilson_interval_known_values() -> None:
    z2 = 1.959964**2
    low, high = wilson_interval(np.array([0, 5, 8, 0]), np.array([5, 5, 10, 0]))
    assert low[0] == 0 and high[0] == pytest.approx(z2 / (5 + z2))
    assert low[1] == pytest.approx(5 / (5 + z2)) and high[1] == 1
    assert (low[2], high[2]) == pytest.approx((0.4901625, 0.9433178), abs=1e-6)
    assert np.isnan(low[3]) and np.isnan(high[3])


def test_scores_per_attribute_and_overall(study) -> None:
    _, key, _ = study
    cls = key[key["study"] == "classification"]
    first = cls["attribute"].iloc[0]
    responses = simulate_respondent(key, accuracy=1.0, seed=0)
    wrong = responses["question_id"].isin(cls.loc[cls["attribute"] == first, "question_id"].iloc[:1])
    responses.loc[wrong, "answer"] = responses.loc[wrong, "answer"].map({"A": "B", "B": "A"})
    table = score_responses(key, responses)
    row = table[(table["study"] == "classification") & (table["attribute"] == first)].iloc[0]
    assert (row.n, row.correct, row.accuracy) == (2, 1, 0.5)
    overall = table[table["attribute"] == "all attributes"].set_index("study")
    assert overall.loc["classification", "correct"] == 9 and overall.loc["match", "accuracy"] == 1.0
    total = table[table["study"] == "all"].iloc[0]
    assert total.n == 22 and total.correct == 21
    assert (total.ci_low, total.ci_high) == pytest.approx(tuple(float(v) for v in wilson_interval(21, 22)))
    assert set(table["chance"].dropna()) == {0.5, 0.25} and len(score_plot(table).axes) == 2


def test_simulated_respondent_is_seeded_and_calibrated(study) -> None:
    _, key, _ = study
    big = pd.concat([key] * 40, ignore_index=True)
    a, b = simulate_respondent(big, 0.7, seed=3), simulate_respondent(big, 0.7, seed=3)
    assert a.equals(b)
    rate = (a["answer"].to_numpy() == big["correct"].to_numpy()).mean()
    assert 0.64 < rate < 0.76
    assert (simulate_respondent(key, 0.0)["answer"].to_numpy() != key["correct"].to_numpy()).all()


def test_runner_csv_round_trip_and_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "responses.csv"
    append_response(path, "ann, jr", "cls-001", "A", 1.25)
    append_response(path, "bob", "match-002", "D")
    back = read_responses(path)
    assert list(back["respondent"]) == ["ann, jr", "bob"] and list(back["answer"]) == ["A", "D"]
    assert back["seconds"].iloc[0] == 1.25 and np.isnan(back["seconds"].iloc[1])
    (tmp_path / "no_answer.csv").write_text("respondent,question_id,reply\nann,cls-001,A\n")
    with pytest.raises(StudyError, match=r"no_answer.csv: missing column 'answer'"):
        read_responses(tmp_path / "no_answer.csv")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(StudyError, match="not a responses file"):
        append_response(tmp_path / "other.csv", "ann", "cls-001", "A")


def test_form_export_through_a_column_mapping(study, tmp_path: Path) -> None:
    _, key, _ = study
    q1, q2 = key["question_id"].iloc[0], key["question_id"].iloc[-1]
    export = tmp_path / "form.csv"
    pd.DataFrame({"Timestamp": ["t1", "t2"], "Email Address": ["a@x", "b@x"],
                  "Question 1": [f"Image {key['correct'].iloc[0]}", "b"], "Question 2": ["", "Option C"]}).to_csv(export, index=False)
    mapping = {"Question 1": q1, "Question 2": q2}
    long = read_responses(export, mapping=mapping, respondent_column="Email Address")
    assert list(zip(long["respondent"], long["question_id"], long["answer"])) == [
        ("a@x", q1, key["correct"].iloc[0]), ("b@x", q1, "B"), ("b@x", q2, "C")]
    table = score_responses(key, long)
    assert table[table["study"] == "all"].iloc[0].n == 3
    with pytest.raises(StudyError, match=r"form.csv: missing column 'Question 3' \(mapped to question cls-002\)"):
        read_responses(export, mapping={**mapping, "Question 3": "cls-002"})
    with pytest.raises(StudyError, match="missing column 'Name'"):
        read_responses(export, mapping=mapping, respondent_column="Name")
    pd.DataFrame({"Question 1": ["maybe"]}).to_csv(export, index=False)
    with pytest.raises(StudyError, match=r"row 2, column 'Question 1'.*'maybe'"):
        read_responses(export, mapping={"Question 1": q1})
    with pytest.raises(StudyError, match="not in the answer key: nope"):
        score_responses(key, pd.DataFrame({"respondent": ["x"], "question_id": ["nope"], "answer": ["A"]}))


def test_too_few_examples_give_an_empty_but_valid_key(tmp_path: Path) -> None:
    few = [AttributeExamples(**{**ex.to_dict(), "image_indices": ex.image_indices[:1], "originals": ex.originals[:1],
                                "changed": ex.changed[:1], "probs_original": ex.probs_original[:1],
                                "probs_changed": ex.probs_changed[:1]}) for ex in make_examples()]
    key = generate_studies(few, tmp_path / "s")
    assert key.empty and {"correct", "A_is", "odd_attribute", "D_image_index"} <= set(key.columns)
    table = score_responses(key, simulate_respondent(key, 0.8))
    assert table[table["study"] == "all"].iloc[0].n == 0


def test_auto_mapping_and_the_respondents_copy(study, tmp_path: Path) -> None:
    out, key, _ = study
    export = tmp_path / "form.csv"
    pd.DataFrame({"Timestamp": ["t"], "cls-002: which image?": ["A"], "match-001 (which differs?)": ["Image D"]}).to_csv(export, index=False)
    long = read_responses(export, mapping="auto")
    assert list(zip(long["question_id"], long["answer"])) == [("cls-002", "A"), ("match-001", "D")]
    pd.DataFrame({"Timestamp": ["t"]}).to_csv(export, index=False)
    with pytest.raises(StudyError, match="no column title contains a question id"):
        read_responses(export, mapping="auto")
    form = export_for_respondents(out, tmp_path / "share")
    copied = {p.name for p in (tmp_path / "share").rglob("*")}
    assert "answer_key.csv" not in copied and "responses.csv" not in copied and not any(n.startswith(".") for n in copied)
    for src in pd.Series(form.read_text().split('src="')[1:]).str.split('"').str[0]:
        assert (tmp_path / "share" / src).is_file()
