"""Data-parallel StylEx training: 2 CPU ranks (gloo) under torchrun end with identical parameters."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import torch

from stylexlib.gan.checkpoint import checkpoint_path, load_checkpoint, read_stats

WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import numpy as np
    import torch

    from stylexlib.core.stylex_config import stylex_config
    from stylexlib.data import ImageDataset
    from stylexlib.core.distributed import init_distributed, shutdown_distributed
    from stylexlib.classifier.model import build_classifier
    from stylexlib.gan.train import StylexTrainer

    out = Path(sys.argv[1])
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (24, 3, 16, 16), dtype=torch.uint8, generator=gen)
    data = ImageDataset(images, torch.arange(24) % 2, ["even", "odd"], np.array(["train"] * 20 + ["val"] * 4))
    torch.manual_seed(0)
    classifier = build_classifier(2, 16, width=4)
    cfg = stylex_config(latent_dim=16, mapping_layers=2, channel_base=128, channel_max=16, batch_size=4, steps=3,
                       r1_every=2, pl_weight=2.0, pl_every=2, log_every=1, sample_every=0, device="cpu")
    info, device = init_distributed(cfg.runtime.device)
    trainer = StylexTrainer(cfg, data, classifier, out_dir=out, device=device, dist=info)
    batches = []
    draw = trainer.batches.sampler.next
    trainer.batches.sampler.next = lambda prioritised=0, balanced=0: batches.append(draw(prioritised, balanced)) or batches[-1]
    trainer.train(progress=False)
    nets = (trainer.G, trainer.G_ema, trainer.E, trainer.D)
    flat = torch.cat([t.detach().flatten().float() for net in nets for t in net.state_dict().values()])
    torch.save({"params": flat, "batches": torch.stack(batches)}, out / f"rank{info.rank}.pt")
    shutdown_distributed()
    """
)


def run_two_gloo_ranks(worker: str, tmp_path: Path) -> None:
    """Run a worker script under torchrun with 2 CPU ranks; it gets ``tmp_path`` as its argument."""
    script = tmp_path / "worker.py"
    script.write_text(worker)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_gloo_ranks_stay_in_sync(tmp_path: Path) -> None:
    run_two_gloo_ranks(WORKER, tmp_path)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(rank0["params"], rank1["params"])
    assert not torch.equal(rank0["batches"], rank1["batches"])  # each rank samples its own batches
    checkpoint = load_checkpoint(checkpoint_path(tmp_path))
    assert checkpoint["step"] == 3 and checkpoint["world_size"] == 2 and len(checkpoint["rng"]) == 2
    records = read_stats(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3]  # written once, by rank 0
    assert records[-1]["images"] == 3 * 4 * 2


ATTFIND_WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import torch

    from stylexlib.explain.attfind import effects
    from stylexlib.gan.models import StylexModels
    from stylexlib.core.config import AttFindConfig
    from stylexlib.core.stylex_config import stylex_config
    from stylexlib.core.distributed import init_distributed, shutdown_distributed
    from stylexlib.gan import Encoder, Generator
    from stylexlib.classifier.model import build_classifier

    out = Path(sys.argv[1])
    cfg = stylex_config(latent_dim=16, mapping_layers=2, channel_base=128, channel_max=8)
    torch.manual_seed(0)
    nets = [Generator(16, 2, cfg), Encoder(16, 16, cfg), build_classifier(2, 16, width=4)]
    models = StylexModels(*[n.eval().requires_grad_(False) for n in nets], cfg, ["a", "b"], 0, torch.device("cpu"))
    images = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    inverted = effects.invert(models, images)
    stats = effects.StyleStats.of(inverted.styles)
    info, _ = init_distributed("cpu")
    from stylexlib.core.config import InversionConfig
    from stylexlib.stylespace import inversion
    from stylexlib.gan.inversion_store import InversionStore
    refined_models = StylexModels(*nets, cfg, ["a", "b"], 0, torch.device("cpu"), inversion=InversionConfig(per_image_steps=2))
    refined_models.store = InversionStore(out / "inversions", "toy")
    refined = inversion.invert(refined_models, images, batch_size=2, dist=info, progress=False)  # sharded, stored
    torch.save(refined.styles, out / f"refined_rank{info.rank}.pt")
    if info.rank == 0:
        refined_models.store = None
        torch.save(inversion.invert(refined_models, images, batch_size=5, progress=False).styles, out / "refined_single.pt")
    sharded = effects.compute_effects(models, inverted.styles, inverted.logits, torch.arange(5), stats,
                                      AttFindConfig(), out / "effects.pt", dist=info, progress=False)
    torch.save(sharded.edited_logits, out / f"attfind_rank{info.rank}.pt")
    if info.rank == 0:
        single = effects.compute_effects(models, inverted.styles, inverted.logits, torch.arange(5), stats,
                                         AttFindConfig(), progress=False)
        torch.save(single.edited_logits, out / "attfind_single.pt")
    shutdown_distributed()
    """
)


def test_attfind_shards_images_over_two_gloo_ranks(tmp_path: Path) -> None:
    run_two_gloo_ranks(ATTFIND_WORKER, tmp_path)
    rank0, rank1, single = (torch.load(tmp_path / f"attfind_{name}.pt") for name in ("rank0", "rank1", "single"))
    assert rank0.shape == single.shape == (5, len(rank0[0]), 2, 2)
    assert torch.equal(rank0, rank1)  # every rank ends with the whole result
    assert (rank0 - single).abs().max() < 1e-5
    shards = [torch.cat([torch.load(p)["logits"] for p in sorted(tmp_path.glob(f"effects.rank{r}.part*.pt"))])
              for r in (0, 1)]
    assert [len(s) for s in shards] == [3, 2]  # rank 0 took images 0, 2, 4; rank 1 images 1, 3
    # the refined inversion was shared out too: each rank refined its images once, and both read them all back
    refined0, refined1, refined = (torch.load(tmp_path / f"refined_{name}.pt") for name in ("rank0", "rank1", "single"))
    assert torch.equal(refined0, refined1) and (refined0 - refined).abs().max() < 1e-5  # whatever the batch
    parts = [torch.load(p)["keys"] for p in (tmp_path / "inversions" / "toy").glob("part-*.pt")]
    assert sorted(len(keys) for keys in parts) == [1, 2, 2] and len({k for keys in parts for k in keys}) == 5


GRADIENT_WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import torch

    from stylexlib.core.stylex_config import stylex_config
    from stylexlib.core.distributed import average_gradients, init_distributed, shutdown_distributed
    from stylexlib.gan import Encoder

    out = Path(sys.argv[1])
    cfg = stylex_config(latent_dim=8, channel_base=64, channel_max=8)
    torch.manual_seed(0)
    encoder = Encoder(16, 8, cfg)
    images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    targets = torch.randn(8, 8, generator=torch.Generator().manual_seed(2))

    def loss_on(batch):
        return (encoder(images[batch]) - targets[batch]).square().mean()

    info, _ = init_distributed("cpu")
    loss_on(torch.arange(info.rank * 4, info.rank * 4 + 4)).backward()  # each rank: its half of the global batch
    average_gradients(encoder, info)
    torch.save([p.grad.clone() for p in encoder.parameters()], out / f"grad_rank{info.rank}.pt")
    if info.rank == 0:
        encoder.zero_grad()
        loss_on(torch.arange(8)).backward()  # one process, the whole global batch
        torch.save([p.grad.clone() for p in encoder.parameters()], out / "grad_single.pt")
    shutdown_distributed()
    """
)


