"""The paper's two user studies: material with answer keys, responses, scoring with Wilson intervals.

*classification*: observers see how an attribute changes images and the classifier's probability, then predict
which of a new original/changed pair (shown as A and B in random order) the classifier scores higher for the class.
*match the change*: four toggling images in a 2x2 grid (A-D), three changed by one attribute and one by another:
which one differs? Each study folder holds one PNG/GIF per question, the per-option files, and ``answer_key.csv``.
"""
from __future__ import annotations

import csv
import html as h
import io
import logging
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from stylexlib.core.io import write_table, write_text
from stylexlib.core.lock import file_lock
from stylexlib.explain.attfind.examples import AttributeExamples, by_class
from stylexlib.report.gallery import replaced_dir
from stylexlib.report.viz import caption, display_scale, save_gif, save_png, stack, to_pil

log = logging.getLogger(__name__)

STUDIES = ("classification", "match")
CHANCE = {"classification": 0.5, "match": 0.25}
KEY_FILE = "answer_key.csv"
RESPONSES_FILE = "responses.csv"
RESPONSE_COLUMNS = ("respondent", "question_id", "answer", "seconds", "answered_at")
LETTERS = "ABCD"
_ATTRIBUTE = ["attribute", "class_index", "class_name", "rank", "flat", "direction"]
CLASSIFICATION_COLUMNS = ["question_id", "study", "file", "A_file", "B_file", "prompt", "options", "correct", *_ATTRIBUTE,
                          "image_index", "A_is", "B_is", "A_prob", "B_prob", "demo_image_indices"]
MATCH_COLUMNS = (["question_id", "study", "file", "static_file", "prompt", "options", "correct", *_ATTRIBUTE,
                  *[f"odd_{c}" for c in _ATTRIBUTE], "image_index"]
                 + [f"{x}_{c}" for x in LETTERS for c in ("file", "attribute", "class_name", "image_index")])


class StudyError(ValueError):
    """Study material, responses or a form export do not fit; the message names the file and column."""


def _attribute_fields(ex: AttributeExamples, prefix: str = "") -> dict:
    return {f"{prefix}attribute": ex.label, f"{prefix}class_index": ex.class_index, f"{prefix}class_name": ex.class_name,
            f"{prefix}rank": ex.rank, f"{prefix}flat": ex.flat, f"{prefix}direction": ex.label.rsplit(" ", 1)[-1]}


def _same_attribute(a: AttributeExamples, b: AttributeExamples) -> bool:
    return a.flat == b.flat and a.label.rsplit(" ", 1)[-1] == b.label.rsplit(" ", 1)[-1]


def _title(width: int, text: str, size: int = 13) -> Image.Image:
    return caption(Image.new("RGB", (width, 0), (255, 255, 255)), text, size=size, above=True)


def _write_study(questions: list[tuple], write_question: Callable[..., dict], prefix: str, columns: Sequence[str],
                 out_dir: str | Path, rng: np.random.Generator) -> pd.DataFrame:
    """Write the questions in a seeded random order (ids ``{prefix}-001`` ...) and the answer key; return the key."""
    rows = []
    with replaced_dir(out_dir) as tmp:
        for number, q in enumerate(rng.permutation(len(questions)), 1):
            rows.append(write_question(*questions[q], f"{prefix}-{number:03d}", tmp))
        key = pd.DataFrame(rows, columns=columns)
        write_table(tmp / KEY_FILE, key)
    return key


