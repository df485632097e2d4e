"""The atomistic task end to end: graph batches of dicts, forces by autograd inside ``forward``, the dict-keyed
symmetry spec, the energy + forces loss, and sites that cannot break equivariance."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from e3nn import o3
from e3nn.util.test import assert_equivariant as e3nn_assert_equivariant
from safetensors.torch import load_file

import relaxcli
from relaxcli.atoms import EnergyForcesLoss, GraphCollate
from relaxcli.core.reps import default_dtype
from relaxcli.errors import RelaxError
from relaxcli.tasks.atoms import AtomsData, Potential
from relaxcli.testing import equivariance_error

pytest.importorskip("ase")

RECIPES = Path(relaxcli.__file__).parent / "recipes"
INPUTS_SPEC = {"positions": "cartesian_points", "shifts": "1x1o", "cell": "1x1o"}
OUTPUT_SPEC = {"energy": "0e", "forces": "1x1o"}


@pytest.fixture(scope="module")
def data64(tmp_path_factory: pytest.TempPathFactory) -> AtomsData:
    with default_dtype(torch.float64):
        return AtomsData(train=6, val=4, test=4, elements=["Cu", "Au"], cache_dir=tmp_path_factory.mktemp("cache"))


def tiny_recipe(tmp_path: Path, relaxed: bool = True, **changes: Any) -> Path:
    """The shipped atomistic recipe, made tiny (a few steps on a few structures)."""
    data = yaml.safe_load((RECIPES / ("atoms_relaxed.yaml" if relaxed else "atoms_standard.yaml")).read_text())
    data["data"].update(train=20, val=8, test=8)
    data["model"].update(hidden_irreps="8x0e+4x1o+4x1e")
    data["trainer"].update(epochs=1, batch_size=10, eval_batch_size=8)
    for key, value in changes.items():
        section, name = key.split(".")
        data[section][name] = value
    path = tmp_path / "atoms.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# -- graph batches, loss -------------------------------------------------------------------------------------------


def test_graph_collate_offsets_edges_and_builds_batch_and_ptr(data64: AtomsData) -> None:
    items = [data64.train[i] for i in range(3)]
    inputs, target = GraphCollate()(items)
    counts = [int(item[0]["positions"].shape[0]) for item in items]
    edges = [int(item[0]["edge_index"].shape[1]) for item in items]
    assert inputs["positions"].shape == (sum(counts), 3)
    assert inputs["ptr"].tolist() == [0, counts[0], counts[0] + counts[1], sum(counts)]
    assert inputs["batch"].tolist() == [i for i, n in enumerate(counts) for _ in range(n)]
    assert inputs["edge_index"].shape == (2, sum(edges)) and inputs["shifts"].shape == (sum(edges), 3)
    second = inputs["edge_index"][:, edges[0] : edges[0] + edges[1]]
    assert torch.equal(second, items[1][0]["edge_index"] + counts[0])  # offset by the first structure's nodes
    assert inputs["cell"].shape == (3, 3, 3) and inputs["pbc"].shape == (3, 3)  # graph keys are stacked
    assert target["energy"].shape == (3,) and target["forces"].shape == (sum(counts), 3)
    assert target["natoms"].tolist() == counts


def test_graph_collate_says_what_an_item_must_be() -> None:
    with pytest.raises(ValueError, match="no 'positions' tensor to count its nodes by"):
        GraphCollate()([({"x": torch.zeros(3)}, torch.zeros(()))])
    with pytest.raises(ValueError, match="every structure needs the same keys"):
        GraphCollate()([({"positions": torch.zeros(2, 3)}, 0.0), ({"positions": torch.zeros(2, 3), "a": 1}, 0.0)])
    with pytest.raises(ValueError, match="must be a pair"):
        GraphCollate()([torch.zeros(3)])


def test_energy_forces_loss_weights_terms_per_atom_and_huber() -> None:
    out = {"energy": torch.tensor([2.0, 0.0]), "forces": torch.ones(5, 3)}
    target = {"energy": torch.tensor([0.0, 0.0]), "forces": torch.zeros(5, 3), "natoms": torch.tensor([2, 3])}
    loss = EnergyForcesLoss(energy_weight=1.0, forces_weight=10.0)
    assert float(loss(out, target)) == pytest.approx(((2.0 / 2) ** 2 + 0) / 2 + 10.0)
    total = EnergyForcesLoss(energy_weight=1.0, forces_weight=0.0, per_atom=False)
    assert float(total(out, target)) == pytest.approx(2.0)
    huber = EnergyForcesLoss(energy_weight=0.0, forces_weight=1.0, kind="huber", delta=0.5)
    assert float(huber(out, target)) == pytest.approx(0.5 * (1.0 - 0.5 * 0.5))
    with pytest.raises(ValueError, match="has no 'forces' entry"):
        loss({"energy": out["energy"]}, target)


# -- data and model --------------------------------------------------------------------------------------------------


def test_emt_data_is_symmetric_cached_and_split_apart(tmp_path: Path) -> None:
    first = AtomsData(train=5, val=3, test=3, cache_dir=tmp_path)
    again = AtomsData(train=5, val=3, test=3, cache_dir=tmp_path)
    assert first.sources == {"train": "generated", "val": "generated", "test": "generated"}
    assert again.sources == {"train": "cache", "val": "cache", "test": "cache"}
    assert torch.equal(first.train.forces, again.train.forces)
    assert not torch.equal(first.train.positions[:3], first.val.positions)  # each split has its own stream
    # EMT forces sum to zero (translation invariance of the energy) on every structure
    assert first.train.forces.sum(dim=1).abs().max() < 1e-4
    from ase import Atoms
    from ase.calculators.emt import EMT

    pos = first.train.positions[0].double().numpy()
    rot = o3.rand_matrix(dtype=torch.float64).numpy()
    atoms = Atoms(numbers=first.train.numbers[0].numpy(), positions=pos @ rot.T)
    atoms.calc = EMT()
    assert torch.allclose(
        torch.as_tensor(atoms.get_forces()), first.train.forces[0].double() @ torch.as_tensor(rot).T, atol=1e-4
    )


def test_potential_is_e3_equivariant_in_float64_by_e3nn_and_by_the_dict_spec(data64: AtomsData) -> None:
    with default_dtype(torch.float64):
        model = Potential(num_species=2).eval()
    inputs, _ = GraphCollate()([data64.train[i] for i in range(3)])

    def forces(pos: torch.Tensor) -> torch.Tensor:
        return model({**inputs, "positions": pos})["forces"]

    def energy(pos: torch.Tensor) -> torch.Tensor:
        return model({**inputs, "positions": pos})["energy"][:, None]

    e3nn_assert_equivariant(forces, args_in=[inputs["positions"]], irreps_in=["cartesian_points"], irreps_out="1x1o")
    e3nn_assert_equivariant(energy, args_in=[inputs["positions"]], irreps_in=["cartesian_points"], irreps_out="0e")
    report = equivariance_error(model, (inputs,), [INPUTS_SPEC], OUTPUT_SPEC)
    assert report.relative < 1e-12, report
    assert set(report.cases) == {"rotation", "rotation+translation", "parity", "parity+translation"}


def test_scalar_sites_are_skipped_with_the_reason_and_kept_on_request() -> None:
    relaxed = relaxcli.relax(Potential())
    assert {p for p, _ in relaxed.skipped} == {"embed", "energy"}
    assert all("invariants to invariants" in reason for _, reason in relaxed.skipped)
    assert {s.path for s in relaxed.sites} >= {"layers.0.linear", "layers.1.self_interaction", "readout"}
    assert "embed" not in {s.path for s in relaxed.sites}
    kept = relaxcli.relax(Potential(), scalar_sites=True)
    assert {"embed", "energy"} <= {s.path for s in kept.sites} and not kept.skipped
    scalars_only = torch.nn.Sequential(o3.Linear("4x0e", "2x0e"))
    with pytest.raises(RelaxError, match="maps invariants to invariants"):
        relaxcli.relax(scalars_only)


def test_linear_and_tensor_product_with_external_weights_are_not_sites() -> None:
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.external = o3.Linear("2x0e+1x1o", "2x0e+1x1o", internal_weights=False, shared_weights=False)
            self.tp = o3.FullyConnectedTensorProduct("1x1o", "1x1o", "1x0e", internal_weights=False)
            self.internal = o3.Linear("2x0e+1x1o", "1x1o")

    assert [s.path for s in relaxcli.relax(Net()).sites] == ["internal"]


def test_relaxed_potential_is_exact_at_zero_branch_and_broken_by_random_branches(data64: AtomsData) -> None:
    with default_dtype(torch.float64):
        model = Potential(num_species=2).eval()
    inputs, _ = GraphCollate()([data64.train[i] for i in range(2)])
    reference = model(inputs)
    relaxed = relaxcli.relax(model, init_std=0.0)
    relaxed.set_theta(1.0)
    same = relaxed(inputs)
    assert torch.equal(same["energy"], reference["energy"]) and torch.equal(same["forces"], reference["forces"])
    with torch.no_grad():
        for s in relaxed.sites:
            s.branch.weight.normal_(0, 0.3)
    broken = equivariance_error(relaxed, (inputs,), [INPUTS_SPEC], OUTPUT_SPEC)
    assert broken.relative > 1e-3
    with relaxed.projected():
        assert equivariance_error(relaxed, (inputs,), [INPUTS_SPEC], OUTPUT_SPEC).relative < 1e-12


# -- through the CLI -------------------------------------------------------------------------------------------------


def test_dry_run_of_a_model_that_takes_gradients_in_forward(tmp_path: Path, relax_cli: Callable[..., Any]) -> None:
    proc = relax_cli("train", tiny_recipe(tmp_path), "--dry-run", cwd=tmp_path)
    assert "one training step ok" in proc.stdout
    assert "skipped 2 sites (embed, energy)" in proc.stdout and "relax.scalar_sites: true" in proc.stdout
    assert "layers.0.linear" in proc.stdout


def test_train_project_inspect_a_potential_through_the_cli(tmp_path: Path, relax_cli: Callable[..., Any]) -> None:
    recipe = tiny_recipe(tmp_path)
    relax_cli("train", recipe, "--run-dir", "run", cwd=tmp_path)
    summary = yaml.safe_load((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_projected_energy_mae"] >= 0 and summary["test_projected_forces_mae"] >= 0
    proc = relax_cli("project", "run/checkpoints/best.safetensors", "-o", "potential.safetensors", cwd=tmp_path)
    assert "projected model is equivariant" in proc.stdout + proc.stderr
    inspected = relax_cli("inspect", "potential.safetensors", "--json", cwd=tmp_path)
    report = yaml.safe_load(inspected.stdout)
    assert report["equivariance"]["projected"]["relative"] < 1e-5

    # the projected file loads strictly into the user's class; in float64 it is equivariant to 1e-12
    with default_dtype(torch.float64):
        model = Potential(num_species=1, hidden_irreps="8x0e+4x1o+4x1e")
        data = AtomsData(train=4, val=2, test=2, cache_dir=tmp_path / "cache")
    state = load_file(tmp_path / "potential.safetensors")
    model.load_state_dict({k: v.double() for k, v in state.items()}, strict=True)
    inputs, _ = GraphCollate()([data.test[i] for i in range(2)])
    assert equivariance_error(model.eval(), (inputs,), [INPUTS_SPEC], OUTPUT_SPEC).relative < 1e-12
    float32 = Potential(num_species=1, hidden_irreps="8x0e+4x1o+4x1e")
    float32.load_state_dict(state, strict=True)
    inputs32 = {k: v.float() if v.is_floating_point() else v for k, v in inputs.items()}
    assert equivariance_error(float32.eval(), (inputs32,), [INPUTS_SPEC], OUTPUT_SPEC).relative < 1e-5


def test_a_spec_key_the_batch_lacks_is_named_at_the_dry_run(tmp_path: Path, relax_cli: Callable[..., Any]) -> None:
    recipe = tiny_recipe(tmp_path, **{"symmetry.inputs": {"positions": "cartesian_points", "velocities": "1x1o"}})
    proc = relax_cli("train", recipe, "--dry-run", cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "symmetry.inputs.velocities: names 'velocities', which each batch lacks" in proc.stderr
    assert "'positions'" in proc.stderr and "Traceback" not in proc.stderr
    recipe = tiny_recipe(tmp_path, **{"symmetry.output": {"energy": "0e", "stress": "1x1o"}})
    proc = relax_cli("train", recipe, "--dry-run", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "symmetry.output.stress: names 'stress', which the model's output lacks" in (
        proc.stderr
    )
    recipe = tiny_recipe(tmp_path, **{"symmetry.inputs": ["cartesian_points"]})
    proc = relax_cli("train", recipe, "--dry-run", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "give a mapping from those keys to specs" in proc.stderr
