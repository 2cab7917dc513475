"""Where one StylEx training step spends its time: exclusive milliseconds per part, warm-up and adversarial steps.

Builds StylexTrainer with a config's networks on random images (an untrained classifier, the real LPIPS), once as it
is ("all") and once with every lossless speed-up off ("plain_step", the before), wraps their parts in timers (nested
parts are subtracted from their parents) and runs ``--steps`` steps of each phase, the two trainers in turn (R1 at its
real frequency: use a multiple of ``r1_every``; stats.jsonl logging, 0.01 ms a step, is left out). Prints one table
per phase and trainer, and the same numbers as JSON on the last line.

    python benchmarks/profile_step.py --resolution 32 --threads 1
    python benchmarks/profile_step.py --resolution 64 --steps 16 --set stylex.runtime.compile=true
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterator

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stylexlib.core.config import StylexConfig, load_config  # noqa: E402
from stylexlib.core.stylex_config import replace_keys  # noqa: E402
from stylexlib.gan.step_options import StepOptions  # noqa: E402
from stylexlib.gan.train import StylexTrainer  # noqa: E402


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}  # cpu: this process's CPU time (a busy machine)


class SectionTimer:
    """Exclusive time per section label: a nested section's time is taken out of its parent's."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.stack: list[list] = []  # [label, start, seconds spent in children]

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        label = name if not self.stack else f"{self.stack[0][0]} / {name}"
        frame = [label if not self.stack else self.stack[0][0], self.clock(), 0.0]
        self.stack.append(frame)
        try:
            yield
        finally:
            self.stack.pop()
            elapsed = self.clock() - frame[1]
            self.seconds[label] += elapsed - frame[2]
            self.calls[label] += 1
            if self.stack:
                self.stack[-1][2] += elapsed

    def wrap(self, owner: object, attribute: str, name: str) -> None:
        """Replace ``owner.attribute`` (a callable) by a timed call of it."""
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            with self.section(name):
                return original(*args, **kwargs)

        setattr(owner, attribute, timed)


TRAINERS = {"all": StepOptions(), "plain_step": StepOptions.none()}
ACTIVE: list[SectionTimer] = []  # the timer of the trainer taking a step (the package's functions are shared)


def wrap_shared(owner: object, attribute: str, name: Callable[..., str] | str) -> None:
    """Time ``owner.attribute``, a function every trainer shares, into the active trainer's timer."""
    original = getattr(owner, attribute)

    def timed(*args, **kwargs):
        with ACTIVE[-1].section(name(*args) if callable(name) else name):
            return original(*args, **kwargs)

    setattr(owner, attribute, timed)


def instrument_package() -> None:
    """Time the training package's shared parts: the forward, each phase, the loss check, augmentation, mixing."""
    from stylexlib.gan.train import forward, phases
    from stylexlib.gan.train import trainer as trainer_module

    wrap_shared(trainer_module, "generate", "generate")
    wrap_shared(phases.Phase, "run", lambda phase, context: f"{phase.name} phase")
    wrap_shared(trainer_module, "finite_values", "loss check")
    wrap_shared(forward.StepContext, "augment", "DiffAugment")
    wrap_shared(forward, "mix_styles", "style mixing")


def instrument(trainer: StylexTrainer, timer: SectionTimer) -> None:
    """Time the trainer's data, EMA, its networks' forwards, backward passes and optimizer steps."""
    timer.wrap(trainer.batches, "next", "data + C(x)")
    timer.wrap(trainer.state, "update_ema", "EMA")
    nets = {"classifier fwd": trainer.step_classifier, "E fwd": trainer.E, "D fwd": trainer.D,
            "LPIPS fwd": trainer.lpips, "mapping fwd": trainer.G.mapping}
    for name, net in nets.items():
        timer.wrap(net, "forward", name)
    timer.wrap(trainer.G, "styles", "G styles fwd")
    timer.wrap(trainer.G, "synthesize", "G synthesis fwd")
    timer.wrap(trainer.G, "forward", "G fwd")
    if hasattr(trainer.D, "judge_batches"):
        timer.wrap(trainer.D, "judge_batches", "D fwd")
    for optimizer in (trainer.opt_g, trainer.opt_e, trainer.opt_d, trainer.opt_mapping):
        timer.wrap(optimizer, "step", "optimizer step")
        timer.wrap(optimizer, "zero_grad", "optimizer step")


@contextlib.contextmanager
def timed_autograd(timer: SectionTimer) -> Iterator[None]:
    """Time every backward pass (``Tensor.backward`` and ``torch.autograd.grad``) while inside."""
    backward, grad = torch.Tensor.backward, torch.autograd.grad

    def timed_backward(*args, **kwargs):
        with timer.section("backward"):
            return backward(*args, **kwargs)

    def timed_grad(*args, **kwargs):
        with timer.section("autograd.grad"):
            return grad(*args, **kwargs)

    torch.Tensor.backward, torch.autograd.grad = timed_backward, timed_grad
    try:
        yield
    finally:
        torch.Tensor.backward, torch.autograd.grad = backward, grad


