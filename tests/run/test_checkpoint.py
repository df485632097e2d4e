"""Checkpoints of the previous release (0.1.0, committed under tests/fixtures/run-0.1.0: a relaxed N-body run whose
recipe names relaxcli.models.SEGNN and relaxcli.data.NBodyData) still project, inspect and resume."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from conftest import read_json

from relaxcli.run.checkpoint import load_checkpoint
from relaxcli.tasks import SEGNN
from relaxcli.testing import assert_equivariant

LEGACY = Path(__file__).parent.parent / "fixtures" / "run-0.1.0"


def test_a_previous_release_checkpoint_projects_inspects_and_resumes(
    tmp_path: Path, relax_cli: Callable[..., Any]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(LEGACY, run)
    stored = json.loads(load_checkpoint(run / "checkpoints" / "best.safetensors").metadata["recipe"])
    assert stored["model"]["_component_"] == "relaxcli.models.SEGNN"  # the old path, as written then

    proc = relax_cli("project", run / "checkpoints" / "best.safetensors", "-o", "projected.safetensors", cwd=tmp_path)
    assert "projected model is equivariant" in proc.stdout
    with torch.device("cpu"):
        model = SEGNN("4x0e+4x1o", num_layers=1).double()
    model.load_state_dict(safetensors.torch.load_file(tmp_path / "projected.safetensors"), strict=True)
    g = torch.Generator().manual_seed(0)
    inputs = (
        torch.randn(2, 5, 3, generator=g, dtype=torch.float64),
        torch.randn(2, 5, 3, generator=g, dtype=torch.float64),
        torch.ones(2, 5, 1, dtype=torch.float64),
    )
    assert_equivariant(model, inputs, ["cartesian_points", "1o", None], "cartesian_points", tolerance=1e-10)

    report = json.loads(relax_cli("inspect", run / "checkpoints" / "best.safetensors", "--json", cwd=tmp_path).stdout)
    assert report["model"] == "relaxcli.tasks.SEGNN" and len(report["sites"]) == 7
    assert report["equivariance"]["projected"]["relative"] < 1e-10

    proc = relax_cli("train", "--resume", run, cwd=tmp_path)  # the fixture's recipe.yaml asks for one more epoch
    assert "resuming" in proc.stderr and "best epoch" in proc.stdout
    summary = read_json(run / "summary.json")
    assert summary["steps"] == 6 and summary["name"] == "legacy"
    last = load_checkpoint(run / "checkpoints" / "last.safetensors")
    assert (
        last.json("epoch") == 3
        and json.loads(last.metadata["recipe"])["model"]["_component_"] == "relaxcli.tasks.SEGNN"
    )
