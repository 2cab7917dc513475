"""Time to quality: what each training variant reaches after every few minutes of StylEx training time.

Every variant trains from the same seed on the same data against the same classifier (trained once into
``OUT/base``); every ``--every`` minutes of training (evaluation time not counted) it is scored on held-out images:
reconstructions (LPIPS, L1, classifier consistency, the factor probe's per-factor scores on synthetic data; also
E paired with the trained G, ``g_recon_*``, and E with G_ema, ``gema_e_recon_*``) and random
samples (KID on LPIPS-backbone features, the classifier's agreement with the conditioning, the probe's per-factor
distributions against the data's). Writes ``OUT/time_to_quality.json`` (after every variant: an interrupted
benchmark resumes at the first unfinished variant, which trains again from the start) and
``OUT/time_to_quality.png``; prints the final table.

    python benchmarks/time_to_quality.py --minutes 20 --every 4 \\
        --variant baseline= --variant "warmup=stylex.schedule.warmup_steps=300;stylex.regularise.mixing_prob=0.9"
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from stylexlib.classifier.training import fit_run_classifier, load_run_classifier  # noqa: E402
from stylexlib.core.config import apply_overrides  # noqa: E402
from stylexlib.core.figures import save_figure  # noqa: E402
from stylexlib.core.io import read_json, write_json  # noqa: E402
from stylexlib.core.run import CONFIG_FILE, open_run  # noqa: E402
from stylexlib.data import load_dataset, to_float  # noqa: E402
from stylexlib.evaluate.factor_probe import CONCEPTS, fit_run_probe  # noqa: E402
from stylexlib.evaluate.quality import reconstruction_quality, sample_quality  # noqa: E402
from stylexlib.gan.collapse import COLLAPSE_IMAGES, collapse_metrics  # noqa: E402
from stylexlib.gan.encoder_fit import fit_checkpoint_encoder  # noqa: E402
from stylexlib.gan.losses import load_lpips  # noqa: E402
from stylexlib.gan.train import StylexTrainer  # noqa: E402
from stylexlib.stylespace.inversion import evaluate_reconstruction  # noqa: E402

PLOTTED = [("recon_self_retrieval", "reconstructions recognisable (self-retrieval)"),
           ("recon_lpips", "held-out LPIPS (lower is better, log)"), ("recon_consistency", "classifier consistency"),
           ("recon_factor_min", "worst factor score on reconstructions"),
           ("sample_kid", "sample KID (lower is better, log)"), ("sample_agreement", "samples: C agrees with c"),
           ("sample_hat_rate_gap", "samples: hat rate - data's")]

LOG_SCALED = {"recon_lpips", "sample_kid"}  # they span orders of magnitude between the variants


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``name=key=value;key=value`` -> (name, overrides); ``name=`` is the config as it is."""
    name, _, rest = text.partition("=")
    return name, [item for item in rest.split(";") if item]


def evaluate(trainer: StylexTrainer, data, probe, lpips_model, count: int, encoder=None) -> dict[str, float]:
    images, rows = data.heldout(count)
    models = trainer.models()
    if encoder is not None:
        models = dataclasses.replace(models, encoder=encoder)
    factors = data.factors.iloc[rows] if data.factors is not None else None
    out = reconstruction_quality(models, images, lpips_model, probe, factors)
    out.update(worst_factor(out))
    out.update(sample_quality(models, images, lpips_model, probe))
    pairings = {"g_": dataclasses.replace(models, generator=trainer.G, encoder=trainer.E),  # E as trained, with G
                "gema_e_": dataclasses.replace(models, encoder=trainer.E)}  # the plain trainer's pairing
    with torch.no_grad():
        for prefix, paired in pairings.items():
            out.update({f"{prefix}{k}": v for k, v in evaluate_reconstruction(paired, images, lpips_model).items()})
        x = to_float(images[:COLLAPSE_IMAGES]).to(models.device)
        out.update(collapse_metrics(models.generator, models.encoder, models.classifier, x, lpips_model,
                                    models.condition, seed=trainer.cfg.seed))
    return out


def worst_factor(record: dict) -> dict:
    """``recon_factor_min``: the lowest reconstruction score among the concept factors (no nuisance jitter)."""
    scores = [record[f"recon_factor_{name}"] for name in CONCEPTS if f"recon_factor_{name}" in record]
    return {"recon_factor_min": min(scores)} if scores else {}


def run_variant(base, name: str, overrides: list[str], minutes: float, every: float, out: Path, data, classifier,
                probe, lpips_model, count: int) -> list[dict]:
    cfg = apply_overrides(base.cfg, overrides).stylex
    fit_minutes = cfg.encoder_fit.minutes  # stage two takes the last minutes of the budget, as in stage 03
    cfg.schedule.time_limit_minutes, cfg.schedule.steps = every, 10**9
    cfg.runtime.sample_every, cfg.runtime.checkpoint_every = 0, 0
    trainer = StylexTrainer(cfg, data, classifier, out_dir=out / name, lpips_model=lpips_model)
    records, mark, train_minutes = [], 0.0, minutes - fit_minutes
    while mark < train_minutes - 1e-9:
        mark = min(mark + every, train_minutes)
        # the limit counts the training time of every session; a segment trains at least one step even when the last
        # one overshot its mark (a busy machine), so each evaluation follows training
        trainer.cfg.schedule.time_limit_minutes = max(mark, trainer.train_seconds / 60 + 1e-6)
        trainer.train(progress=False)
        records.append(record(trainer, name, overrides, trainer.train_seconds / 60, data, probe, lpips_model, count))
    if fit_minutes:
        fitted = fit_checkpoint_encoder(trainer, data, fit_minutes, progress=False).encoder
        records.append(record(trainer, name, overrides, trainer.train_seconds / 60 + fit_minutes, data, probe,
                              lpips_model, count, fitted))
    trainer.save_previews()
    return records


