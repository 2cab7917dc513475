"""AttFind (effects, selection, editor): fast path equals the naive reference, selection procedures, per-image top-k, sufficiency, resume."""
from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from stylexlib.classifier.model import build_classifier
from stylexlib.core.config import AttFindConfig, from_dict
from stylexlib.core.stylex_config import stylex_config
from stylexlib.explain.attfind import effects, screen, selection
from stylexlib.explain.attfind.editor import AttributeEditor
from stylexlib.explain.attfind.effects import Effects, StyleStats
from stylexlib.gan import Encoder, Generator
from stylexlib.gan.models import StylexModels
from stylexlib.stylespace.accelerate import inference_copies

CFG = stylex_config(latent_dim=16, mapping_layers=2, channel_base=128, channel_max=8)
RESOLUTION = 16


@pytest.fixture(scope="module")
def models() -> StylexModels:
    torch.manual_seed(0)
    G = Generator(RESOLUTION, 2, CFG).eval().requires_grad_(False)
    E = Encoder(RESOLUTION, CFG.model.latent_dim, CFG).eval().requires_grad_(False)
    C = build_classifier(2, RESOLUTION, width=4).eval().requires_grad_(False)
    return StylexModels(G, E, C, CFG, ["a", "b"], 0, torch.device("cpu"))


@pytest.fixture(scope="module")
def encoded(models) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(6, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(1)) * 2 - 1
    inverted = effects.invert(models, images)
    return inverted.styles, inverted.logits


def test_fast_effects_equal_the_naive_reference(models, encoded) -> None:
    styles, _ = encoded
    stats = StyleStats.of(styles)
    coords = torch.arange(0, models.generator.style_dim, 3)  # every layer, a third of the coordinates
    for mode in ("minmax", "std"):
        targets = effects.shift_targets(styles[:2], stats, mode)
        fast = effects.edited_logits_fast(models.generator, models.classifier, styles[:2], targets, coords, batch_size=7)
        naive = effects.edited_logits_naive(models.generator, models.classifier, styles[:2], targets, coords)
        assert fast.shape == (2, len(coords), 2, 2)
        assert (fast - naive).abs().max() < 1e-4
        assert (fast - naive).abs().max() > 0 or mode == "std"  # guards against comparing a tensor with itself


def test_compiled_channels_last_copies_give_the_same_effects(models, encoded) -> None:
    styles, _ = encoded
    targets = effects.shift_targets(styles[:1], StyleStats.of(styles))
    coords = torch.arange(0, models.generator.style_dim, 5)
    G, C = inference_copies(models.generator, models.classifier, compile=True)
    assert G is not models.generator and G.layers[0] is not models.generator.layers[0]
    fast = effects.edited_logits_fast(G, C, styles[:1], targets, coords, batch_size=16)
    naive = effects.edited_logits_naive(models.generator, models.classifier, styles[:1], targets, coords)
    assert (fast - naive).abs().max() < 1e-4


