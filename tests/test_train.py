"""StylEx training: exact resume, NaN guard, time limit, path modes, loading, evaluation, the CLI."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stylexlib.classifier.model import build_classifier, save_classifier
from stylexlib.core.config import ConfigError, StylexConfig
from stylexlib.core.run import open_run
from stylexlib.core.stylex_config import GROUPS, replace_keys, stylex_config
from stylexlib.data import DataError, ImageDataset
from stylexlib.data.labels import balancing_weights
from stylexlib.gan import encoder_fit, train
from stylexlib.gan.checkpoint import checkpoint_path, load_checkpoint, read_stats
from stylexlib.gan.losses import latent_mmd_loss, load_lpips
from stylexlib.gan.models import load_stylex
from stylexlib.gan.train import forward, loop, loss_terms
from stylexlib.gan.train.batches import BatchSampler
from stylexlib.gan.train.phases import PHASES
from stylexlib.pipeline import cli
from stylexlib.stylespace.inversion import (evaluate_reconstruction, invert, reconstruction_table, refinement_comparison,
                                            render_inverted)

RESOLUTION = 16
TINY = stylex_config(latent_dim=16, mapping_layers=2, channel_base=128, channel_max=16, batch_size=4, steps=6,
                    r1_every=2, pl_weight=2.0, pl_every=2, log_every=2, sample_every=0, checkpoint_every=3,
                    device="cpu", seed=3)


def tiny_dataset(n: int = 40) -> ImageDataset:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, RESOLUTION, RESOLUTION), dtype=torch.uint8, generator=gen)
    labels = torch.arange(n) % 2
    split = np.array(["train"] * (n - n // 5) + ["val"] * (n // 5))
    return ImageDataset(images, labels, ["even", "odd"], split)


@pytest.fixture(scope="module")
def data() -> ImageDataset:
    return tiny_dataset()


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_classifier(2, RESOLUTION, width=4).eval()


@pytest.fixture(scope="module")
def lpips_model() -> torch.nn.Module:
    return load_lpips("squeeze")


def make_trainer(cfg, data, classifier, lpips_model, out_dir) -> train.StylexTrainer:
    return train.StylexTrainer(cfg, data, classifier, out_dir=out_dir, lpips_model=lpips_model)


def all_state(trainer: train.StylexTrainer) -> dict[str, torch.Tensor]:
    nets = {"G": trainer.G, "G_ema": trainer.G_ema, "E": trainer.E, "D": trainer.D}
    state = {f"{name}.{k}": v for name, net in nets.items() for k, v in net.state_dict().items()}
    for name in ("opt_g", "opt_e", "opt_d", "opt_mapping"):
        for index, slots in getattr(trainer, name).state_dict()["state"].items():
            state.update({f"{name}.{index}.{k}": torch.as_tensor(v) for k, v in slots.items()})
    state["mean_path_length"] = trainer.mean_path_length
    return state


def test_interrupted_run_resumes_the_same_trajectory(tmp_path, data, classifier, lpips_model, monkeypatch) -> None:
    cfg = replace_keys(TINY, mapping_match=True)  # its optimizer's state must resume too
    straight = make_trainer(cfg, data, classifier, lpips_model, tmp_path / "straight")
    straight.train(progress=False)

    interrupted = make_trainer(cfg, data, classifier, lpips_model, tmp_path / "resumed")
    real_step = train.StylexTrainer.run_step

    def crash_at_step_5(self):
        if self.step == 4:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(train.StylexTrainer, "run_step", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        interrupted.train(progress=False)
    monkeypatch.setattr(train.StylexTrainer, "run_step", real_step)
    assert load_checkpoint(checkpoint_path(tmp_path / "resumed"))["step"] == 3

    resumed = make_trainer(cfg, data, classifier, lpips_model, tmp_path / "resumed")
    assert resumed.resume() and resumed.step == 3
    summary = resumed.train(progress=False)
    assert summary.steps == 6 and summary.session_steps == 3

    expected, actual = all_state(straight), all_state(resumed)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-6, msg=f"{name} differs")
    steps = [record["step"] for record in read_stats(tmp_path / "resumed")]
    assert steps == [2, 4, 6]  # the lines logged after the checkpoint by the interrupted session are dropped
    assert [r["step"] for r in read_stats(tmp_path / "straight")] == steps


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, data, classifier, lpips_model,
                                                                       monkeypatch) -> None:
    trainer = make_trainer(TINY, data, classifier, lpips_model, tmp_path)
    real_loss = loss_terms.g_nonsaturating_loss

    def nan_from_step_5(pred):
        loss = real_loss(pred)
        return loss * float("nan") if trainer.step >= 4 else loss

    monkeypatch.setattr(loss_terms, "g_nonsaturating_loss", nan_from_step_5)
    with pytest.raises(train.TrainingDiverged, match=r"loss 'g' is nan at step 5.*last good checkpoint \(step 3\)"):
        trainer.train(progress=False)
    assert load_checkpoint(checkpoint_path(tmp_path))["step"] == 3


def test_time_limit_stops_and_checkpoints(tmp_path, data, classifier, lpips_model) -> None:
    cfg = replace_keys(TINY, time_limit_minutes=1e-6, sample_every=5)
    summary = make_trainer(cfg, data, classifier, lpips_model, tmp_path).train(progress=False)
    assert summary.stopped_by_time_limit and summary.steps == summary.session_steps == 1
    assert load_checkpoint(summary.checkpoint)["step"] == 1
    figures = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert figures == ["reconstructions_000001.png", "samples_000001.png"]


def test_alternate_mode_runs_one_path_per_step(data, classifier, lpips_model) -> None:
    cfg = replace_keys(TINY, path_mode="alternate", encoder_every=2, r1_gamma=0.0, pl_weight=0.0,
                              loss={**TINY.loss, "sample_kl": 1.0})
    assert StylexConfig().schedule.path_mode == "alternate"  # the shipped default
    trainer = make_trainer(cfg, data, classifier, lpips_model, None)
    encoder_step, random_step = trainer.train_step(), trainer.train_step()
    assert {"l1", "lpips", "latent", "kl"} <= encoder_step.keys() and "sample_kl" not in encoder_step
    assert set(random_step) == {"d", "g", "adv", "sample_kl"}
    mixed = make_trainer(replace_keys(cfg, path_mode="mix"), data, classifier, lpips_model, None)
    for step in (mixed.train_step(), mixed.train_step()):  # both paths every step
        assert {"l1", "kl", "sample_kl", "adv", "d"} <= step.keys()
    with pytest.raises(ValueError, match="path_mode"):
        make_trainer(replace_keys(TINY, path_mode="both"), data, classifier, lpips_model, None)


def test_bf16_autocast_step_is_finite(data, classifier, lpips_model) -> None:
    cfg = replace_keys(TINY, precision="bf16", condition_on="logits")
    losses = make_trainer(cfg, data, classifier, lpips_model, None).train_step()
    assert all(np.isfinite(v) for v in losses.values())


def image_folder_run(tmp_path: Path, classifier: torch.nn.Module) -> Path:
    """A run folder over a tiny two-class image folder, with a saved classifier (what stages 01-02 leave)."""
    rng = np.random.default_rng(0)
    for name in ("even", "odd"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 256, (RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / name / f"{i}.png")
    sections = dataclasses.asdict(replace_keys(TINY, steps=2))
    stylex = {f"stylex.{group}.{k}={v}" for group, keys in sections.items() if group in GROUPS
              for k, v in keys.items() if v is not None}
    stylex |= {f"stylex.{k}={v}" for k, v in sections.items() if k not in GROUPS}
    run = open_run(tmp_path / "run", overrides=[
        "data.source=folder", f"data.root={tmp_path / 'images'}", f"data.resolution={RESOLUTION}",
        "data.val_fraction=0.25", "data.test_fraction=0", *sorted(stylex)])
    save_classifier(run.path("classifier.pt"), classifier, ["even", "odd"])
    return run.dir


def test_cli_trains_and_load_stylex_evaluates(tmp_path, classifier, lpips_model) -> None:
    run_dir = image_folder_run(tmp_path, classifier)
    assert cli.main(["train", str(run_dir)]) == 0
    assert load_checkpoint(checkpoint_path(run_dir))["step"] == 2
    assert (run_dir / "figures" / "stylex_losses.png").exists()
    assert cli.main(["attfind", str(run_dir)]) == 0  # stage 05 outside the notebooks, as under torchrun
    assert (run_dir / "attfind" / "attributes.csv").exists() and (run_dir / "attfind" / "sufficiency.csv").exists()

    models = load_stylex(open_run(run_dir), device="cpu")
    assert models.step == 2 and models.class_names == ["even", "odd"]
    assert not any(p.requires_grad for p in models.generator.parameters())
    w, c = models.encode(tiny_dataset(4).images)
    assert w.shape == (4, TINY.model.latent_dim) and torch.allclose(c.sum(1), torch.ones(4))
    metrics = evaluate_reconstruction(models, tiny_dataset(10).images, lpips_model, batch_size=4)
    assert set(metrics) == {"recon_consistency", "recon_lpips", "recon_l1", "recon_kl"}
    assert 0 <= metrics["recon_consistency"] <= 1 and metrics["recon_lpips"] > 0 and metrics["recon_l1"] > 0

    table, history = refinement_comparison(models, tiny_dataset(4).images, steps=8, lr=0.05, lpips_model=lpips_model)
    assert list(table.columns) == ["encoder", "refined"] and list(table.index) == ["l1", "lpips", "kl", "consistent"]
    assert len(history) == 8
    objective = table.loc[["l1", "lpips", "kl"]].sum()  # what the refinement lowers
    assert objective["refined"] < objective["encoder"]

    # inversion.per_image_steps: every inversion (here invert, and the reconstruction table behind stage 04) refines
    images = tiny_dataset(4).images
    encoded = invert(models, images, refine=False)
    models.inversion = dataclasses.replace(models.inversion, per_image_steps=8)
    refined = invert(models, images, batch_size=2)
    assert torch.equal(encoded.w, invert(models, images, refine=False).w)  # the statistics' path stays E(x)
    assert not torch.allclose(refined.w, encoded.w) and torch.equal(refined.logits, encoded.logits)
    assert torch.allclose(refined.styles, models.generator.styles(refined.w, refined.c))
    # inversion.per_image_space "stylespace": the styles themselves are refined; w stays E(x)
    models.inversion = dataclasses.replace(models.inversion, per_image_space="stylespace")
    in_stylespace = invert(models, images, batch_size=2)
    assert torch.allclose(in_stylespace.w, encoded.w, atol=1e-6)
    assert not torch.allclose(in_stylespace.styles, encoded.styles)

    def objective(inv) -> float:
        return reconstruction_table(models, images, lpips_model, styles=inv.styles)[["l1", "lpips", "kl"]].sum(1).mean()

    assert objective(refined) < objective(encoded) and objective(in_stylespace) < objective(encoded)

    def lpips_of(styles=None) -> torch.Tensor:
        return torch.tensor(reconstruction_table(models, images, lpips_model, styles=styles)["lpips"].to_numpy())

    # its default is the refined inversion (the table refines in batches of its own: equal up to Adam's rounding)
    assert torch.allclose(lpips_of(), lpips_of(in_stylespace.styles), atol=1e-3)
    assert (lpips_of(encoded.styles) - lpips_of(in_stylespace.styles)).abs().max() > 1e-2
    rendered = models.generator.synthesize(in_stylespace.styles).clamp(-1, 1)
    assert torch.allclose(render_inverted(models, in_stylespace), rendered)


def test_warmup_trains_only_the_autoencoder(tmp_path, data, classifier, lpips_model) -> None:
    cfg = replace_keys(TINY, warmup_steps=2, steps=3, checkpoint_every=0)
    trainer = make_trainer(cfg, data, classifier, lpips_model, None)
    d_before = {k: v.clone() for k, v in trainer.D.state_dict().items()}
    mapping_before = {k: v.clone() for k, v in trainer.G.mapping.state_dict().items()}
    first = trainer.train_step()
    trainer.train_step()
    assert "adv" not in first and "d" not in first and {"l1", "lpips", "kl"} <= set(first)
    assert all(torch.equal(v, trainer.D.state_dict()[k]) for k, v in d_before.items())  # no D step
    assert all(torch.equal(v, trainer.G.mapping.state_dict()[k]) for k, v in mapping_before.items())  # no random path
    after = trainer.train_step()  # the adversarial game starts
    assert {"d", "adv"} <= set(after)
    assert any(not torch.equal(v, trainer.D.state_dict()[k]) for k, v in d_before.items())


def test_mapping_match_pulls_mapping_z_onto_the_encoder_latents(data, classifier, lpips_model) -> None:
    cfg = replace_keys(TINY, mapping_match=True, warmup_steps=1)
    trainer = make_trainer(cfg, data, classifier, lpips_model, None)
    mapping_before = {k: v.clone() for k, v in trainer.G.mapping.state_dict().items()}
    assert "mapping_match" in trainer.train_step()  # also during the warm-up, when nothing else trains the mapping
    assert any(not torch.equal(v, trainer.G.mapping.state_dict()[k]) for k, v in mapping_before.items())

    target = torch.randn(64, cfg.model.latent_dim, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.5  # off W
    rest = {k: v.clone() for k, v in trainer.G.state_dict().items() if not k.startswith("mapping.")}
    encoder = {k: v.clone() for k, v in trainer.E.state_dict().items()}

    def gap() -> float:
        with torch.no_grad():
            return float(latent_mmd_loss(trainer.G.mapping(torch.randn(256, cfg.model.latent_dim)), target))

    mapping_phase = next(phase for phase in PHASES if phase.name == "mapping")

    def match_step(w_encoded: torch.Tensor) -> None:  # the mapping phase alone, with E(x) = w_encoded
        generated = forward.Generated(None, None, w_encoded, None, None)
        mapping_phase.run(forward.StepContext(trainer.state, None, generated, trainer.step_classifier, trainer.lpips,
                                              trainer.options, warming_up=False))

    before = gap()
    for _ in range(120):
        match_step(target[torch.randint(len(target), (16,))])
    assert gap() < 0.4 * before
    assert all(torch.equal(v, trainer.G.state_dict()[k]) for k, v in rest.items())  # the mapping alone moves
    assert all(torch.equal(v, trainer.E.state_dict()[k]) for k, v in encoder.items())
    assert "mapping_match" not in make_trainer(TINY, data, classifier, lpips_model, None).train_step()


def test_style_mixing_takes_the_later_layers_from_a_second_latent(data, classifier, lpips_model) -> None:
    trainer = make_trainer(replace_keys(TINY, mixing_prob=1.0), data, classifier, lpips_model, None)
    G, n = trainer.G, 64
    c = torch.softmax(torch.randn(n, 2), 1)
    styles = G.styles(G.mapping(torch.randn(n, TINY.model.latent_dim)), c)
    mixed = forward.mix_styles(trainer.state, styles, c)
    layers = G.style_index.layer_ids()
    for row in range(n):
        changed = (mixed[row] != styles[row])
        cutoff = int(layers[changed].min())  # every coordinate from the cutoff layer on comes from the other latent
        assert cutoff >= 1 and torch.equal(changed, layers >= cutoff)
    cutoffs = {int(layers[(mixed[r] != styles[r])].min()) for r in range(n)}
    assert len(cutoffs) > 2  # the crossover layer is drawn per sample
    off = make_trainer(replace_keys(TINY, mixing_prob=0.0), data, classifier, lpips_model, None)
    assert torch.equal(forward.mix_styles(off.state, styles, c), styles)


def test_sample_kl_and_augment_enter_the_step(data, classifier, lpips_model) -> None:
    mix = replace_keys(TINY, path_mode="mix")  # both paths in one step
    cfg = replace_keys(mix, loss={**TINY.loss, "sample_kl": 1.0}, augment="color,translation,cutout",
                       mixing_prob=0.9)
    losses = make_trainer(cfg, data, classifier, lpips_model, None).train_step()
    assert losses["sample_kl"] >= 0 and np.isfinite(losses["g"])
    assert "sample_kl" not in make_trainer(mix, data, classifier, lpips_model, None).train_step()
    with pytest.raises(ValueError, match="stylex.regularise.augment"):
        make_trainer(replace_keys(TINY, augment="flip"), data, classifier, lpips_model, None)


def test_class_sparsity_enters_the_step_and_shrinks_the_class_columns(data, classifier, lpips_model) -> None:
    def class_columns(trainer):
        return trainer.G.class_columns().detach().norm(dim=1)

    cfg = replace_keys(TINY, warmup_steps=1, lr_g=0.05)  # Adam moves a weight by about lr_g per step
    plain = make_trainer(cfg, data, classifier, lpips_model, None)
    sparse_cfg = replace_keys(cfg, loss={**cfg.loss, "class_sparsity": 10.0})
    sparse = make_trainer(sparse_cfg, data, classifier, lpips_model, None)
    assert torch.equal(class_columns(plain), class_columns(sparse))
    for _ in range(5):
        assert "class_sparsity" not in plain.train_step()
        assert sparse.train_step()["class_sparsity"] > 0
    assert class_columns(sparse).mean() < 0.9 * class_columns(plain).mean()
    capped = make_trainer(replace_keys(cfg, loss={**cfg.loss, "class_share": 1.0}, class_share_max=0.001), data,
                          classifier, lpips_model, None)
    assert capped.train_step()["class_share"] > 0
    with pytest.raises(ConfigError, match="stylex.regularise.class_share_max"):
        make_trainer(replace_keys(cfg, loss={**cfg.loss, "class_share": 1.0}), data, classifier, lpips_model, None)


def test_step_speedups_learn_what_the_plain_step_learns(classifier, lpips_model) -> None:
    """Every lossless speed-up of the step (StepOptions) on against all off: the same losses and weights after a warm-up
    step and adversarial steps with R1, both paths, mixing, DiffAugment and both KL terms, to float rounding."""
    from stylexlib.gan.step_options import StepOptions

    torch.manual_seed(1)
    classifier = copy.deepcopy(classifier)
    for module in classifier.modules():  # running statistics that folding must carry over
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5), module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5), module.bias.data.uniform_(-0.2, 0.2)
    # No path-length term: it is a Jacobian norm, which jumps when rounding flips one leaky ReLU's side (0.2% here).
    cfg = replace_keys(TINY, path_mode="mix", warmup_steps=1, loss={**TINY.loss, "sample_kl": 1.0},
                              augment="color,translation,cutout", mixing_prob=0.9, mapping_match=True,
                              pl_weight=0.0)
    runs, few = {}, tiny_dataset(10)  # 8 training images: the 4 steps draw each twice (the cached C(x) is reused)
    for name, options in (("fast", StepOptions()), ("plain", StepOptions.none())):
        trainer = train.StylexTrainer(cfg, few, classifier, lpips_model=lpips_model, options=options)
        runs[name] = ([trainer.train_step() for _ in range(4)], all_state(trainer))
    (fast_losses, fast_state), (plain_losses, plain_state) = runs["fast"], runs["plain"]
    assert {"r1", "d", "kl", "sample_kl"} <= set(plain_losses[-2]) | set(plain_losses[-1])
    for fast_step, plain_step in zip(fast_losses, plain_losses):
        assert fast_step.keys() == plain_step.keys()
        for name in plain_step:
            assert fast_step[name] == pytest.approx(plain_step[name], rel=1e-4, abs=1e-5), name
    for name in plain_state:
        torch.testing.assert_close(fast_state[name], plain_state[name], rtol=1e-4, atol=1e-5, msg=f"{name} differs")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_cuda_trainer_steps_with_autocast_and_channels_last(data, classifier, lpips_model, compile) -> None:
    """The GPU path: autocast (bf16, or fp16 with its scaler), channels_last, the step's speed-ups and optionally
    stylex.runtime.compile; a warm-up step and adversarial steps with R1 stay finite and train D."""
    cfg = replace_keys(TINY, device="cuda", precision="auto", channels_last=True, compile=compile,
                              warmup_steps=1, loss={**TINY.loss, "sample_kl": 1.0}, augment="color,translation,cutout",
                              mixing_prob=0.9, mapping_match=True)
    trainer = train.StylexTrainer(cfg, data, copy.deepcopy(classifier), lpips_model=copy.deepcopy(lpips_model).cuda())
    assert trainer.amp_dtype in (torch.bfloat16, torch.float16)
    d_before = [p.detach().clone() for p in trainer.D.parameters()]
    losses = [trainer.train_step() for _ in range(3)]
    assert all(np.isfinite(v) for step in losses for v in step.values())
    assert "r1" in losses[2] and {"d", "adv", "kl", "sample_kl"} <= set(losses[1])
    assert any(not torch.equal(a, b) for a, b in zip(d_before, trainer.D.parameters()))
    assert next(trainer.G.parameters()).is_cuda and trainer.G_ema.const.is_cuda


def test_lazy_r1_runs_every_r1_every_steps_after_the_warm_up(data, classifier, lpips_model) -> None:
    """D trains on every step after the warm-up; R1 joins it on every r1_every-th step."""
    default = make_trainer(replace_keys(TINY, pl_weight=0.0, warmup_steps=1), data, classifier, lpips_model,
                           None)
    steps = [default.train_step() for _ in range(5)]
    assert [i for i, losses in enumerate(steps) if "d" in losses] == [1, 2, 3, 4]
    assert [i for i, losses in enumerate(steps) if "r1" in losses] == [2, 4]


class FakeClock:
    """time.perf_counter for the trainer: each step takes ``step_seconds``."""

    def __init__(self, step_seconds: float) -> None:
        self.now, self.step_seconds = 1000.0, step_seconds

    def perf_counter(self) -> float:
        return self.now


def slow_steps(monkeypatch, step_seconds: float) -> FakeClock:
    clock, real_step = FakeClock(step_seconds), train.StylexTrainer.run_step

    def step(self):
        clock.now += clock.step_seconds
        return real_step(self)

    monkeypatch.setattr(loop, "time", clock)
    monkeypatch.setattr(train.StylexTrainer, "run_step", step)
    return clock


def test_the_time_limit_counts_every_session(tmp_path, data, classifier, lpips_model, monkeypatch) -> None:
    """#40: each resumed session got the whole time_limit_minutes again."""
    slow_steps(monkeypatch, 25.0)
    cfg = replace_keys(TINY, time_limit_minutes=1.0, steps=10, checkpoint_every=0)
    first = make_trainer(cfg, data, classifier, lpips_model, tmp_path).train(steps=2, progress=False)
    assert first.train_seconds == 50.0 and not first.stopped_by_time_limit
    resumed = make_trainer(cfg, data, classifier, lpips_model, tmp_path)
    assert resumed.resume() and resumed.train_seconds == 50.0
    summary = resumed.train(progress=False)  # 10 s of the minute left: one more step ends it
    assert summary.stopped_by_time_limit and (summary.session_steps, summary.steps) == (1, 3)
    assert summary.train_seconds == 75.0 and load_checkpoint(summary.checkpoint)["train_seconds"] == 75.0
    spent = make_trainer(cfg, data, classifier, lpips_model, tmp_path)
    assert spent.resume()
    summary = spent.train(progress=False)  # nothing left: no step
    assert summary.stopped_by_time_limit and (summary.session_steps, summary.steps) == (0, 3)
    longer = make_trainer(replace_keys(cfg, time_limit_minutes=2.0), data, classifier, lpips_model, tmp_path)
    assert longer.resume() and longer.train(progress=False).steps == 5  # a longer limit continues: 100 s, 125 s


