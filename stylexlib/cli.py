"""The ``stylex`` command: run the notebook pipeline, list stages and their parameters, show configs."""
from __future__ import annotations

import argparse
import logging
import sys

from .config import ConfigError, dump_config, load_config
from .pipeline import DEFAULT_NOTEBOOKS, StageFailed, discover_stages, run_pipeline, select_stages, stage_parameters


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``stylex``."""
    parser = argparse.ArgumentParser(prog="stylex", description="StylEx workbench: explain image classifiers in StyleSpace.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the numbered notebooks with papermill into a run folder")
    run.add_argument("config", help="YAML config, e.g. configs/demo.yaml")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set data.resolution=64 (repeatable)")
    run.add_argument("--out", help="run folder (default: runs/<config name>)")
    run.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages (numbers or names, e.g. 01 02_classifier)")
    run.add_argument("--force", action="store_true", help="re-run stages that already finished")
    run.add_argument("--notebooks", default=str(DEFAULT_NOTEBOOKS), help="folder of numbered notebooks")
    run.add_argument("--kernel", default=None, help="Jupyter kernel name (default: python3, this interpreter)")

    params = sub.add_parser("params", help="list each notebook's parameters (from its 'parameters' cell)")
    params.add_argument("stages", nargs="*", help="stage numbers or names (default: all)")
    params.add_argument("--notebooks", default=str(DEFAULT_NOTEBOOKS))

    show = sub.add_parser("config", help="print the resolved config (defaults + file + overrides)")
    show.add_argument("config", nargs="?", help="YAML config (default: built-in defaults)")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``stylex`` console command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("papermill").setLevel(logging.WARNING)  # its per-notebook chatter hides our progress
    try:
        if args.command == "run":
            run_dir = run_pipeline(args.config, args.overrides, args.out, args.only, args.force, args.notebooks, args.kernel)
            print(f"[stylex] run folder: {run_dir}")
        elif args.command == "params":
            for stage in select_stages(discover_stages(args.notebooks), args.stages or None):
                print(stage.name)
                for name, spec in stage_parameters(stage).items():
                    help_text = f"  # {spec['help']}" if spec.get("help") else ""
                    print(f"  {name} = {spec['default']}{help_text}")
        elif args.command == "config":
            print(dump_config(load_config(args.config, args.overrides)), end="")
    except StageFailed as exc:
        print(f"[stylex] error: {exc}", file=sys.stderr)
        return 1
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"[stylex] error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