def test_screened_mode_evaluates_the_chosen_edits_exactly(models, encoded) -> None:
    styles, logits = encoded
    stats = StyleStats.of(styles)
    exhaustive = effects.compute_effects(models, styles[:4], logits[:4], torch.arange(4), stats,
                                         AttFindConfig(), progress=False)
    cfg = AttFindConfig(screen=True, screen_candidates=3, screen_per_image=2)
    targets = effects.shift_targets(styles[:4], stats)
    mask = screen.screened_edits(models, styles[:4], targets, exhaustive.coords, logits[:4], cfg)
    screened = effects.compute_effects(models, styles[:4], logits[:4], torch.arange(4), stats, cfg, progress=False,
                                       screen=mask)
    chosen = screened.evaluated
    assert exhaustive.evaluated is None and torch.equal(chosen, mask) and chosen.shape == (4, len(exhaustive.coords), 2)
    assert 0 < chosen.sum() < chosen.numel()
    assert torch.allclose(screened.edited_logits[chosen], exhaustive.edited_logits[chosen], atol=1e-5)
    skipped = screened.edited_logits[~chosen]
    assert torch.equal(skipped, screened.base_logits[:, None, None].expand_as(screened.edited_logits)[~chosen])
    estimates = screen.estimated_effects(models.generator, models.classifier, styles[:4], targets, exhaustive.coords,
                                         cfg.output)
    pools = screen.class_pools(exhaustive.base_logits, exhaustive.input_logits, cfg.drop_inconsistent)
    assert torch.equal(chosen, screen.screen_mask(estimates, pools, 3, 2))
    # completion: the picked coordinates evaluated on every image, exactly; the rest untouched
    flats = exhaustive.coords[[0, 5]].tolist()
    completed = screen.complete(screened, models, styles[:4], targets, flats, cfg)
    assert completed.evaluated[:, [0, 5]].all() and completed.evaluated.sum() > chosen.sum()
    assert torch.allclose(completed.edited_logits[:, [0, 5]], exhaustive.edited_logits[:, [0, 5]], atol=1e-5)
    assert torch.equal(completed.edited_logits[chosen], screened.edited_logits[chosen])
    assert screen.complete(completed, models, styles[:4], targets, flats, cfg) is completed  # nothing left to do
    true_change = exhaustive.toward(1, "logits")  # the estimate is first order: it agrees in sign with most changes
    big = true_change.abs() > true_change.abs().quantile(0.75)
    assert (torch.sign(estimates[..., 1][big]) == torch.sign(true_change[big])).float().mean() > 0.7


def test_screen_mask_keeps_each_class_candidates_and_each_image_own_best() -> None:
    """Per class the top mean gains over its pool go to every image; each image adds its own best per class (the
    greedy coverage's late picks matter for a few images only)."""
    estimates = torch.zeros(3, 4, 2, 2)  # 3 images, 4 coordinates, 2 directions, 2 classes
    estimates[:, 1, 1, 0] = 1.0  # coordinate 1 up raises class 0 on every image
    estimates[2, 3, 0, 0] = 5.0  # coordinate 3 down raises class 0 a lot, on image 2 only
    estimates[:, 2, 0, 1] = torch.tensor([0.5, 0.4, 0.3])  # coordinate 2 down raises class 1
    pools = torch.tensor([[True, True, False], [True, True, True]])  # image 2 is class 0's own
    mask = screen.screen_mask(estimates, pools, candidates=1, per_image=1)
    assert mask[:, 1, 1].all() and mask[:, 2, 0].all()  # each class's candidate, on every image
    assert mask[2, 3, 0] and not mask[:2, 3, 0].any()  # image 2's own best, not the others'
    assert mask.sum() == 7  # 3 + 3 + image 2's own (images 0, 1: their own best are the candidates)


def test_a_negative_screen_count_names_its_key(models, encoded) -> None:
    styles, logits = encoded
    targets = effects.shift_targets(styles[:2], StyleStats.of(styles))
    coords = effects.searched_coordinates(models.generator, include_torgb=False)
    with pytest.raises(ValueError, match="attfind.screen_per_image must be 0 or more"):
        screen.screened_edits(models, styles[:2], targets, coords, logits[:2], AttFindConfig(screen_per_image=-1))


def test_the_per_image_screen_of_old_configs_migrates(caplog) -> None:
    assert from_dict({"screen_fraction": None}, AttFindConfig) == AttFindConfig()  # a run folder's own record
    with caplog.at_level("WARNING"):
        assert from_dict({"screen_fraction": 0.1}, AttFindConfig).screen
    assert "screen_fraction is replaced by attfind.screen" in caplog.text


