"""Fixtures shared by the test suite: a real ``relax`` process, and tiny N-body recipes to run it on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

#: The ``relax`` command, as a fresh interpreter (the installed entry point runs the same ``main``).
RELAX = [sys.executable, "-m", "relaxcli"]
#: ``torchrun`` with two CPU processes.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "relaxcli"]
#: A one-layer SEGNN and the N-body task's symmetry: the smallest real model the CLI tests train.
TINY_SEGNN = {"_component_": "relaxcli.tasks.SEGNN", "hidden_irreps": "4x0e+4x1o", "num_layers": 1}
NBODY_SYMMETRY = {"inputs": ["cartesian_points", "1x1o", None], "output": "cartesian_points"}

RunRelax = Callable[..., "subprocess.CompletedProcess[str]"]


def run_relax(
    *args: str | Path,
    cwd: Path,
    check: bool = True,
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run ``relax ARGS`` (or ``command ARGS``) in ``cwd`` with its data cache there; fail the test with the output
    when ``check`` and the exit code is not 0."""
    full_env = {**os.environ, "RELAX_CACHE": str(cwd / "cache"), **(env or {})}
    proc = subprocess.run(
        [*(command or RELAX), *map(str, args)], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"relax {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _no_constant(name: str) -> Any:
    raise ValueError(f"not strict JSON: {name}")


def strict_loads(text: str) -> Any:
    """``json.loads`` that refuses ``NaN``, ``Infinity`` and ``-Infinity`` (which Python's parser accepts by default,
    but JSON does not have)."""
    return json.loads(text, parse_constant=_no_constant)


def read_json(path: Path) -> Any:
    """A JSON file the tool wrote (e.g. ``summary.json``), parsed strictly (see :func:`strict_loads`)."""
    return strict_loads(Path(path).read_text(encoding="utf-8"))


def read_jsonl(path: Path) -> list[Any]:
    """Every line of a JSON-lines file (``metrics.jsonl``), parsed strictly."""
    return [strict_loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture
def relax_cli() -> RunRelax:
    """``relax_cli("train", recipe, cwd=tmp_path)``: a real ``relax`` process (see :func:`run_relax`)."""
    return run_relax


def nbody_recipe_data(
    name: str = "tiny",
    epochs: int = 4,
    train: int = 40,
    val: int = 20,
    test: int = 20,
    model: dict[str, Any] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """A tiny N-body recipe as a dict; ``sections`` replace or extend its sections (``relax={...}``,
    ``trainer={...}`` are merged into the defaults)."""
    data: dict[str, Any] = {
        "name": name,
        "seed": 3,
        "model": model or TINY_SEGNN,
        "data": {"_component_": "relaxcli.tasks.NBodyData", "train": train, "val": val, "test": test, "seed": 1},
        "optimizer": {"_component_": "torch.optim.Adam", "lr": 3e-3},
        "trainer": {"epochs": epochs, "batch_size": 10, "log_every": 2, "device": "cpu"},
        "symmetry": NBODY_SYMMETRY,
        "relax": {"theta": {"schedule": "constant"}, "branch": {"init_std": 0.01}},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict) and key not in ("model", "data"):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


@pytest.fixture
def nbody_recipe(tmp_path: Path) -> Callable[..., Path]:
    """``nbody_recipe(name="tiny", epochs=4, train=40, relax={...}, ...)``: a tiny N-body recipe written to
    ``tmp_path/<name>.yaml`` (see :func:`nbody_recipe_data`)."""

    def write(name: str = "tiny", **kwargs: Any) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(nbody_recipe_data(name, **kwargs), sort_keys=False))
        return path

    return write
