"""The commands the README and the notebooks tell readers to run exist: every `-m module` and `stylex <subcommand>`."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

from stylexlib.pipeline.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "notebooks").glob("*.ipynb"))]
CODE = re.compile(r"```.*?```|`[^`\n]+`", re.S)  # fenced blocks and inline code spans
MODULE = re.compile(r"(?:python3?|torchrun)\b[^\n`]*?\s-m\s+([A-Za-z_][\w.]*)(?:\s+([a-z][\w-]*))?")
SUBCOMMAND = re.compile(r"(?:^|[\s/(])stylex\s+([a-z][\w-]*)", re.M)


def runnable(module: str) -> bool:
    """True when ``python -m module`` runs something: a package with ``__main__``, or a module with a main block."""
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return False
    if spec is None:
        return False
    if spec.submodule_search_locations is not None:
        return importlib.util.find_spec(f"{module}.__main__") is not None
    source = Path(spec.origin).read_text() if spec.origin and spec.origin.endswith(".py") else ""
    return re.search(r"__name__\s*==\s*['\"]__main__['\"]", source) is not None


def subcommands() -> set[str]:
    action = next(a for a in build_parser()._actions if a.dest == "command")
    return set(action.choices)


def code_of(path: Path) -> str:
    """The inline code and code blocks of a Markdown file, or of a notebook's cells (code cells whole)."""
    if path.suffix == ".ipynb":
        cells = nbformat.read(path, as_version=4).cells
        return "\n".join(c.source if c.cell_type == "code" else "\n".join(CODE.findall(c.source)) for c in cells)
    return "\n".join(CODE.findall(path.read_text()))


def commands(text: str) -> tuple[list[str], list[str]]:
    """The modules run with -m and the stylex subcommands named in a text."""
    modules = MODULE.findall(text)
    named = [sub for module, sub in modules if module == "stylexlib" and sub] + SUBCOMMAND.findall(text)
    return [module for module, _ in modules], named


def test_the_scanner_finds_what_a_reader_would_run() -> None:
    modules, named = commands("`torchrun --nproc_per_node=4 -m stylexlib.gan.training RUN`\n"
                              "```bash\n.venv/bin/stylex explian runs/demo\npython -m stylexlib trian RUN\n```")
    assert modules == ["stylexlib.gan.training", "stylexlib"] and named == ["trian", "explian"]
    assert runnable("stylexlib") and runnable("pytest") and not runnable("stylexlib.gan.training")
    assert not runnable("stylexlib.nowhere")


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_documented_modules_and_subcommands_exist(path: Path) -> None:
    modules, named = commands(code_of(path))
    missing = [m for m in modules if not runnable(m)]
    assert not missing, f"{path.name} runs modules that python -m cannot run: {missing}"
    unknown = sorted(set(named) - subcommands())
    assert not unknown, f"{path.name} names stylex subcommands that do not exist: {unknown} (known: {sorted(subcommands())})"
