"""NequIP (optional extra ``relaxcli[nequip]``): the small NequIP GNN of ``relaxcli.tasks.atoms_extras`` (in the thin
key-renaming :class:`~relaxcli.tasks.atoms_extras.NequIPPotential`), its sites, exact projection, and the shipped
recipe through ``relax train``, ``project`` and ``inspect``. Skipped where nequip is not installed; CI runs this file
in its own environment (``./test.sh --nequip``)."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from atoms_batches import INPUTS_SPEC, OUTPUT_SPEC, graph_batch, load_float64, train_project_inspect  # tests/extras

import relaxcli
from relaxcli.core.reps import default_dtype
from relaxcli.tasks.atoms_extras import NequIPPotential, nequip_model
from relaxcli.testing import equivariance_error

PREFIX = "model.model.func."
pytest.importorskip("nequip.model", reason="nequip is an optional extra (relaxcli[nequip])")

SITES = [PREFIX + p for p in ("layer0_convnet.conv.linear_2", "layer1_convnet.conv.linear_1", "layer1_convnet.conv.sc")]
SCALAR_SITES = [PREFIX + p for p in ("layer0_convnet.conv.linear_1", "layer1_convnet.conv.linear_2")]


def error(model: Callable[..., Any], batch: dict[str, torch.Tensor]) -> float:
    """The relative equivariance error of energies and forces under O(3) and translations (fixed draws)."""
    report = equivariance_error(model, (batch,), [INPUTS_SPEC], OUTPUT_SPEC, generator=torch.Generator().manual_seed(0))
    assert set(report.cases) == {"rotation", "rotation+translation", "parity", "parity+translation"}
    return report.relative


@pytest.fixture(scope="module")
def model64() -> NequIPPotential:
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        return nequip_model(elements=["Au", "Cu"], seed=0).eval()


@pytest.fixture(scope="module")
def batch64() -> dict[str, torch.Tensor]:
    with default_dtype(torch.float64):
        return graph_batch([7, 9, 8], [29, 79])


def test_the_factory_builds_a_small_nequip_model_that_takes_the_batch(model64, batch64) -> None:
    from nequip.nn import GraphModel

    assert isinstance(model64, NequIPPotential) and isinstance(model64.model, GraphModel)
    assert model64.model.type_names == ["Cu", "Au"]  # species index the elements in ascending atomic number
    assert 2_000 < sum(p.numel() for p in model64.parameters()) < 50_000
    assert next(model64.parameters()).dtype == torch.float64
    out = model64(batch64)
    assert set(out) == {"energy", "forces", "node_energy"}
    assert out["energy"].shape == (3,) and out["forces"].shape == (24, 3)
    assert error(model64, batch64) < 1e-12


def test_building_leaves_the_random_generators_and_default_dtype_alone() -> None:
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    model = nequip_model(seed=3)
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2]) and torch.get_default_dtype() == torch.float32
    assert next(model.parameters()).dtype == torch.float32
    again = nequip_model(seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    torch.manual_seed(5)
    drawn = nequip_model().state_dict()
    torch.manual_seed(5)
    assert all(torch.equal(a, b) for a, b in zip(drawn.values(), nequip_model().state_dict().values()))


def test_sites_are_its_linears_and_self_interaction(model64) -> None:
    relaxed = relaxcli.relax(copy.deepcopy(model64))
    assert [s.path for s in relaxed.sites] == SITES  # tp_scatter (weights from the radial MLP) is not a site
    assert [path for path, _ in relaxed.skipped] == SCALAR_SITES
    assert all("invariants to invariants" in reason for _, reason in relaxed.skipped)


def test_zero_branches_change_nothing_random_ones_break_it_projection_restores_it(model64, batch64) -> None:
    model = copy.deepcopy(model64)
    reference = model(batch64)
    relaxed = relaxcli.relax(model, init_std=0.0)
    relaxed.set_theta(1.0)
    same = relaxed(batch64)
    assert torch.equal(same["energy"], reference["energy"]) and torch.equal(same["forces"], reference["forces"])
    torch.manual_seed(1)
    with torch.no_grad():
        for p in relaxed.branch_parameters():
            p.normal_(0, 0.3)
    assert error(relaxed, batch64) > 1e-3
    projected = relaxcli.project(relaxed)
    assert projected is model and error(projected, batch64) < 1e-12
    with default_dtype(torch.float64):
        fresh = nequip_model(elements=["Cu", "Au"])
    fresh.load_state_dict(projected.state_dict(), strict=True)
    assert error(fresh.eval(), batch64) < 1e-12


def test_train_project_inspect_the_nequip_recipe(tmp_path: Path, relax_cli: Callable[..., Any]) -> None:
    state = train_project_inspect(
        "atoms_nequip", "relaxcli.tasks.atoms_extras.nequip_model", SITES, SCALAR_SITES, tmp_path, relax_cli
    )
    # the projected file loads strictly into the recipe's model: in float64 energies are invariant and forces
    # equivariant to 1e-12; in float32 to round-off (~5e-7 eV/Å on forces of ~0.1 eV/Å after two steps)
    kwargs = dict(elements=["Cu"], r_max=4.0, avg_num_neighbors=6.7, per_type_energy_scales=1.1)  # the recipe's
    model = nequip_model(**kwargs)
    model.load_state_dict(state, strict=True)
    model64 = load_float64(lambda: nequip_model(**kwargs), state)
    with default_dtype(torch.float64):
        batch = graph_batch([13, 11], [29])
    assert error(model64.eval(), batch) < 1e-12
    batch32 = {k: v.float() if v.is_floating_point() else v for k, v in batch.items()}
    assert error(model.eval(), batch32) < 5e-5