def test_a_resumed_stage_03_trains_only_the_minutes_left_before_the_encoder_fit(tmp_path, classifier,
                                                                                  monkeypatch) -> None:
    """#40: stage 03 resumed got a fresh budget; the encoder fit keeps the last encoder_fit_minutes of the limit."""
    from stylexlib.core.config import apply_overrides
    from stylexlib.data import load_dataset

    run = open_run(image_folder_run(tmp_path, classifier))
    run.cfg = apply_overrides(run.cfg, ["stylex.schedule.steps=10", "stylex.schedule.time_limit_minutes=2",
                                        "stylex.encoder_fit.minutes=1"])  # 60 s of training, then 60 s of fit
    data = load_dataset(run.cfg.data)
    fits = []
    monkeypatch.setattr(encoder_fit, "fit_checkpoint_encoder", lambda trainer, data, minutes, progress: fits.append(
        (trainer.step, minutes)))
    slow_steps(monkeypatch, 25.0)
    first = train.train_stylex(run, data, progress=False)
    assert first.stopped_by_time_limit and first.steps == 3 and first.train_seconds == 75.0  # 75 s > 60 s
    again = train.train_stylex(run, data, progress=False)  # 75 s of 120: the training minutes are spent, not the fit's
    assert again.stopped_by_time_limit and (again.session_steps, again.steps) == (0, 3)
    assert fits == [(3, 1.0), (3, 1.0)]  # the fit keeps its minutes (and skips itself when it is done)


