"""The run's store of refined inversions: each image inverted once, read back by every stage, resumable; AttFind's
cache keyed by what made the styles, not by their floats."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from stylexlib.classifier.training import fit_run_classifier
from stylexlib.core.run import open_run
from stylexlib.data import load_dataset, to_float
from stylexlib.explain import StylEx
from stylexlib.explain.attfind import effects, selection
from stylexlib.explain.attfind import search as attfind
from stylexlib.gan.models import load_stylex, run_store
from stylexlib.gan.training import train_stylex
from stylexlib.stylespace import inversion
from stylexlib.gan.inversion_store import STORE_DIR, image_keys
from tests.test_explain_files import TINY as EXPLAIN_TINY

TINY = [*EXPLAIN_TINY, "attfind.num_images=6", "attfind.visible_only=false", "inversion.per_image_steps=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run folder with stages 02 and 03 done at toy sizes, inverting with two refinement steps per image."""
    run = open_run(tmp_path_factory.mktemp("run") / "run", None, TINY)
    data = load_dataset(run.cfg.data)
    fit_run_classifier(run, data)
    train_stylex(run, data, progress=False)
    attfind.run_statistics(run, data, load_stylex(run, "cpu", data), run.cfg.attfind)  # what from_run reads
    return run.dir


@pytest.fixture
def run(trained: Path, tmp_path: Path):
    """A fresh copy of the trained run folder (each test starts with no stored inversions)."""
    shutil.copytree(trained, tmp_path / "run")
    return open_run(tmp_path / "run")


@pytest.fixture
def counted(monkeypatch) -> list[int]:
    """The number of images each refined batch inverted (the store's misses)."""
    calls: list[int] = []
    real = inversion._invert_batch
    monkeypatch.setattr(inversion, "_invert_batch", lambda models, batch, *a: calls.append(len(batch)) or
                        real(models, batch, *a))
    return calls


def test_image_keys_follow_the_pixels_in_either_encoding() -> None:
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    keys = image_keys(images)
    assert len(set(keys)) == 3 and image_keys(to_float(images)) == keys  # uint8 and its [-1, 1] float: one key
    changed = images.clone()
    changed[1, 0, 0, 0] ^= 1
    assert image_keys(changed) == [keys[0], image_keys(changed)[1], keys[2]] and image_keys(changed)[1] != keys[1]
    assert image_keys(to_float(images) + 1e-3)[0] != keys[0]  # a float image off the uint8 grid keeps its own bits


def test_each_image_is_refined_once_and_read_back_by_every_reader(run, counted) -> None:
    data = load_dataset(run.cfg.data)
    models = load_stylex(run, "cpu", data)
    assert models.store is not None and models.store.folder.parent == run.dir / STORE_DIR
    images = data.images[:5]
    first = inversion.invert(models, images, batch_size=2)
    assert counted == [2, 2, 1]
    again = inversion.invert(load_stylex(run, "cpu", data), data.images[:7], batch_size=4)  # another stage
    assert counted == [2, 2, 1, 2]  # only the two new images
    assert torch.equal(again.styles[:5], first.styles)
    explainer = StylEx.from_run(run.dir, "cpu")  # stylex explain and stage 08: the run's inversion and its store
    assert explainer.models.inversion == run.cfg.inversion
    styles, _ = explainer.encode(to_float(images))
    assert counted == [2, 2, 1, 2] and torch.equal(styles, first.styles)
    alone = inversion.invert(models, images, refine=False)  # the encoder alone is cheap: computed, never stored
    assert not torch.equal(alone.styles, first.styles) and counted[-1] == 5 and len(load_stylex(run).store) == 7


def test_the_store_belongs_to_the_weights_and_settings(run) -> None:
    data = load_dataset(run.cfg.data)
    models = load_stylex(run, "cpu", data)
    other_run = dataclasses.replace(run.cfg, inversion=dataclasses.replace(run.cfg.inversion, per_image_lr=0.01))
    assert run_store(type(run)(run.dir, other_run), models).identity != models.store.identity
    with torch.no_grad():
        models.generator.affine.weight[0, 0] += 1e-3
    assert run_store(run, models).identity != models.store.identity
    no_refinement = dataclasses.replace(run.cfg, inversion=dataclasses.replace(run.cfg.inversion, per_image_steps=0))
    assert run_store(type(run)(run.dir, no_refinement), models) is None