def test_shift_targets_and_apply(encoded) -> None:
    styles, _ = encoded
    stats = StyleStats.of(styles)
    minmax = effects.shift_targets(styles, stats, "minmax")
    assert torch.equal(minmax[0, 3], stats.minimum) and torch.equal(minmax[1, 0], stats.maximum)
    std = effects.shift_targets(styles, stats, "std", shift_std=1.5)
    assert torch.allclose(std[1] - styles, 1.5 * stats.std.expand_as(styles))
    flats = torch.tensor([[5, 9]] * len(styles))
    directions = torch.tensor([[1, 0]] * len(styles))
    assert torch.equal(effects.apply_attributes(styles, minmax, flats, directions, strength=0.0), styles)
    edited = effects.apply_attributes(styles, minmax, flats, directions)
    changed = (edited != styles).any(0).nonzero().flatten().tolist()
    assert set(changed) <= {5, 9} and torch.equal(edited[:, 5], stats.maximum[5].expand(len(styles)))
    assert torch.equal(edited[:, 9], stats.minimum[9].expand(len(styles)))
    with pytest.raises(ValueError, match="attfind.shift"):
        effects.shift_targets(styles, stats, "bogus")


def planted_effects() -> Effects:
    """8 images (4 of class 0, 4 of class 1), 5 coordinates; coordinate 2 'up' moves images 0-1 to class 1,
    coordinate 4 'down' moves images 2-3; every other edit does nothing."""
    base = torch.tensor([[2.0, -2.0]] * 4 + [[-2.0, 2.0]] * 4)
    edited = base[:, None, None, :].repeat(1, 5, 2, 1)
    edited[0:2, 2, 1] = torch.tensor([-2.0, 2.0])
    edited[2:4, 4, 0] = torch.tensor([-1.0, 1.0])
    edited[0:4, 1, 0] = torch.tensor([1.5, -1.5])  # a small push everywhere, never a flip
    return Effects(edited, base, base.clone(), torch.tensor([10, 11, 12, 13, 14]), torch.arange(100, 108))


def test_greedy_covers_images_while_ranking_repeats_the_strongest() -> None:
    effects = planted_effects()
    greedy = selection.class_attributes(effects, target=1, k=3, method="greedy", max_image_effect=0.2)
    assert greedy.loc[0, "flat"] == 12 and greedy.loc[0, "direction"] == "up"
    assert greedy.loc[1, "flat"] == 14 and greedy.loc[1, "direction"] == "down"  # covers the images 12 left
    assert greedy.loc[0, "flip_fraction"] == 0.5 and greedy.loc[0, "pool_images"] == 4
    ranking = selection.class_attributes(effects, target=1, k=2, method="ranking")
    assert ranking.loc[0, "flat"] == 12
    assert ranking["mean_effect"].is_monotonic_decreasing
    logits = selection.class_attributes(effects, target=1, k=1, output="logits")
    assert logits.loc[0, "mean_effect"] == pytest.approx(4.0, abs=1e-5)  # log-odds -4 -> 4 on half the pool
    with pytest.raises(ValueError, match="attfind.method"):
        selection.class_attributes(effects, target=1, method="bogus")


def test_a_coordinate_is_picked_in_one_direction_only() -> None:
    effects = planted_effects()
    effects.edited_logits[2:4, 2, 0] = torch.tensor([0.0, 0.0])  # 12 pushes toward class 1 from both ends
    for method in ("greedy", "ranking"):
        table = selection.class_attributes(effects, target=1, k=5, method=method, max_image_effect=0.2)
        assert table.loc[0, ["flat", "direction"]].tolist() == [12, "up"] and table["flat"].is_unique, method


def test_a_vetting_function_skips_rejected_edits() -> None:
    effects = planted_effects()
    vetted = []
    table = selection.class_attributes(effects, target=1, k=2, accept=lambda flat, d: vetted.append((flat, d)) or flat != 12)
    assert vetted[0] == (12, 1) and 12 not in table["flat"].tolist() and len(table) == 2
    assert table.loc[0, "flat"] == 14


def test_realism_check_rejects_edits_the_discriminator_finds_unreal(models, encoded) -> None:
    styles, _ = encoded
    targets = effects.shift_targets(styles, StyleStats.of(styles), "std", shift_std=50.0)

    class Brightness(torch.nn.Module):  # "real" = dark: a stand-in discriminator with a known opinion
        def forward(self, images, probs):
            return -images.mean(dim=(1, 2, 3))

    with_d = dataclasses.replace(models, discriminator=Brightness())
    accept = selection.realism_check(with_d, styles, targets, quantile=0.05, max_fraction=0.5)
    last = models.generator.style_index.layer_slices[-1]  # the last toRGB layer: a huge shift changes brightness
    verdicts = {d: [accept(f, d) for f in range(last.start, last.stop)] for d in (0, 1)}
    assert not all(verdicts[0] + verdicts[1]) and any(verdicts[0] + verdicts[1])
    with pytest.raises(ValueError, match="discriminator"):
        selection.realism_check(models, styles, targets)


