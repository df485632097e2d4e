"""The atomistic task: energies and forces of small metal clusters from ``ase``'s EMT calculator, and a small
NequIP-style interatomic potential (:class:`Potential`, e3nn) that predicts them.

Each structure is a 13-atom icosahedral cluster (Cu by default; ``elements: [Cu, Au]`` mixes species at random) with
every atom displaced at random (``displacement`` Å, Gaussian), then rotated and translated at random. EMT energies
and forces are exactly E(3)-symmetric: the energy is invariant, the forces rotate with the structure. A split of a
few thousand structures takes seconds and is cached like the N-body task (``$RELAX_CACHE``). Needs ``ase``
(``pip install "relaxcli[atoms]"``).

Items are ``(inputs, target)`` dicts in the layout MACE takes (see :class:`relaxcli.atoms.GraphCollate`):
inputs ``positions [n, 3]``, ``node_attrs [n, S]`` (one-hot species), ``species [n]``, ``atomic_numbers [n]``,
``edge_index [2, E]`` (all pairs within ``cutoff``), ``shifts``/``unit_shifts [E, 3]`` (zeros: no periodic images),
``cell [3, 3]`` (zeros), ``pbc [3]``; target ``energy`` (eV, relative to the undisplaced cluster), ``forces [n, 3]``
(eV/Å) and ``natoms``.

Example:
    >>> data = AtomsData(train=200, val=100, test=100)
    >>> inputs, target = GraphCollate()([data.train[0], data.train[1]])
    >>> Potential()(inputs)["forces"].shape
    torch.Size([26, 3])
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from e3nn import nn as enn
from e3nn import o3
from torch import nn
from torch.utils.data import Dataset

from .cache import SPLITS, cache_folder, cached, split_sizes

__all__ = ["AtomsData", "AtomsSplit", "Potential"]

#: Bump when the generator changes, so that cached splits are regenerated.
GENERATOR_VERSION = 1
KEYS = ("positions", "numbers", "energy", "forces")


def _generate(n: int, elements: Sequence[str], displacement: float, seed: int, split_id: int) -> dict[str, np.ndarray]:
    """``n`` displaced, rotated and translated clusters with their EMT energies and forces (float64)."""
    try:
        from ase.calculators.emt import EMT
        from ase.cluster import Icosahedron
    except ImportError:
        raise ImportError(
            "the atomistic task computes its energies with ase's EMT calculator; install it with "
            "pip install 'relaxcli[atoms]' (or pip install ase)"
        ) from None
    rng = np.random.default_rng(np.random.SeedSequence([seed, split_id]))
    base = Icosahedron(elements[0], 2)
    reference = base.copy()
    reference.calc = EMT()
    e_ref = reference.get_potential_energy() / len(base)  # per atom, of the undisplaced cluster
    atoms_n = len(base)
    positions = np.zeros((n, atoms_n, 3))
    numbers = np.zeros((n, atoms_n), dtype=np.int64)
    energy = np.zeros(n)
    forces = np.zeros((n, atoms_n, 3))
    for i in range(n):
        atoms = base.copy()
        atoms.set_chemical_symbols(list(rng.choice(list(elements), size=atoms_n)))
        atoms.positions += rng.normal(0.0, displacement, size=(atoms_n, 3))
        q = rng.normal(size=4)
        atoms.positions = atoms.positions @ _quaternion_matrix(q / np.linalg.norm(q)).T + rng.normal(0, 5, size=3)
        atoms.calc = EMT()
        positions[i], numbers[i] = atoms.positions, atoms.numbers
        energy[i] = atoms.get_potential_energy() - atoms_n * e_ref
        forces[i] = atoms.get_forces()
    return {"positions": positions, "numbers": numbers, "energy": energy, "forces": forces}


def _quaternion_matrix(q: np.ndarray) -> np.ndarray:
    a, b, c, d = q
    return np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
        ]
    )


class AtomsSplit(Dataset):
    """One split: item ``i`` is ``(inputs, target)`` of structure ``i`` (see the module docstring)."""

    def __init__(self, arrays: dict[str, np.ndarray], species: Sequence[int], cutoff: float) -> None:
        dtype = torch.get_default_dtype()
        self.positions = torch.as_tensor(arrays["positions"], dtype=dtype)
        self.numbers = torch.as_tensor(arrays["numbers"])
        self.energy = torch.as_tensor(arrays["energy"], dtype=dtype)
        self.forces = torch.as_tensor(arrays["forces"], dtype=dtype)
        table = torch.full((int(max(species)) + 1,), -1, dtype=torch.long)
        table[torch.as_tensor(list(species))] = torch.arange(len(species))
        self.species = table[self.numbers]
        self.num_species = len(species)
        self.cutoff = float(cutoff)

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        pos = self.positions[i]
        n = pos.shape[0]
        dist = torch.cdist(pos, pos)
        close = (dist < self.cutoff) & ~torch.eye(n, dtype=torch.bool)
        edge_index = close.nonzero().T.contiguous()  # [2, E]: (source, destination)
        edges = edge_index.shape[1]
        species = self.species[i]
        inputs = {
            "positions": pos,
            "node_attrs": nn.functional.one_hot(species, self.num_species).to(pos.dtype),
            "species": species,
            "atomic_numbers": self.numbers[i],
            "edge_index": edge_index,
            "shifts": pos.new_zeros(edges, 3),
            "unit_shifts": pos.new_zeros(edges, 3),
            "cell": pos.new_zeros(3, 3),
            "pbc": torch.zeros(3, dtype=torch.bool),
        }
        target = {"energy": self.energy[i], "forces": self.forces[i], "natoms": torch.tensor(n)}
        return inputs, target


class AtomsData:
    """The atomistic task: ``train``, ``val`` and ``test`` splits of EMT clusters (see the module docstring).

    Args:
        train, val, test: structures per split.
        elements: chemical symbols EMT knows (Al, Cu, Ag, Au, Ni, Pd, Pt); each atom's is drawn at random.
        displacement: standard deviation of the random displacement of each atom, in Å.
        cutoff: the radius of the neighbour graph, in Å.
        seed: base seed; each split has its own random stream.
        cache_dir, cache: as for :class:`relaxcli.tasks.NBodyData`.

    Attributes:
        train, val, test: :class:`AtomsSplit` datasets; ``species``: the atomic numbers, in ``node_attrs`` order.
    """

    def __init__(
        self,
        train: int = 1000,
        val: int = 200,
        test: int = 200,
        elements: Sequence[str] = ("Cu",),
        displacement: float = 0.15,
        cutoff: float = 4.0,
        seed: int = 0,
        cache_dir: str | os.PathLike[str] | None = None,
        cache: bool = True,
    ) -> None:
        from ase.data import atomic_numbers

        unknown = [e for e in elements if e not in atomic_numbers]
        if not elements or unknown:
            raise ValueError(f"elements must be chemical symbols such as ['Cu'], got {list(elements)}")
        if int(seed) < 0 or displacement < 0 or cutoff <= 0:
            raise ValueError(f"seed and displacement must be >= 0 and cutoff > 0, got {seed}, {displacement}, {cutoff}")
        self.elements = [str(e) for e in elements]
        self.species = sorted({atomic_numbers[e] for e in self.elements})
        self.displacement, self.cutoff, self.seed = float(displacement), float(cutoff), int(seed)
        self.sizes = split_sizes(train, val, test)
        self.cache_dir = cache_folder(cache_dir, cache)
        self.sources: dict[str, str] = {}
        self.cache_paths: dict[str, Path | None] = {}
        splits = {name: self._load(name) for name in SPLITS}
        self.train, self.val, self.test = splits["train"], splits["val"], splits["test"]

    def _load(self, split: str) -> AtomsSplit:
        params: dict[str, Any] = {
            "version": GENERATOR_VERSION,
            "split": split,
            "n": self.sizes[split],
            "elements": self.elements,
            "displacement": self.displacement,
            "seed": self.seed,
        }
        arrays, from_cache, self.cache_paths[split] = cached(
            self.cache_dir,
            "atoms",
            split,
            params,
            KEYS,
            lambda: _generate(self.sizes[split], self.elements, self.displacement, self.seed, SPLITS.index(split)),
        )
        self.sources[split] = "cache" if from_cache else "generated"
        return AtomsSplit(arrays, self.species, self.cutoff)


class _Bessel(nn.Module):
    """``num_basis`` Bessel functions of the distance, times a smooth polynomial cutoff (as NequIP)."""

    freqs: torch.Tensor

    def __init__(self, cutoff: float, num_basis: int) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.register_buffer("freqs", torch.arange(1, num_basis + 1) * math.pi / cutoff)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        x = (r / self.cutoff).clamp(max=1.0)
        envelope = 1 - 10 * x**3 + 15 * x**4 - 6 * x**5  # p = 3: value, slope and curvature 0 at the cutoff
        return (2 / self.cutoff) ** 0.5 * torch.sin(self.freqs * r[:, None]) / r[:, None] * envelope[:, None]


class _Interaction(nn.Module):
    """One message-passing layer: a tensor product of neighbour features with the edge's spherical harmonics,
    weighted by a radial MLP (external weights: not a site), summed over neighbours, then linear maps (the sites)
    and a gate."""

    def __init__(self, irreps_in: o3.Irreps, irreps_out: o3.Irreps, sh: o3.Irreps, num_basis: int) -> None:
        super().__init__()
        scalars = o3.Irreps([(m, ir) for m, ir in irreps_out if ir.l == 0])
        gated = o3.Irreps([(m, ir) for m, ir in irreps_out if ir.l > 0])
        gates = o3.Irreps(f"{gated.num_irreps}x0e")
        self.gate = enn.Gate(scalars, [nn.functional.silu], gates, [torch.sigmoid], gated)
        self.tp = o3.FullyConnectedTensorProduct(
            irreps_in, sh, irreps_out, internal_weights=False, shared_weights=False
        )
        self.radial = enn.FullyConnectedNet([num_basis, 16, self.tp.weight_numel], nn.functional.silu)
        self.linear = o3.Linear(irreps_out, self.gate.irreps_in)
        self.self_interaction = o3.Linear(irreps_in, self.gate.irreps_in)

    def forward(
        self, h: torch.Tensor, sh: torch.Tensor, basis: torch.Tensor, edge_index: torch.Tensor, neighbours: float
    ) -> torch.Tensor:
        src, dst = edge_index
        messages = self.tp(h[src], sh, self.radial(basis))
        summed = messages.new_zeros(h.shape[0], messages.shape[1]).index_add_(0, dst, messages) / neighbours**0.5
        return self.gate(self.linear(summed) + self.self_interaction(h))


class Potential(nn.Module):
    """A small NequIP-style interatomic potential: species embedding, ``num_layers`` interaction layers, a per-atom
    energy summed per structure; forces are ``-dE/dx`` by autograd inside ``forward`` (as MACE and NequIP do).

    Takes a graph batch (one dict: see :class:`relaxcli.atoms.GraphCollate`) and returns ``{"energy": [B],
    "forces": [N, 3]}``. Exactly E(3)-equivariant: invariant energy, equivariant forces.

    Args:
        num_species: the length of ``node_attrs``.
        hidden_irreps: node features between layers (scalars and gated vectors/tensors).
        num_layers: interaction layers.
        lmax: the spherical harmonics of the edge directions.
        cutoff: the radius of the radial basis (the data's graph cutoff).
        num_basis: Bessel functions of the distance.
        neighbours: the typical number of neighbours, to normalise the sums.
    """

    def __init__(
        self,
        num_species: int = 1,
        hidden_irreps: str = "16x0e+8x1o+8x1e",
        num_layers: int = 2,
        lmax: int = 2,
        cutoff: float = 4.0,
        num_basis: int = 8,
        neighbours: float = 10.0,
    ) -> None:
        super().__init__()
        hidden = o3.Irreps(hidden_irreps)
        scalars = o3.Irreps([(m, ir) for m, ir in hidden if ir.l == 0])
        self.sh_irreps = o3.Irreps.spherical_harmonics(lmax)
        self.embed = o3.Linear(f"{num_species}x0e", scalars)
        irreps = [scalars] + [hidden] * num_layers
        self.layers = nn.ModuleList(
            _Interaction(irreps[i], irreps[i + 1], self.sh_irreps, num_basis) for i in range(num_layers)
        )
        self.readout = o3.Linear(hidden, "8x0e")
        self.energy = o3.Linear("8x0e", "1x0e")
        self.basis = _Bessel(cutoff, num_basis)
        self.neighbours = float(neighbours)

    def forward(self, data: dict[str, torch.Tensor], compute_force: bool = True) -> dict[str, torch.Tensor]:
        pos = data["positions"]
        if compute_force and not pos.requires_grad:
            pos = pos.detach().requires_grad_(True)
        src, dst = data["edge_index"]
        vec = pos[dst] - pos[src] + data["shifts"]
        r = vec.norm(dim=-1)
        sh = o3.spherical_harmonics(self.sh_irreps, vec, normalize=True, normalization="component")
        basis = self.basis(r)
        h = self.embed(data["node_attrs"])
        for layer in self.layers:
            h = layer(h, sh, basis, data["edge_index"], self.neighbours)
        per_atom = self.energy(nn.functional.silu(self.readout(h))).squeeze(-1)
        graphs = int(data["ptr"].numel()) - 1
        energy = per_atom.new_zeros(graphs).index_add_(0, data["batch"], per_atom)
        out = {"energy": energy}
        if compute_force:
            (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=self.training)
            out["forces"] = -grad
        return out