# --------------------------------------------------------------------------------------------- classification
def make_classification_study(examples: Sequence[AttributeExamples], out_dir: str | Path, seed: int = 0, demos: int = 3,
                              questions_per_attribute: int = 1, min_gap: float = 0.05) -> pd.DataFrame:
    """Write the classification study (PNG per question, A/B files, answer_key.csv) and return its key.

    Each question shows up to ``demos`` other examples of its attribute (at least one); attributes whose pairs all
    change p(class) by less than ``min_gap`` are skipped, so the answer is never a coin toss.
    """
    rng = np.random.default_rng(seed)
    questions = []
    for ex in [e for group in by_class(examples).values() for e in group]:
        p0, p1 = (p.numpy() for p in ex.class_probs())
        candidates = [i for i in range(ex.num_examples) if abs(p1[i] - p0[i]) >= min_gap]
        count = min(questions_per_attribute, len(candidates), ex.num_examples - 1)
        if count < 1:
            log.warning("classification study: skipped %s (%s): needs 2 examples, one with |Δp| >= %.2f",
                        ex.label, ex.class_name, min_gap)
            continue
        held = [int(i) for i in rng.choice(candidates, size=count, replace=False)]
        shown = [i for i in range(ex.num_examples) if i not in held][:demos]
        questions += [(ex, h, shown, bool(rng.random() < 0.5)) for h in held]
    return _write_study(questions, _classification_question, "cls", CLASSIFICATION_COLUMNS, out_dir, rng)


def _classification_question(ex: AttributeExamples, held: int, shown: list[int], changed_first: bool,
                             qid: str, folder: Path) -> dict:
    scale = display_scale(ex.originals.shape[-1], 96)
    p0, p1 = (p.numpy() for p in ex.class_probs())
    pairs = [stack([caption(to_pil(ex.originals[i], scale), f"original p={p0[i]:.2f}", size=11),
                    caption(to_pil(ex.changed[i], scale), f"changed p={p1[i]:.2f}", size=11)], gap=3) for i in shown]
    demo_row = stack(pairs, gap=18)
    kinds = ("changed", "original") if changed_first else ("original", "changed")
    images = {"original": ex.originals[held], "changed": ex.changed[held]}
    probs = {"original": float(p0[held]), "changed": float(p1[held])}
    options = [to_pil(images[kind], scale) for kind in kinds]
    prompt = (f"Above: how one attribute changes images (original → changed) and the classifier's probability of "
              f"“{ex.class_name}”. Which new image, A or B, does the classifier score higher for “{ex.class_name}”?")
    test_row = stack([caption(pic, letter, size=14) for pic, letter in zip(options, "AB")], gap=24)
    width = max(demo_row.width, test_row.width)
    sheet = stack([_title(width, f"Examples of the attribute (class “{ex.class_name}”)"), demo_row,
                   _title(width, f"Which image does the classifier score higher for “{ex.class_name}”?"), test_row],
                  horizontal=False, gap=8)
    files = {"file": f"classification/{qid}.png", "A_file": f"classification/{qid}_A.png", "B_file": f"classification/{qid}_B.png"}
    save_png(sheet, folder / f"{qid}.png")
    for letter, pic in zip("AB", options):
        save_png(pic, folder / f"{qid}_{letter}.png")
    correct = "A" if probs[kinds[0]] > probs[kinds[1]] else "B"
    return {"question_id": qid, "study": "classification", **files, "prompt": prompt, "options": "A|B", "correct": correct,
            **_attribute_fields(ex), "image_index": ex.image_indices[held], "A_is": kinds[0], "B_is": kinds[1],
            "A_prob": probs[kinds[0]], "B_prob": probs[kinds[1]],
            "demo_image_indices": ";".join(str(ex.image_indices[i]) for i in shown)}


