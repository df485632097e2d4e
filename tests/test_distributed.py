"""Data-parallel training with real torchrun processes (gloo on CPU): the same weights as one process on the same
global batches, and kill -9 / resume under torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from relaxcli.run.checkpoint import load_checkpoint

RELAX = [sys.executable, "-m", "relaxcli"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "relaxcli"]


def recipe(tmp: Path, epochs: int, theta: dict) -> Path:
    """31 training systems in global batches of 7: the last batch (3) splits unevenly, 2 + 1, over two processes.
    float64 and the regulariser over all rows, so that one process and two agree to rounding."""
    data = {
        "name": "ddp",
        "seed": 5,
        "model": {"_component_": "relaxcli.tasks.SEGNN", "hidden_irreps": "4x0e+4x1o", "num_layers": 1},
        "data": {"_component_": "relaxcli.tasks.NBodyData", "train": 31, "val": 15, "test": 15, "seed": 1},
        "optimizer": {"_component_": "torch.optim.Adam", "lr": 3e-3},
        "trainer": {"epochs": epochs, "batch_size": 7, "log_every": 2, "device": "cpu", "dtype": "float64",
                    "grad_clip": 1.0},
        "symmetry": {"inputs": ["cartesian_points", "1x1o", None], "output": "cartesian_points"},
        "relax": {"theta": theta, "branch": {"init_std": 0.01}, "regularizer": {"rows": None}},
    }
    path = tmp / "ddp.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def launch(cmd: list[str], cwd: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RELAX_CACHE": str(cwd / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kw)  # type: ignore
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


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


def test_torchrun_two_processes_equal_one_process(tmp_path: Path) -> None:
    # ace_elastic: γ is a parameter inside DDP, the slack u and the duals λ live outside it
    path = recipe(tmp_path, epochs=3, theta={"schedule": "ace_elastic", "dual_lr": 0.05})
    launch([*RELAX, "train", str(path), "--run-dir", "single"], tmp_path)
    proc = launch([*TORCHRUN, "train", str(path), "--run-dir", "ddp"], tmp_path)
    assert proc.stdout.count("best epoch") == 2  # the summary is printed once, by rank 0 (+ the γ-kept line)
    assert_same_run(tmp_path / "single", tmp_path / "ddp")
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("single", "ddp"))
    assert b["test_relaxed_kept"] == pytest.approx(a["test_relaxed_kept"], rel=1e-9)
    listing = lambda d: sorted(p.name for p in (tmp_path / d).iterdir())  # noqa: E731
    assert listing("ddp") == listing("single")


def test_nproc_kill_minus_nine_and_resume(tmp_path: Path) -> None:
    path = recipe(tmp_path, epochs=12, theta={"schedule": "triangle"})
    launch([*RELAX, "train", str(path), "--run-dir", "single"], tmp_path)

    env = {**os.environ, "RELAX_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*RELAX, "train", "--nproc", "2", str(path), "--run-dir", "killed"], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
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

    launch([*RELAX, "train", "--nproc", "2", "--resume", "killed"], tmp_path)
    assert_same_run(tmp_path / "single", tmp_path / "killed")
