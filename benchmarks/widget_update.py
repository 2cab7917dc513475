"""Seconds per AttributeBrowser update (new strength: edit + render + classify + PNG); prints JSON.

Uses the real ``AttributeEditor`` over untrained networks of the demo widths (random weights cost the
same as trained ones) at 64x64 by default, and compares 1 intra-op thread (the browser's default) with
torch's default thread count: on a busy 2-core machine, 2 threads fighting another process are much slower.

    PYTHONPATH=. python benchmarks/widget_update.py --resolution 64 --updates 30
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import pandas as pd
import torch

from stylexlib.classifier.model import build_classifier
from stylexlib.core.stylex_config import stylex_config
from stylexlib.explain.attfind.editor import AttributeEditor
from stylexlib.explain.attfind.effects import StyleStats
from stylexlib.gan import Encoder, Generator
from stylexlib.gan.models import StylexModels
from stylexlib.report.widgets import AttributeBrowser


def demo_editor(resolution: int) -> AttributeEditor:
    """An editor over demo-width networks (``stylex_config(latent_dim=64, channel_base=1024, channel_max=64)``)."""
    torch.manual_seed(0)
    cfg = stylex_config(latent_dim=64, channel_base=1024, channel_max=64)
    nets = (Generator(resolution, 2, cfg), Encoder(resolution, cfg.model.latent_dim, cfg), build_classifier(2, resolution))
    frozen = [m.eval().requires_grad_(False) for m in nets]
    models = StylexModels(*frozen, cfg, ["frown", "smile"], 0, torch.device("cpu"))
    with torch.no_grad():
        styles = models.generator.styles(torch.randn(64, cfg.model.latent_dim), torch.rand(64, 2).softmax(1))
    return AttributeEditor(models, StyleStats.of(styles))


def time_updates(editor: AttributeEditor, threads: int | None, updates: int, resolution: int) -> dict:
    """Cold first render, then ``updates`` fresh strengths (cache misses) on one image and attribute."""
    images = torch.randint(0, 256, (4, 3, resolution, resolution), dtype=torch.uint8)
    table = pd.DataFrame({"class_index": [1], "rank": [1], "flat": [100], "direction": ["up"]})
    start = time.perf_counter()
    browser = AttributeBrowser(editor, table, images, threads=threads)
    cold = time.perf_counter() - start
    browser.update_seconds.clear()
    for strength in np.linspace(0.05, 2.0, updates):
        browser.strength.value = float(round(strength, 4))
    times = browser.update_seconds
    return {"threads": threads or torch.get_num_threads(), "first_update_s": cold, "median_s": statistics.median(times),
            "p90_s": float(np.percentile(times, 90)), "max_s": max(times), "updates": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--updates", type=int, default=30)
    args = parser.parse_args()
    editor = demo_editor(args.resolution)
    runs = [time_updates(editor, threads, args.updates, args.resolution) for threads in (1, None)]
    print(json.dumps({"benchmark": "widget_update", "resolution": args.resolution, "cpus": torch.get_num_threads(),
                      "machine": platform.machine(), "torch": torch.__version__, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
