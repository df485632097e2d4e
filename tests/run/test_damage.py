"""Damage is detected, not trained on: every checkpoint carries a content hash (tensors and metadata), verified on
every read, so one flipped byte makes ``inspect``, ``project`` and ``train --resume`` refuse the file (and a refused
``--resume`` leaves the run directory as it was). A run killed at any moment, even before its first checkpoint,
resumes to the result of an uninterrupted run, and temporary files of interrupted writes are removed."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import RELAX, nbody_recipe_data, run_relax

from relaxcli.errors import RelaxError
from relaxcli.run.checkpoint import CONTENT_HASH, load_checkpoint

LEGACY = Path(__file__).parent.parent / "fixtures" / "run-0.1.0"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``tiny.yaml``, its uninterrupted two-epoch run ``run/`` and ``projected.safetensors``."""
    cwd = tmp_path_factory.mktemp("damage")
    (cwd / "tiny.yaml").write_text(yaml.safe_dump(nbody_recipe_data("tiny", epochs=2), sort_keys=False))
    run_relax("train", "tiny.yaml", "--run-dir", "run", cwd=cwd)
    run_relax("project", "run/checkpoints/best.safetensors", "-o", "projected.safetensors", cwd=cwd)
    return cwd


def data_start(path: Path) -> int:
    """Where the tensor data of a safetensors file begins (after the 8-byte length and the JSON header)."""
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def flip(path: Path, position: int | None = None) -> int:
    """Flip one byte of ``path`` in place (default: in the middle of the first model weight's data)."""
    raw = bytearray(path.read_bytes())
    if position is None:
        header = json.loads(raw[8 : data_start(path)])
        name = next(k for k in sorted(header) if k.startswith("model.") or (k != "__metadata__" and "." in k))
        begin, end = header[name]["data_offsets"]
        position = data_start(path) + (begin + end) // 2
    raw[position] ^= 0xFF
    path.write_bytes(bytes(raw))
    return position


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def damaged(proc: subprocess.CompletedProcess[str], path: Path) -> None:
    assert proc.returncode == 1, proc.stderr
    assert f"{path.name} is damaged" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_every_flipped_byte_is_noticed(trained: Path, tmp_path: Path) -> None:
    for name in ("run/checkpoints/last.safetensors", "projected.safetensors"):
        source = trained / name
        intact = load_checkpoint(source)
        assert intact.verified and CONTENT_HASH in intact.metadata
        size, start = source.stat().st_size, data_start(source)
        rng = random.Random(0)  # the length, and bytes of the JSON header (metadata, recipe) and of the tensor data
        positions = [*range(8), *rng.sample(range(8, start), 400), *rng.sample(range(start, size), 400)]
        unnoticed = []
        for position in positions:
            copy = tmp_path / "flipped.safetensors"
            shutil.copyfile(source, copy)
            flip(copy, position)
            try:
                load_checkpoint(copy, recipe=intact.recipe)  # the stored recipe is covered by the hash, not re-read
            except RelaxError:
                continue
            unnoticed.append(position)
        assert not unnoticed, f"{name}: flipped bytes at {unnoticed[:10]} went unnoticed"


def test_inspect_and_project_refuse_a_damaged_checkpoint(trained: Path, tmp_path: Path) -> None:
    best, projected = tmp_path / "best.safetensors", tmp_path / "projected.safetensors"
    shutil.copyfile(trained / "run" / "checkpoints" / "best.safetensors", best)
    shutil.copyfile(trained / "projected.safetensors", projected)
    flip(best)
    flip(projected)
    damaged(run_relax("inspect", best, cwd=tmp_path, check=False), best)
    damaged(run_relax("inspect", projected, cwd=tmp_path, check=False), projected)
    damaged(run_relax("project", best, "-o", "out.safetensors", cwd=tmp_path, check=False), best)
    assert not (tmp_path / "out.safetensors").exists()
    damaged(run_relax("export", projected, "-o", "out.pt2", cwd=tmp_path, check=False), projected)
    assert not (tmp_path / "out.pt2").exists()


@pytest.mark.parametrize("which", ["last", "best"])
def test_resume_refuses_a_damaged_checkpoint_and_changes_nothing(trained: Path, tmp_path: Path, which: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    (run / "checkpoints" / ".last.safetensors.x1y2z3.tmp").write_bytes(b"half a checkpoint")
    flip(run / "checkpoints" / f"{which}.safetensors")
    before = snapshot(run)
    proc = run_relax("train", "--resume", run, cwd=tmp_path, check=False)
    damaged(proc, run / "checkpoints" / f"{which}.safetensors")
    assert snapshot(run) == before


def test_kill_at_the_earliest_moment_then_resume(trained: Path, tmp_path: Path) -> None:
    shutil.copyfile(trained / "tiny.yaml", tmp_path / "tiny.yaml")
    env = {**os.environ, "RELAX_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [*RELAX, "train", "tiny.yaml", "--run-dir", "killed"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run = tmp_path / "killed"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (run / "recipe.yaml").exists():
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # as soon as the run directory has its recipe: before the data, the model...
    proc.wait()
    assert not (run / "checkpoints" / "last.safetensors").exists(), "killed too late: a checkpoint was written"
    # a kill during a checkpoint write leaves its temporary file: resume removes it
    (run / "checkpoints").mkdir(exist_ok=True)
    leftover = run / "checkpoints" / ".last.safetensors.k1ll3d.tmp"
    leftover.write_bytes(b"half a checkpoint")

    resumed = run_relax("train", "--resume", "killed", cwd=tmp_path)
    assert "resuming" in resumed.stderr and not leftover.exists()
    a = json.loads((trained / "run" / "summary.json").read_text())
    b = json.loads((run / "summary.json").read_text())
    for key in ("val_projected", "test_projected", "test_relaxed", "best_epoch", "steps", "seed"):
        assert a[key] == b[key], key
    wa = load_checkpoint(trained / "run" / "checkpoints" / "last.safetensors").tensors
    wb = load_checkpoint(run / "checkpoints" / "last.safetensors").tensors
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_file_of_0_1_0_has_no_hash_and_is_read_unverified(tmp_path: Path) -> None:
    best = LEGACY / "checkpoints" / "best.safetensors"
    ckpt = load_checkpoint(best)
    assert not ckpt.verified and CONTENT_HASH not in ckpt.metadata
    report = json.loads(run_relax("inspect", best, "--json", cwd=tmp_path).stdout)
    assert any("no content hash" in note for note in report["notes"])
