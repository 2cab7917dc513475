from pathlib import Path

import pytest
import yaml

from stylexlib.core.config import (Config, ConfigError, StylexConfig, apply_overrides, dump_config, from_dict,
                                   load_config, save_config)
from stylexlib.core.stylex_config import flat_stylex, replace_keys


def test_defaults_and_roundtrip(tmp_path: Path) -> None:
    cfg = Config()
    path = save_config(cfg, tmp_path / "c.yaml")
    assert load_config(path) == cfg
    assert "label_rule" in dump_config(cfg)


def test_overrides_parse_yaml_values() -> None:
    cfg = apply_overrides(
        Config(),
        ["data.resolution=64", "classifier.lr=1e-3", "data.class_names=[a, b]", "data.spurious_factor=null",
         "name=x", "classifier.lr=1", "extra.anything=3"],
    )
    assert cfg.data.resolution == 64 and cfg.data.class_names == ["a", "b"] and cfg.data.spurious_factor is None
    assert cfg.classifier.lr == 1.0 and isinstance(cfg.classifier.lr, float)
    assert cfg.name == "x" and cfg.extra == {"anything": 3}


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.reslution=64", "did you mean 'resolution'"),
        ("dta.resolution=64", "unknown config key 'dta'"),
        ("data.resolution=big", "data.resolution: expected int"),
        ("data.resolution", "must look like key=value"),
        ("classifier.augment=3", "classifier.augment: expected bool"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_overrides(Config(), [override])


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  resolutoin: 32\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'data.resolutoin'"):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_relative_data_root_resolves_against_config_file(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "cfgs").mkdir()
    path = tmp_path / "cfgs" / "c.yaml"
    path.write_text("data:\n  source: folder\n  root: ../images\n")
    assert load_config(path).data.root == str((tmp_path / "images").resolve())


def test_shipped_configs_load(tmp_path) -> None:
    model = tmp_path / "smile_glasses.pt"  # the shortcut task's model is made by benchmarks/celeba_shortcut.py first
    model.write_bytes(b"")
    for path in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"):
        load_config(path, [f"classifier.source={model}"] if path.stem == "celeba_smile_shortcut" else [])


def test_the_eyes_task_trains_stylex_as_the_demo_does() -> None:
    configs = Path(__file__).resolve().parents[1] / "configs"
    demo, eyes = load_config(configs / "demo.yaml"), load_config(configs / "compare_eyes.yaml")
    assert eyes.stylex == demo.stylex  # `make compare` compares the two tasks under one trainer
    assert eyes.classifier == demo.classifier and eyes.data.label_rule != demo.data.label_rule


@pytest.mark.parametrize("key, bad, allowed", [
    ("stylex.model.condition_on", "logit", "'probs', 'logits'"),
    ("stylex.schedule.path_mode", "both", "'mix', 'alternate'"),
    ("stylex.runtime.precision", "fp8", "'auto', 'fp32', 'bf16', 'fp16'"),
    ("attfind.shift", "max", "'minmax', 'std'"),
    ("attfind.output", "prob", "'logits', 'probs'"),
    ("attfind.method", "topk", "'greedy', 'ranking'"),
    ("inversion.split", "validation", "'train', 'val', 'test'"),
    ("data.source", "folders", "'synthetic', 'folder'"),
    ("stylex.runtime.device", "gpu", "auto, cpu, cuda, cuda:N or mps"),
    ("stylex.regularise.augment", "color,flip", "color, translation, cutout"),
])
def test_enumerated_options_are_checked_at_load(key, bad, allowed) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"{key}={bad}"])
    assert str(info.value).startswith(key) and allowed in str(info.value)


def test_device_accepts_every_valid_spelling() -> None:
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert load_config(None, [f"stylex.runtime.device={device}"]).stylex.runtime.device == device


