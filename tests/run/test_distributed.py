"""Data-parallel training with real torchrun processes (gloo on CPU): the same weights as one process on the same
global batches, and kill -9 / resume under torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import RELAX, TORCHRUN, read_json, run_relax

from relaxcli.run.checkpoint import load_checkpoint


def recipe(nbody_recipe: Callable[..., Path], epochs: int, theta: dict[str, Any]) -> Path:
    """31 training systems in global batches of 7: the last batch (3) splits unevenly, 2 + 1, over two processes.
    float64 and the regulariser over all rows, so that one process and two agree to rounding."""
    return nbody_recipe(
        "ddp",
        epochs=epochs,
        train=31,
        val=15,
        test=15,
        seed=5,
        trainer={"batch_size": 7, "dtype": "float64", "grad_clip": 1.0},
        relax={"theta": theta, "regularizer": {"rows": None}},
    )


def launch(args: list[str], cwd: Path, torchrun: bool = False) -> subprocess.CompletedProcess[str]:
    return run_relax(*args, cwd=cwd, command=TORCHRUN if torchrun else None, env={"OMP_NUM_THREADS": "1"})


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.safetensors").tensors


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)  # the model, the branches (γ) and the whole trainer state (Adam, λ, u)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-9, atol=1e-12), k
    ma, mb = metrics(a), metrics(b)
    assert [(r["kind"], r["step"]) for r in ma] == [(r["kind"], r["step"]) for r in mb]
    for ra, rb in zip(ma, mb):  # reduced over the processes: the global numbers, not rank 0's share
        for key in ("loss", "task", "reg", "penalty", "val_projected", "val_relaxed", "test_projected"):
            if ra.get(key) is not None:
                assert rb[key] == pytest.approx(ra[key], rel=1e-9), (ra["kind"], ra["step"], key)


def test_torchrun_two_processes_equal_one_process(tmp_path: Path, nbody_recipe: Callable[..., Path]) -> None:
    # ace_elastic: γ is a parameter inside DDP, the slack u and the duals λ live outside it
    path = recipe(nbody_recipe, epochs=3, theta={"schedule": "ace_elastic", "dual_lr": 0.05})
    launch(["train", str(path), "--run-dir", "single"], tmp_path)
    proc = launch(["train", str(path), "--run-dir", "ddp"], tmp_path, torchrun=True)
    assert proc.stdout.count("best epoch") == 2  # the summary is printed once, by rank 0 (+ the γ-kept line)
    assert_same_run(tmp_path / "single", tmp_path / "ddp")
    a, b = (read_json(tmp_path / d / "summary.json") for d in ("single", "ddp"))
    assert b["test_relaxed_kept"] == pytest.approx(a["test_relaxed_kept"], rel=1e-9)
    listing = lambda d: sorted(p.name for p in (tmp_path / d).iterdir())
    assert listing("ddp") == listing("single")


def test_nproc_kill_minus_nine_and_resume(tmp_path: Path, nbody_recipe: Callable[..., Path]) -> None:
    path = recipe(nbody_recipe, epochs=12, theta={"schedule": "triangle"})
    launch(["train", str(path), "--run-dir", "single"], tmp_path)

    env = {**os.environ, "RELAX_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*RELAX, "train", "--nproc", "2", str(path), "--run-dir", "killed"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    last = tmp_path / "killed" / "checkpoints" / "last.safetensors"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if last.exists() and int(load_checkpoint(last).metadata["epoch"]) >= 3:
                break
        except Exception:
            pass
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher, torchrun and both workers
    proc.wait()
    assert not (tmp_path / "killed" / "summary.json").exists()

    launch(["train", "--nproc", "2", "--resume", "killed"], tmp_path)
    assert_same_run(tmp_path / "single", tmp_path / "killed")
