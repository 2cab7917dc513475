"""The package reads as the pipeline flows: each layer imports only itself and the layers below, without cycles, and a
non-editable install runs ``stylex run`` with the notebooks and configs it ships."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from stylexlib.core.install import PACKAGE

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["core", "data", "classifier", "gan", "stylespace", "explain", "evaluate", "report", "pipeline"]


def module_imports() -> dict[str, set[str]]:
    """Every stylexlib module -> the stylexlib modules it imports (anywhere in the file)."""
    paths = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stylexlib"):
                # ``from stylexlib.report import viz`` imports the module stylexlib.report.viz
                found.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in paths else node.module
                             for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("stylexlib"))
        graph[name] = found
    return graph


def test_every_module_sits_in_a_layer_and_imports_only_downwards() -> None:
    upward = []
    for module, imported in module_imports().items():
        parts = module.split(".")
        if module in ("stylexlib", "stylexlib.__main__"):
            continue
        assert parts[1] in LAYERS, f"{module} is in no layer: put it in one of {LAYERS}"
        upward += [f"{module} -> {target}" for target in imported
                   if LAYERS.index(target.split(".")[1]) > LAYERS.index(parts[1])]
    assert not upward, f"lower layers import higher ones: {upward}"


def test_no_import_cycles() -> None:
    graph = {m: {t for t in targets if t != m} for m, targets in module_imports().items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt in graph and not state.get(nxt):
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if not state.get(module):
            visit(module, [module])


def test_pyproject_lists_every_package() -> None:
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    present = {".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")}
    assert present <= listed, f"add {sorted(present - listed)} to [tool.setuptools] packages in pyproject.toml"


def test_a_non_editable_install_runs_stylex_run_and_writes_nothing_into_the_package(tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(site), str(REPO)], check=True, cwd=tmp_path)
    installed = {p for p in site.rglob("*") if "__pycache__" not in p.parts}
    assert (site / "stylexlib" / "notebooks" / "01_data.ipynb").exists() and (site / "stylexlib" / "configs" / "tiny.yaml").exists()
    env = {k: v for k, v in os.environ.items() if k != "STYLEX_CACHE"}
    env.update(PYTHONPATH=str(site), XDG_CACHE_HOME=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-m", "stylexlib", "run", "tiny", "--only", "01", "--out", "run"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    where = subprocess.run([sys.executable, "-c", "import stylexlib; print(stylexlib.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), f"imported {where}, not the installed copy"
    assert (tmp_path / "run" / "figures" / "data_examples.png").exists()
    assert any((tmp_path / "cache" / "stylexlib").rglob("*")), "the generated data goes to the user cache"
    written = {p for p in site.rglob("*") if "__pycache__" not in p.parts} - installed
    assert not written, f"the run wrote into the installed package: {sorted(map(str, written))[:5]}"