def test_a_new_loss_term_is_one_registration(data, classifier, lpips_model, monkeypatch) -> None:
    """#40: register a term (its name, phase and function): `stylex.loss.<name>` weights it, the phase adds it to the
    loss and stats.jsonl logs it; a weight for a term nobody registered is an error naming the terms there are."""
    monkeypatch.setattr(loss_terms, "LOSS_TERMS", dict(loss_terms.LOSS_TERMS))  # registered for this test only

    @loss_terms.register("mean_brightness", "G")
    def mean_brightness(c):  # a toy term: the generated images' mean
        return c.generated.images.mean()

    cfg = replace_keys(TINY, warmup_steps=0, checkpoint_every=0)
    assert "mean_brightness" not in make_trainer(cfg, data, classifier, lpips_model, None).train_step()  # off: 0
    weighted = replace_keys(cfg, loss={**cfg.loss, "mean_brightness": 2.0})
    assert loss_terms.loss_weights(weighted)["mean_brightness"] == 2.0
    step = make_trainer(weighted, data, classifier, lpips_model, None).train_step()
    assert "mean_brightness" in step and np.isfinite(step["mean_brightness"])
    with pytest.raises(ConfigError, match="no loss term named 'brightnes'.*mean_brightness"):
        make_trainer(replace_keys(cfg, loss={"brightnes": 1.0}), data, classifier, lpips_model, None)