def test_a_relative_data_root_that_does_not_exist_names_the_paths_tried(tmp_path, monkeypatch) -> None:
    config = tmp_path / "configs" / "mine.yaml"
    config.parent.mkdir()
    config.write_text("data:\n  source: folder\n  root: ../images\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="data.root") as info:
        load_config(config)
    assert str(tmp_path / "images") in str(info.value) and str(tmp_path.parent / "images") in str(info.value)
    (tmp_path / "images").mkdir()
    assert load_config(config).data.root == str(tmp_path / "images")


def test_an_empty_override_of_a_text_field_is_the_empty_text() -> None:
    assert load_config(None, ["stylex.regularise.augment=color", "stylex.regularise.augment="]).stylex.regularise.augment == ""
    assert load_config(None, ["data.labels_csv="]).data.labels_csv is None  # optional fields: None


def test_classifier_source_and_labels_csv_resolve_against_the_config_file(tmp_path: Path, monkeypatch) -> None:
    project = tmp_path / "project"
    for folder in ("images", "models", "tables", "configs"):
        (project / folder).mkdir(parents=True)
    (project / "models" / "net.ts").write_bytes(b"x")
    (project / "tables" / "labels.csv").write_text("file,label\n")
    config = project / "mine.yaml"
    config.write_text("data:\n  source: folder\n  root: images\n  labels_csv: tables/labels.csv\n"
                      "classifier:\n  source: models/net.ts\n")
    monkeypatch.chdir(project / "configs")  # not the config's folder: paths must not depend on where stylex starts
    cfg = load_config(config)
    assert cfg.classifier.source == str(project / "models" / "net.ts")
    assert cfg.data.labels_csv == str(project / "tables" / "labels.csv")
    (project / "images" / "inside.csv").write_text("file,label\n")  # a CSV inside data.root stays root-relative
    assert load_config(config, ["data.labels_csv=inside.csv"]).data.labels_csv == "inside.csv"
    assert load_config(None, ["classifier.source=my_pkg.models:make"]).classifier.source == "my_pkg.models:make"
    config.write_text("classifier:\n  source: models/missing.ts\n")
    with pytest.raises(ConfigError, match="classifier.source 'models/missing.ts' not found") as info:
        load_config(config)
    assert str(project / "models" / "missing.ts") in str(info.value)


def test_an_overridden_data_root_replaces_a_missing_one_from_the_file(tmp_path, monkeypatch) -> None:
    """`--set data.root=...` rescues a config whose own root is absent on this machine (a shipped config moved to
    another machine): the file's value is never looked up, and the override is relative to the working directory."""
    config = tmp_path / "configs" / "mine.yaml"
    config.parent.mkdir()
    config.write_text("data:\n  source: folder\n  root: ../../elsewhere/images\n")
    (tmp_path / "here" / "images").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "here")
    assert load_config(config, ["data.root=images"]).data.root == str(tmp_path / "here" / "images")
    with pytest.raises(ConfigError, match="override: data.root 'nowhere' not found"):
        load_config(config, ["data.root=nowhere"])


def test_a_run_folders_config_is_its_record_and_a_preset_key_added_later_does_not_change_it(tmp_path, monkeypatch):
    from stylexlib.core import presets
    from stylexlib.core.provenance import stylex_fingerprint
    from stylexlib.core.run import open_run
    from stylexlib.pipeline.runner import _prepare_run_dir

    gained = presets.REAL["loss"]
    monkeypatch.setitem(presets.REAL, "loss", {k: v for k, v in gained.items() if k != "class_sparsity"})  # as it was
    written = tmp_path / "photos.yaml"
    written.write_text("data: {source: folder, root: /x}\n")
    run = open_run(tmp_path / "run", written)
    before = stylex_fingerprint(run.cfg)
    saved = tmp_path / "run" / "config.yaml"  # as written before the key existed
    saved.write_text("".join(line for line in saved.read_text().splitlines(keepends=True)
                             if "class_sparsity" not in line))
    monkeypatch.setitem(presets.REAL, "loss", {**gained, "class_sparsity": 10.0})  # the preset gains an entry later
    assert load_config(written).stylex.weight("class_sparsity") == 10.0  # a config someone writes gets it
    reopened = open_run(tmp_path / "run")  # the run folder keeps what it was trained with
    assert reopened.cfg.stylex.weight("class_sparsity") == 0.0 and stylex_fingerprint(reopened.cfg) == before
    with pytest.raises(ConfigError, match="class_sparsity"):  # asking the old folder for the new settings
        _prepare_run_dir(tmp_path / "run", load_config(written), force=False)


