"""MACE (optional extra ``relaxcli[mace]``): the small ``ScaleShiftMACE`` of ``relaxcli.tasks.atoms_extras`` takes the
graph batch as it is, relax finds exactly its equivariant linear ops, projection restores exact equivariance, and
the shipped recipe goes through ``relax train``, ``project`` and ``inspect``. Skipped where mace-torch is not
installed; CI runs this file in its own environment (``./test.sh --mace``)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from atoms_batches import INPUTS_SPEC, OUTPUT_SPEC, graph_batch, load_float64, train_project_inspect  # tests/extras

import relaxcli
from relaxcli.core.reps import default_dtype
from relaxcli.tasks.atoms_extras import mace_model
from relaxcli.testing import equivariance_error

modules = pytest.importorskip("mace.modules", reason="mace-torch is an optional extra (relaxcli[mace])")

SITES = [
    "interactions.0.linear",
    "interactions.0.skip_tp",
    "interactions.1.linear_up",
    "interactions.1.linear",
    "interactions.1.skip_tp",
    "products.0.linear",
    "readouts.0.linear",
]
SCALAR_SITES = [
    "node_embedding.linear",
    "interactions.0.linear_up",
    "products.1.linear",
    "readouts.1.linear_1",
    "readouts.1.linear_2",
]


def error(model: Callable[..., Any], batch: dict[str, torch.Tensor]) -> float:
    """The relative equivariance error of energies and forces under O(3) and translations (fixed draws)."""
    call = lambda data: model(data, compute_force=True)
    report = equivariance_error(call, (batch,), [INPUTS_SPEC], OUTPUT_SPEC, generator=torch.Generator().manual_seed(0))
    assert set(report.cases) == {"rotation", "rotation+translation", "parity", "parity+translation"}
    return report.relative


@pytest.fixture(scope="module")
def model64() -> torch.nn.Module:
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        return mace_model(elements=["Au", "Cu"]).eval()


@pytest.fixture(scope="module")
def batch64() -> dict[str, torch.Tensor]:
    with default_dtype(torch.float64):
        return graph_batch([7, 9, 8], [29, 79])


def test_the_factory_returns_a_small_scale_shift_mace_that_takes_the_batch(model64, batch64) -> None:
    assert type(model64) is modules.ScaleShiftMACE
    assert 2_000 < sum(p.numel() for p in model64.parameters()) < 50_000
    assert model64.atomic_numbers.tolist() == [29, 79]  # one-hot columns in ascending atomic number
    assert next(model64.parameters()).dtype == torch.float64
    out = model64(dict(batch64), training=False, compute_force=True)
    assert out["energy"].shape == (3,) and out["forces"].shape == (24, 3)
    assert error(model64, batch64) < 1e-12
    with pytest.raises(ValueError, match="unknown element 'Xx'"):
        mace_model(elements=["Xx"])


def test_sites_are_its_linears_and_internal_weight_tensor_products(model64) -> None:
    relaxed = relaxcli.relax(copy.deepcopy(model64))
    assert [s.path for s in relaxed.sites] == SITES  # conv_tp (weights from the radial MLP) is not a site
    assert [path for path, _ in relaxed.skipped] == SCALAR_SITES
    assert all("invariants to invariants" in reason for _, reason in relaxed.skipped)
    assert len(relaxcli.relax(copy.deepcopy(model64), scalar_sites=True).sites) == 12


def test_zero_branches_change_nothing_random_ones_break_it_projection_restores_it(model64, batch64) -> None:
    model = copy.deepcopy(model64)
    reference = model(dict(batch64))
    relaxed = relaxcli.relax(model, init_std=0.0)
    relaxed.set_theta(1.0)
    same = relaxed(dict(batch64), compute_force=True)
    assert torch.equal(same["energy"], reference["energy"]) and torch.equal(same["forces"], reference["forces"])
    torch.manual_seed(1)
    with torch.no_grad():
        for p in relaxed.branch_parameters():
            p.normal_(0, 0.3)
    assert error(relaxed, batch64) > 1e-3
    projected = relaxcli.project(relaxed)
    assert projected is model and error(projected, batch64) < 1e-12
    with default_dtype(torch.float64):
        fresh = mace_model(elements=["Cu", "Au"])
    fresh.load_state_dict(projected.state_dict(), strict=True)
    assert error(fresh.eval(), batch64) < 1e-12


def test_train_project_inspect_the_mace_recipe(tmp_path: Path, relax_cli: Callable[..., Any]) -> None:
    state = train_project_inspect(
        "atoms_mace", "relaxcli.tasks.atoms_extras.mace_model", SITES, SCALAR_SITES, tmp_path, relax_cli
    )
    # the projected file loads strictly into the recipe's model: in float64 energies are invariant and forces
    # equivariant to 1e-12; in float32 to round-off (~5e-7 eV/Å on forces of ~0.1 eV/Å after two steps)
    kwargs = dict(elements=["Cu"], r_max=4.0, avg_num_neighbors=6.7, scale=1.1, shift=0.1)  # the recipe's model
    model = mace_model(**kwargs)
    model.load_state_dict(state, strict=True)
    model64 = load_float64(lambda: mace_model(**kwargs), state)
    with default_dtype(torch.float64):
        batch = graph_batch([13, 11], [29])
    assert error(model64.eval(), batch) < 1e-12
    batch32 = {k: v.float() if v.is_floating_point() else v for k, v in batch.items()}
    assert error(model.eval(), batch32) < 5e-5
