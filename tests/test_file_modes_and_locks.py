"""Written files take the user's umask (a gallery or study copy others can read); run-folder and study locks."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat as nbf
import pytest
import torch
from test_study import make_examples

from stylexlib.core.io import torch_save, write_text
from stylexlib.core.lock import RUN_LOCK_FILE, FolderLocked, run_folder_lock
from stylexlib.pipeline.cli import main
from stylexlib.pipeline.runner import run_pipeline
from stylexlib.report import study
from stylexlib.report.gallery import replaced_dir


@pytest.fixture
def umask():
    """Set a umask for the test, then restore the previous one."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def modes(folder: Path) -> dict[str, int]:
    """Permission bits of everything under ``folder`` (and of ``folder`` itself, as '.')."""
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}


@pytest.mark.parametrize("mask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_written_files_and_folders_take_the_umask(tmp_path: Path, umask, mask: int) -> None:
    umask(mask)
    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask
    assert stat.S_IMODE(write_text(tmp_path / "a.txt", "x").stat().st_mode) == file_mode
    assert stat.S_IMODE(torch_save(tmp_path / "t.pt", torch.zeros(1)).stat().st_mode) == file_mode
    with replaced_dir(tmp_path / "gallery") as tmp:  # how the gallery and the studies write their folders
        write_text(tmp / "index.html", "<html></html>")
    found = modes(tmp_path / "gallery")
    assert found == {".": dir_mode, ".stylex-gallery": file_mode, "index.html": file_mode}
    study.generate_studies(make_examples(), tmp_path / "study", seed=1)
    study.export_for_respondents(tmp_path / "study", tmp_path / "share")  # the copy meant for other people
    for folder in (tmp_path / "study", tmp_path / "share"):
        wrong = {name: oct(m) for name, m in modes(folder).items()
                 if m != (dir_mode if (folder / name).is_dir() else file_mode)}
        assert not wrong, f"modes under {folder.name} ignore the umask {oct(mask)}: {wrong}"


HOLD = ("import sys, time\nfrom stylexlib.core.lock import run_folder_lock\n"
        "with run_folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n")


def test_a_held_run_folder_refuses_a_second_holder_and_a_dead_holder_frees_it(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.perf_counter()
        with pytest.raises(FolderLocked, match=rf"{tmp_path} is in use by process {holder.pid}\b") as caught:
            with run_folder_lock(tmp_path):
                pass
        assert caught.value.pid == holder.pid and time.perf_counter() - started < 1  # at once, not after a wait
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the kernel drops the lock
        holder.wait()
    with run_folder_lock(tmp_path):
        assert (tmp_path / RUN_LOCK_FILE).read_text().split() == [str(os.getpid())]


def _notebook(path: Path) -> None:
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbf.v4.new_code_cell('run_dir = "unset"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbf.v4.new_code_cell("open(run_dir + '/ran.txt', 'w').write('1')")]
    nbf.write(nb, path)


def test_stylex_run_refuses_a_run_folder_another_run_holds(tmp_path: Path, capsys) -> None:
    (tmp_path / "nbs").mkdir()
    _notebook(tmp_path / "nbs" / "01_only.ipynb")
    run = tmp_path / "run"
    run.mkdir()
    with run_folder_lock(run):  # a second open file description: as another process would hold it
        with pytest.raises(FolderLocked, match=rf"{run} is in use by process {os.getpid()}"):
            run_pipeline(None, ["name=t"], run, notebook_dir=tmp_path / "nbs", progress=False)
        assert main(["run", "tiny", "--out", str(run), "--notebooks", str(tmp_path / "nbs")]) == 2
    assert f"{run} is in use by process {os.getpid()}" in capsys.readouterr().err
    assert [p.name for p in run.iterdir()] == [RUN_LOCK_FILE]  # nothing ran, no config or stages.json written


def test_concurrent_study_appends_keep_every_row(tmp_path: Path, monkeypatch) -> None:
    real_write = study.write_text

    def slow_write(path, text):  # widen the read-modify-write window, as a slow disk or a busy machine does
        time.sleep(0.002)
        return real_write(path, text)

    monkeypatch.setattr(study, "write_text", slow_write)
    path = tmp_path / "study" / study.RESPONSES_FILE
    workers, each = 4, 15

    def respondent(who: int) -> None:
        for q in range(each):
            study.append_response(path, f"r{who}", f"cls-{q + 1:03d}", "A")

    threads = [threading.Thread(target=respondent, args=(who,)) for who in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    answers = study.read_responses(path)
    assert len(answers) == workers * each
    assert set(zip(answers["respondent"], answers["question_id"])) == {
        (f"r{w}", f"cls-{q + 1:03d}") for w in range(workers) for q in range(each)}

