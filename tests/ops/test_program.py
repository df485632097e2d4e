"""Models held as ``torch.export`` programs (``.pt2``): relaxed, trained and projected through the real CLI without
the model's source, and ``relax export`` of a projected checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import e3nn.util.test
import safetensors.torch
import torch
from e3nn import o3

import relaxcli
from relaxcli.tasks import SEGNN

HIDDEN = "4x0e+4x1o"


def write_recipe(nbody_recipe: Callable[..., Path], model: dict[str, Any]) -> Path:
    # a short last batch (30 = 4 x 7 + 2): the batch dimension of the program is symbolic
    return nbody_recipe(
        "program", epochs=2, train=30, val=16, test=16, model=model, trainer={"batch_size": 7, "log_every": 10}
    )


def inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 5, 3, generator=g),
        torch.randn(batch, 5, 3, generator=g),
        torch.randn(batch, 5, 1, generator=g).sign(),
    )


def assert_equivariant(fn) -> None:  # type: ignore[no-untyped-def]
    e3nn.util.test.assert_equivariant(
        fn,
        irreps_in=["cartesian_points", o3.Irreps("1x1o"), None],
        irreps_out=["cartesian_points"],
        args_in=list(inputs(3, seed=7)),
    )


def test_pt2_model_trained_and_projected_without_source(
    tmp_path: Path, relax_cli: Callable[..., Any], nbody_recipe: Callable[..., Path]
) -> None:
    torch.manual_seed(0)
    source = SEGNN(hidden_irreps=HIDDEN, num_layers=1)
    relaxcli.export_program(source, inputs(4), tmp_path / "segnn.pt2")
    recipe = write_recipe(nbody_recipe, {"_component_": "relaxcli.ops.program.load_program", "path": "segnn.pt2"})

    proc = relax_cli("train", recipe, "--run-dir", "run", cwd=tmp_path)
    assert "relaxed 7 sites" in proc.stderr  # the sites recorded in the .pt2, found by path in the program
    best = tmp_path / "run" / "checkpoints" / "best.safetensors"
    # the stored recipe names a .pt2, which torch.export.load can run code from: reading it takes --trust-recipe
    refused = relax_cli("project", best, cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "relaxcli.ops.program.load_program" in refused.stderr
    proc = relax_cli("project", best, "--trust-recipe", cwd=tmp_path)
    assert "projected model is equivariant" in proc.stdout and "best.projected.pt2" in proc.stdout

    # the projected weights carry the original parameter names: they load strictly into the user's class
    state = safetensors.torch.load_file(tmp_path / "run" / "checkpoints" / "best.projected.safetensors")
    model = SEGNN(hidden_irreps=HIDDEN, num_layers=1)
    model.load_state_dict(state, strict=True)
    assert not torch.equal(state["embed.weight"], source.state_dict()["embed.weight"])  # it was trained
    # and the projected program computes exactly what the original architecture computes with them
    program = torch.export.load(tmp_path / "run" / "checkpoints" / "best.projected.pt2").module()
    x = inputs(9, seed=3)  # another batch size than at export
    torch.testing.assert_close(program(*x), model(*x), rtol=0, atol=1e-6)
    assert_equivariant(program)

    # a second projection does not overwrite the program silently
    again = relax_cli("project", best, "--trust-recipe", cwd=tmp_path, check=False)
    assert again.returncode == 1 and "already exists" in again.stderr


def test_export_projected_checkpoint_of_a_source_model(
    tmp_path: Path, relax_cli: Callable[..., Any], nbody_recipe: Callable[..., Path]
) -> None:
    recipe = write_recipe(
        nbody_recipe, {"_component_": "relaxcli.tasks.SEGNN", "hidden_irreps": HIDDEN, "num_layers": 1}
    )
    relax_cli("train", recipe, "--run-dir", "run", cwd=tmp_path)
    best = tmp_path / "run" / "checkpoints" / "best.safetensors"
    refused = relax_cli("export", best, cwd=tmp_path, check=False)
    assert "project it first" in refused.stderr and "Traceback" not in refused.stderr
    relax_cli("project", best, "-o", "p.safetensors", cwd=tmp_path)
    assert "already a projected checkpoint" in relax_cli("project", "p.safetensors", cwd=tmp_path, check=False).stderr
    relax_cli("export", "p.safetensors", "-o", "p.pt2", cwd=tmp_path)

    model = SEGNN(hidden_irreps=HIDDEN, num_layers=1)
    model.load_state_dict(safetensors.torch.load_file(tmp_path / "p.safetensors"), strict=True)
    program = torch.export.load(tmp_path / "p.pt2").module()
    x = inputs(6, seed=5)
    torch.testing.assert_close(program(*x), model(*x), rtol=0, atol=1e-6)
    assert_equivariant(program)
    # the exported program records its sites, so it can be relaxed again without the source
    relaxed = relaxcli.relax(relaxcli.load_program(str(tmp_path / "p.pt2")))
    assert relaxed.mode == "hooks" and [s.path for s in relaxed.sites] == [s.path for s in relaxcli.relax(model).sites]