def test_sampling_by_kl_draws_the_images_whose_reconstructions_lose_the_decision() -> None:
    """stylex.schedule.kl_sampling: the prioritised share of a batch follows each image's last recorded KL; the rest, and every
    batch at share 0, is the uniform permutation as before (recording scores does not move those draws)."""
    positions = torch.arange(100, 140)
    plain, scored = BatchSampler(positions, 8, seed=1), BatchSampler(positions, 8, seed=1)
    scored.record(positions, torch.full((40,), 0.01))
    scored.record(torch.tensor([117]), torch.tensor([5.0]))  # one image's reconstruction loses the class
    assert all(torch.equal(plain.next(), scored.next()) for _ in range(12))  # share 0: uniform, as before
    drawn = torch.cat([scored.next(prioritised=4) for _ in range(50)])
    hard = (drawn == 117).sum().item()
    assert hard >= 45  # in nearly every batch (4 of 8 drawn by a score 500x the others'), against ~10 uniformly
    assert len(drawn) == 400 and set(drawn.tolist()) <= set(positions.tolist())
    state = scored.state_dict()
    restored = BatchSampler(positions, 8, seed=9)
    restored.load_state_dict(state)
    assert torch.equal(restored.next(prioritised=4), scored.next(prioritised=4))  # the scores resume with the state