def build_trainer(cfg: StylexConfig, resolution: int, out_dir: Path, options: StepOptions = StepOptions(),
                  images: int = 64) -> StylexTrainer:
    """StylexTrainer on random images, with an untrained classifier of the demo's width and the real LPIPS."""
    import numpy as np

    from stylexlib.classifier.model import build_classifier
    from stylexlib.data import ImageDataset

    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (images, 3, resolution, resolution), dtype=torch.uint8)
    data = ImageDataset(pixels, torch.arange(images) % 2, ["a", "b"], np.array(["train"] * images))
    classifier = build_classifier(2, resolution, width=32)
    return StylexTrainer(cfg, data, classifier, out_dir=out_dir, options=options)


def profile_phase(trainers: dict[str, StylexTrainer], timers: dict[str, SectionTimer], first_step: int, steps: int,
                  warmup: int) -> dict[str, dict]:
    """Exclusive ms per step of each part, per trainer, over ``steps`` steps from ``first_step`` (after ``warmup``
    untimed ones); the trainers take one step each in turn, so that load from other work hits them alike."""
    totals = dict.fromkeys(trainers, 0.0)
    for name, trainer in trainers.items():
        trainer.step = first_step
        ACTIVE.append(timers[name])
        for _ in range(warmup):
            trainer.train_step()
        ACTIVE.pop()
        timers[name].seconds.clear()
    for _ in range(steps):
        for name, trainer in trainers.items():
            timer = timers[name]
            started = timer.clock()
            ACTIVE.append(timer)
            with timed_autograd(timer):
                trainer.train_step()
            ACTIVE.pop()
            totals[name] += timer.clock() - started
    return {name: summary(timers[name], totals[name], steps, trainers[name].cfg.optim.batch_size) for name in trainers}


def summary(timer: SectionTimer, total: float, steps: int, batch: int) -> dict:
    rows = {label: seconds * 1000 / steps for label, seconds in timer.seconds.items()}
    rows["other (loop, losses, glue)"] = total * 1000 / steps - sum(rows.values())
    return {"ms_per_step": round(total * 1000 / steps, 2), "images_per_s": round(steps * batch / total, 2),
            "parts_ms": {k: round(v, 2) for k, v in sorted(rows.items(), key=lambda kv: -kv[1])}}


def print_table(title: str, result: dict) -> None:
    print(f"\n{title}: {result['ms_per_step']:.1f} ms/step, {result['images_per_s']:.1f} img/s", file=sys.stderr)
    print(f"{'part':<44} {'ms/step':>9} {'share':>7}", file=sys.stderr)
    for label, ms in result["parts_ms"].items():
        print(f"{label:<44} {ms:>9.1f} {ms / result['ms_per_step']:>7.1%}", file=sys.stderr)


def stylex_config(path: str, overrides: list[str], batch: int) -> StylexConfig:
    cfg = load_config(path, overrides=overrides).stylex
    return replace_keys(cfg, batch_size=batch, device="cpu", sample_every=0, checkpoint_every=0, collapse_every=0,
                        time_limit_minutes=None)


def main(argv: list[str] | None = None, emit: Callable[[str], None] = print) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--set", action="append", default=[], help="config override, e.g. stylex.runtime.compile=true")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=16, help="timed steps per phase (R1 runs every r1_every)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before each phase")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="cpu: CPU time, for a busy machine")
    parser.add_argument("--trainers", choices=sorted(TRAINERS), nargs="+", default=sorted(TRAINERS),
                        help="all: the trainer as it is; plain_step: every speed-up of StepOptions off (the before)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("stylexlib").setLevel(logging.ERROR)
    cfg = stylex_config(args.config, args.set, args.batch)
    report = {"resolution": args.resolution, "batch": args.batch, "threads": args.threads, "overrides": args.set,
              "clock": args.clock, "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as out_dir:
        trainers = {name: build_trainer(cfg, args.resolution, Path(out_dir) / name, TRAINERS[name])
                    for name in args.trainers}
        timers = {name: SectionTimer(CLOCKS[args.clock]) for name in trainers}
        instrument_package()
        for name, trainer in trainers.items():
            instrument(trainer, timers[name])
        warmup = cfg.schedule.warmup_steps
        for phase, first in (("warm-up", 0), ("adversarial", warmup)):  # any r1_every steps hold one R1
            if phase == "warm-up" and warmup < args.warmup + args.steps:
                continue
            report[phase] = profile_phase(trainers, timers, first, args.steps, args.warmup)
            for name, result in report[phase].items():
                print_table(f"{phase} step at {args.resolution} px, {args.threads} thread(s), {args.clock} clock, "
                            f"trainer '{name}'", result)
    emit(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
