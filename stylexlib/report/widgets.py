"""JupyterLab widgets: the attribute browser (live StyleSpace edits) and the user-study runner.

Both are ``ipywidgets.VBox`` subclasses: display them in a notebook, or drive them from Python by setting their
child widgets' values (what the tests do). Without a frontend (papermill) they build and render all the same.
"""
from __future__ import annotations

import contextlib
import hashlib
import html
import io
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator, Protocol

import ipywidgets as widgets
import pandas as pd
import torch
from torch import Tensor

from stylexlib.data import ImageDataset
from stylexlib.data.folder import decode_image
from stylexlib.report.study import RESPONSES_FILE, STUDIES, StudyError, append_response, load_answer_key, read_responses
from stylexlib.report.viz import to_pil

log = logging.getLogger(__name__)

ATTRIBUTE_COLUMNS = ("class_index", "rank", "flat", "direction")


class Editor(Protocol):
    """What the browser needs from ``editor.AttributeEditor``."""

    class_names: list[str]
    resolution: int

    def encode(self, images: Tensor) -> Tensor: ...
    def render(self, styles: Tensor) -> Tensor: ...
    def probabilities(self, images: Tensor) -> Tensor: ...
    def edit(self, styles: Tensor, flat: int, direction: str, strength: float = 1.0) -> Tensor: ...


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` intra-op threads (None: unchanged); restores the previous count."""
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class LRU(OrderedDict):
    """A small least-recently-used cache: ``get_or(key, make)``."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_or(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The cached value for ``key``, made (and cached) on a miss."""
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        while len(self) > self.size:
            self.popitem(last=False)
        return value


def load_image_bytes(data: bytes, resolution: int) -> Tensor:
    """An uploaded image file's bytes -> uint8 (1, 3, R, R), decoded exactly as the same file in an image folder."""
    return torch.from_numpy(decode_image(io.BytesIO(data), resolution)).permute(2, 0, 1)[None]


def png_bytes(image: Tensor, scale: int = 1) -> bytes:
    """One image (3, H, W) as PNG bytes, enlarged ``scale`` times (nearest)."""
    buffer = io.BytesIO()
    to_pil(image, scale).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class AttributeBrowser(widgets.VBox):
    """Pick a class, one of its attributes, an image (dataset or upload) and a strength; see the edit live. Given an
    :class:`ImageDataset` for ``images``, the picked image's file, label and split are shown; an attributes table with
    a ``name`` column (``attfind/attribute_names.csv``) shows the names."""

    def __init__(self, editor: Editor, attributes: pd.DataFrame, images: Tensor | ImageDataset, image_index: int = 0,
                 class_index: int | None = None, max_strength: float = 2.0, display_size: int = 192, threads: int | None = 1, cache_size: int = 64) -> None:
        missing = [c for c in ATTRIBUTE_COLUMNS if c not in attributes.columns]
        if missing:
            raise ValueError(f"attributes table lacks column(s) {missing}; expected attfind/attributes.csv from stage 05")
        self.dataset = images if isinstance(images, ImageDataset) else None
        images = images.images if isinstance(images, ImageDataset) else images
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) == 0:
            raise ValueError(f"images must be uint8 (N, 3, H, W) with N > 0, got {images.dtype} {tuple(images.shape)}")
        self.editor, self.images, self.threads = editor, images, threads
        self.attributes = attributes.sort_values(["class_index", "rank"]).reset_index(drop=True)
        self.scale = max(1, display_size // editor.resolution)
        self.last_update_seconds = float("nan")
        self.update_seconds: list[float] = []
        self.last_error: str | None = None
        self._styles, self._originals, self._edits = LRU(cache_size), LRU(cache_size), LRU(4 * cache_size)
        self._upload: tuple[str, str, Tensor] | None = None  # (name, digest, uint8 image)
        self.original_image = self.changed_image = self.probs_original = self.probs_changed = None

        names = list(editor.class_names)
        if class_index is None:  # the first class that has attributes
            class_index = int(self.attributes["class_index"].iloc[0]) if len(self.attributes) else 0
        self.class_choice = widgets.Dropdown(options=[(n, i) for i, n in enumerate(names)], value=class_index,
                                             description="class")
        self.attribute_choice = widgets.Dropdown(description="attribute", layout=widgets.Layout(width="420px"))
        self.image_index = widgets.BoundedIntText(value=image_index, min=0, max=len(images) - 1, description="image #")
        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="upload image")
        self.source = widgets.ToggleButtons(options=["dataset", "upload"], value="dataset", description="image from")
        self.strength = widgets.FloatSlider(value=1.0, min=0.0, max=max_strength, step=0.05, description="strength",
                                            readout_format=".2f", continuous_update=True)
        self.input_view, self.original_view, self.changed_view = (widgets.Image(format="png") for _ in range(3))
        self.probs_view, self.status, self.image_info = widgets.HTML(), widgets.HTML(), widgets.HTML()
        panes = [widgets.VBox([widgets.HTML(f"<b>{title}</b>"), view]) for title, view in
                 (("input", self.input_view), ("original (reconstruction)", self.original_view), ("changed", self.changed_view))]
        super().__init__([widgets.HBox([self.class_choice, self.attribute_choice]),
                          widgets.HBox([self.source, self.image_index, self.upload]), self.image_info, self.strength,
                          widgets.HBox(panes), self.probs_view, self.status])

        self.class_choice.observe(self._on_class, "value")
        self.upload.observe(self._on_upload, "value")
        self.image_index.observe(self._on_index, "value")
        for control in (self.attribute_choice, self.source, self.strength):
            control.observe(self._on_control, "value")
        self._populating = False
        self._populate_attributes()
        self.refresh()

    # ----------------------------------------------------------------------------------------- controls
    def _populate_attributes(self) -> None:
        rows = self.attributes[self.attributes["class_index"] == self.class_choice.value]
        options = [(self._describe(row), int(position)) for position, row in rows.iterrows()]
        self._populating = True  # one refresh after the new list, not one per trait change
        try:
            self.attribute_choice.options = options
            self.attribute_choice.value = options[0][1] if options else None
        finally:
            self._populating = False

    def _describe(self, row: pd.Series) -> str:
        label = (f"{row['layer_name']}[{row['channel']}] {row['direction']}" if {"layer_name", "channel"} <= set(row.index)
                 else f"s[{row['flat']}] {row['direction']}")
        effect = f"  (effect {row['mean_effect']:+.3f})" if "mean_effect" in row.index else ""
        name = str(row["name"]).strip() if "name" in row.index and pd.notna(row["name"]) else ""
        return f"#{row['rank']} {name + ': ' if name else ''}{label}{effect}"

    def _on_control(self, _: dict) -> None:
        if not self._populating:
            self.refresh()

    def _on_class(self, _: dict) -> None:
        self._populate_attributes()
        self.refresh()

    def _on_index(self, _: dict) -> None:
        if self.source.value != "dataset":
            self.source.value = "dataset"  # its observer refreshes
        else:
            self.refresh()

    def _on_upload(self, change: dict) -> None:
        if not change["new"]:
            return
        item = change["new"][-1]
        data = bytes(item["content"])
        try:
            image = load_image_bytes(data, self.editor.resolution)
        except Exception as err:  # PIL raises several types for unreadable files
            self._fail(f"could not read {item.get('name', 'the upload')}: {err}")
            return
        self._upload = (item.get("name", "upload"), hashlib.sha1(data).hexdigest(), image)
        if self.source.value != "upload":
            self.source.value = "upload"
        else:
            self.refresh()

    # ----------------------------------------------------------------------------------------- rendering
    def current_image(self) -> tuple[Hashable, Tensor, str]:
        """(cache key, uint8 image (1, 3, R, R), description) of the image being edited."""
        if self.source.value == "upload" and self._upload is not None:
            name, digest, image = self._upload
            return ("upload", digest), image, f"upload {name}"
        index = int(self.image_index.value)
        image = self.images[index:index + 1]
        if image.shape[-1] != self.editor.resolution:
            image = torch.nn.functional.interpolate(image.float(), size=self.editor.resolution, mode="area").round().to(torch.uint8)
        return ("dataset", index), image, self.describe_image(index)

    def describe_image(self, index: int) -> str:
        """``image #i``, with its file, label and split when the browser was given the dataset."""
        data = self.dataset
        if data is None:
            return f"image #{index}"
        parts = [f"image #{index}"] + ([data.files[index]] if data.files else [])
        return " · ".join(parts + [f"label {data.class_names[int(data.labels[index])]}", f"{data.split[index]} split"])

    def current_attribute(self) -> pd.Series | None:
        """The selected row of the attributes table (None when the class has none)."""
        value = self.attribute_choice.value
        return None if value is None else self.attributes.loc[value]

    def _original(self, key: Hashable, image: Tensor) -> dict:
        def make() -> dict:
            styles = self._styles.get_or(key, lambda: self.editor.encode(image).cpu())
            render = self.editor.render(styles)
            probs = self.editor.probabilities(torch.cat([image.float().div(127.5).sub(1), render]))
            return {"styles": styles, "render": render, "p_input": probs[0], "p_render": probs[1],
                    "png_input": png_bytes(image[0], self.scale), "png_render": png_bytes(render[0], self.scale)}
        return self._originals.get_or(key, make)

    def _edited(self, key: Hashable, original: dict, flat: int, direction: str, strength: float) -> dict:
        def make() -> dict:
            render = self.editor.render(self.editor.edit(original["styles"], flat, direction, strength))
            return {"render": render, "p": self.editor.probabilities(render)[0], "png": png_bytes(render[0], self.scale)}
        return self._edits.get_or((key, flat, direction, round(strength, 4)), make)

    def refresh(self) -> None:
        """Re-render the edit for the current controls (cached where possible) and time it."""
        start = time.perf_counter()
        try:
            with torch_threads(self.threads), torch.no_grad():
                key, image, where = self.current_image()
                original = self._original(key, image)
                row, strength = self.current_attribute(), float(self.strength.value)
                if row is None or strength == 0:
                    edited = {"render": original["render"], "p": original["p_render"], "png": original["png_render"]}
                else:
                    edited = self._edited(key, original, int(row["flat"]), str(row["direction"]), strength)
        except Exception as err:  # shown in the widget: a callback's exception would otherwise vanish
            log.exception("attribute browser update failed")
            self._fail(f"update failed: {type(err).__name__}: {err}")
            return
        self.input_view.value, self.original_view.value, self.changed_view.value = (
            original["png_input"], original["png_render"], edited["png"])
        self.original_image, self.changed_image = original["render"][0], edited["render"][0]
        self.probs_original, self.probs_changed = original["p_render"], edited["p"]
        self.probs_view.value = self._probability_table(original["p_input"], original["p_render"], edited["p"])
        self.last_update_seconds = time.perf_counter() - start
        self.update_seconds.append(self.last_update_seconds)
        self.last_error = None
        what = "no attribute for this class" if row is None else f"{self._describe(row)} at strength {strength:.2f}"
        self.image_info.value = f"<small>{html.escape(where)}</small>"
        self.status.value = (f"<small>{html.escape(where)} · {html.escape(what)} · updated in "
                             f"{1000 * self.last_update_seconds:.1f} ms</small>")

    def _probability_table(self, p_input: Tensor, p_original: Tensor, p_changed: Tensor) -> str:
        chosen = self.class_choice.value
        rows = []
        for c, name in enumerate(self.editor.class_names):
            delta = float(p_changed[c] - p_original[c])
            bar = (f'<div style="background:#4a7;height:10px;width:{100 * float(p_changed[c]):.0f}px"></div>')
            weight = "font-weight:bold;" if c == chosen else ""
            rows.append(f'<tr style="{weight}"><td>{html.escape(name)}</td><td>{float(p_input[c]):.3f}</td>'
                        f"<td>{float(p_original[c]):.3f}</td><td>{float(p_changed[c]):.3f}</td>"
                        f'<td style="color:{"#080" if delta >= 0 else "#a00"}">{delta:+.3f}</td><td>{bar}</td></tr>')
        return ('<table style="font-size:13px"><tr><th>class</th><th>p(input)</th><th>p(original)</th>'
                "<th>p(changed)</th><th>Δ</th><th></th></tr>" + "".join(rows) + "</table>")

    def _fail(self, message: str) -> None:
        self.last_error = message
        self.status.value = f'<span style="color:#a00">{html.escape(message)}</span>'


class StudyRunner(widgets.VBox):
    """Shows study questions one at a time; each answer is appended atomically to a responses CSV.

    Restarting with the same CSV and respondent resumes at the first unanswered question.
    """

    def __init__(self, study_dir: str | Path, respondent: str = "anonymous", responses: str | Path | None = None,
                 studies: tuple[str, ...] = STUDIES, image_width: int = 420) -> None:
        self.study_dir = Path(study_dir)
        key = load_answer_key(self.study_dir)
        self.key = key[key["study"].isin(studies)].reset_index(drop=True)
        if self.key.empty:
            raise StudyError(f"no questions of studies {studies} in {self.study_dir}")
        self.respondent = respondent
        self.responses_path = Path(responses) if responses is not None else self.study_dir / RESPONSES_FILE
        answered: set[str] = set()
        if self.responses_path.exists():
            table = read_responses(self.responses_path)
            answered = set(table.loc[table["respondent"] == respondent, "question_id"])
        self.pending = [i for i, qid in enumerate(self.key["question_id"]) if qid not in answered]
        self.progress, self.prompt, self.status = widgets.HTML(), widgets.HTML(), widgets.HTML()
        self.picture = widgets.Image(layout=widgets.Layout(width=f"{image_width}px"))
        self.buttons = widgets.HBox()
        self._shown_at = time.monotonic()
        super().__init__([self.progress, self.prompt, self.picture, self.buttons, self.status])
        self._show()

    @property
    def current(self) -> pd.Series | None:
        """The question on screen (a row of the answer key), None when all are answered."""
        return self.key.iloc[self.pending[0]] if self.pending else None

    @property
    def done(self) -> bool:
        """Whether every question has an answer from this respondent."""
        return not self.pending

    def answer(self, choice: str) -> None:
        """Record ``choice`` (a letter) for the current question and show the next one."""
        question = self.current
        if question is None:
            raise StudyError("the study is finished: every question has an answer")
        options = question["options"].split("|")
        if choice not in options:
            raise StudyError(f"{question['question_id']}: answer must be one of {options}, got {choice!r}")
        append_response(self.responses_path, self.respondent, question["question_id"], choice,
                        time.monotonic() - self._shown_at)
        self.pending.pop(0)
        self._show()

    def _show(self) -> None:
        total = len(self.key)
        question = self.current
        if question is None:
            self.progress.value = f"<b>Done</b>: {total} of {total} answered. Thank you!"
            self.prompt.value, self.buttons.children = "", ()
            self.picture.layout.display = "none"
            self.status.value = f"<small>answers saved in {html.escape(str(self.responses_path))}</small>"
            return
        path = self.study_dir / question["file"]
        self.progress.value = (f"<b>Question {total - len(self.pending) + 1} of {total}</b> "
                               f"<small>({html.escape(question['question_id'])}, respondent {html.escape(self.respondent)})</small>")
        self.prompt.value = f"<p>{html.escape(question['prompt'])}</p>"
        self.picture.format = path.suffix.lstrip(".")
        self.picture.value = path.read_bytes()
        buttons = []
        for option in question["options"].split("|"):
            button = widgets.Button(description=option, layout=widgets.Layout(width="64px"))
            button.on_click(lambda _, choice=option: self.answer(choice))
            buttons.append(button)
        self.buttons.children = buttons
        self._shown_at = time.monotonic()
