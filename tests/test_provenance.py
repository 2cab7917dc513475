"""Provenance: artifacts record the config they were made from; a changed config never reuses a stale artifact."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from stylexlib.classifier.training import fit_run_classifier, load_run_classifier
from stylexlib.core import provenance
from stylexlib.core.config import apply_overrides, from_dict, save_config, to_dict
from stylexlib.core.run import CONFIG_FILE, open_run
from stylexlib.core.stylex_config import flat_stylex, replace_keys
from stylexlib.data import load_dataset
from stylexlib.gan.models import load_stylex
from stylexlib.gan.train import train_stylex

TINY = ["data.num_images=120", "data.resolution=16", "classifier.width=4", "classifier.epochs=1",
        "classifier.batch_size=32", "stylex.model.latent_dim=8", "stylex.model.mapping_layers=1", "stylex.model.channel_base=64",
        "stylex.model.channel_max=8", "stylex.optim.batch_size=4", "stylex.schedule.steps=2", "stylex.runtime.sample_every=0",
        "stylex.runtime.checkpoint_every=0", "stylex.runtime.device=cpu", "stylex.runtime.log_every=1"]


def reconfigure(run, *overrides: str):
    """What `stylex run --force --set ...` does to a run folder's config."""
    run.cfg = apply_overrides(run.cfg, list(overrides))
    save_config(run.cfg, run.dir / CONFIG_FILE)
    return run


def weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("change", ["classifier.lr=0.01", "classifier.epochs=2", "classifier.width=6",
                                    "data.label_noise=0.2"])
def test_a_changed_config_retrains_the_classifier_instead_of_resuming(tmp_path, change) -> None:
    run = open_run(tmp_path / "run", None, TINY)
    data = load_dataset(run.cfg.data)
    old, _ = fit_run_classifier(run, data)
    reconfigure(run, change)
    with pytest.raises(provenance.StaleArtifact, match="re-run stage 02"):
        load_run_classifier(run, data)  # the old model no longer matches config.yaml
    data = load_dataset(run.cfg.data)
    new, _ = fit_run_classifier(run, data)  # no raw scheduler / load_state_dict error, no silent reuse
    fresh, _ = fit_run_classifier(open_run(tmp_path / "fresh", None, TINY + [change]), data)
    assert torch.equal(weights(new), weights(fresh))
    if "width" not in change:
        assert not torch.equal(weights(new), weights(old))
    assert torch.equal(weights(load_run_classifier(run, data)), weights(new))


def test_an_unchanged_rerun_resumes_the_finished_classifier(tmp_path, monkeypatch) -> None:
    run = open_run(tmp_path / "run", None, TINY)
    data = load_dataset(run.cfg.data)
    first, _ = fit_run_classifier(run, data)
    calls = []
    monkeypatch.setattr("stylexlib.classifier.training.F.cross_entropy",
                        lambda *a, **k: calls.append(1) or torch.nn.functional.cross_entropy(*a, **k))
    again, _ = fit_run_classifier(run, data)
    assert calls == [] and torch.equal(weights(first), weights(again))  # nothing retrained


def test_stylex_checkpoints_continue_only_with_the_same_model_config(tmp_path) -> None:
    run = open_run(tmp_path / "run", None, TINY)
    data = load_dataset(run.cfg.data)
    fit_run_classifier(run, data)
    assert train_stylex(run, data, progress=False).steps == 2
    reconfigure(run, "stylex.schedule.steps=3")  # training longer continues the same model
    assert train_stylex(run, data, progress=False).session_steps == 1
    load_stylex(run)
    reconfigure(run, "stylex.optim.lr_g=0.001")
    with pytest.raises(provenance.StaleArtifact, match="re-run stage 03"):
        load_stylex(run)
    summary = train_stylex(run, data, progress=False)
    assert summary.session_steps == 3 and summary.steps == 3  # afresh, not resumed from the lr 0.002 model
    load_stylex(run)
    reconfigure(run, "classifier.lr=0.01")  # the explained classifier changed: the StylEx model is stale too
    with pytest.raises(provenance.StaleArtifact):
        load_stylex(run)


# The stylex keys that checkpoints were first fingerprinted with (keys added later are fingerprinted only when set).
# StylEx fingerprints as the code that wrote today's run folders computed them (be8056a, before `stylex.loss`): the
# checkpoints of those folders carry them, so a new formula must give the same values
LEGACY_STYLEX_FINGERPRINTS = [
    ({}, "f187591fd68e3a70"),
    ({"stylex": {"preset": "real"}}, "0b2f73eb0afa175d"),
    ({"stylex": {"weight_kl": 0.5, "weight_class_sparsity": 2, "mapping_match": True}}, "6ed91192a96970ad"),
]


