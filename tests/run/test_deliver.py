"""``relax project`` through the real CLI on a deliberately non-equivariant model (the tiny SEGNN plus a learnable
constant shift): its check always tests something, always tests every case of the group, and never passes a model
that is not equivariant, whose weights are NaN, or whose options would make the check vacuous."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
import yaml
from conftest import nbody_recipe_data, run_relax

from relaxcli.run.checkpoint import save_checkpoint

#: The tiny SEGNN plus a constant shift of its output: translation-equivariant, but not under rotations or parity.
SHIFTED = """
import torch
from torch import nn

from relaxcli.tasks import SEGNN


class Shifted(nn.Module):
    def __init__(self, shift: float = 5.0, **kwargs):
        super().__init__()
        self.inner = SEGNN(**kwargs)
        self.shift = nn.Parameter(torch.full((3,), shift))

    def forward(self, pos, vel, charges):
        return self.inner(pos, vel, charges) + self.shift
"""
#: The stored recipe names a component of the test's own (trusted here).
TRUST = ["--trust-recipe"]
ALL_CASES = "rotation ×{n}, rotation+translation ×{n}, parity ×{n}, parity+translation ×{n} ({total} group elements"


@pytest.fixture(scope="module")
def shifted_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding ``shifted.py`` and a one-epoch standard run of it (``run/checkpoints/best.safetensors``)."""
    cwd = tmp_path_factory.mktemp("shifted")
    (cwd / "shifted.py").write_text(SHIFTED)
    model = {"_component_": "shifted.Shifted", "hidden_irreps": "4x0e+4x1o", "num_layers": 1}
    recipe = nbody_recipe_data("shifted", epochs=1, model=model, relax={"enabled": False})
    (cwd / "shifted.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    run_relax("train", "shifted.yaml", "--run-dir", "run", cwd=cwd)
    return cwd


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A checkpoint's tensors and metadata, read as plain safetensors (its recipe names the test's own module)."""
    with safetensors.safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    return safetensors.torch.load_file(str(path)), metadata


def _project(cwd: Path, ckpt: str | Path, *options: str, out: str = "out.safetensors") -> Any:
    return run_relax("project", ckpt, "-o", out, *TRUST, *options, cwd=cwd, check=False)


BEST = Path("run") / "checkpoints" / "best.safetensors"


@pytest.mark.parametrize("command", ["project", "inspect"])
def test_options_that_would_check_nothing_are_refused(shifted_run: Path, command: str) -> None:
    bad = [
        ("--trials", "0"),
        ("--trials", "-1"),
        ("--samples", "0"),
        ("--samples", "-2"),
        ("--tolerance", "nan"),
        ("--tolerance", "inf"),
        ("--tolerance", "0"),
        ("--tolerance", "-1e-5"),
    ]
    for option, value in bad:
        extra = ["-o", "out.safetensors"] if command == "project" else []
        proc = run_relax(command, BEST, *extra, *TRUST, option, value, cwd=shifted_run, check=False)
        assert proc.returncode == 2, (option, value, proc.stdout, proc.stderr)
        assert f"'{option}'" in proc.stderr and "Traceback" not in proc.stderr, (option, value, proc.stderr)
        assert "equivariant" not in proc.stdout
        assert not (shifted_run / "out.safetensors").exists()
        assert not list(shifted_run.glob("run/checkpoints/*.projected.*"))
    proc = run_relax("export", BEST, "--samples", "0", cwd=shifted_run, check=False)
    assert proc.returncode == 2 and "'--samples'" in proc.stderr


@pytest.mark.parametrize(
    "options",
    [
        [],
        ["--trials", "1"],
        ["--samples", "1"],
        ["--trials", "1", "--samples", "1"],
        ["--trials", "2", "--samples", "1000", "--tolerance", "1e-2"],
        ["--tolerance", "1e-12"],
    ],
    ids=lambda o: " ".join(o) or "defaults",
)
def test_a_non_equivariant_model_is_refused_at_every_allowed_setting(shifted_run: Path, options: list[str]) -> None:
    proc = _project(shifted_run, BEST, *options)
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert "not equivariant" in proc.stderr and "Traceback" not in proc.stderr
    trials = int(options[options.index("--trials") + 1]) if "--trials" in options else 3
    # every case of the group was tried, with the number of elements and samples said
    assert ALL_CASES.format(n=trials, total=4 * trials) in proc.stderr, proc.stderr
    samples = min(int(options[options.index("--samples") + 1]) if "--samples" in options else 16, 20)  # val: 20
    assert f"{4 * trials} group elements, {samples} sample" in proc.stderr
    assert not (shifted_run / "out.safetensors").exists()


def test_the_printed_line_says_what_was_tested(shifted_run: Path) -> None:
    """With the shift set to zero the same model is equivariant: it passes, and says which cases on how much."""
    tensors, metadata = _read(shifted_run / BEST)
    tensors = {k: (torch.zeros_like(v) if k.endswith("shift") else v) for k, v in tensors.items()}
    assert any(k.endswith("shift") for k in tensors)
    save_checkpoint(shifted_run / "zero.safetensors", tensors, metadata)  # a fresh content hash
    proc = _project(
        shifted_run, "zero.safetensors", "--trials", "2", "--samples", "5", out="zero.projected.safetensors"
    )
    assert proc.returncode == 0, proc.stderr
    assert "projected model is equivariant" in proc.stdout
    assert "tested " + ALL_CASES.format(n=2, total=8) + ", 5 samples, in float64)" in proc.stdout, proc.stdout
    stored = json.loads(_read(shifted_run / "zero.projected.safetensors")[1]["equivariance"])
    assert stored["elements"] == {"rotation": 2, "rotation+translation": 2, "parity": 2, "parity+translation": 2}
    assert stored["samples"] == 5
    report = json.loads(
        run_relax("inspect", "zero.projected.safetensors", *TRUST, "--json", "--trials", "1", cwd=shifted_run).stdout
    )
    assert report["equivariance"]["projected"]["elements"]["parity"] == 1


def test_nan_weights_never_pass(shifted_run: Path) -> None:
    tensors, metadata = _read(shifted_run / BEST)
    tensors = {k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v) for k, v in tensors.items()}
    save_checkpoint(shifted_run / "nan.safetensors", tensors, metadata)
    for options in ([], ["--tolerance", "1e300"], ["--trials", "1", "--samples", "1"]):
        proc = _project(shifted_run, "nan.safetensors", *options)
        assert proc.returncode == 3, (options, proc.stdout, proc.stderr)
        assert "NaN" in proc.stderr and "Traceback" not in proc.stderr
        assert not (shifted_run / "out.safetensors").exists()
    proc = run_relax("inspect", "nan.safetensors", *TRUST, "--tolerance", "1e300", cwd=shifted_run, check=False)
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert "not finite" in proc.stderr