def test_a_preset_or_data_source_given_as_an_override_fills_in_the_presets_values(tmp_path: Path, capsys) -> None:
    """`--set stylex.preset=real` (or `data.source=folder`) is set before the preset is applied, not after (#39)."""
    from stylexlib.core.presets import REAL, REAL_INVERSION
    from stylexlib.core.config import InversionConfig, StylexConfig
    from stylexlib.pipeline.cli import main

    (tmp_path / "images").mkdir()
    synthetic = tmp_path / "synthetic.yaml"
    synthetic.write_text("stylex:\n  warmup_steps: 7\n")
    real = load_config(synthetic, ["stylex.preset=real"])
    assert real.stylex.preset == "real"
    assert real.stylex.weight("kl") == REAL["loss"]["kl"] != StylexConfig().weight("kl")
    assert real.inversion.per_image_steps == REAL_INVERSION["per_image_steps"]  # the preset's other section too
    assert real.stylex.schedule.warmup_steps == 7  # the file's own keys stay above the preset
    assert load_config(synthetic, ["stylex.preset=real", "stylex.schedule.warmup_steps=3"]).stylex.schedule.warmup_steps == 3
    folder = load_config(synthetic, ["data.source=folder", f"data.root={tmp_path / 'images'}"])
    assert folder.stylex.preset == "real" and folder.stylex.weight("kl") == REAL["loss"]["kl"]  # folder data's default
    photos = tmp_path / "photos.yaml"
    photos.write_text(f"data: {{source: folder, root: {tmp_path / 'images'}}}\nstylex: {{preset: real}}\n")
    plain = load_config(photos, ["stylex.preset=none"])
    assert plain.stylex == StylexConfig() and plain.inversion == InversionConfig()
    assert main(["config", str(synthetic), "--set", "stylex.preset=real"]) == 0  # what `stylex run --set` loads
    assert f"    kl: {REAL['loss']['kl']}" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="stylex.preset"):  # a built config has no keys left for a preset to fill
        apply_overrides(Config(), ["stylex.preset=real"])


@pytest.mark.parametrize("source, key, value", [
    ("folder", "class_names", "[young, old]"), ("folder", "num_images", "10"), ("folder", "label_rule", "age > 3"),
    ("synthetic", "labels_csv", "labels.csv"), ("synthetic", "label_queries", "{a: x > 1}"),
    ("synthetic", "root", "."), ("synthetic", "max_images", "5")])
def test_a_data_key_the_data_source_never_reads_is_an_error(tmp_path: Path, source, key, value) -> None:
    (tmp_path / "images").mkdir()
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  source: {source}\n  root: {tmp_path / 'images' if source == 'folder' else ''}\n")
    with pytest.raises(ConfigError, match=rf"data\.{key} is read only for \w+ data, and data.source is {source}"):
        load_config(config, [f"data.{key}={value}"])
    config.write_text(config.read_text() + f"  {key}: {value}\n")  # in the file, likewise
    with pytest.raises(ConfigError, match=rf"c.yaml: data\.{key} is read only"):
        load_config(config)


def test_written_configs_of_either_source_load_back(tmp_path: Path) -> None:
    """Saved configs list every key, the other source's at their defaults: they load (and run records always do)."""
    (tmp_path / "images").mkdir()
    folder = load_config(None, ["data.source=folder", f"data.root={tmp_path / 'images'}", "data.max_images=9"])
    for cfg in (folder, load_config(None, ["data.num_images=50"])):
        saved = save_config(cfg, tmp_path / "config.yaml")
        assert load_config(saved) == cfg and load_config(saved, presets=False) == cfg
    cfg.data.max_images = 3  # written unchecked, as runs before the check were
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml", presets=False).data.max_images == 3  # a record from before the check