@pytest.mark.parametrize("raw, recorded", LEGACY_STYLEX_FINGERPRINTS)
def test_checkpoints_written_before_keep_their_fingerprints(raw, recorded) -> None:
    assert provenance.stylex_fingerprint(from_dict(raw)) == recorded
    if "weight_kl" in raw.get("stylex", {}):  # the same, written as today's `loss` entries
        today = {"loss": {"kl": 0.5, "class_sparsity": 2}, "mapping_match": True}
        assert provenance.stylex_fingerprint(from_dict({"stylex": today})) == recorded


def test_fingerprints_follow_the_sections_they_depend_on(tmp_path) -> None:
    cfg = open_run(tmp_path / "run", None, TINY).cfg
    base = (provenance.classifier_fingerprint(cfg), provenance.stylex_fingerprint(cfg))
    assert provenance.stylex_fingerprint(apply_overrides(cfg, ["stylex.schedule.steps=9", "stylex.schedule.time_limit_minutes=3"])) == base[1]
    assert provenance.classifier_fingerprint(apply_overrides(cfg, ["stylex.optim.lr_g=0.1"])) == base[0]
    assert provenance.classifier_fingerprint(apply_overrides(cfg, ["data.seed=1"])) != base[0]
    assert provenance.stylex_fingerprint(apply_overrides(cfg, ["attfind.top_k=3"])) == base[1]
    # keys added later count only when set, keys removed since (#40) at the one value left, and the loss weights as
    # the weight_<term> keys they were: fingerprints made before stay valid
    flat = {k: v for k, v in flat_stylex(cfg.stylex).items() if k in provenance.STYLEX_FIRST_FINGERPRINTED}
    without = {**flat, **{f"weight_{t}": cfg.stylex.weight(t) for t in ("adv", "l1", "lpips", "latent", "kl",
                                                                         "sample_kl")},
               **provenance.STYLEX_REMOVED_FINGERPRINTED}
    assert base[1] == provenance.fingerprint("stylex", base[0], without)
    mapping_on = provenance.stylex_fingerprint(apply_overrides(cfg, ["stylex.regularise.mapping_match=true"]))
    assert mapping_on == provenance.fingerprint("stylex", base[0], {**without, "weight_mapping_match": 1.0})
    assert set(without) == provenance.STYLEX_FIRST_FINGERPRINTED
    for added in ("stylex.regularise.mapping_match=true", "stylex.loss.class_sparsity=1"):
        assert provenance.stylex_fingerprint(apply_overrides(cfg, [added])) != base[1]

    @dataclasses.dataclass
    class WithANewKey(type(cfg.stylex.regularise)):  # a key added to a group tomorrow needs no list entry
        tomorrow: float = 0.0

    grown = dataclasses.replace(cfg, stylex=replace_keys(cfg.stylex, regularise=WithANewKey(**to_dict(
        cfg.stylex.regularise))))
    assert provenance.stylex_fingerprint(grown) == base[1]
    grown.stylex.regularise.tomorrow = 1.0
    assert provenance.stylex_fingerprint(grown) != base[1]
    for term, same in ((0.0, True), (1.0, False)):  # so does a loss term's weight, counted only when set
        weighted = apply_overrides(cfg, [f"stylex.loss.tomorrow={term}"])
        assert (provenance.stylex_fingerprint(weighted) == base[1]) is same
    for runtime in ("stylex.encoder_fit.minutes=2", "stylex.encoder_fit.lr=0.01", "stylex.runtime.precision=fp32",
                    "stylex.runtime.channels_last=false"):  # run-time keys: the same model (#40)
        assert provenance.stylex_fingerprint(apply_overrides(cfg, [runtime])) == base[1]
    data_without = {k: v for k, v in to_dict(cfg.data).items() if k not in provenance.DATA_ADDED_KEYS}
    assert provenance.data_fingerprint(cfg) == provenance.fingerprint("data", data_without)
    queried = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, label_queries={"a": "x > 1"}))
    assert provenance.data_fingerprint(queried) != provenance.data_fingerprint(cfg)  # (a folder key: unchecked here)


