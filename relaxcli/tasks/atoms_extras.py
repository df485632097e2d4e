"""Small MACE and NequIP interatomic potentials for recipes (the optional extras ``relaxcli[mace]`` and
``relaxcli[nequip]``; README, "MACE and NequIP").

- :func:`mace_model`: a small ``mace.modules.ScaleShiftMACE`` (or ``MACE``), returned as the library builds it. It
  takes the batch dict itself: ``model(batch, training=..., compute_force=True)`` returns ``energy`` [B] and
  ``forces`` [N, 3] (by autograd inside ``forward``), among MACE's other outputs.
- :func:`nequip_model`: a small NequIP GNN (``nequip.model.NequIPGNNModel``) inside :class:`NequIPPotential`, the
  thinnest wrapper that renames the batch keys to NequIP's (``positions`` → ``pos``, ``species`` → ``atom_types``,
  ``unit_shifts`` → ``edge_cell_shift``, ``ptr`` → ``num_atoms``) and its outputs back (``total_energy`` [B, 1] →
  ``energy`` [B], ``forces``).

Both read the batch convention of :class:`relaxcli.atoms.GraphCollate`: ``positions`` [N, 3], ``node_attrs`` [N, S]
(one-hot over the elements), ``species`` [N] (the index of each atom's element), ``edge_index`` [2, E], ``shifts`` /
``unit_shifts`` [E, 3], ``cell`` [B, 3, 3], ``batch`` [N] and ``ptr`` [B + 1]. The elements are indexed in ascending
atomic number, as :class:`relaxcli.tasks.AtomsData` and MACE's own data do, whatever order ``elements`` lists them in.

mace and nequip are imported inside the functions only: importing this module (or ``relaxcli``) needs neither. The
model is built in the current default dtype (the recipe's ``trainer.dtype``), so float64 checks build it in float64.
"""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
from torch import nn

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["mace_model", "nequip_model", "NequIPPotential"]

#: How to install each library (README, "MACE and NequIP").
MACE_INSTALL = 'pip install "relaxcli[mace]" && pip install --no-deps mace-torch==0.3.16'
NEQUIP_INSTALL = 'pip install "relaxcli[nequip]"'


