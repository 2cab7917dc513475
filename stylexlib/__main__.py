"""``python -m stylexlib`` is the ``stylex`` command (``torchrun --nproc_per_node=N -m stylexlib train RUN_DIR``)."""
from stylexlib.pipeline.cli import main

raise SystemExit(main())