def test_run_time_keys_change_nothing_a_checkpoint_resumes_from(tmp_path) -> None:
    """#40: changing precision, channels_last or the encoder fit's minutes or lr restarted StylEx from step 0."""
    run = open_run(tmp_path / "run", None, TINY)
    data = load_dataset(run.cfg.data)
    fit_run_classifier(run, data)
    assert train_stylex(run, data, progress=False).steps == 2
    changes = ["stylex.runtime.precision=fp32", "stylex.runtime.channels_last=false", "stylex.encoder_fit.minutes=0.002",
               "stylex.encoder_fit.lr=0.01"]
    for steps, change in enumerate(changes, start=3):
        reconfigure(run, change, f"stylex.schedule.steps={steps}")
        summary = train_stylex(run, data, progress=False)
        assert (summary.session_steps, summary.steps) == (1, steps), change  # continued, not afresh
    reconfigure(run, "stylex.encoder_fit.lr=0.02")  # the fit alone again: no step, E fitted with the new lr
    assert train_stylex(run, data, progress=False).session_steps == 0
    fit = torch.load(run.path("checkpoints", "stylex.pt"), weights_only=True)["encoder_fit"]
    assert (fit["step"], fit["minutes"], fit["lr"]) == (6, 0.002, 0.02)
    load_stylex(run)  # not stale


def _fingerprint_before_40(cfg) -> str:
    """stylex_fingerprint as it was before #40 (the run-time keys fingerprinted as set)."""
    section = provenance._stylex_section(flat_stylex(cfg.stylex))  # (with the keys first fingerprinted: removed ones at their value)
    return provenance.fingerprint("stylex", provenance.classifier_fingerprint(cfg), section)


def test_checkpoints_recorded_with_the_earlier_fingerprint_still_resume(tmp_path) -> None:
    """#40 changed the formula: what run folders recorded before (here with the run-time keys set away from their
    defaults, as the real preset's encoder fit does) must still be accepted, by the trainer and by later stages."""
    from stylexlib.core.io import torch_load, torch_save

    default = open_run(tmp_path / "default", None, TINY).cfg
    assert provenance.stylex_fingerprint(default) == _fingerprint_before_40(default)  # the defaults keep their value
    run = open_run(tmp_path / "run", None, TINY + ["stylex.runtime.precision=fp32", "stylex.encoder_fit.minutes=0.002"])
    data = load_dataset(run.cfg.data)
    fit_run_classifier(run, data)
    before, now = _fingerprint_before_40(run.cfg), provenance.stylex_fingerprint(run.cfg)
    assert before != now
    assert train_stylex(run, data, progress=False).steps == 2
    path = run.path("checkpoints", "stylex.pt")
    state = torch_load(path)
    state["fingerprint"] = before  # what the trainer recorded before #40
    torch_save(path, state)
    reconfigure(run, "stylex.schedule.steps=3")
    assert train_stylex(run, data, progress=False).session_steps == 1  # resumed
    assert torch_load(path)["fingerprint"] == now  # and recorded with the formula of now
    load_stylex(run)
    # what is made from the StylEx model (hashed in, or kept in a key) accepts the earlier value too
    assert provenance.accepts(provenance.fingerprint("voynov_babenko", before, 8),
                              provenance.fingerprint("voynov_babenko", provenance.stylex_fingerprint(run.cfg), 8))
    assert provenance.accepts({"step": 2, "stylex": before}, {"step": 2, "stylex": now})
    other = apply_overrides(run.cfg, ["stylex.optim.lr_g=0.001"])  # another model is still refused
    assert not provenance.accepts(before, provenance.stylex_fingerprint(other))
    assert not provenance.accepts(_fingerprint_before_40(other), now)


def test_statistics_and_probe_are_redone_when_what_they_were_made_from_changes(tmp_path, monkeypatch) -> None:
    from stylexlib.evaluate import factor_probe
    from stylexlib.explain.attfind import search as attfind

    run = open_run(tmp_path / "run", None, TINY + ["attfind.stats_images=16"])
    data = load_dataset(run.cfg.data)
    fit_run_classifier(run, data)
    train_stylex(run, data, progress=False)
    first = attfind.run_statistics(run, data, load_stylex(run), run.cfg.attfind)
    reconfigure(run, "stylex.optim.lr_g=0.001")  # a different StylEx model at the same step count
    train_stylex(run, data, progress=False)
    second = attfind.run_statistics(run, data, load_stylex(run), run.cfg.attfind)
    assert not torch.equal(first.maximum, second.maximum)  # recomputed, not the old model's (keyed on step before)

    calls = []
    real = factor_probe.train_factor_probe
    monkeypatch.setattr(factor_probe, "train_factor_probe", lambda *a, **k: calls.append(1) or real(*a, epochs=1, **{
        key: v for key, v in k.items() if key != "epochs"}))
    factor_probe.fit_run_probe(run, data)
    factor_probe.fit_run_probe(run, data)
    assert len(calls) == 1  # kept while the data is the same
    reconfigure(run, "data.seed=1")
    factor_probe.fit_run_probe(run, load_dataset(run.cfg.data))
    assert len(calls) == 2  # retrained on the new data (it was never invalidated before)
    monkeypatch.setattr(factor_probe, "PROBE_RECIPE", factor_probe.PROBE_RECIPE + 1)
    factor_probe.fit_run_probe(run, load_dataset(run.cfg.data))
    assert len(calls) == 3  # a probe saved by an older recipe (the shortcut-prone one) is retrained


