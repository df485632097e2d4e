"""Every output goes through a temporary file and a rename (``.pt2`` included, checked with kill -9 during a real
``relax export``), no command writes over its own input, and every JSON the tool writes is strict."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import RELAX, read_json, read_jsonl, strict_loads

from relaxcli.errors import RelaxError
from relaxcli.run.checkpoint import flatten_state, load_checkpoint, save_checkpoint, unflatten_state
from relaxcli.run.files import atomic_path, atomic_write, check_not_input, same_file
from relaxcli.run.runlog import MetricsLog, strict_json


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    atomic_write(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_no_output_may_be_an_input(tmp_path: Path) -> None:
    ckpt = tmp_path / "best.safetensors"
    ckpt.write_bytes(b"x")
    (tmp_path / "alias.safetensors").symlink_to(ckpt)
    assert same_file(tmp_path / "alias.safetensors", ckpt) and same_file(tmp_path / "." / "new", tmp_path / "new")
    with pytest.raises(RelaxError, match=r"-o .*alias.safetensors is the checkpoint being read"):
        check_not_input(tmp_path / "alias.safetensors", {"the checkpoint being read": ckpt}, "-o")
    check_not_input(tmp_path / "other.pt2", {"the checkpoint being read": ckpt, "unused": None}, "-o")


def test_json_is_strict_with_a_reason_beside_each_null(tmp_path: Path) -> None:
    text = strict_json({"val": float("nan"), "sites": {"a.b": {"lie": float("-inf")}}, "steps": [1.0, float("inf")]})
    assert strict_loads(text) == {
        "val": None,
        "sites": {"a.b": {"lie": None}},
        "steps": [1.0, None],
        "null_reasons": {"val": "not finite: nan", "sites/a.b/lie": "not finite: -inf", "steps/1": "not finite: inf"},
    }
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append({"kind": "eval", "step": 1, "val_projected": float("nan")})
    line = strict_loads((tmp_path / "metrics.jsonl").read_text())
    assert line["val_projected"] is None and line["null_reasons"] == {"val_projected": "not finite: nan"}

    # checkpoint metadata: strict, and a trainer state's inf (an unset best loss) comes back exactly
    tensors, skeleton = flatten_state({"best_val": math.inf, "lr": [1e-3, -math.inf]}, "state")
    save_checkpoint(
        tmp_path / "c.safetensors",
        {"w": torch.zeros(2)},
        {"format": "relaxcli/projected/1", "trainer_state": skeleton, "theta": float("nan")},
    )
    ckpt = load_checkpoint(tmp_path / "c.safetensors")
    for key in ("trainer_state", "theta", "null_reasons"):
        strict_loads(ckpt.metadata[key])
    assert unflatten_state(ckpt.json("trainer_state"), tensors) == {"best_val": math.inf, "lr": [1e-3, -math.inf]}
    assert ckpt.json("theta") is None and ckpt.json("null_reasons") == {"theta": "not finite: nan"}


def _temps(folder: Path, name: str) -> list[Path]:
    """Temporary files of an atomic write of ``name`` (the inner one of torch.export.save starts with '..')."""
    return [p for p in folder.iterdir() if name in p.name and p.name.endswith(".tmp")]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # renamed just now
        return 0


def _export_and_kill(tmp_path: Path, ckpt: Path, out: Path, moment: str) -> str:
    """Start ``relax export ckpt -o out --overwrite`` and kill -9 it at ``moment``: "start" (its temporary file was
    just made), "write" (torch.export.save is writing) or "check" (the program is written and being checked).
    Returns the moment it was actually killed at ("end" if it finished first)."""
    env = {**os.environ, "RELAX_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*RELAX, "export", str(ckpt), "-o", str(out), "--overwrite"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stale = set(_temps(out.parent, out.name))  # left by the trials before (a kill leaves its temporary file)
    seen, deadline = "none", time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        temps = [p for p in _temps(out.parent, out.name) if p not in stale]
        inner = [p for p in temps if p.name.startswith("..")]
        seen = "write" if inner else "check" if any(_size(p) for p in temps) else "start" if temps else "none"
        if seen == moment:
            break
        time.sleep(0.002)
    if proc.poll() is not None:
        return "end"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return seen


def test_kill_minus_nine_during_export_leaves_the_old_program_or_none(
    tmp_path: Path, relax_cli: Callable[..., Any], nbody_recipe: Callable[..., Path]
) -> None:
    relax_cli("train", nbody_recipe(epochs=1), "--run-dir", "run", cwd=tmp_path)
    _check_strict_json(tmp_path / "run", relax_cli)
    best = tmp_path / "run" / "checkpoints" / "best.safetensors"
    relax_cli("project", best, "-o", "projected.safetensors", cwd=tmp_path)
    projected = tmp_path / "projected.safetensors"

    # export (like project) refuses to write over the checkpoint it reads, --overwrite or not
    before = projected.read_bytes()
    proc = relax_cli("export", projected, "-o", projected, "--overwrite", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "is the checkpoint being exported" in proc.stderr
    assert projected.read_bytes() == before

    out = tmp_path / "model.pt2"
    assert _export_and_kill(tmp_path, projected, out, "write") != "end"
    assert not out.exists()  # no file rather than a 0-byte or half-written one

    relax_cli("export", projected, "-o", out, cwd=tmp_path)
    old = out.read_bytes()
    moments = [_export_and_kill(tmp_path, projected, out, moment) for moment in ("start", "write", "check")]
    assert "end" not in moments, moments
    assert out.read_bytes() == old, moments  # the good file is still there, whole
    program = torch.export.load(out)  # and loads
    assert program.module() is not None


def _check_strict_json(run: Path, relax_cli: Callable[..., Any]) -> None:
    """Everything JSON of a finished run parses strictly: summary, metrics lines, checkpoint metadata, inspect."""
    summary = read_json(run / "summary.json")
    assert math.isfinite(summary["test_projected"]) and "null_reasons" not in summary
    read_jsonl(run / "metrics.jsonl")
    meta = load_checkpoint(run / "checkpoints" / "last.safetensors").metadata
    state = strict_loads(meta["trainer_state"])  # best_relaxed_val is inf in a run without ace_elastic
    assert {"__float__": "inf"} in [v for _, v in state["__dict__"]]
    report = relax_cli("inspect", run / "checkpoints" / "best.safetensors", "--json", cwd=run.parent)
    assert strict_loads(report.stdout)["kind"] == "relaxed"