def test_compare_methods_name_known_methods_and_build_only_those() -> None:
    """compare.methods chooses stage 09's methods (each is an hours-long search on real photographs on a CPU)."""
    import inspect

    from stylexlib.core.config import COMPARE_METHODS
    from stylexlib.evaluate import gan_baselines

    assert load_config("configs/demo.yaml", ["compare.methods=[stylex, wu_attfind, sefa]"]).compare.methods == [
        "stylex", "wu_attfind", "sefa"]
    with pytest.raises(ConfigError, match="unknown method.*'wu_atfind'"):
        load_config("configs/demo.yaml", ["compare.methods=[stylex, wu_atfind]"])
    with pytest.raises(ConfigError, match="at least one"):
        load_config("configs/demo.yaml", ["compare.methods=[]"])
    source = inspect.getsource(gan_baselines.build_methods)  # every name the list offers is one build_methods makes
    assert all(f'"{name}"' in source for name in COMPARE_METHODS)


def test_a_run_folders_record_with_removed_or_renamed_stylex_keys_still_loads(tmp_path, caplog) -> None:
    """#40: keys the experiment log measured and dropped are dropped on load (a warning when one was set); the mapping
    match's weight became a switch."""
    from stylexlib.core.config import STYLEX_REMOVED_KEYS

    record = yaml.safe_load(dump_config(load_config(None)))
    record["stylex"] = flat_stylex(load_config(None).stylex)  # a config.yaml written before the groups was flat
    record["stylex"].update(STYLEX_REMOVED_KEYS)  # and one written before #40 holds every key at its default
    record["stylex"].pop("mapping_match")
    record["stylex"]["weight_mapping_match"] = 1.0
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(record))
    with caplog.at_level("WARNING"):
        cfg = from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text()), presets=False)
    assert cfg.stylex.regularise.mapping_match is True and not caplog.records  # defaults: dropped quietly
    assert cfg.stylex == replace_keys(load_config(None).stylex, mapping_match=True)
    record["stylex"].update(encoder_ema=True, kl_noise_std=0.2, weight_mapping_match=0.0)
    with caplog.at_level("WARNING"):
        cfg = from_dict(record, presets=False)
    assert not cfg.stylex.regularise.mapping_match and not hasattr(cfg.stylex, "encoder_ema")
    assert [r.message.split(":")[0] for r in caplog.records] == ["stylex.encoder_ema", "stylex.kl_noise_std"]
    checkpoint_record = from_dict(record["stylex"], StylexConfig, "stylex")  # what gan.models.load_models reads
    assert checkpoint_record == cfg.stylex
    with pytest.raises(ConfigError, match="unknown config key 'stylex.encoder_ema'"):
        load_config(None, ["stylex.encoder_ema=true"])  # a new command names today's keys


def test_loss_weights_are_one_mapping_by_term_name_and_the_flat_keys_still_read(tmp_path) -> None:
    """#40: `stylex.loss` holds each loss term's weight by its registered name; the `weight_<term>` keys of files,
    overrides and run-folder records written before read into it."""
    assert StylexConfig().weight("kl") == 1.0 and StylexConfig().weight("class_sparsity") == 0.0  # not named: off
    own = tmp_path / "own.yaml"
    own.write_text("stylex:\n  loss: {kl: 0.5}\n")
    cfg = load_config(own, ["stylex.loss.class_sparsity=2"])
    assert cfg.stylex.loss == {"adv": 1.0, "l1": 1.0, "lpips": 0.1, "latent": 0.1, "kl": 0.5, "class_sparsity": 2.0}
    old = tmp_path / "old.yaml"
    old.write_text("stylex:\n  weight_kl: 0.5\n")  # a file written before
    assert load_config(old, ["stylex.weight_class_sparsity=2"]).stylex == cfg.stylex  # and an override as it was
    record = yaml.safe_load(dump_config(cfg))
    stylex = record["stylex"]
    stylex.update({f"weight_{term}": weight for term, weight in stylex.pop("loss").items()})  # a record from before
    assert from_dict(record, presets=False).stylex == cfg.stylex
    assert from_dict(stylex, StylexConfig, "stylex") == cfg.stylex  # a checkpoint's record
    assert from_dict(yaml.safe_load(dump_config(cfg))).stylex == cfg.stylex  # today's record reads back
    with pytest.raises(ConfigError, match="stylex.loss.kl: expected float"):
        load_config(None, ["stylex.loss.kl=high"])
    with pytest.raises(ConfigError, match="stylex.loss: expected a mapping"):
        load_config(None, ["stylex.loss=0.5"])
    with pytest.raises(ConfigError, match="unknown config key 'stylex.kl'"):  # a term's name is no key of its own
        load_config(None, ["stylex.kl=0.5"])