def test_an_interrupted_inversion_keeps_the_batches_done(run, monkeypatch) -> None:
    data = load_dataset(run.cfg.data)
    real, calls = inversion._invert_batch, []

    def fail_on_the_second_batch(models, batch, *args):
        calls.append(len(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(models, batch, *args)

    monkeypatch.setattr(inversion, "_invert_batch", fail_on_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        inversion.invert(load_stylex(run, "cpu", data), data.images[:6], batch_size=3)
    calls.clear()
    monkeypatch.setattr(inversion, "_invert_batch", lambda models, batch, *a: calls.append(len(batch)) or
                        real(models, batch, *a))
    inversion.invert(load_stylex(run, "cpu", data), data.images[:6], batch_size=3)
    assert calls == [3]  # the first batch was stored before the interruption


def test_stage_05_resumes_its_effects_after_an_interruption_even_from_a_refinement_off_by_float_bits(
        run, monkeypatch) -> None:
    """On a GPU a repeated refinement differs in its last bits; the effects are keyed by what made the styles, so the
    effects done before an interruption are kept."""
    data = load_dataset(run.cfg.data)
    chunks = []
    real_fast, real_compute = effects.edited_logits_fast, effects.compute_effects

    def interrupt_the_second_chunk(*args, **kwargs):
        chunks.append(len(args[2]))
        if len(chunks) == 2:
            raise KeyboardInterrupt
        return real_fast(*args, **kwargs)

    monkeypatch.setattr(effects, "edited_logits_fast", interrupt_the_second_chunk)
    monkeypatch.setattr(attfind, "compute_effects", lambda *a, **k: real_compute(*a, chunk=2, **k))
    with pytest.raises(KeyboardInterrupt):
        attfind.run_attfind(run, data, load_stylex(run, "cpu", data), progress=False)
    assert len(list((run.dir / "attfind").glob("effects.rank0.part*.pt"))) == 1
    shutil.rmtree(run.dir / STORE_DIR)  # the inversion is made again, and comes out a few bits off
    real_batch = inversion._invert_batch
    monkeypatch.setattr(inversion, "_invert_batch", lambda *a: tuple(
        column + 1e-6 if n == 2 else column for n, column in enumerate(real_batch(*a))))
    monkeypatch.setattr(effects, "edited_logits_fast", lambda *a, **k: chunks.append(len(a[2])) or real_fast(*a, **k))
    result = attfind.run_attfind(run, data, load_stylex(run, "cpu", data), progress=False)
    assert chunks == [2, 2, 2, 2]  # the first chunk came from its part file; two were left
    assert result.effects.edited_logits.shape[0] == 6 and not result.effects.edited_logits.isnan().any()
    assert not list((run.dir / "attfind").glob("effects.rank*.part*.pt"))  # removed once the whole result is saved
    stats = torch.load(run.dir / "attfind" / "style_stats.pt", weights_only=False)
    widened = effects.StyleStats.from_state_dict(stats["stats"])
    assert stats["covers"] is not None and (widened.maximum >= result.styles.amax(0) - 1e-5).all()  # as made first
    assert (widened.minimum <= result.styles.amin(0)).all()
    encoder = effects.StyleStats.from_state_dict(stats["encoder_stats"])
    assert (widened.maximum > encoder.maximum).any() or (widened.minimum < encoder.minimum).any()


def test_a_screened_stage_05_evaluates_what_it_selects_on_every_image(run) -> None:
    """attfind.screen: fewer edits evaluated than the exhaustive search, and each selected attribute's edits evaluated
    on every image (the completion), so that selecting again from the saved effects gives the same attributes."""
    run.cfg.attfind = dataclasses.replace(run.cfg.attfind, screen=True, screen_candidates=2, screen_per_image=1)
    data = load_dataset(run.cfg.data)
    result = attfind.run_attfind(run, data, load_stylex(run, "cpu", data), progress=False)
    saved = effects.Effects(**torch.load(run.dir / "attfind" / "effects.pt", weights_only=False)["effects"])
    assert saved.evaluated is not None and 0 < saved.evaluated.float().mean() < 0.5
    picked = torch.tensor(result.attributes["flat"].tolist())
    columns = (saved.coords[:, None] == picked[None]).any(1)
    assert columns.sum() == len(set(picked.tolist())) > 0 and saved.evaluated[:, columns].all()
    assert torch.equal(saved.edited_logits, result.effects.edited_logits)
    cfg = run.cfg.attfind
    for index, table in result.attributes.groupby("class_index"):
        again = selection.class_attributes(saved, int(index), cfg.top_k, cfg.output, cfg.method,
                                           *selection.default_thresholds(cfg))
        assert again["flat"].tolist() == table["flat"].tolist()