def test_averaged_gradients_equal_single_process_training_on_the_global_batch(tmp_path: Path) -> None:
    run_two_gloo_ranks(GRADIENT_WORKER, tmp_path)
    single, rank0, rank1 = (torch.load(tmp_path / f"grad_{name}.pt") for name in ("single", "rank0", "rank1"))
    for s, a, b in zip(single, rank0, rank1):
        assert torch.equal(a, b)
        assert torch.allclose(a, s, atol=1e-6, rtol=1e-5)
    assert any(s.abs().max() > 1e-4 for s in single)


SELECTION_WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from stylexlib.core.distributed import init_distributed, shutdown_distributed
    from stylexlib.core.run import open_run
    from stylexlib.data import load_dataset
    from stylexlib.explain.attfind import search
    from stylexlib.gan.models import load_stylex

    out = Path(sys.argv[1])
    info, device = init_distributed("cpu")
    calls = []
    real = search._select_and_score
    search._select_and_score = lambda *a, **k: calls.append(1) or real(*a, **k)
    run = open_run(out / "run")
    data = load_dataset(run.cfg.data)
    result = search.run_attfind(run, data, load_stylex(run, "cpu", data), dist=info, progress=False)
    result.attributes.to_csv(out / f"attributes_rank{info.rank}.csv", index=False)
    (out / f"selections_rank{info.rank}.txt").write_text(str(len(calls)))
    shutdown_distributed()
    """
)


def test_under_torchrun_one_rank_selects_and_scores_and_every_rank_returns_its_result(tmp_path: Path) -> None:
    """#41: the effects, the screen's estimates and the inversions are sharded; the main rank alone selects and scores."""
    from stylexlib.classifier.training import fit_run_classifier
    from stylexlib.core.run import open_run
    from stylexlib.data import load_dataset
    from stylexlib.gan.train import train_stylex

    tiny = ["data.num_images=120", "data.resolution=16", "classifier.width=4", "classifier.epochs=1",
            "classifier.batch_size=32", "stylex.model.latent_dim=8", "stylex.model.mapping_layers=1", "stylex.model.channel_base=64",
            "stylex.model.channel_max=8", "stylex.optim.batch_size=4", "stylex.schedule.steps=2", "stylex.runtime.sample_every=0",
            "stylex.runtime.checkpoint_every=0", "stylex.runtime.device=cpu", "attfind.stats_images=16", "attfind.num_images=4",
            "attfind.top_k=2", "attfind.sufficiency_k=2", "attfind.random_trials=1", "attfind.drop_inconsistent=false",
            "attfind.screen=true", "attfind.screen_candidates=4", "attfind.screen_per_image=2"]  # estimates sharded too
    run = open_run(tmp_path / "run", None, tiny)
    data = load_dataset(run.cfg.data)
    fit_run_classifier(run, data)
    train_stylex(run, data, progress=False)
    run_two_gloo_ranks(SELECTION_WORKER, tmp_path)
    assert [(tmp_path / f"selections_rank{r}.txt").read_text() for r in (0, 1)] == ["1", "0"]
    rank0, rank1 = (pd.read_csv(tmp_path / f"attributes_rank{r}.csv") for r in (0, 1))
    assert len(rank0) and rank0.equals(rank1)  # rank 1 read back what rank 0 selected and wrote
    saved = torch.load(tmp_path / "run" / "attfind" / "effects.pt", weights_only=False)["effects"]
    evaluated, picked = saved["evaluated"], (saved["coords"][:, None] == torch.tensor(rank0["flat"].tolist())).any(1)
    assert evaluated is not None and 0 < evaluated.float().mean() < 1  # screened, on both ranks' shards
    assert evaluated[:, picked].all()  # the picks, completed on every image
