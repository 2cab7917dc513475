"""The papermill runner: stage discovery, skip/force, failure reporting, config safety, the CLI."""
from pathlib import Path

import nbformat as nbf
import pytest

from stylexlib.core.config import ConfigError
from stylexlib.core.io import read_json
from stylexlib.pipeline.cli import main
from stylexlib.pipeline.runner import StageFailed, discover_stages, run_pipeline, select_stages, stage_parameters


def _notebook(path: Path, *cells: str) -> None:
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbf.v4.new_code_cell('run_dir = "unset"  # where to write\nfactor = 2  # a stage parameter')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbf.v4.new_code_cell(c) for c in cells]
    nbf.write(nb, path)


COUNT = (
    "from pathlib import Path\n"
    "p = Path(run_dir) / 'count_{name}.txt'\n"
    "p.write_text(str(int(p.read_text()) + 1 if p.exists() else 1))\n"
    "from stylexlib.core.run import open_run\n"
    "open_run(run_dir).log_metrics({name}_value=factor)"
)


@pytest.fixture
def notebooks(tmp_path: Path) -> Path:
    folder = tmp_path / "nbs"
    folder.mkdir()
    _notebook(folder / "01_first.ipynb", COUNT.format(name="first"))
    _notebook(folder / "02_second.ipynb", COUNT.format(name="second"))
    (folder / "notes.ipynb").write_text("{}")  # not numbered: ignored
    return folder


def _count(run: Path, name: str) -> int:
    path = run / f"count_{name}.txt"
    return int(path.read_text()) if path.exists() else 0


def test_discovery_and_selection(notebooks: Path) -> None:
    stages = discover_stages(notebooks)
    assert [s.name for s in stages] == ["01_first", "02_second"]
    assert [s.name for s in select_stages(stages, ["2"])] == ["02_second"]
    assert [s.name for s in select_stages(stages, ["first", "02_second"])] == ["01_first", "02_second"]
    with pytest.raises(ConfigError, match="unknown stage"):
        select_stages(stages, ["07"])
    params = stage_parameters(stages[0])
    assert set(params) == {"run_dir", "factor"} and params["factor"]["help"] == "a stage parameter"