def test_stylex_keys_are_grouped_and_flat_files_records_and_overrides_still_read(tmp_path, caplog) -> None:
    """#40: `stylex:` in groups (model, optim, regularise, schedule, encoder_fit, runtime). A file or `--set` with a flat
    key from before reads into its group with a warning naming it; a run folder's flat record reads quietly, to the same
    config and the same fingerprint; an override wins over the file whichever way either is written."""
    from stylexlib.core import provenance

    grouped = tmp_path / "grouped.yaml"
    grouped.write_text("stylex:\n  optim:\n    lr_g: 0.01\n  encoder_fit:\n    minutes: 2\n")
    flat = tmp_path / "flat.yaml"
    flat.write_text("stylex:\n  lr_g: 0.01\n  encoder_fit_minutes: 2\n")
    with caplog.at_level("WARNING"):
        from_flat = load_config(flat)
    assert from_flat.stylex == load_config(grouped).stylex
    assert from_flat.stylex.optim.lr_g == 0.01 and from_flat.stylex.encoder_fit.minutes == 2.0
    assert sorted(r.getMessage() for r in caplog.records) == [
        "stylex.encoder_fit_minutes is now stylex.encoder_fit.minutes (read as that)",
        "stylex.lr_g is now stylex.optim.lr_g (read as that)"]
    for path in (grouped, flat):  # an override, flat or grouped, wins over the file's key, flat or grouped
        assert load_config(path, ["stylex.optim.lr_g=0.5"]).stylex.optim.lr_g == 0.5
        assert load_config(path, ["stylex.lr_g=0.5"]).stylex.optim.lr_g == 0.5
    cfg = load_config(grouped)
    record = yaml.safe_load(dump_config(cfg))
    record["stylex"] = flat_stylex(cfg.stylex)  # a run folder's config.yaml from before the groups
    caplog.clear()
    with caplog.at_level("WARNING"):
        old = from_dict(record, presets=False)
    assert old == cfg and not caplog.records
    assert provenance.stylex_fingerprint(old) == provenance.stylex_fingerprint(cfg)
    assert from_dict(flat_stylex(cfg.stylex), StylexConfig, "stylex") == cfg.stylex  # a checkpoint's flat record
    assert from_dict(yaml.safe_load(dump_config(cfg)), presets=False) == cfg  # today's record reads back
    assert replace_keys(cfg.stylex, lr_g=0.3, steps=7).optim.lr_g == 0.3
    with pytest.raises(ConfigError, match="unknown config key 'stylex.optim.lr_x'"):
        load_config(None, ["stylex.optim.lr_x=1"])
    with pytest.raises(ConfigError, match="stylex.runtime.device: must be auto"):
        load_config(None, ["stylex.runtime.device=gpu"])
    with pytest.raises(ConfigError, match="stylex.optim: expected a mapping"):
        from_dict({"stylex": {"optim": 3, "lr_g": 0.1}})


def test_a_run_folders_record_written_before_the_groups_reads_as_todays_config(caplog) -> None:
    """#40: a config.yaml the code before the groups wrote (tests/data, the tiny config's) reads quietly into the same
    config, with the same fingerprint, so its checkpoint still resumes."""
    from stylexlib.core import provenance

    record = Path(__file__).parent / "data" / "config_before_groups.yaml"
    assert "lr_g" in yaml.safe_load(record.read_text())["stylex"]  # flat, as it was
    with caplog.at_level("WARNING"):
        old = load_config(record, presets=False)
    assert not caplog.records
    assert old == load_config("tiny")
    before = "56185f8d495ce903"  # what the code before the groups gave for the tiny config
    assert provenance.stylex_fingerprint(old) == provenance.stylex_fingerprint(load_config("tiny")) == before
