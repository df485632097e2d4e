"""Symmetry mistakes are caught before training: ``--dry-run`` and the start of ``relax train`` check the recipe's
symmetry section against the model and the data, and check that the model is equivariant before relaxation."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

CENTRED = '''
from relaxcli.tasks import SEGNN


class Centred(SEGNN):
    """The published SEGNN's bug: each particle centred on the mean of its own x, y and z."""

    def forward(self, pos, vel, q):
        return super().forward(pos - pos.mean(-1, keepdim=True), vel, q)
'''


def _line(path: Path, key: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if line.startswith(key))


@pytest.mark.parametrize(
    ("symmetry", "key", "words"),
    [
        (
            {"inputs": ["cartesian_points", "4x0e+3x1o", None], "output": "cartesian_points"},
            "symmetry.inputs[1]",
            "acts on a last axis of size 13",
        ),
        ({"inputs": ["cartesian_points", "1x1o", None, "1x0e"], "output": "cartesian_points"}, "symmetry", "inputs"),
        ({"inputs": ["cartesian_points", "1x1o", None], "output": "2x1o"}, "symmetry.output", "size 6"),
        (None, "symmetry", "missing section"),
    ],
)
def test_dry_run_rejects_symmetry_mistakes_with_the_key_and_line(
    tmp_path: Path,
    relax_cli: Callable[..., Any],
    nbody_recipe: Callable[..., Path],
    symmetry: Any,
    key: str,
    words: str,
) -> None:
    path = nbody_recipe(epochs=1)
    data = yaml.safe_load(path.read_text())
    if symmetry is None:
        del data["symmetry"]
    else:
        data["symmetry"] = symmetry
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    for args in (["--dry-run"], ["--run-dir", "run"]):
        proc = relax_cli("train", path, *args, cwd=tmp_path, check=False)
        assert proc.returncode == 2, proc.stderr
        assert key in proc.stderr and words in proc.stderr and "Traceback" not in proc.stderr
        if symmetry is not None:  # the line of the key, within the symmetry section
            line = int(re.search(rf"{path.name}:(\d+): ", proc.stderr).group(1))  # type: ignore[union-attr]
            assert line >= _line(path, "symmetry"), proc.stderr
        assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_model_that_is_not_equivariant_before_relaxation_is_reported_at_once(
    tmp_path: Path, relax_cli: Callable[..., Any], nbody_recipe: Callable[..., Path]
) -> None:
    (tmp_path / "centred.py").write_text(CENTRED)
    path = nbody_recipe(
        model={"_component_": "centred.Centred", "hidden_irreps": "4x0e+4x1o", "num_layers": 1},
        trainer={"dtype": "float64"},
    )
    for args in (["--dry-run"], ["--run-dir", "run"]):
        proc = relax_cli("train", path, *args, cwd=tmp_path, check=False)
        assert proc.returncode == 3, proc.stderr
        assert "not equivariant before relaxation" in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_standard_run_of_a_model_that_is_not_equivariant_is_warned(
    tmp_path: Path, relax_cli: Callable[..., Any], nbody_recipe: Callable[..., Path]
) -> None:
    (tmp_path / "centred.py").write_text(CENTRED)  # a non-equivariant baseline is a legitimate standard run
    model = {"_component_": "centred.Centred", "hidden_irreps": "4x0e+4x1o", "num_layers": 1}
    path = nbody_recipe(model=model, relax={"enabled": False}, trainer={"dtype": "float64"})
    proc = relax_cli("train", path, "--dry-run", cwd=tmp_path)
    assert "warning: the model is not equivariant before relaxation" in proc.stderr