def test_kl_sampling_records_each_reconstructions_kl_and_needs_the_kl_term(data, classifier, lpips_model) -> None:
    cfg = replace_keys(TINY, warmup_steps=0, checkpoint_every=0, kl_sampling=0.5,
                              loss={**TINY.loss, "kl": 1.0})
    trainer = make_trainer(cfg, data, classifier, lpips_model, None)
    drawn = []
    real_next = trainer.batches.next
    trainer.batches.next = lambda prioritised=0, balanced=0: drawn.append(prioritised) or real_next(prioritised, balanced)
    for _ in range(4):
        trainer.train_step()
    assert drawn == [2, 0, 2, 0]  # half of each encoder-path batch (alternate: steps 0 and 2), none on random steps
    scores = trainer.batches.sampler.scores
    assert 0 < (~scores.isnan()).sum() <= 8 and (scores[~scores.isnan()] >= 0).all()
    with pytest.raises(ConfigError, match="kl_sampling.*stylex.loss.kl"):
        make_trainer(replace_keys(cfg, loss={**TINY.loss, "kl": 0.0}), data, classifier, lpips_model, None)


def labelled_dataset(tmp_path: Path, rare: list[int], n: int = 40) -> ImageDataset:
    """tiny_dataset with a labels CSV: ``glasses`` is 1 on the ``rare`` positions, ``coin`` alternates."""
    plain = tiny_dataset(n)
    files = [f"img{i}.png" for i in range(n)]
    csv = tmp_path / "labels.csv"
    csv.write_text("file,glasses,coin,age\n" + "".join(f"{f},{int(i in rare)},{i % 2},{20 + i}\n"
                                                      for i, f in enumerate(files)))
    return ImageDataset(plain.images, plain.labels, plain.class_names, plain.split, files=files,
                        info={"labels_csv": str(csv)})


