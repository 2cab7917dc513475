"""The ``stylex`` command: run the notebook pipeline, list stages and their parameters, show configs; train StylEx
or run AttFind in a run folder (also under ``torchrun -m stylexlib``); explain image files with a finished run; combine
benchmark tables."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from stylexlib.core.config import ConfigError, dump_config, load_config
from stylexlib.core.install import DEFAULT_NOTEBOOKS

# Each command imports what it needs when it runs: `stylex explain` starts without papermill (the runner) or the
# benchmark's explainers.


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``stylex``."""
    parser = argparse.ArgumentParser(prog="stylex", description="StylEx workbench: explain image classifiers in StyleSpace.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the numbered notebooks with papermill into a run folder")
    run.add_argument("config", help="YAML config, e.g. configs/demo.yaml, or a shipped config's name, e.g. demo")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set data.resolution=64 (repeatable)")
    run.add_argument("-p", "--parameter", dest="parameters", action="append", default=[], metavar="NAME=VALUE",
                     help="set a notebook parameter of the stages that declare it, e.g. -p num_images=16 "
                          "(repeatable; stylex params lists them)")
    run.add_argument("--out", help="run folder (default: runs/<config name>)")
    run.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages (numbers or names, e.g. 01 02_classifier)")
    run.add_argument("--force", action="store_true", help="re-run stages that already finished")
    run.add_argument("--notebooks", default=str(DEFAULT_NOTEBOOKS), help="folder of numbered notebooks")
    run.add_argument("--kernel", default=None, help="Jupyter kernel name (default: python3, this interpreter)")
    run.add_argument("--plan", action="store_true",
                     help="print what the run would cost on this machine (classifier epochs, StylEx steps in the time "
                          "limit, AttFind edits), estimated from a few timed steps, and exit without running")

    params = sub.add_parser("params", help="list the notebook parameters stylex run -p NAME=VALUE sets, per stage")
    params.add_argument("stages", nargs="*", help="stage numbers or names (default: all)")
    params.add_argument("--notebooks", default=str(DEFAULT_NOTEBOOKS))

    for name, what in (("train", "train StylEx in a run folder made by stages 01-02 (under torchrun: data parallel)"),
                       ("attfind", "run AttFind in a run folder trained by stages 01-03 (under torchrun: images sharded)")):
        step = sub.add_parser(name, help=what)
        step.add_argument("run_dir", help="run folder holding config.yaml")

    explain = sub.add_parser("explain", help="explain image files with a finished run (stages 01-05): top-k attributes, "
                                              "p(class) before and after, pair PNGs and a CSV")
    explain.add_argument("run_dir", help="run folder (stylex run CONFIG --out RUN_DIR, stages 01-05 finished)")
    explain.add_argument("images", nargs="+", help="image files, or folders of images")
    explain.add_argument("--out", required=True, help="folder for the pair PNGs and attributes.csv")
    explain.add_argument("-k", "--top", type=int, default=5, help="attributes per image (default 5)")
    explain.add_argument("--target", default=None, help="class name or index to explain (default: the predicted class)")
    explain.add_argument("--device", default=None, help="cpu, cuda, ... (default: the run's stylex.runtime.device)")
    explain.add_argument("--visible-only", action="store_true",
                         help="rank the edits the visibility rule calls invisible last (column invisible)")

    combine = sub.add_parser("combine", help="concatenate the benchmark/methods.csv (or --table) of run folders into "
                                             "one table")
    combine.add_argument("out", help="the combined CSV, e.g. runs/compare/benchmark/methods.csv")
    combine.add_argument("run_dirs", nargs="+", help="run folders whose stage 08/09 wrote benchmark/methods.csv")
    combine.add_argument("--table", default="methods.csv",
                         help="the file of benchmark/ to combine: methods.csv (default), paired.csv (stage 08: StylEx "
                              "minus each saliency method) or paired_gan.csv (stage 09: minus each GAN baseline)")

    show = sub.add_parser("config", help="print the resolved config (defaults + file + overrides)")
    show.add_argument("config", nargs="?", help="YAML config (default: built-in defaults)")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser


def run_step(step: str, run_dir: Path) -> int:
    """``stylex train`` / ``stylex attfind``: one stage's work outside the notebooks, data parallel under torchrun."""
    from stylexlib.classifier.training import load_run_classifier
    from stylexlib.core.distributed import init_distributed, shutdown_distributed
    from stylexlib.core.run import open_run
    from stylexlib.data import load_dataset
    from stylexlib.explain.attfind.search import run_attfind
    from stylexlib.explain.attfind.selection import sufficiency_metrics
    from stylexlib.gan.models import load_stylex
    from stylexlib.gan.train import train_stylex
    from stylexlib.report.plots import save_loss_curves

    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"{run_dir} has no config.yaml: run stages 01-02 first "
                                f"(stylex run CONFIG --only 01 02 --out {run_dir})")
    run = open_run(run_dir)
    info, device = init_distributed(run.cfg.stylex.runtime.device)
    failed = True
    try:
        data = load_dataset(run.cfg.data)
        if step == "train":
            summary = train_stylex(run, data, load_run_classifier(run, data), device=device, dist=info)
            if info.is_main:
                save_loss_curves(run.dir, run.path("figures", "stylex_losses.png"))
            result = {k: str(v) if isinstance(v, Path) else v for k, v in vars(summary).items()}
        else:
            found = run_attfind(run, data, load_stylex(run, device, data), dist=info)
            result = {"seconds_per_image": found.seconds_per_image, **sufficiency_metrics(found.sufficiency)}
        if info.is_main:
            print(json.dumps(result))
        failed = False
    finally:
        shutdown_distributed(failed)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``stylex`` console command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("papermill").setLevel(logging.WARNING)  # its per-notebook chatter hides our progress
    try:
        if args.command == "run" and args.plan:
            from stylexlib.pipeline.plan import plan

            plan(load_config(args.config, args.overrides))
        elif args.command == "run":
            from stylexlib.pipeline.runner import run_pipeline

            run_dir = run_pipeline(args.config, args.overrides, args.out, args.only, args.force, args.notebooks, args.kernel,
                                   parameters=args.parameters)
            print(f"[stylex] run folder: {run_dir}")
        elif args.command == "params":
            from stylexlib.pipeline.runner import (RUNNER_PARAMETERS, discover_stages, select_stages,
                                                   settable_parameters)

            for stage in select_stages(discover_stages(args.notebooks), args.stages or None):
                settable = settable_parameters(stage)
                print(f"{stage.name}{'' if settable else ' (no parameters to set)'}")
                for name, spec in settable.items():
                    help_text = f"  # {spec['help']}" if spec.get("help") else ""
                    print(f"  -p {name}={spec['default']}{help_text}")
            print("set by stylex run itself: " + ", ".join(f"{k} ({v})" for k, v in RUNNER_PARAMETERS.items()))
        elif args.command in ("train", "attfind"):
            return run_step(args.command, Path(args.run_dir))
        elif args.command == "explain":
            from stylexlib.core.run import open_run, pick_device
            from stylexlib.report.explain_files import explain_files, unexplained_files

            device = args.device or (open_run(args.run_dir).cfg.stylex.runtime.device
                                     if (Path(args.run_dir) / "config.yaml").is_file() else "auto")
            table = explain_files(args.run_dir, args.images, args.out, args.top, args.target, pick_device(device),
                                  args.visible_only)
            print(table.drop(columns=["png"]).round(3).to_string(index=False))
            for file in unexplained_files(table):
                print(f"[stylex] {file}: no attribute both changes it visibly and moves the classifier; its edits "
                      "are not explanations a person can check (columns visible_change, invisible)")
            print(f"[stylex] {table['file'].nunique()} images explained: {Path(args.out) / 'attributes.csv'}")
        elif args.command == "combine":
            from stylexlib.evaluate.benchmark import combine

            print(combine(args.out, args.run_dirs, args.table).round(3).to_string(index=False))
        elif args.command == "config":
            print(dump_config(load_config(args.config, args.overrides)), end="")
    except RuntimeError as exc:
        from stylexlib.pipeline.runner import StageFailed  # imported already wherever it can be raised

        if not isinstance(exc, StageFailed):
            raise
        print(f"[stylex] error: {exc}", file=sys.stderr)
        return 1
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"[stylex] error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