# ---------------------------------------------------------------------------- the data's identity (#39 item 10)
def _folder_data(root, labels=(0, 1, 0, 1)):
    """root/img/<i>.png images and root/labels.csv (file,label)."""
    from PIL import Image

    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(len(labels)):
        Image.new("RGB", (8, 8), (40 * i, 200, 40)).save(root / "img" / f"{i}.png")
    _labels(root, labels)
    return root


def _labels(root, labels) -> None:
    rows = [f"img/{i}.png,{label}" for i, label in enumerate(labels)]
    (root / "labels.csv").write_text("\n".join(["file,label", *rows]) + "\n")


def _folder_cfg(root):
    from stylexlib.core.config import load_config

    return load_config(None, ["data.source=folder", f"data.root={root}", "data.labels_csv=labels.csv",
                              "data.label_column=label", "data.resolution=8"])


def test_folder_fingerprints_follow_the_files_and_labels_not_just_the_config(tmp_path) -> None:
    """#39: relabelling or adding images kept the old classifier and StylEx model 'valid' (the fingerprint was the
    config's only)."""
    import os
    import shutil

    from PIL import Image

    root = _folder_data(tmp_path / "data")
    cfg = _folder_cfg(root)
    fingerprints = [provenance.data_fingerprint, provenance.classifier_fingerprint, provenance.stylex_fingerprint]
    seen = [tuple(f(cfg) for f in fingerprints)]
    assert all(provenance.DATA_MARK in f for f in seen[0])
    assert tuple(f(cfg) for f in fingerprints) == seen[0]  # nothing changed: the same

    def changed() -> tuple:
        now = tuple(f(cfg) for f in fingerprints)
        assert all(now[i] not in [s[i] for s in seen] for i in range(3)), "a change kept a fingerprint"
        assert all(a.partition(provenance.DATA_MARK)[0] == b.partition(provenance.DATA_MARK)[0]
                   for a, b in zip(now, seen[0]))  # the config's part stays
        seen.append(now)
        return now

    _labels(root, (0, 1, 1, 1))  # one label changed in the CSV
    changed()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(root / "img" / "4.png")  # an image added (not yet in the CSV)
    changed()
    before = os.stat(root / "img" / "0.png")
    data = bytearray((root / "img" / "0.png").read_bytes())
    data[-20] ^= 0xFF  # same size, other bytes, same mtime
    (root / "img" / "0.png").write_bytes(bytes(data))
    os.utime(root / "img" / "0.png", ns=(before.st_atime_ns, before.st_mtime_ns))
    changed()
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, copy_function=shutil.copyfile)  # new mtimes, the same bytes
    moved = _folder_cfg(copy)
    assert provenance.data_fingerprint(moved).partition(provenance.DATA_MARK)[2] == \
        seen[-1][0].partition(provenance.DATA_MARK)[2]  # (data.root itself is config: the config part differs)
    made, mark, identity = seen[-1][2].partition(provenance.DATA_MARK)
    assert provenance.fingerprint("x", seen[-1][2], 3) == provenance.fingerprint("x", made, 3) + mark + identity


def test_file_contents_are_hashed_once_then_only_stated(tmp_path, monkeypatch) -> None:
    from stylexlib.core import data_identity

    root = _folder_data(tmp_path / "data")
    cfg = _folder_cfg(root)
    first = provenance.data_fingerprint(cfg)
    calls = []
    real = data_identity._sha256
    monkeypatch.setattr(data_identity, "_sha256", lambda path: calls.append(path) or real(path))
    data_identity._STORES.clear()  # a new process: the digests are read from the store in $STYLEX_CACHE
    data_identity._IDENTITIES.clear()
    assert provenance.data_fingerprint(cfg) == first and calls == []
    _labels(root, (1, 1, 0, 1))
    provenance.data_fingerprint(cfg)
    assert [p.name for p in calls] == ["labels.csv"]  # only the changed file is read again