def test_label_balance_draws_a_rare_label_as_often_as_its_absence(tmp_path, classifier, lpips_model) -> None:
    """stylex.schedule.label_balance: the balanced share of each batch holds the rare label's two values about
    equally; the rest stays uniform; a column that is not binary, and data without a labels CSV, are clear errors."""
    data = labelled_dataset(tmp_path, rare=[3, 8, 16, 21])  # 4 of the 32 training images
    positions = torch.as_tensor(data.indices("train"))
    weights = balancing_weights(data, ["glasses"], positions)
    assert torch.isclose(weights[[3, 8, 16, 21]].sum(), torch.tensor(0.5, dtype=weights.dtype))
    both = balancing_weights(data, ["glasses", "coin"], positions)  # each column gets half the weight, by value
    assert torch.allclose(both, (weights + 1 / 32) / 2)  # coin: 16 of each value
    sampler = BatchSampler(positions, 8, seed=1, weights=weights)
    drawn = torch.cat([sampler.next(balanced=2) for _ in range(300)])
    balanced_rate = np.isin(drawn.view(300, 8)[:, :2].numpy(), [3, 8, 16, 21]).mean()
    uniform_rate = np.isin(drawn.view(300, 8)[:, 2:].numpy(), [3, 8, 16, 21]).mean()
    assert 0.4 < balanced_rate < 0.6 and uniform_rate < 0.2  # 4/32 = 0.125 uniformly
    with pytest.raises(ValueError, match="weights"):
        BatchSampler(positions, 8, seed=1).next(balanced=2)
    with pytest.raises(DataError, match="'age' needs exactly two values"):
        balancing_weights(data, ["age"], positions)
    with pytest.raises(DataError, match="stylex.schedule.label_balance: \\['glases'\\] not in .*glasses"):
        balancing_weights(data, ["glases"], positions)
    cfg = replace_keys(TINY, warmup_steps=0, checkpoint_every=0, label_balance=["glasses"], label_balance_share=0.5)
    trainer = make_trainer(cfg, data, classifier, lpips_model, None)
    assert trainer.balanced == 2 and torch.equal(trainer.batches.sampler.weights, weights)
    trainer.train_step()
    with pytest.raises(ConfigError, match="label_balance.*labels CSV"):
        make_trainer(cfg, tiny_dataset(), classifier, lpips_model, None)
    with pytest.raises(ConfigError, match="label_balance_share"):
        make_trainer(replace_keys(cfg, label_balance_share=1.5), data, classifier, lpips_model, None)