def test_image_attributes_rank_edits_that_lower_the_predicted_class() -> None:
    effects = planted_effects()
    top = selection.image_attributes(effects, image=2, k=2)
    assert top.loc[0, "flat"] == 14 and top.loc[0, "direction"] == "down" and bool(top.loc[0, "flips"])
    assert top.loc[0, "image_index"] == 102 and top.loc[0, "effect"] > top.loc[1, "effect"]
    toward = selection.image_attributes(effects, image=0, k=1, target=1)
    assert toward.loc[0, "flat"] == 12


def test_one_vs_rest_scores_for_several_classes() -> None:
    logits = torch.tensor([[1.0, 0.0, -1.0]])
    p = logits.softmax(1)[0]
    score = effects.class_score(logits, torch.tensor([0]), "logits")
    assert score.item() == pytest.approx(torch.log(p[0] / (1 - p[0])).item(), abs=1e-5)
    assert effects.class_score(logits, torch.tensor([2]), "probs").item() == pytest.approx(p[2].item())


def test_sufficiency_matches_a_direct_computation(models, encoded) -> None:
    styles, _ = encoded
    stats = StyleStats.of(styles)
    targets = effects.shift_targets(styles, stats)
    coords = effects.searched_coordinates(models.generator, include_torgb=False)
    attributes = pd.DataFrame({"class_index": [0, 0, 1, 1], "rank": [1, 2, 1, 2], "flat": [int(coords[0]), int(coords[3])] * 2,
                               "direction": ["up", "down", "down", "up"]})
    table = selection.sufficiency(models.generator, models.classifier, styles, targets, attributes, coords, max_k=2,
                                random_trials=2)
    assert list(table["k"]) == [1, 2]
    predicted = effects.predict_styles(models.generator, models.classifier, styles).argmax(1)
    flats = torch.full((len(styles), 1), int(coords[0]))
    directions = torch.where(predicted == 1, 1, 0)[:, None]  # class 1 images get class 0's rank-1 edit (up), others down
    edited = effects.apply_attributes(styles, targets, flats, directions)
    expected = (effects.predict_styles(models.generator, models.classifier, edited).argmax(1) != predicted).float().mean()
    assert table.loc[0, "flip_rate"] == pytest.approx(float(expected))
    assert 0 <= table.loc[0, "random_flip_rate"] <= 1


def test_each_images_own_top_k_is_applied_as_image_attributes_lists_it(models, encoded) -> None:
    class Brightness(torch.nn.Module):  # a stand-in classifier with a known opinion: bright images are class 0
        def forward(self, images):
            brightness = images.mean(dim=(1, 2, 3)) - self.middle
            return torch.stack([brightness, -brightness], 1) * 100

    styles, logits = encoded
    classifier = Brightness()
    classifier.middle = models.generator.synthesize(styles).mean(dim=(1, 2, 3)).median()
    targets = effects.shift_targets(styles, StyleStats.of(styles), "std", shift_std=5.0)
    coords = effects.searched_coordinates(models.generator, include_torgb=False)
    found = Effects(effects.edited_logits_fast(models.generator, classifier, styles, targets, coords),
                    effects.predict_styles(models.generator, classifier, styles), logits, coords, torch.arange(6))
    table = selection.image_sufficiency(models.generator, classifier, styles, targets, found, max_k=3)
    assert list(table["k"]) == [1, 2, 3]
    single = torch.tensor([bool(selection.image_attributes(found, i, k=1, output="logits").loc[0, "flips"])
                           for i in range(6)])
    assert single.any() and table.loc[0, "image_flip_rate"] == pytest.approx(single.float().mean().item())
    tops = [selection.image_attributes(found, i, k=3, output="logits") for i in range(6)]
    assert all(top["flat"].is_unique for top in tops)
    flats = torch.tensor([top["flat"].tolist() for top in tops])
    directions = torch.tensor([[effects.DIRECTIONS.index(d) for d in top["direction"]] for top in tops])
    edited = effects.apply_attributes(styles, targets, flats, directions)
    flipped = effects.predict_styles(models.generator, classifier, edited).argmax(1) != found.predicted
    assert table.loc[2, "image_flip_rate"] == pytest.approx(flipped.float().mean().item())
    metrics = selection.sufficiency_metrics(table.assign(flip_rate=0.5, random_flip_rate=0.0), ks=(1, 3))
    assert metrics["image_flip_rate_top3"] == table.loc[2, "image_flip_rate"] and metrics["flip_rate_top1"] == 0.5


