"""Provenance: artifacts record the config they were made from; a changed config never reuses a stale artifact."""
from __future__ import annotations

import pytest
import torch

from stylexlib.classifier.training import fit_run_classifier, load_run_classifier
from stylexlib.core import provenance
from stylexlib.core.config import apply_overrides, save_config, to_dict
from stylexlib.core.run import CONFIG_FILE, open_run
from stylexlib.data import load_dataset
from stylexlib.gan.models import load_stylex
from stylexlib.gan.training import train_stylex

TINY = ["data.num_images=120", "data.resolution=16", "classifier.width=4", "classifier.epochs=1",
        "classifier.batch_size=32", "stylex.latent_dim=8", "stylex.mapping_layers=1", "stylex.channel_base=64",
        "stylex.channel_max=8", "stylex.batch_size=4", "stylex.steps=2", "stylex.sample_every=0",
        "stylex.checkpoint_every=0", "stylex.device=cpu", "stylex.log_every=1"]


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
    reconfigure(run, "stylex.steps=3")  # training longer continues the same model
    assert train_stylex(run, data, progress=False).session_steps == 1
    load_stylex(run)
    reconfigure(run, "stylex.lr_g=0.001")
    with pytest.raises(provenance.StaleArtifact, match="re-run stage 03"):
        load_stylex(run)
    summary = train_stylex(run, data, progress=False)
    assert summary.session_steps == 3 and summary.steps == 3  # afresh, not resumed from the lr 0.002 model
    load_stylex(run)
    reconfigure(run, "classifier.lr=0.01")  # the explained classifier changed: the StylEx model is stale too
    with pytest.raises(provenance.StaleArtifact):
        load_stylex(run)


# The stylex keys that checkpoints were first fingerprinted with (keys added later are fingerprinted only when set).
FINGERPRINTED_STYLEX_KEYS = {
    "latent_dim", "mapping_layers", "channel_base", "channel_max", "condition_on", "batch_size", "lr_g", "lr_d", "lr_e",
    "beta1", "beta2", "r1_gamma", "r1_every", "pl_weight", "pl_every", "ema_half_life_images", "encoder_ema",
    "weight_adv", "weight_l1", "weight_lpips", "weight_latent", "weight_kl", "weight_sample_kl", "weight_w_prior",
    "w_prior", "path_mode", "encoder_every", "warmup_steps", "mixing_prob", "discriminator", "augment", "lpips_net",
    "precision", "channels_last", "seed"}


def test_fingerprints_follow_the_sections_they_depend_on(tmp_path) -> None:
    cfg = open_run(tmp_path / "run", None, TINY).cfg
    base = (provenance.classifier_fingerprint(cfg), provenance.stylex_fingerprint(cfg))
    assert provenance.stylex_fingerprint(apply_overrides(cfg, ["stylex.steps=9", "stylex.time_limit_minutes=3"])) == base[1]
    assert provenance.classifier_fingerprint(apply_overrides(cfg, ["stylex.lr_g=0.1"])) == base[0]
    assert provenance.classifier_fingerprint(apply_overrides(cfg, ["data.seed=1"])) != base[0]
    assert provenance.stylex_fingerprint(apply_overrides(cfg, ["attfind.top_k=3"])) == base[1]
    # a key added later counts only when set: checkpoints made before it existed stay valid
    skipped = provenance.STYLEX_SCHEDULE_KEYS + provenance.STYLEX_ADDED_KEYS
    assert "weight_mapping_match" in skipped and "encoder_fit_minutes" in skipped
    without = {k: v for k, v in to_dict(cfg.stylex).items() if k not in skipped}
    assert base[1] == provenance.fingerprint("stylex", base[0], without)
    assert set(without) == FINGERPRINTED_STYLEX_KEYS, (
        "a new stylex key changes every existing checkpoint's fingerprint: list it in STYLEX_ADDED_KEYS (or in "
        "STYLEX_SCHEDULE_KEYS when it does not change what is trained)")
    for added in ("stylex.weight_mapping_match=1", "stylex.encoder_fit_minutes=2", "stylex.encoder=squeeze"):
        assert provenance.stylex_fingerprint(apply_overrides(cfg, [added])) != base[1]
    data_without = {k: v for k, v in to_dict(cfg.data).items() if k not in provenance.DATA_ADDED_KEYS}
    assert provenance.data_fingerprint(cfg) == provenance.fingerprint("data", data_without)
    assert provenance.data_fingerprint(apply_overrides(cfg, ["data.label_queries={a: x > 1}"])) != \
        provenance.data_fingerprint(cfg)


def test_statistics_and_probe_are_redone_when_what_they_were_made_from_changes(tmp_path, monkeypatch) -> None:
    from stylexlib.evaluate import factor_probe
    from stylexlib.explain.attfind import search as attfind

    run = open_run(tmp_path / "run", None, TINY + ["attfind.stats_images=16"])
    data = load_dataset(run.cfg.data)
    fit_run_classifier(run, data)
    train_stylex(run, data, progress=False)
    first = attfind.run_statistics(run, data, load_stylex(run), run.cfg.attfind)
    reconfigure(run, "stylex.lr_g=0.001")  # a different StylEx model at the same step count
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
