"""AttFind speed: the naive reference (one full generator + classifier pass per edit, as public StylEx code)
against the fast path (prefix cached per layer, edits batched through the suffix), on the same model and images.

Prints JSON: seconds per image for the naive reference and for the fast path, eager (channels_last) and
compiled (torch.compile per synthesis layer, setup time reported apart), each with its speedup over the naive
reference and the max absolute difference of the effects (classifier logits) from it; the floor of the exact search
on the same models (only its batched generator suffixes and classifier passes, the prefixes and edit batches made
beforehand and not timed) and the exact search's ratio to it (``exact_vs_floor``: the eager fast path, AttFind's
default; ``exact_compiled_vs_floor``: the compiled one against its own floor); then the screened mode
(``attfind.screen``: gradient estimates choose the edits, evaluated exactly): its speedup and how many of each class's
top-10 attributes (greedy selection, without the completion of stage 05) it shares with the exhaustive search on the
same images.

With ``--stored-inversion``: stage 05's work per searched image with the real preset (E(x) refined for 50 steps per
image; AttFind searches an image and scores one held-out image) when the run's store already holds the inversions
(stage 04 made them) against re-inverting both as before the store, in the same run at each ``--resolutions``:
``stored_inversion_speedup_<px>``, with the screened search as well (``attfind.screen``: its estimates and its exact
edits) ``stored_screened_speedup_<px>``, and the seconds of each part.

    python benchmarks/attfind.py                       # demo-sized random models at 32x32
    python benchmarks/attfind.py --run runs/demo       # the trained models of a run folder
    python benchmarks/attfind.py --stored-inversion --resolutions 64 128
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from stylexlib.classifier.model import build_classifier
from stylexlib.core.config import AttFindConfig, InversionConfig, StylexConfig, load_config
from stylexlib.core.presets import REAL_INVERSION
from stylexlib.core.run import open_run
from stylexlib.data import load_dataset
from stylexlib.explain.attfind import effects, screen
from stylexlib.explain.attfind import search as attfind
from stylexlib.explain.attfind import selection
from stylexlib.gan import Encoder, Generator
from stylexlib.gan.losses import load_lpips
from stylexlib.gan.models import StylexModels, load_stylex
from stylexlib.stylespace import inversion
from stylexlib.stylespace.accelerate import inference_copies
from stylexlib.gan.inversion_store import InversionStore, store_identity


def random_models(resolution: int, config: str) -> StylexModels:
    """Untrained models with the sizes of a config (timings do not depend on the weights)."""
    cfg: StylexConfig = load_config(config).stylex
    torch.manual_seed(0)
    nets = (Generator(resolution, 2, cfg), Encoder(resolution, cfg.model.latent_dim, cfg),
            build_classifier(2, resolution, load_config(config).classifier.width))
    nets = [n.eval().requires_grad_(False) for n in nets]
    return StylexModels(*nets, cfg, ["a", "b"], 0, torch.device("cpu"))


def stage05_seconds(models: StylexModels, images: torch.Tensor, held_out: torch.Tensor, batch_size: int,
                    store_dir: Path) -> dict[str, float]:
    """Seconds per searched image of stage 05's inversions and exact search, with the inversions re-made (``invert``,
    as before the store) and read from a filled store (``stored``)."""
    models.inversion = InversionConfig(**REAL_INVERSION)
    models.store = InversionStore(store_dir, store_identity(models, {"bench": True}))
    lpips_model = load_lpips(models.cfg.model.lpips_net, models.device)
    invert = lambda: [inversion.invert(models, x, lpips_model=lpips_model, progress=False) for x in (images, held_out)]  # noqa: E731
    inverted, invert_s = timed(invert)  # fills the store
    _, stored_s = timed(invert)  # every image read back
    styles = inverted[0].styles
    targets = effects.shift_targets(styles, effects.StyleStats.of(torch.cat([styles, inverted[1].styles])), "minmax")
    coords = effects.searched_coordinates(models.generator, include_torgb=False)
    fast_G, fast_C = inference_copies(models.generator, models.classifier, compile=False)
    _, search_s = timed(lambda: effects.edited_logits_fast(fast_G, fast_C, styles, targets, coords, batch_size))
    cfg = AttFindConfig(screen=True, batch_size=batch_size)
    only, estimate_s = timed(lambda: screen.screened_edits(models, styles, targets, coords, inverted[0].logits, cfg))
    _, screened_s = timed(lambda: effects.edited_logits_fast(fast_G, fast_C, styles, targets, coords, batch_size, only))
    n, before = len(images), invert_s + search_s
    return {"invert_seconds_per_image": round(invert_s / n, 3), "read_stored_seconds_per_image": round(stored_s / n, 4),
            "search_seconds_per_image": round(search_s / n, 3),
            "stored_inversion_speedup": round(before / (stored_s + search_s), 2),
            "screen_estimate_seconds_per_image": round(estimate_s / n, 3),
            "screened_search_seconds_per_image": round(screened_s / n, 3),
            "screened_edit_fraction": round(float(only.float().mean()), 3),
            "stored_screened_speedup": round(before / (stored_s + estimate_s + screened_s), 2)}


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}  # cpu: this process's CPU time (a busy machine)
CLOCK = CLOCKS["wall"]


@torch.no_grad()
def floor_seconds(G, C, styles: torch.Tensor, targets: torch.Tensor, coords: torch.Tensor, batch_size: int) -> float:
    """Seconds of the exact search's irreducible work: for every image and edited layer, one generator suffix and
    one classifier pass per batch of edits (the prefix states and the edit batches are made before the clock runs)."""
    layer_of = G.style_index.layer_ids()[coords]
    seconds = 0.0
    for n in range(len(styles)):
        work = []
        for layer in torch.unique(layer_of).tolist():
            state = G.synthesize_prefix(styles[n : n + 1], layer)
            positions = (layer_of == layer).nonzero().flatten()
            edits = effects.single_edits(styles[n : n + 1], targets[:, n], coords[positions])
            work += [(effects._materialise(state, len(chunk)), chunk, layer) for chunk in edits.split(batch_size)]
        start = CLOCK()
        for state, chunk, layer in work:
            C(G.synthesize_from(state, chunk, layer))
        seconds += CLOCK() - start
    return seconds


def timed(fn) -> tuple[torch.Tensor, float]:
    start = CLOCK()
    out = fn()
    return out, CLOCK() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="run folder with a trained StylEx checkpoint (default: random demo-sized models)")
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--naive-images", type=int, default=2, help="images for the (slow) reference")
    parser.add_argument("--fast-images", type=int, default=16, help="images for the fast paths and the screened agreement")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--screen-candidates", type=int, default=AttFindConfig.screen_candidates,
                        help="screened mode: edits per class evaluated on every image")
    parser.add_argument("--screen-per-image", type=int, default=AttFindConfig.screen_per_image,
                        help="screened mode: each image's own best edits per class")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="cpu: CPU time, for a busy machine")
    parser.add_argument("--stored-inversion", action="store_true",
                        help="only stage 05 per image with a stored inversion against re-inverting (real preset)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--real-config", default="configs/celeba_smile.yaml", help="--stored-inversion: model sizes")
    args = parser.parse_args()
    global CLOCK
    CLOCK = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.stored_inversion:
        report = {}
        for resolution in args.resolutions:
            models = random_models(resolution, args.real_config)
            pixels = torch.randint(0, 256, (2 * args.fast_images, 3, resolution, resolution), dtype=torch.uint8,
                                   generator=torch.Generator().manual_seed(resolution))
            with tempfile.TemporaryDirectory() as folder:
                part = stage05_seconds(models, pixels[: args.fast_images], pixels[args.fast_images :],
                                       args.batch_size, Path(folder))
            report.update({f"{key}_{resolution}": value for key, value in part.items()})
        report.update({"images": args.fast_images, "models": f"random, sizes of {args.real_config}",
                       "threads": torch.get_num_threads(), "clock": args.clock, "torch": torch.__version__})
        print(json.dumps(report, indent=2))
        return
    count = max(args.naive_images, args.fast_images)
    if args.run:  # the trained models and the run's own validation images
        run = open_run(args.run)
        data = load_dataset(run.cfg.data)
        models = load_stylex(run, "cpu", data)
        images = data.images[attfind.subset_indices(data, "val", count, seed=0)]
    else:
        models = random_models(args.resolution, args.config)
        images = torch.rand(count, 3, args.resolution, args.resolution, generator=torch.Generator().manual_seed(0)) * 2 - 1
    G, C = models.generator, models.classifier
    styles = effects.invert(models, images).styles
    stats = effects.StyleStats.of(styles)
    targets = effects.shift_targets(styles, stats, "minmax")
    coords = effects.searched_coordinates(G, include_torgb=False)
    n, m = args.naive_images, args.fast_images
    naive, naive_s = timed(lambda: effects.edited_logits_naive(G, C, styles[:n], targets[:, :n], coords))
    report = {
        "resolution": G.resolution, "coordinates": len(coords), "edits_per_image": 2 * len(coords),
        "models": "trained run " + args.run if args.run else f"random, sizes of {args.config}",
        "naive_seconds_per_image": round(naive_s / n, 4),
    }
    for name, compile in (("fast_eager", False), ("fast", True)):
        (fast_G, fast_C), setup_s = timed(lambda: inference_copies(G, C, compile=compile))
        same = effects.edited_logits_fast(fast_G, fast_C, styles[:n], targets[:, :n], coords, args.batch_size)
        _, fast_s = timed(lambda: effects.edited_logits_fast(fast_G, fast_C, styles[:m], targets[:, :m], coords,
                                                             args.batch_size))
        report.update({
            f"{name}_seconds_per_image": round(fast_s / m, 4), f"{name}_setup_seconds": round(setup_s, 2),
            f"{name}_speedup": round((naive_s / n) / (fast_s / m), 2),
            f"{name}_max_abs_difference": float((naive - same).abs().max()),
        })
        floor_s = floor_seconds(fast_G, fast_C, styles[:m], targets[:, :m], coords, args.batch_size)
        prefix = "exact" if name == "fast_eager" else "exact_compiled"
        report.update({f"{name}_floor_seconds_per_image": round(floor_s / m, 4),
                       f"{prefix}_vs_floor": round(fast_s / floor_s, 3)})
    # Screened mode (attfind.screen): gradient estimates pick the edits, evaluated exactly on the compiled path.
    exhaustive = effects.edited_logits_fast(fast_G, fast_C, styles, targets, coords, args.batch_size)

    screen_cfg = AttFindConfig(screen=True, screen_candidates=args.screen_candidates,
                               screen_per_image=args.screen_per_image, output="probs")

    def screened() -> torch.Tensor:
        only = screen.screened_edits(models, styles, targets, coords, effects.predict_styles(G, C, styles), screen_cfg)
        return effects.edited_logits_fast(fast_G, fast_C, styles, targets, coords, args.batch_size, only)

    partial, screened_s = timed(screened)
    partial_nan = partial.isnan().any(-1)
    base = effects.predict_styles(G, C, styles)
    partial = torch.where(partial.isnan(), base[:, None, None, :].expand_as(partial), partial)
    agreement = []
    for logits in (exhaustive, partial):
        found = effects.Effects(logits, base, base, coords, torch.arange(len(styles)))
        agreement.append([{(r.flat, r.direction) for r in selection.class_attributes(found, c, 10).itertuples()}
                          for c in range(base.shape[1]) if (found.predicted != c).any()])
    overlap = [len(a & b) / max(len(a), 1) for a, b in zip(*agreement)]
    report.update({
        "screen_candidates": args.screen_candidates, "screen_per_image": args.screen_per_image,
        "screened_edit_fraction": round(float((~partial_nan).float().mean()), 3),
        "screened_seconds_per_image": round(screened_s / len(styles), 4),
        "screened_speedup": round((naive_s / n) / (screened_s / len(styles)), 2),
        "screened_top10_agreement_per_class": [round(o, 2) for o in overlap],
    })
    report.update({"naive_images": n, "fast_images": m, "batch_size": args.batch_size,
                   "threads": torch.get_num_threads(), "clock": args.clock, "torch": torch.__version__,
                   "cpu": platform.processor() or platform.machine()})
    print(json.dumps(report, indent=2))

if __name__ == "__main__":
    main()