def test_effects_resume_after_an_interruption(models, encoded, tmp_path, monkeypatch) -> None:
    styles, logits = encoded
    stats = StyleStats.of(styles)
    cfg = AttFindConfig(batch_size=64)
    straight = effects.compute_effects(models, styles, logits, torch.arange(6), stats, cfg, progress=False, chunk=2)
    real = effects.edited_logits_fast
    calls = []

    def crash_on_second_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(effects, "edited_logits_fast", crash_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        effects.compute_effects(models, styles, logits, torch.arange(6), stats, cfg, tmp_path / "e.pt", progress=False, chunk=2)
    monkeypatch.setattr(effects, "edited_logits_fast", real)
    resumed_calls = []
    monkeypatch.setattr(effects, "edited_logits_fast", lambda *a, **k: resumed_calls.append(1) or real(*a, **k))
    resumed = effects.compute_effects(models, styles, logits, torch.arange(6), stats, cfg, tmp_path / "e.pt",
                                      progress=False, chunk=2)
    assert len(resumed_calls) == 2  # the first chunk came from the partial file
    assert torch.allclose(resumed.edited_logits, straight.edited_logits, atol=1e-6)
    parts = sorted(p.name for p in tmp_path.glob("e.rank0.part*.pt"))  # appended one chunk a file, never rewritten
    assert parts == ["e.rank0.part0000000.pt", "e.rank0.part0000002.pt", "e.rank0.part0000004.pt"]
    other = dataclasses.replace(cfg, shift="std")  # other settings never reuse the partial file
    assert effects._load_partial(tmp_path / "e.rank0.part", "another key") == []
    (tmp_path / "e.rank0.part0000002.pt").unlink()  # a gap: only the chunks before it count
    key = effects.float_key(styles, stats, models.generator, cfg)
    assert len(effects._load_partial(tmp_path / "e.rank0.part", key)) == 2
    assert effects.compute_effects(models, styles[:2], logits[:2], torch.arange(2), stats, other, tmp_path / "e.pt",
                                   progress=False).edited_logits.shape[0] == 2


def test_editor_strength_scales_the_shift(models, encoded) -> None:
    styles, _ = encoded
    editor = AttributeEditor(models, StyleStats.of(styles))
    flat = int(effects.searched_coordinates(models.generator, False)[4])
    none = editor.edit(styles[:2], flat, "up", strength=0.0)
    half = editor.edit(styles[:2], flat, "up", strength=0.5)
    full = editor.edit(styles[:2], flat, "up")
    assert torch.equal(none, styles[:2])
    assert torch.allclose(half[:, flat], (styles[:2, flat] + full[:, flat]) / 2)
    images = editor.render(full)
    assert images.shape == (2, 3, RESOLUTION, RESOLUTION) and images.abs().max() <= 1
    probs = editor.probabilities(images)
    assert torch.allclose(probs.sum(1), torch.ones(2))
    with pytest.raises(ValueError, match="direction"):
        editor.edit(styles, flat, "sideways")


def test_cache_key_follows_what_the_effects_depend_on(models, encoded) -> None:
    styles, _ = encoded
    key = lambda cfg, identity="run images": effects.cache_key(models.generator, cfg, identity)  # noqa: E731
    assert key(AttFindConfig(output="probs")) == key(AttFindConfig(output="logits"))  # effects are logits either way
    assert key(AttFindConfig(screen=True, output="probs")) != key(AttFindConfig(screen=True))
    assert key(AttFindConfig(screen=True)) != key(AttFindConfig(screen=True, screen_per_image=8)) != key(AttFindConfig())
    assert key(AttFindConfig(shift="std")) != key(AttFindConfig())
    assert key(AttFindConfig(include_torgb=True)) != key(AttFindConfig())
    assert key(AttFindConfig(), "other images") != key(AttFindConfig())
    assert key(AttFindConfig(stats_images=500)) != key(AttFindConfig())  # another shift range
    stats = StyleStats.of(styles)
    floats = lambda s: effects.float_key(s, stats, models.generator, AttFindConfig())  # noqa: E731
    assert floats(styles) != floats(styles + 1e-7)  # without an identity, the bits are all there is


def test_stats_covering_the_edited_styles_put_every_shift_on_its_side(encoded) -> None:
    styles, _ = encoded
    stats = StyleStats.of(styles[:3])
    beyond = torch.cat([styles[3:] * 3, styles[3:] - 5])  # refined styles beyond the encoder's range
    assert ((beyond < stats.minimum) | (beyond > stats.maximum)).any()  # "down" would move some of them up
    covering = stats.covering(beyond)
    targets = effects.shift_targets(beyond, covering)
    assert (targets[0] <= beyond).all() and (targets[1] >= beyond).all()
    assert torch.equal(covering.mean, stats.mean) and torch.equal(covering.std, stats.std)
    assert torch.equal(stats.covering(styles[:3]).maximum, stats.maximum)


def test_attfind_finds_the_one_coordinate_that_moves_the_classifier() -> None:
    """A generator whose image depends on exactly one StyleSpace coordinate (every conv weight and every other
    toRGB weight zeroed: features are constant, the last toRGB reads one channel) and a classifier that reads the
    image's red mean: AttFind's top attribute for each class must be that coordinate, in the direction that helps."""
    torch.manual_seed(0)
    G = Generator(RESOLUTION, 2, CFG).eval().requires_grad_(False)
    planted_layer, planted_channel = len(G.layers) - 1, 3
    with torch.no_grad():
        for layer in G.layers:
            layer.weight.zero_()
            layer.bias.fill_(0.5)
        G.layers[planted_layer].weight[0, planted_channel] = 1.0  # red reads channel 3 of the last toRGB
    planted = G.style_index.flat(planted_layer, planted_channel)

    class RedMean(torch.nn.Module):
        center = 0.0

        def forward(self, images):
            red = images[:, 0].mean(dim=(1, 2)) - self.center
            return torch.stack([-red, red], dim=1) * 4

    C = RedMean()
    models = StylexModels(G, Encoder(RESOLUTION, CFG.model.latent_dim, CFG).eval(), C, CFG, ["low", "high"], 0,
                          torch.device("cpu"))
    gen = torch.Generator().manual_seed(2)
    styles = G.styles(G.mapping(torch.randn(16, CFG.model.latent_dim, generator=gen)), torch.rand(16, 2, generator=gen))
    with torch.no_grad():
        C.center = float(G.synthesize(styles)[:, 0].mean(dim=(1, 2)).median())  # half the images on each side
        logits = C(G.synthesize(styles))
    assert 0 < int(logits.argmax(1).sum()) < 16  # both classes present
    cfg = AttFindConfig(include_torgb=True, batch_size=64)
    found = effects.compute_effects(models, styles, logits, torch.arange(16), StyleStats.of(styles), cfg, progress=False)
    for target in (0, 1):
        table = selection.class_attributes(found, target, k=3, output="logits")
        top = table.iloc[0]
        assert int(top["flat"]) == planted
        weight_sign = 1 if target == 1 else -1  # red up helps "high"; the style scales channel 3 (weight +1)
        assert top["direction"] == ("up" if weight_sign > 0 else "down")
        assert (table.iloc[1:]["mean_effect"].abs() < 1e-4).all()  # nothing else moves it