def record(trainer: StylexTrainer, name: str, overrides: list[str], minutes: float, data, probe, lpips_model,
           count: int, encoder=None) -> dict:
    """One evaluation row (printed as a JSON line); ``encoder`` replaces the trainer's (the fitted one)."""
    started = time.perf_counter()
    row = {"variant": name, "overrides": overrides, "minutes": round(minutes, 2), "steps": trainer.step,
           "images": trainer.step * trainer.cfg.optim.batch_size,
           **evaluate(trainer, data, probe, lpips_model, count, encoder),
           "eval_seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return row


TABLE_KEYS = ["minutes", "steps", "recon_self_retrieval", "encoder_spread_ratio", "recon_lpips", "recon_l1", "recon_consistency", "recon_factor_min", "recon_factor_hat",
              "recon_factor_glasses", "recon_factor_mouth_curve", "g_recon_lpips", "gema_e_recon_lpips", "sample_kid",
              "sample_agreement", "sample_hat_rate_gap"]


def table(records: list[dict]) -> pd.DataFrame:
    """The last evaluation of every variant, one row each (the closing table)."""
    last = {r["variant"]: r for r in records}
    return pd.DataFrame([{k: r.get(k) for k in TABLE_KEYS} for r in last.values()], index=list(last)).round(4)


def figure(records: list[dict]) -> plt.Figure:
    fig, axes = plt.subplots(2, 4, figsize=(18, 7.5))
    for ax, (key, title) in zip(axes.flat, PLOTTED):
        for name in dict.fromkeys(r["variant"] for r in records):
            points = [(r["minutes"], r[key]) for r in records if r["variant"] == name and key in r]
            if points:
                ax.plot(*zip(*points), marker="o", label=name)
        ax.set_title(title)
        if key in LOG_SCALED:
            ax.set_yscale("log")
        ax.set_xlabel("training minutes")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override for every variant")
    parser.add_argument("--variant", action="append", default=[], help="NAME=key=value;key=value (repeatable)")
    parser.add_argument("--minutes", type=float, default=20.0, help="training minutes per variant")
    parser.add_argument("--every", type=float, default=4.0, help="minutes of training between evaluations")
    parser.add_argument("--images", type=int, default=512, help="held-out images per evaluation")
    parser.add_argument("--out", default="runs/time_to_quality")
    parser.add_argument("--combine", nargs="+", metavar="DIR",
                        help="only merge the results of these benchmark folders (e.g. variants run side by side) "
                             "into OUT's JSON, table and plot")
    args = parser.parse_args()
    out = Path(args.out)
    if args.combine:
        records = [{**r, **worst_factor(r)} for folder in args.combine
                   for r in read_json(Path(folder) / "time_to_quality.json")["records"]]
        write_json(out / "time_to_quality.json", {"records": records, "combined_from": args.combine})
        save_figure(figure(records), out / "time_to_quality.png")
        print(table(records).to_string())
        return
    variants = [parse_variant(v) for v in (args.variant or ["baseline="])]
    base = open_run(out / "base", args.config, args.overrides) if not (out / "base" / CONFIG_FILE).exists() \
        else open_run(out / "base")
    data = load_dataset(base.cfg.data)
    if not (out / "base" / "classifier.pt").exists() and base.cfg.classifier.source == "train":
        fit_run_classifier(base, data)
    classifier = load_run_classifier(base, data)
    probe = fit_run_probe(base, data) if data.factors is not None else None
    lpips_model = load_lpips(base.cfg.stylex.model.lpips_net)
    results_path = out / "time_to_quality.json"
    results = read_json(results_path, default={"records": []})
    results.update({"config": args.config, "overrides": args.overrides, "minutes": args.minutes, "every": args.every,
                    "machine": {"cpu_count": torch.get_num_threads(), "platform": platform.platform()}})
    for name, overrides in variants:
        done = [r for r in results["records"] if r["variant"] == name]
        if done and done[-1]["minutes"] >= args.minutes - 0.05 and done[-1]["overrides"] == overrides:
            continue
        results["records"] = [r for r in results["records"] if r["variant"] != name]
        results["records"] += run_variant(base, name, overrides, args.minutes, args.every, out, data, classifier,
                                          probe, lpips_model, args.images)
        write_json(results_path, results)
        save_figure(figure(results["records"]), out / "time_to_quality.png")
    print(table(results["records"]).to_string())


if __name__ == "__main__":
    main()