def test_the_data_identity_is_computed_once_per_process_until_a_file_changes(tmp_path, monkeypatch) -> None:
    """StylEx.from_run on a folder-data run computed the data's identity twice (the classifier's and the StylEx
    model's fingerprints), and again at every later call; now once per process, while a changed file still changes
    it."""
    from PIL import Image

    from stylexlib.core import data_identity
    from stylexlib.explain import StylEx
    from stylexlib.explain.attfind.search import run_statistics

    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for i in range(40):
        pixels = torch.randint(0, 256, (16, 16, 3), generator=gen, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(root / "img" / f"{i}.png")
    _labels(root, [i % 2 for i in range(40)])
    folder = ["data.source=folder", f"data.root={root}", "data.labels_csv=labels.csv", "data.label_column=label",
              "attfind.stats_images=16", "stylex.encoder_fit.minutes=0"]  # folder data: the real preset
    run = open_run(tmp_path / "run", None, [o for o in TINY if not o.startswith("data.num_images")] + folder)
    data = load_dataset(run.cfg.data)
    fit_run_classifier(run, data)
    train_stylex(run, data, progress=False)
    run_statistics(run, data, load_stylex(run, "cpu", data), run.cfg.attfind)
    computed = []
    real = data_identity._store  # read only when the identity is computed (the digests of the files)
    monkeypatch.setattr(data_identity, "_store", lambda path: computed.append(path) or real(path))
    data_identity._IDENTITIES.clear()  # a new process
    StylEx.from_run(run.dir, "cpu")
    assert len(computed) == 1  # was 2
    StylEx.from_run(run.dir, "cpu")
    assert len(computed) == 1  # was 4: the same process, the same files
    identity = data_identity.folder_identity(root, "labels.csv")
    Image.new("RGB", (16, 16), (1, 2, 3)).save(root / "img" / "0.png")  # a file written
    assert data_identity.folder_identity(root, "labels.csv") != identity and len(computed) == 2


def test_records_from_before_data_fingerprints_are_adopted_once_then_checked(tmp_path, caplog) -> None:
    """Run folders made before the data was fingerprinted stay valid (no retraining of every existing run), with a
    warning; a later change of the data makes them stale."""
    root = _folder_data(tmp_path / "data")
    cfg = _folder_cfg(root)
    now = provenance.classifier_fingerprint(cfg)
    legacy = now.partition(provenance.DATA_MARK)[0]  # what the same config recorded before
    with caplog.at_level("WARNING"):
        provenance.check(legacy, now, "classifier.pt", "02")
    assert "taken as made from the files" in caplog.text
    assert provenance.accepts({"data": legacy, "n": 1}, {"data": now, "n": 1})
    assert not provenance.accepts(legacy, "0" * 16 + provenance.DATA_MARK + "1" * 16)  # another config
    _labels(root, (1, 1, 1, 0))
    with pytest.raises(provenance.StaleArtifact, match="from other data.*re-run stage 02"):
        provenance.check(legacy, provenance.classifier_fingerprint(cfg), "classifier.pt", "02")
    with pytest.raises(provenance.StaleArtifact, match="from other data"):
        provenance.check(now, provenance.classifier_fingerprint(cfg), "classifier.pt", "02")


def test_attribute_names_given_before_data_fingerprints_stay_until_the_data_changes(tmp_path) -> None:
    """Hand-written names are keyed by the generator's fingerprint: the new data part must not set them aside."""
    import pandas as pd

    from stylexlib.explain.attfind.names import read_attribute_names, write_name_template

    root = _folder_data(tmp_path / "data")
    cfg = _folder_cfg(root)
    generator = provenance.stylex_fingerprint(cfg)
    legacy = generator.partition(provenance.DATA_MARK)[0]
    names = tmp_path / "attribute_names.csv"
    attributes = pd.DataFrame({"class_name": ["a"], "rank": [1], "flat": [7], "direction": ["up"],
                               "layer_name": ["b4.conv1"], "channel": [7]})
    write_name_template(names, attributes, legacy)
    names.write_text(names.read_text().replace(",,", ",smile,"))  # a person names the attribute
    assert read_attribute_names(names, generator) == {(7, "up"): "smile"}
    write_name_template(names, attributes, generator)  # stage 05 again: kept, now recorded with the data
    assert read_attribute_names(names, generator) == {(7, "up"): "smile"} and generator in names.read_text()
    _labels(root, (1, 0, 0, 0))  # other labels: another StylEx model, whose coordinates mean other things
    assert read_attribute_names(names, provenance.stylex_fingerprint(cfg)) == {}
