"""Which generator the encoder fits: a run's checkpoint scored with G + E, G_ema + E and (when there is one) G_ema + the
encoder fitted to G_ema (``E_fit``), on the same held-out images; and how far per-image refinement moves w from E(x)
against E(x)'s own spread. Prints JSON.

    python benchmarks/encoder_pairing.py runs/utkface            # the run's own data and classifier
    python benchmarks/encoder_pairing.py runs/ttq/x --base runs/ttq/base   # a time_to_quality variant's checkpoint
"""
from __future__ import annotations

import argparse
import dataclasses
import json

from stylexlib.classifier.training import load_run_classifier
from stylexlib.core.run import open_run
from stylexlib.data import load_dataset
from stylexlib.evaluate.quality import collapse_check
from stylexlib.gan.checkpoint import checkpoint_path, load_checkpoint
from stylexlib.gan.losses import load_lpips
from stylexlib.gan.models import build_networks, load_models
from stylexlib.stylespace.inversion import evaluate_reconstruction, refine_latents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="folder holding checkpoints/stylex.pt")
    parser.add_argument("--base", help="run folder with the config, data and classifier (default: RUN)")
    parser.add_argument("--images", type=int, default=256, help="held-out val images scored")
    parser.add_argument("--refine-images", type=int, default=16)
    args = parser.parse_args()
    base = open_run(args.base or args.run)
    data = load_dataset(base.cfg.data)
    classifier = load_run_classifier(base, data)
    path = checkpoint_path(args.run)
    state = load_checkpoint(path)
    models = load_models(path, classifier, None, "03", "cpu")
    generator, encoder, _ = build_networks(state["resolution"], state["num_classes"], models.cfg)
    generator.load_state_dict(state["G"])
    encoder.load_state_dict(state.get("E_ema", state["E"]))
    generator.eval().requires_grad_(False)
    encoder.eval().requires_grad_(False)
    lpips_model, (images, _) = load_lpips("squeeze"), data.heldout(args.images)
    pairs = {"G+E": dataclasses.replace(models, generator=generator, encoder=encoder),
             "G_ema+E": dataclasses.replace(models, encoder=encoder)}
    if "E_fit" in state:
        pairs["G_ema+E_fit"] = models
    out: dict = {"step": state["step"], "encoder_fit": state.get("encoder_fit")}
    for name, paired in pairs.items():
        scores = {**evaluate_reconstruction(paired, images, lpips_model), **collapse_check(paired, images, lpips_model)}
        out[name] = {k: round(v, 4) for k, v in scores.items()}
    trained = pairs["G_ema+E"]
    start = trained.encoder(trained.prepare(images[: args.refine_images]))
    refined, history = refine_latents(trained, images[: args.refine_images], lpips_model=lpips_model, progress=False)
    spread = float(trained.encoder(trained.prepare(images)).std(0).mean())
    out["refinement"] = {"lpips": round(history[-1]["lpips"], 4), "encoder_spread": round(spread, 4),
                         "move_over_spread": round(float((refined - start.cpu()).abs().mean()) / spread, 3)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