def test_run_skip_force_and_metrics(notebooks: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_pipeline(None, ["name=t"], run, notebook_dir=notebooks, progress=False)
    assert (_count(run, "first"), _count(run, "second")) == (1, 1)
    assert read_json(run / "metrics.json") == {"first_value": 2, "second_value": 2}
    assert (run / "notebooks" / "02_second.ipynb").exists() and (run / "config.yaml").exists()

    run_pipeline(None, ["name=t"], run, notebook_dir=notebooks, progress=False)  # all finished: skipped
    assert (_count(run, "first"), _count(run, "second")) == (1, 1)

    run_pipeline(None, ["name=t"], run, only=["02"], force=True, notebook_dir=notebooks, progress=False)
    assert (_count(run, "first"), _count(run, "second")) == (1, 2)

    run_pipeline(None, ["name=t"], run, only=["01"], force=True, notebook_dir=notebooks, progress=False)
    state = read_json(run / "stages.json")
    assert "02_second" not in state  # a re-run stage makes later stages stale
    run_pipeline(None, ["name=t"], run, notebook_dir=notebooks, progress=False)
    assert (_count(run, "first"), _count(run, "second")) == (2, 3)


def test_changed_config_needs_force(notebooks: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_pipeline(None, ["name=a"], run, only=["01"], notebook_dir=notebooks, progress=False)
    with pytest.raises(ConfigError, match="changed: name"):
        run_pipeline(None, ["name=b"], run, notebook_dir=notebooks, progress=False)
    run_pipeline(None, ["name=b"], run, force=True, only=["01"], notebook_dir=notebooks, progress=False)
    assert "name: b" in (run / "config.yaml").read_text() and _count(run, "first") == 2


def test_late_sections_rerun_only_their_stages_and_optional_stages_skip(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "nbs"
    folder.mkdir()
    for name in ("01_first", "04_inversion", "07_study", "09_gan_baselines"):
        _notebook(folder / f"{name}.ipynb", COUNT.format(name=name[3:]))
    run = tmp_path / "run"
    run_pipeline(None, [], run, notebook_dir=folder, progress=False)
    assert (_count(run, "first"), _count(run, "study"), _count(run, "gan_baselines")) == (1, 1, 0)
    assert "skip 09_gan_baselines: compare.gan_baselines is off" in capsys.readouterr().out
    run_pipeline(None, ["inversion.per_image_steps=3"], run, notebook_dir=folder, progress=False)  # stages 04 on
    assert (_count(run, "first"), _count(run, "inversion"), _count(run, "study")) == (1, 2, 2)
    run_pipeline(None, ["inversion.per_image_steps=3", "compare.gan_baselines=true"], run, notebook_dir=folder,
                 progress=False)  # no --force needed
    assert (_count(run, "first"), _count(run, "study"), _count(run, "gan_baselines")) == (1, 2, 1)
    run_pipeline(None, ["inversion.per_image_steps=3", "compare.gan_baselines=true", "study.top=2"], run,
                 notebook_dir=folder, progress=False)
    assert (_count(run, "first"), _count(run, "study"), _count(run, "gan_baselines")) == (1, 3, 2)
    with pytest.raises(ConfigError, match="changed: data.num_images"):  # an early section still needs --force
        run_pipeline(None, ["inversion.per_image_steps=3", "compare.gan_baselines=true", "study.top=2",
                            "data.num_images=10"], run,
                     notebook_dir=folder, progress=False)


def test_failure_names_notebook_cell_and_copy(notebooks: Path, tmp_path: Path, capsys) -> None:
    _notebook(notebooks / "03_broken.ipynb", "x = 1", "raise ValueError('bad thing happened')")
    run = tmp_path / "run"
    with pytest.raises(StageFailed) as info:
        run_pipeline(None, [], run, notebook_dir=notebooks, progress=False)
    message = str(info.value)
    assert "03_broken" in message and "ValueError: bad thing happened" in message
    assert str(run / "notebooks" / "03_broken.ipynb") in message and info.value.executed.exists()
    assert read_json(run / "stages.json")["03_broken"]["status"] == "failed"

    code = main(["run", "unused.yaml", "--out", str(run), "--notebooks", str(notebooks)])
    assert code == 2 and "config file not found" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: demo\n")
    code = main(["run", str(cfg), "--out", str(tmp_path / "run2"), "--notebooks", str(notebooks)])
    err = capsys.readouterr().err
    assert code == 1 and "03_broken failed in cell" in err and "executed notebook:" in err


def test_cli_params_and_config(notebooks: Path, capsys) -> None:
    assert main(["params", "--notebooks", str(notebooks), "01"]) == 0
    out = capsys.readouterr().out
    assert "01_first" in out and "-p factor=2  # a stage parameter" in out
    assert "run_dir =" not in out and "-p run_dir" not in out and "run_dir (--out)" in out  # not settable by -p
    assert main(["config", "--set", "data.resolution=64"]) == 0
    assert "resolution: 64" in capsys.readouterr().out
    assert main(["config", "--set", "data.nope=1"]) == 2
    assert "unknown config key 'data.nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "--force" in capsys.readouterr().out


def test_the_readme_test_command_sets_itself_up_and_ci_calls_exactly_it() -> None:
    root = Path(__file__).resolve().parents[1]
    makefile = (root / "Makefile").read_text()
    prerequisites = next(line for line in makefile.splitlines() if line.startswith("test:")).split(":", 1)[1].split()
    assert {"install", "chromium"} <= set(prerequisites)  # the browser tests need Chromium; CI=true never skips them
    commands = [line.split("#")[0].strip() for line in (root / ".ci" / "run").read_text().splitlines()]
    assert "make test" in commands and "make chromium" not in commands
    assert "make test" in (root / "README.md").read_text()


def test_run_sets_notebook_parameters_and_reruns_a_stage_whose_parameters_changed(notebooks: Path, tmp_path: Path,
                                                                                     capsys) -> None:
    run = tmp_path / "run"
    assert main(["run", "tiny", "--out", str(run), "--notebooks", str(notebooks), "-p", "factor=5"]) == 0
    assert read_json(run / "metrics.json") == {"first_value": 5, "second_value": 5}
    run_pipeline("tiny", [], run, notebook_dir=notebooks, progress=False, parameters=["factor=5"])  # same: skipped
    assert (_count(run, "first"), _count(run, "second")) == (1, 1)
    run_pipeline("tiny", [], run, only=["02"], notebook_dir=notebooks, progress=False, parameters=["factor=7"])
    assert (_count(run, "first"), _count(run, "second")) == (1, 2) and read_json(run / "metrics.json")["second_value"] == 7
    for bad, message in (("nope=1", r"no selected stage has a parameter 'nope' \(settable: 01_first: factor"),
                         ("factor=many", "expected int"), ("run_dir=x", "sets run_dir itself; use --out"),
                         ("factor", "must look like NAME=VALUE")):
        with pytest.raises(ConfigError, match=message):
            run_pipeline("tiny", [], run, notebook_dir=notebooks, progress=False, parameters=[bad])


def test_force_keeps_the_models_a_changed_key_leaves_valid_and_removes_only_stale_ones(tmp_path: Path,
                                                                                       monkeypatch) -> None:
    """#39: `--force` after changing stylex.schedule.steps, device or an attfind key deleted the classifier, the StylEx
    checkpoint and attfind/ although their fingerprints still matched: hours of training lost."""
    from stylexlib.core.config import load_config
    from stylexlib.core.io import torch_save
    from stylexlib.core.provenance import classifier_fingerprint, stylex_fingerprint

    folder = tmp_path / "nbs"
    folder.mkdir()
    for name in ("01_data", "02_classifier", "03_train_stylex", "05_attribute_search"):
        _notebook(folder / f"{name}.ipynb")
    ran: list[str] = []
    monkeypatch.setattr("stylexlib.pipeline.runner.pm.execute_notebook",
                        lambda source, out, **kwargs: ran.append(Path(source).stem[:2]))
    run = tmp_path / "run"
    base = ["name=t", "stylex.runtime.device=cpu"]
    run_pipeline(None, base, run, notebook_dir=folder, progress=False)
    cfg = load_config(None, base)  # what stages 02, 03 and 05 leave, made from this config
    torch_save(run / "classifier.pt", {"fingerprint": classifier_fingerprint(cfg)})
    torch_save(run / "checkpoints" / "stylex.pt", {"fingerprint": stylex_fingerprint(cfg)})
    (run / "stats.jsonl").write_text("{}\n")
    torch_save(run / "attfind" / "style_stats.pt", {"key": {"stylex": stylex_fingerprint(cfg), "step": 2}})
    (run / "attfind" / "attribute_names.csv").write_text("flat,direction,name\n1,up,smile\n")
    made = [run / "classifier.pt", run / "checkpoints" / "stylex.pt", run / "stats.jsonl",
            run / "attfind" / "style_stats.pt", run / "attfind" / "attribute_names.csv"]

    for changed in (["stylex.schedule.steps=5000"], ["stylex.schedule.steps=5000", "stylex.runtime.device=auto", "attfind.top_k=3"]):
        ran.clear()
        run_pipeline(None, [*base, *changed], run, force=True, notebook_dir=folder, progress=False)
        assert ran == ["01", "02", "03", "05"] and all(path.exists() for path in made)  # re-run, resuming

    now = [*base, *changed]
    with pytest.raises(ConfigError, match=r"changed: stylex.schedule.steps\); use --only 03 --force"):  # one stage meant
        run_pipeline(None, [*now, "stylex.schedule.steps=6000"], run, notebook_dir=folder, progress=False)
    with pytest.raises(ConfigError, match=r"changed: attfind.top_k\); use --only 05 --force"):
        run_pipeline(None, [*now, "attfind.top_k=4"], run, notebook_dir=folder, progress=False)
    with pytest.raises(ConfigError, match=r"changed: data.seed, stylex.schedule.steps\); use --force to"):  # two stages
        run_pipeline(None, [*now, "data.seed=3", "stylex.schedule.steps=6000"], run, notebook_dir=folder, progress=False)

    ran.clear()  # another StylEx model: its checkpoint, its log and what AttFind made with it are stale
    retrained = [*now, "stylex.optim.lr_g=0.001"]
    run_pipeline(None, retrained, run, only=["03"], force=True, notebook_dir=folder, progress=False)
    assert ran == ["03"] and [path.exists() for path in made] == [True, False, False, False, True]
    assert set(read_json(run / "stages.json")) == {"01_data", "02_classifier", "03_train_stylex"}  # 05 runs next
    run_pipeline(None, [*retrained, "data.seed=1"], run, only=["02"], force=True, notebook_dir=folder,
                 progress=False)
    assert not (run / "classifier.pt").exists()  # another data set: the classifier is stale too


def test_relabelled_folder_data_makes_the_classifier_stale_and_reruns_what_depends_on_it(tmp_path: Path,
                                                                                          monkeypatch) -> None:
    """#39: with the same config, `stylex run` skipped every finished stage after the labels CSV changed, and kept the
    classifier and StylEx model trained on the old labels."""
    from PIL import Image

    from stylexlib.core.config import load_config
    from stylexlib.core.io import torch_save
    from stylexlib.core.provenance import classifier_fingerprint, stylex_fingerprint

    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(root / "img" / f"{i}.png")
    labels = root / "labels.csv"
    labels.write_text("file,label\n" + "".join(f"img/{i}.png,{i % 2}\n" for i in range(4)))
    folder = tmp_path / "nbs"
    folder.mkdir()
    for name in ("01_data", "02_classifier", "03_train_stylex"):
        _notebook(folder / f"{name}.ipynb")
    ran: list[str] = []
    monkeypatch.setattr("stylexlib.pipeline.runner.pm.execute_notebook",
                        lambda source, out, **kwargs: ran.append(Path(source).stem[:2]))
    base = ["name=t", "stylex.runtime.device=cpu", "data.source=folder", f"data.root={root}", "data.labels_csv=labels.csv",
            "data.label_column=label", "data.resolution=8"]
    run = tmp_path / "run"
    run_pipeline(None, base, run, notebook_dir=folder, progress=False)
    cfg = load_config(None, base)  # what stages 02 and 03 leave, made from this config and these files
    torch_save(run / "classifier.pt", {"fingerprint": classifier_fingerprint(cfg)})
    torch_save(run / "checkpoints" / "stylex.pt", {"fingerprint": stylex_fingerprint(cfg)})

    ran.clear()
    run_pipeline(None, base, run, notebook_dir=folder, progress=False)
    assert ran == []  # nothing changed: nothing runs again

    labels.write_text(labels.read_text().replace("img/2.png,0", "img/2.png,1"))  # one image relabelled
    run_pipeline(None, base, run, notebook_dir=folder, progress=False)
    assert ran == ["02", "03"]  # the classifier and what explains it are made again
    assert not (run / "classifier.pt").exists() and not (run / "checkpoints" / "stylex.pt").exists()


def test_the_default_notebook_folder_is_defined_once() -> None:
    """`stylex run` (cli) and run_pipeline (runner) default to one folder, defined beside the install paths."""
    import re

    from stylexlib.core import install
    from stylexlib.pipeline import cli, runner

    assert cli.DEFAULT_NOTEBOOKS is runner.DEFAULT_NOTEBOOKS is install.DEFAULT_NOTEBOOKS
    assert install.DEFAULT_NOTEBOOKS == install.shipped("notebooks")
    package = Path(install.__file__).resolve().parents[1]
    defined = [p.relative_to(package).as_posix() for p in package.rglob("*.py")
               if re.search(r"^DEFAULT_NOTEBOOKS\s*[:=]", p.read_text(), re.M)]
    assert defined == ["core/install.py"]


def test_a_misspelt_loss_weight_stops_the_run_before_any_stage(tmp_path: Path) -> None:
    """The loss terms are known only to the trainer's registry; `stylex run` asks it before stage 01, not at stage 03."""
    with pytest.raises(ConfigError, match="no loss term named 'kll'"):
        run_pipeline(None, ["stylex.loss.kll=1"], tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
