"""Run directories with real ``relax`` processes: ``--overwrite`` loses nothing of the user's, one writer per run
directory (a lock the kernel releases on kill -9), and non-finite validation/test metrics are errors."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors
from conftest import RELAX, read_json, read_jsonl

from relaxcli.errors import RelaxError
from relaxcli.run import rundir

LEGACY = Path(__file__).parent.parent / "fixtures" / "run-0.1.0"


#: Data components for these tests, written into the test's folder (relax runs with its cwd on sys.path).
TEST_DATA = '''
import os
import time

import torch

from relaxcli.tasks import NBodyData


class _Poisoned(torch.utils.data.Dataset):
    def __init__(self, split, items):
        self.split, self.items = split, set(items)

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        inputs, target = self.split[i]
        if i in self.items:
            target = target.clone()
            target[0, 0] = float("nan")
        return inputs, target


class PoisonedNBody:
    """N-body data with NaN targets at ``items`` of the split ``poison``."""

    def __init__(self, poison, items, **kwargs):
        data = NBodyData(**kwargs)
        self.train, self.val, self.test = data.train, data.val, data.test
        setattr(self, poison, _Poisoned(getattr(data, poison), items))


class _Slow(torch.utils.data.Dataset):
    def __init__(self, split):
        self.split = split

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        time.sleep(float(os.environ.get("SLOW_ITEMS", "0")))  # a run that lasts, without taking the CPU
        return self.split[i]


class SlowNBody:
    """N-body data whose training items take ``$SLOW_ITEMS`` seconds each to load."""

    def __init__(self, **kwargs):
        data = NBodyData(**kwargs)
        self.train, self.val, self.test = _Slow(data.train), data.val, data.test
'''


def _data(tmp_path: Path, component: str, **kwargs: Any) -> dict[str, Any]:
    """The recipe's ``data:`` for a component of :data:`TEST_DATA` on the tiny N-body splits."""
    (tmp_path / "testdata.py").write_text(TEST_DATA)
    return {"_component_": f"testdata.{component}", "train": 60, "val": 20, "test": 20, "seed": 1, **kwargs}


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` (hidden ones too): a file's bytes, None for a folder."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def _popen(tmp_path: Path, *args: str | Path, slow: float = 0.0) -> subprocess.Popen[str]:
    env = {**os.environ, "RELAX_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "SLOW_ITEMS": str(slow)}
    return subprocess.Popen(
        [*RELAX, *map(str, args)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _no_duplicates(records: list[dict[str, Any]], epochs: int) -> None:
    """One train line per logged step, one eval line per epoch, one test line: nothing doubled or interleaved."""
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == sorted(set(steps)), steps
    assert [r["epoch"] for r in records if r["kind"] == "eval"] == list(range(1, epochs + 1))
    assert [r["kind"] for r in records].count("test") == 1


def _metadata(path: Path) -> dict[str, str]:
    """A checkpoint's metadata, read without the recipe (whose data component only the run's cwd can import)."""
    with safetensors.safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


def _wait_for_epoch(proc: subprocess.Popen[str], last: Path, epoch: int) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if last.exists() and int(_metadata(last)["epoch"]) >= epoch:
                return
        except Exception:  # being replaced right now
            pass
        time.sleep(0.05)
    raise AssertionError(f"the run ended (or hung) before epoch {epoch}: {proc.poll()}")


def test_overwrite_never_touches_a_users_own_folder(
    tmp_path: Path, relax_cli: Callable[..., Any], nbody_recipe: Callable[..., Path]
) -> None:
    project = tmp_path / "myproject"
    (project / "data").mkdir(parents=True)
    shutil.copy(nbody_recipe(), project / "recipe.yaml")  # a recipe.yaml does not make a run directory
    (project / "thesis.tex").write_text("\\chapter{Results}\n")
    (project / "data" / "points.csv").write_bytes(b"x,y\n1,2\n")
    before = _snapshot(project)

    proc = relax_cli("train", project / "recipe.yaml", "--run-dir", project, "--overwrite", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "not a relax run directory" in proc.stderr and rundir.MARKER in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = relax_cli("train", project / "recipe.yaml", "--run-dir", project, cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "not empty" in proc.stderr
    assert _snapshot(project) == before  # byte for byte, and no lock or marker file left in it

    # a symbolic link to a run directory: a clear refusal, not "OSError: Cannot call rmtree on a symbolic link"
    (tmp_path / "link").symlink_to(project, target_is_directory=True)
    proc = relax_cli("train", project / "recipe.yaml", "--run-dir", "link", "--overwrite", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "symbolic link" in proc.stderr and "OSError" not in proc.stderr
    assert _snapshot(project) == before

    # a run of the previous release has no marker: resumable, but --overwrite does not delete it
    legacy = tmp_path / "legacy"
    shutil.copytree(LEGACY, legacy)
    proc = relax_cli("train", project / "recipe.yaml", "--run-dir", legacy, "--overwrite", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "relax train --resume" in proc.stderr
    assert _snapshot(legacy) == _snapshot(LEGACY)


def test_overwrite_replaces_only_what_relax_wrote(
    tmp_path: Path, relax_cli: Callable[..., Any], nbody_recipe: Callable[..., Path]
) -> None:
    recipe = nbody_recipe(epochs=1)
    relax_cli("train", recipe, "--run-dir", "run", cwd=tmp_path)
    run = tmp_path / "run"
    assert read_json(run / rundir.MARKER)["format"] == rundir.RUN_FORMAT
    relax_cli("project", run / "checkpoints" / "best.safetensors", cwd=tmp_path)  # written beside the checkpoints
    (run / "notes.txt").write_text("mine")
    (run / "checkpoints" / "fine-tuned.safetensors").write_bytes(b"mine too")
    before = _snapshot(run)

    proc = relax_cli("train", recipe, "--run-dir", "run", "--overwrite", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "run/notes.txt" in proc.stderr and "fine-tuned.safetensors" in proc.stderr
    assert "nothing was removed" in proc.stderr and _snapshot(run) == before
    (run / "notes.txt").unlink()
    (run / "checkpoints" / "fine-tuned.safetensors").unlink()

    # the run's own recipe.yaml is an input here: replacing the run would delete it
    proc = relax_cli("train", run / "recipe.yaml", "--run-dir", "run", "--overwrite", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "is the recipe" in proc.stderr and (run / "recipe.yaml").is_file()

    relax_cli("train", recipe, "seed=11", "--run-dir", "run", "--overwrite", cwd=tmp_path)
    summary = read_json(run / "summary.json")
    assert summary["seed"] == 11
    assert not (run / "checkpoints" / "best.projected.safetensors").exists()  # the old run's outputs are gone
    _no_duplicates(read_jsonl(run / "metrics.jsonl"), epochs=1)
    assert all(r.get("epoch") == 1 for r in read_jsonl(run / "metrics.jsonl"))


def test_two_trainers_in_one_run_dir_one_runs_the_other_stops_at_once(
    tmp_path: Path, nbody_recipe: Callable[..., Path]
) -> None:
    recipe = nbody_recipe(epochs=6, data=_data(tmp_path, "SlowNBody"))  # at least 6 · 60 · 0.02 s = 7 s
    first = _popen(tmp_path, "train", recipe, "seed=1", "--run-dir", "run", "--no-progress", slow=0.02)
    second = _popen(tmp_path, "train", recipe, "seed=2", "--run-dir", "run", "--no-progress", slow=0.02)
    procs = {first.pid: first, second.pid: second}
    deadline = time.time() + 300
    while all(p.poll() is None for p in procs.values()) and time.time() < deadline:
        time.sleep(0.05)
    loser = next(p for p in procs.values() if p.poll() is not None)
    winner = next(p for p in procs.values() if p is not loser)
    assert winner.poll() is None, "the second process did not stop before the first one finished"
    _, err = loser.communicate()
    assert loser.returncode == 1 and f"in use by another relax process (pid {winner.pid}" in err, err
    _, err = winner.communicate(timeout=300)
    assert winner.returncode == 0, err

    seed = 1 if winner is first else 2
    assert read_json(tmp_path / "run" / "summary.json")["seed"] == seed  # the winner's run, whole
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    _no_duplicates(records, epochs=6)
    assert len([r for r in records if r["kind"] == "train"]) == 6 * 6 // 2  # 6 steps per epoch, logged every 2nd


def test_resume_takes_the_lock_and_kill_minus_nine_leaves_none(
    tmp_path: Path, relax_cli: Callable[..., Any], nbody_recipe: Callable[..., Path]
) -> None:
    recipe = nbody_recipe(epochs=8, data=_data(tmp_path, "SlowNBody"))
    run = tmp_path / "run"
    trainer = _popen(tmp_path, "train", recipe, "--run-dir", "run", "--no-progress", slow=0.08)  # 5 s an epoch
    _wait_for_epoch(trainer, run / "checkpoints" / "last.safetensors", 1)
    for args in (["--resume", "run", "--trust-recipe"], [recipe, "--run-dir", "run", "--overwrite"]):
        proc = relax_cli("train", *args, cwd=tmp_path, check=False)
        assert proc.returncode == 1 and f"(pid {trainer.pid}" in proc.stderr, proc.stderr
    assert trainer.poll() is None
    os.kill(trainer.pid, signal.SIGKILL)
    trainer.wait()

    # the kernel released the lock; of two resumes started together, one resumes and the other stops
    a, b = (_popen(tmp_path, "train", "--resume", "run", "--trust-recipe", "--no-progress") for _ in range(2))
    results: dict[int, tuple[int, str]] = {}
    for p in (a, b):
        _, err = p.communicate(timeout=300)
        results[p.pid] = (p.returncode, err)
    codes = sorted(code for code, _ in results.values())
    assert codes == [0, 1], results
    holder = next(pid for pid, (code, _) in results.items() if code == 0)
    assert any(f"(pid {holder}" in err for code, err in results.values() if code == 1), results
    _no_duplicates(read_jsonl(run / "metrics.jsonl"), epochs=8)
    assert read_json(run / "summary.json")["steps"] == 8 * 6


def test_a_run_of_the_previous_release_gets_the_marker_when_resumed(tmp_path: Path) -> None:
    run = tmp_path / "legacy"
    shutil.copytree(LEGACY, run)
    assert not rundir.is_run_dir(run)
    with rundir.reopen(run) as held:
        assert held.path == run and rundir.is_run_dir(run)
        with pytest.raises(RelaxError, match=r"in use by another relax process \(pid \d+"):
            rundir.lock(run)  # flock locks are per open file: a second open in this process is refused too
    rundir.lock(run).release()  # and free again once released
    with pytest.raises(RelaxError, match="not a run directory"):
        rundir.reopen(tmp_path)


@pytest.mark.parametrize(("split", "name"), [("test", "test"), ("val", "validation")])
def test_non_finite_metrics_are_errors_naming_the_split(
    tmp_path: Path, split: str, name: str, relax_cli: Callable[..., Any], nbody_recipe: Callable[..., Path]
) -> None:
    recipe = nbody_recipe(epochs=1, data=_data(tmp_path, "PoisonedNBody", poison=split, items=[3, 7]))
    proc = relax_cli("train", recipe, "--run-dir", "run", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"the {name} split has 2 of 20 items with a non-finite target" in proc.stderr, proc.stderr
    assert "does not exist" not in proc.stderr
    run = tmp_path / "run"
    assert not (run / "summary.json").exists()
    read_jsonl(run / "metrics.jsonl")  # what was logged is strict JSON
    if split == "test":  # the checkpoints are there; nothing claims a result
        assert (run / "checkpoints" / "best.safetensors").is_file()
