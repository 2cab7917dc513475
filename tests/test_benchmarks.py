"""The time-to-quality benchmark end to end on the tiny config: its records, its resume and its --combine."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

from stylexlib.core.io import read_json
from stylexlib.evaluate.factor_probe import CONCEPTS

ROOT = Path(__file__).resolve().parents[1]


def time_to_quality(*args: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "time_to_quality.py"), *args], check=True, cwd=ROOT,
                   capture_output=True, text=True, timeout=900)


def test_time_to_quality_scores_each_variant_resumes_and_combines(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    args = ["--config", str(ROOT / "configs" / "tiny.yaml"), "--minutes", "0.02", "--every", "0.01",
            "--images", "16", "--out", str(out), "--variant", "base=", "--variant", "slow=stylex.optim.lr_g=0.0001"]
    time_to_quality(*args)
    records = read_json(out / "time_to_quality.json")["records"]
    assert [r["variant"] for r in records] == ["base", "base", "slow", "slow"]  # two evaluations per variant
    assert records[1]["steps"] > records[0]["steps"] > 0 and records[3]["overrides"] == ["stylex.optim.lr_g=0.0001"]
    for record in records:
        assert 0 < record["recon_lpips"] and 0 <= record["recon_consistency"] <= 1 and math.isfinite(record["sample_kid"])
        assert record["recon_factor_min"] == min(record[f"recon_factor_{name}"] for name in CONCEPTS)  # no jitter
    time_to_quality(*args)  # every variant is finished: nothing trains again
    assert read_json(out / "time_to_quality.json")["records"] == records
    time_to_quality("--out", str(tmp_path / "combined"), "--combine", str(out))
    combined = read_json(tmp_path / "combined" / "time_to_quality.json")
    assert combined["records"] == records and combined["combined_from"] == [str(out)]
    assert (tmp_path / "combined" / "time_to_quality.png").stat().st_size > 10_000


def test_encoder_fit_variant_and_the_pairing_benchmark(tmp_path: Path) -> None:
    import json

    out = tmp_path / "bench"
    time_to_quality("--config", str(ROOT / "configs" / "tiny.yaml"), "--minutes", "0.02", "--every", "0.01",
                    "--images", "16", "--out", str(out), "--variant", "fit=stylex.encoder_fit.minutes=0.01")
    records = read_json(out / "time_to_quality.json")["records"]
    # trained for 0.01 min (at least one step, longer on a busy machine), then the encoder fit's 0.01 on the same G
    trained, fitted = records
    assert trained["minutes"] >= 0.01 and fitted["minutes"] > trained["minutes"]
    assert fitted["steps"] == trained["steps"] > 0
    assert all(0 <= r["recon_self_retrieval"] <= 1 and r["encoder_spread_ratio"] > 0 for r in records)
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "encoder_pairing.py"), str(out / "fit"),
                             "--base", str(out / "base"), "--images", "16", "--refine-images", "2"],
                            check=True, cwd=ROOT, capture_output=True, text=True, timeout=600)
    pairing = json.loads(result.stdout)
    assert {"G+E", "G_ema+E", "G_ema+E_fit"} <= set(pairing) and pairing["encoder_fit"]["steps"] > 0
    assert pairing["G_ema+E_fit"]["recon_lpips"] != pairing["G_ema+E"]["recon_lpips"]


def load_benchmark(name: str):
    """A benchmark script as a module (its helpers, without running it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_step_timing_amortises_r1_and_the_profile_counts_exclusive_time() -> None:
    import pytest

    train_step = load_benchmark("train_step")
    seconds = train_step.step_seconds([1.0, 1.2, 3.0, 0.9], [False, False, True, False], every=16)
    assert seconds == pytest.approx(1.0 + (3.0 - 1.0) / 16)  # the median ordinary step plus R1's extra, spread

    ticks = iter(range(100))
    timer = load_benchmark("profile_step").SectionTimer(clock=lambda: float(next(ticks)))
    with timer.section("G+E step"):  # 0 .. 5, of which 1 .. 4 inside
        with timer.section("backward"):
            next(ticks), next(ticks)
    assert dict(timer.seconds) == {"G+E step / backward": 3.0, "G+E step": 2.0}


def test_the_shortcut_classifiers_training_subset_agrees_as_asked() -> None:
    import importlib.util

    import numpy as np
    import pandas as pd

    spec = importlib.util.spec_from_file_location("celeba_shortcut", ROOT / "benchmarks" / "celeba_shortcut.py")
    shortcut = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shortcut)
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"Smiling": rng.random(5000) < 0.5, "Eyeglasses": rng.random(5000) < 0.07}).astype(int)
    mask = shortcut.shortcut_split(table, agreement=0.95, agree_images=1000, seed=0)
    chosen = table[mask]
    assert (chosen["Smiling"] == chosen["Eyeglasses"]).mean() == np.float64(1000 / len(chosen))
    assert abs((chosen["Smiling"] == chosen["Eyeglasses"]).mean() - 0.95) < 0.002
    both = ((table["Smiling"] == 1) & (table["Eyeglasses"] == 1))
    assert (both & mask).sum() == int(0.6 * both.sum())  # the rest of the rare group is left to measure on
    groups = shortcut.group_accuracy(table["Eyeglasses"].to_numpy(), table)  # a model that reads glasses only
    assert groups["smiling, glasses"]["accuracy"] == 1 and groups["smiling, no glasses"]["accuracy"] == 0
    assert groups["not smiling, no glasses"]["accuracy"] == 1 and groups["not smiling, glasses"]["accuracy"] == 0