def _require(module: str, factory: str, install: str) -> Any:
    """Import ``module``, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{factory} needs {module.split('.')[0]}, an optional extra: {install} ({e})") from None


def _atomic_numbers(elements: Sequence[Union[str, int]]) -> list[int]:
    """Chemical symbols (or atomic numbers) as atomic numbers, ascending (the order of the one-hot columns)."""
    from ase.data import atomic_numbers

    out = []
    for e in elements:
        if isinstance(e, int):
            out.append(e)
        elif e in atomic_numbers:
            out.append(atomic_numbers[e])
        else:
            raise ValueError(f"unknown element {e!r}; give chemical symbols such as 'Cu' or atomic numbers")
    if not out or len(set(out)) != len(out):
        raise ValueError(f"elements must be a non-empty list without repeats, got {list(elements)}")
    return sorted(out)


def mace_model(
    elements: list[Union[str, int]] = ["Cu"],  # noqa: B006 (read, never changed; a list reads best in a recipe)
    r_max: float = 4.0,
    hidden_irreps: str = "8x0e+8x1o",
    max_ell: int = 2,
    correlation: int = 2,
    num_interactions: int = 2,
    num_bessel: int = 8,
    num_polynomial_cutoff: int = 5,
    radial_mlp: list[int] = [16, 16],  # noqa: B006
    mlp_irreps: str = "8x0e",
    avg_num_neighbors: float = 8.0,
    atomic_energies: Optional[list[float]] = None,
    scale: float = 1.0,
    shift: float = 0.0,
    scale_shift: bool = True,
) -> nn.Module:
    """A small MACE potential: ``mace.modules.ScaleShiftMACE`` (``scale_shift``) or ``mace.modules.MACE``, itself.

    The defaults (two interactions, ``8x0e+8x1o`` features, ``max_ell`` 2, body order ``correlation + 1`` = 3,
    a 16x16 radial MLP) give 3.4k parameters for one element and 3.6k for two.

    Args:
        elements: the data's elements (symbols or atomic numbers); ``node_attrs`` columns in ascending atomic number.
        r_max: the cutoff radius in Å; it should match the data's graph cutoff.
        hidden_irreps: the node features, ``Kx0e+Kx1o(+Kx2e)`` with one multiplicity K.
        max_ell: the spherical harmonics of the edges, up to this degree.
        correlation: the order of MACE's symmetric contraction (body order minus one).
        num_interactions: message-passing layers.
        num_bessel, num_polynomial_cutoff: the radial basis and the smoothness of its cutoff.
        radial_mlp: the hidden widths of the MLP from the radial basis to the convolution weights.
        mlp_irreps: the hidden features of the last, non-linear readout.
        avg_num_neighbors: the normalisation of the neighbour sum (the data's mean neighbour count).
        atomic_energies: E0 per element, in ascending atomic number (the energy of an isolated atom); default 0.
        scale, shift: ``ScaleShiftMACE``'s interaction energy is ``scale · E_int + shift`` per atom.
        scale_shift: ``ScaleShiftMACE`` (true) or plain ``MACE`` (false, ``scale`` and ``shift`` unused).
    """
    import numpy as np
    from e3nn import o3

    modules = _require("mace.modules", "mace_model", MACE_INSTALL)
    numbers = _atomic_numbers(elements)
    energies = np.zeros(len(numbers)) if atomic_energies is None else np.asarray(atomic_energies, dtype=float)
    if energies.shape != (len(numbers),):
        raise ValueError(f"atomic_energies needs one value per element ({len(numbers)}), got {atomic_energies}")
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    kwargs: dict[str, Any] = dict(
        r_max=r_max,
        num_bessel=num_bessel,
        num_polynomial_cutoff=num_polynomial_cutoff,
        max_ell=max_ell,
        interaction_cls=block,
        interaction_cls_first=block,
        num_interactions=num_interactions,
        num_elements=len(numbers),
        hidden_irreps=o3.Irreps(hidden_irreps),
        MLP_irreps=o3.Irreps(mlp_irreps),
        atomic_energies=energies,
        avg_num_neighbors=avg_num_neighbors,
        atomic_numbers=numbers,
        correlation=correlation,
        gate=torch.nn.functional.silu,
        radial_MLP=list(radial_mlp),
    )
    if scale_shift:
        return modules.ScaleShiftMACE(atomic_inter_scale=scale, atomic_inter_shift=shift, **kwargs)
    return modules.MACE(**kwargs)


class NequIPPotential(nn.Module):
    """A NequIP ``GraphModel`` under relaxcli's batch keys: ``forward(batch)`` returns ``energy`` [B], ``forces``
    [N, 3] and ``node_energy`` [N]. Nothing else: the parameters are the NequIP model's, under ``model.``.

    NequIP computes forces by autograd inside its ``forward`` and keeps their graph (for a force loss) in training
    mode (``model.train()``); it takes no keyword arguments.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ptr = data["ptr"]
        out = self.model(
            {
                "pos": data["positions"],
                "atom_types": data["species"],
                "edge_index": data["edge_index"],
                "edge_cell_shift": data["unit_shifts"].to(data["positions"].dtype),
                "cell": data["cell"].reshape(-1, 3, 3),
                "batch": data["batch"],
                "num_atoms": ptr[1:] - ptr[:-1],
            }
        )
        return {
            "energy": out["total_energy"].reshape(-1),
            "forces": out["forces"],
            "node_energy": out["atomic_energy"].reshape(-1),
        }


def _nequip_global_state() -> None:
    """NequIP's ``set_global_state`` (its model builder asserts it ran), without its side effects on this process's
    random generators (it seeds Python's, numpy's and torch's with 123), default dtype (float64) and seed variables."""
    import numpy as np
    from nequip.utils.global_state import global_state_initialized, set_global_state

    if global_state_initialized():
        return
    dtype, py_state, np_state = torch.get_default_dtype(), random.getstate(), np.random.get_state()
    env = {k: os.environ.get(k) for k in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")}
    with torch.random.fork_rng(devices=[]):
        set_global_state()
    torch.set_default_dtype(dtype)
    random.setstate(py_state)
    np.random.set_state(np_state)
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def nequip_model(
    elements: list[str] = ["Cu"],  # noqa: B006 (read, never changed; a list reads best in a recipe)
    r_max: float = 4.0,
    num_layers: int = 2,
    l_max: int = 1,
    parity: bool = True,
    num_features: int = 16,
    radial_mlp_width: int = 16,
    radial_mlp_depth: int = 1,
    num_bessels: int = 8,
    avg_num_neighbors: float = 8.0,
    per_type_energy_scales: Union[float, dict[str, float]] = 1.0,
    per_type_energy_shifts: Union[float, dict[str, float]] = 0.0,
    seed: Optional[int] = None,
) -> NequIPPotential:
    """A small NequIP potential (``nequip.model.NequIPGNNModel``) in :class:`NequIPPotential`.

    The defaults (two layers, ``l_max`` 1 with parity, 16 features per irrep, a 16-wide radial MLP) give 7.5k
    parameters.

    Args:
        elements: the data's elements, as chemical symbols (NequIP's type names); ``species`` indexes them in
            ascending atomic number.
        r_max: the cutoff radius in Å; it should match the data's graph cutoff.
        num_layers: interaction (convolution) layers.
        l_max, parity: the features' highest degree, and whether odd-parity copies are kept.
        num_features: the multiplicity of each irrep of the features.
        radial_mlp_width, radial_mlp_depth: the MLP from the Bessel basis to the convolution weights.
        num_bessels: the radial basis size.
        avg_num_neighbors: the normalisation of the neighbour sum (the data's mean neighbour count).
        per_type_energy_scales: the per-atom energy scale, one for all or per element (``{Cu: 0.5}``); the force
            RMS of the data is a good value.
        per_type_energy_shifts: the per-atom energy, one for all or per element (isolated-atom or mean per-atom
            energies).
        seed: NequIP's initialisation seed; None draws it from torch's generator (so the recipe's ``seed`` decides).
    """
    NequIPGNNModel = _require("nequip.model", "nequip_model", NEQUIP_INSTALL).NequIPGNNModel
    from ase.data import chemical_symbols  # a dependency of nequip

    names = [chemical_symbols[z] for z in _atomic_numbers([str(e) for e in elements])]
    _nequip_global_state()
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    dtype = {torch.float32: "float32", torch.float64: "float64"}[torch.get_default_dtype()]
    model = NequIPGNNModel(
        seed=seed,
        model_dtype=dtype,
        type_names=names,
        r_max=r_max,
        num_layers=num_layers,
        l_max=l_max,
        parity=parity,
        num_features=num_features,
        radial_mlp_width=radial_mlp_width,
        radial_mlp_depth=radial_mlp_depth,
        num_bessels=num_bessels,
        avg_num_neighbors=avg_num_neighbors,
        per_type_energy_scales=per_type_energy_scales,
        per_type_energy_shifts=per_type_energy_shifts,
    )
    return NequIPPotential(model)