# --------------------------------------------------------------------------------------------- match the change
def make_match_study(examples: Sequence[AttributeExamples], out_dir: str | Path, seed: int = 0,
                     questions_per_attribute: int = 1) -> pd.DataFrame:
    """Write the match-the-change study (2x2 GIF + PNG per question, per-cell GIFs, answer_key.csv); return its key."""
    rng = np.random.default_rng(seed)
    ordered = [e for group in by_class(examples).values() for e in group]
    questions = []
    for ex in ordered:
        others = [o for o in ordered if not _same_attribute(o, ex)]
        if ex.num_examples < 3 or not others:
            log.warning("match study: skipped %s (%s): needs 3 examples and another attribute", ex.label, ex.class_name)
            continue
        for _ in range(questions_per_attribute):
            same = [int(i) for i in rng.choice(ex.num_examples, size=3, replace=False)]
            odd = others[int(rng.integers(len(others)))]
            used = {ex.image_indices[i] for i in same}
            fresh = [i for i in range(odd.num_examples) if odd.image_indices[i] not in used] or list(range(odd.num_examples))
            odd_i = int(fresh[int(rng.integers(len(fresh)))])
            position = int(rng.integers(4))
            cells = [(ex, i) for i in same]
            cells.insert(position, (odd, odd_i))
            questions.append((ex, odd, odd_i, position, cells))
    return _write_study(questions, _match_question, "match", MATCH_COLUMNS, out_dir, rng)


def _match_question(ex: AttributeExamples, odd: AttributeExamples, odd_i: int, position: int,
                    cells: list[tuple[AttributeExamples, int]], qid: str, folder: Path) -> dict:
    scale = display_scale(ex.originals.shape[-1], 96)
    frames = [[caption(to_pil(getattr(e, kind)[i], scale), letter, size=14) for (e, i), letter in zip(cells, LETTERS)]
              for kind in ("originals", "changed")]
    for letter, before, after in zip(LETTERS, *frames):
        save_gif([before, after], folder / f"{qid}_{letter}.gif")
    grid = [stack([stack(cells_[:2], gap=12), stack(cells_[2:], gap=12)], horizontal=False, gap=12) for cells_ in frames]
    save_gif(grid, folder / f"{qid}.gif")
    static = [stack([to_pil(e.originals[i], scale), to_pil(e.changed[i], scale)], gap=3) for e, i in cells]
    static = [caption(pic, f"{letter}: original | changed", size=12) for pic, letter in zip(static, LETTERS)]
    save_png(stack([stack(static[:2], gap=16), stack(static[2:], gap=16)], horizontal=False, gap=12), folder / f"{qid}.png")
    row = {"question_id": qid, "study": "match", "file": f"match/{qid}.gif", "static_file": f"match/{qid}.png",
           "prompt": "Each of the four images toggles between an original and a changed version. Three show the same "
                     "change; which one (A, B, C or D) shows a different change?",
           "options": "A|B|C|D", "correct": LETTERS[position], **_attribute_fields(ex), **_attribute_fields(odd, "odd_"),
           "image_index": odd.image_indices[odd_i]}
    for letter, (e, i) in zip(LETTERS, cells):
        row.update({f"{letter}_file": f"match/{qid}_{letter}.gif", f"{letter}_attribute": e.label,
                    f"{letter}_class_name": e.class_name, f"{letter}_image_index": e.image_indices[i]})
    return row


# --------------------------------------------------------------------------------------------- both studies
def generate_studies(examples: Sequence[AttributeExamples], out_dir: str | Path, seed: int = 0, demos: int = 3,
                     questions_per_attribute: int = 1, min_gap: float = 0.05, force: bool = False) -> pd.DataFrame:
    """Both studies under ``out_dir`` (classification/, match/, index.html form); returns the combined answer key.

    Refuses (unless ``force``) to replace material whose questions differ while ``responses.csv`` holds answers to it.
    """
    out_dir = Path(out_dir)
    responses = out_dir / RESPONSES_FILE
    old = load_answer_key(out_dir) if any((out_dir / s / KEY_FILE).exists() for s in STUDIES) else None
    scratch = out_dir / ".new-material"
    try:
        key = pd.concat([
            make_classification_study(examples, scratch / "classification", seed, demos, questions_per_attribute, min_gap),
            make_match_study(examples, scratch / "match", seed + 1, questions_per_attribute),
        ], ignore_index=True)
        if old is not None and responses.exists() and not force and not _same_key(old, key):
            raise StudyError(f"{responses} holds answers to the current questions and the new material differs; "
                             "move it away (or pass force=True) before regenerating")
        for study in STUDIES:
            with replaced_dir(out_dir / study) as tmp:
                for item in (scratch / study).iterdir():
                    item.rename(tmp / item.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_text(out_dir / "index.html", form_page(key))
    log.info("wrote %d study questions to %s", len(key), out_dir)
    return load_answer_key(out_dir)


def _same_key(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    columns = ["question_id", "correct", "attribute", "image_index"]
    return len(a) == len(b) and a[columns].astype(str).reset_index(drop=True).equals(b[columns].astype(str).reset_index(drop=True))


def load_answer_key(study_dir: str | Path) -> pd.DataFrame:
    """The answer keys of the studies in ``study_dir`` (classification first), one row per question."""
    study_dir = Path(study_dir)
    keys = [pd.read_csv(study_dir / s / KEY_FILE, dtype={"correct": str}) for s in STUDIES if (study_dir / s / KEY_FILE).exists()]
    if not keys:
        raise StudyError(f"no {KEY_FILE} under {study_dir}/{{{','.join(STUDIES)}}}; generate the studies first (stage 07)")
    key = pd.concat(keys, ignore_index=True)
    whole = [c for c in key.columns if c.endswith(("rank", "flat", "class_index", "image_index"))]
    return key.astype({c: "Int64" for c in whole})


def export_for_respondents(study_dir: str | Path, dest: str | Path) -> Path:
    """Copy the form page and the material to ``dest``, without answer keys or responses; returns the form."""
    study_dir, dest = Path(study_dir), Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty; choose a new folder for the respondents' copy")
    for study in STUDIES:
        if (study_dir / study).exists():
            shutil.copytree(study_dir / study, dest / study, ignore=shutil.ignore_patterns(KEY_FILE, ".*"))
    shutil.copy2(study_dir / "index.html", dest / "index.html")
    return dest / "index.html"


def form_page(key: pd.DataFrame, title: str = "StylEx user study") -> str:
    """An offline HTML form with every question; its button downloads the answers as a responses CSV."""
    blocks = []
    for q in key.itertuples():
        radios = " ".join(f'<label><input type="radio" name="{q.question_id}" value="{o}"> {o}</label>' for o in q.options.split("|"))
        blocks.append(f'<section><h3>{h.escape(q.question_id)}</h3><p>{h.escape(q.prompt)}</p>'
                      f'<img src="{h.escape(q.file)}" alt="question {h.escape(q.question_id)}"><p>{radios}</p></section>')
    script = ("function quote(t){return '\"'+t.replace(/\"/g,'\"\"')+'\"';}"
              "function download(){var name=document.getElementById('who').value||'anonymous';"
              f"var rows=[{list(RESPONSE_COLUMNS)!r}.join(',')];var now=new Date().toISOString();"
              "document.querySelectorAll('input[type=radio]:checked').forEach(function(r){"
              "rows.push([quote(name),r.name,r.value,'',now].join(','));});"
              "var a=document.createElement('a');a.href=URL.createObjectURL(new Blob([rows.join('\\n')+'\\n'],{type:'text/csv'}));"
              "a.download='responses_'+name.replace(/\\W+/g,'_')+'.csv';a.click();}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{h.escape(title)}</title><style>'
            "body{font-family:system-ui,sans-serif;margin:24px;max-width:900px}section{border-top:1px solid #ddd;padding:8px 0}"
            f"img{{image-rendering:pixelated}}</style><script>{script}</script></head><body><h1>{h.escape(title)}</h1>"
            "<p>Answer every question, then download your answers and send the CSV file to the experimenter.</p>"
            '<p>Your name or code: <input id="who"></p>' + "\n".join(blocks)
            + '<p><button onclick="download()">Download my answers (CSV)</button></p></body></html>\n')


# --------------------------------------------------------------------------------------------- responses
def append_response(path: str | Path, respondent: str, question_id: str, answer: str, seconds: float = float("nan")) -> None:
    """Append one response to a responses CSV atomically (never half-written) and under a lock (never lost to a
    concurrent append)."""
    path = Path(path)
    with file_lock(path.with_name(f".lock-{path.name}"), wait=True):  # hidden: not exported
        text = path.read_text() if path.exists() else ""
        if text and text.splitlines()[0].split(",") != list(RESPONSE_COLUMNS):
            raise StudyError(f"{path}: not a responses file (header {text.splitlines()[0]!r}, "
                             f"expected {','.join(RESPONSE_COLUMNS)})")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if not text:
            writer.writerow(RESPONSE_COLUMNS)
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        writer.writerow([respondent, question_id, answer, "" if seconds != seconds else f"{seconds:.3f}", stamp])
        write_text(path, text + buffer.getvalue())


def normalize_answer(value: object, where: str) -> str | None:
    """A form's answer ("B", "b", "Image B", "Option C") as a letter; None when empty."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
        return None
    text = str(value).strip()
    match = re.fullmatch(r"(?:(?:image|option|position|picture)\s*)?([A-Da-d])[.)]?", text, flags=re.IGNORECASE)
    if not match:
        raise StudyError(f"{where}: cannot read the answer {text!r}; expected a letter A-D (e.g. 'B' or 'Image B')")
    return match.group(1).upper()


QUESTION_ID = re.compile(r"\b(?:cls|match)-\d{3}\b")


def read_responses(path: str | Path, mapping: dict[str, str] | str | None = None,
                   respondent_column: str | None = None) -> pd.DataFrame:
    """Responses in the runner's long format; ``mapping`` {form column: question_id} reads a form export (wide).

    ``mapping="auto"`` maps every column whose title contains a question id (e.g. "cls-003: which image ...").
    """
    path = Path(path)
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if mapping == "auto":
        mapping = {c: m.group(0) for c in table.columns if (m := QUESTION_ID.search(c))}
        if not mapping:
            raise StudyError(f"{path}: no column title contains a question id like 'cls-001' or 'match-001'")
    if mapping is None:
        for column in RESPONSE_COLUMNS[:3]:
            if column not in table.columns:
                raise StudyError(f"{path}: missing column '{column}' (columns: {', '.join(table.columns)}); "
                                 "for a form export pass mapping={form column: question_id}")
        long = table.reindex(columns=list(RESPONSE_COLUMNS), fill_value="")
        long["answer"] = [normalize_answer(a, f"{path} row {i + 2}, column 'answer'") for i, a in enumerate(long["answer"])]
    else:
        for column in [*mapping, *([respondent_column] if respondent_column else [])]:
            if column not in table.columns:
                detail = f" (mapped to question {mapping[column]})" if column in mapping else " (respondent_column)"
                raise StudyError(f"{path}: missing column '{column}'{detail}; columns: {', '.join(table.columns)}")
        who = table[respondent_column] if respondent_column else pd.Series([f"row{i + 1}" for i in range(len(table))])
        rows = [{"respondent": who.iloc[i], "question_id": qid,
                 "answer": normalize_answer(table[column].iloc[i], f"{path} row {i + 2}, column '{column}'"),
                 "seconds": "", "answered_at": ""}
                for i in range(len(table)) for column, qid in mapping.items()]
        long = pd.DataFrame(rows, columns=list(RESPONSE_COLUMNS))
    long = long[long["answer"].notna()].reset_index(drop=True)
    long["seconds"] = pd.to_numeric(long["seconds"], errors="coerce")
    return long


def simulate_respondent(key: pd.DataFrame, accuracy: float, seed: int = 0, respondent: str = "simulated") -> pd.DataFrame:
    """Responses of a simulated observer who is right with probability ``accuracy``, else picks a wrong option."""
    rng = np.random.default_rng(seed)
    rows = []
    for q in key.itertuples():
        wrong = [o for o in q.options.split("|") if o != q.correct]
        answer = q.correct if rng.random() < accuracy else wrong[int(rng.integers(len(wrong)))]
        rows.append({"respondent": respondent, "question_id": q.question_id, "answer": answer,
                     "seconds": float("nan"), "answered_at": ""})
    return pd.DataFrame(rows, columns=list(RESPONSE_COLUMNS))


# --------------------------------------------------------------------------------------------- scoring
def wilson_interval(successes: np.ndarray | int, n: np.ndarray | int, z: float = 1.959963984540054
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval (95% by default: z is the normal's 97.5% quantile) of a binomial proportion, without
    continuity correction (``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``); NaN where n == 0."""
    k, n = np.asarray(successes, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def score_responses(key: pd.DataFrame, responses: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per attribute, per study and overall, with 95% Wilson intervals and the chance level."""
    unknown = sorted(set(responses["question_id"]) - set(key["question_id"]))
    if unknown:
        raise StudyError(f"responses to questions not in the answer key: {', '.join(unknown[:5])}"
                         f"{' ...' if len(unknown) > 5 else ''} (was the material regenerated?)")
    answers = responses.drop_duplicates(["respondent", "question_id"], keep="last")
    if len(answers) < len(responses):
        log.warning("%d repeated answers: kept each respondent's last", len(responses) - len(answers))
    merged = answers.merge(key, on="question_id", how="left")
    bad = [a for a, opts in zip(merged["answer"], merged["options"]) if a not in opts.split("|")]
    if bad:
        raise StudyError(f"answers outside the question's options: {bad[:5]}")
    merged["is_correct"] = merged["answer"] == merged["correct"]
    groups = [(("study", "class_name", "rank", "attribute"), merged), (("study",), merged)]
    parts = [g.groupby(list(cols), sort=True)["is_correct"].agg(["size", "sum"]).reset_index() for cols, g in groups]
    parts[1][["class_name", "rank", "attribute"]] = ["", 0, "all attributes"]
    total = pd.DataFrame([{"study": "all", "class_name": "", "rank": 0, "attribute": "all questions",
                           "size": len(merged), "sum": int(merged["is_correct"].sum())}])
    table = pd.concat([*parts, total], ignore_index=True).rename(columns={"size": "n", "sum": "correct"})
    table["accuracy"] = table["correct"] / table["n"]
    table["ci_low"], table["ci_high"] = wilson_interval(table["correct"].to_numpy(), table["n"].to_numpy())
    table["chance"] = table["study"].map(CHANCE)
    table["respondents"] = len(set(merged["respondent"]))
    return table[["study", "class_name", "rank", "attribute", "n", "correct", "accuracy", "ci_low", "ci_high",
                  "chance", "respondents"]]


def score_plot(table: pd.DataFrame) -> plt.Figure:
    """Accuracy per attribute with 95% Wilson intervals, one panel per study, chance level dashed."""
    studies = [s for s in STUDIES if s in set(table["study"])]
    heights = [max(2, (table["study"] == s).sum()) for s in studies]
    fig, axes = plt.subplots(len(studies), 1, figsize=(7, 0.42 * sum(heights) + 1.2 * len(studies)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, study in zip(axes[:, 0], studies):
        rows = table[table["study"] == study].reset_index(drop=True)
        names = [f"{r.class_name} #{r.rank} {r.attribute}" if r.class_name else r.attribute for r in rows.itertuples()]
        y = np.arange(len(rows))[::-1]
        colours = ["C1" if not r.class_name else "C0" for r in rows.itertuples()]
        err = np.vstack([rows["accuracy"] - rows["ci_low"], rows["ci_high"] - rows["accuracy"]])
        ax.barh(y, rows["accuracy"], xerr=err, color=colours, capsize=3, alpha=0.85)
        ax.axvline(CHANCE[study], color="k", ls="--", lw=1, label=f"chance {CHANCE[study]:.2f}")
        ax.set_yticks(y, [f"{n}  (n={k})" for n, k in zip(names, rows["n"])], fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_title(f"{study}: accuracy with 95% Wilson intervals", fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
    axes[-1, 0].set_xlabel("accuracy")
    fig.tight_layout()
    return fig
