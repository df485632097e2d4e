"""The built-in tasks: one module per task, holding its data (generated offline, cached) and its reference model.

- :mod:`~relaxcli.tasks.nbody`: charged N-body systems (:class:`NBodyData`) and :class:`SEGNN` (e3nn);
- :mod:`~relaxcli.tasks.pointcloud`: shape surfaces (:class:`PointCloudData`) and :class:`VNPointNet` (Vector Neurons);
- :mod:`~relaxcli.tasks.grid`: Allen-Cahn phase fields (:class:`AllenCahnData`) and :class:`SteerableCNN` (escnn);
- :mod:`~relaxcli.tasks.atoms`: EMT energies and forces of metal clusters (:class:`AtomsData`, needs ``ase``) and
  :class:`Potential`, a NequIP-style interatomic potential (e3nn).

The reference models are ordinary user models: ``relax`` finds their equivariant ops through the graph pass like any
other model's, with no special cases. Recipes name them by their module (``relaxcli.tasks.nbody.SEGNN``); the paths
of the previous release (``relaxcli.models.SEGNN``, ``relaxcli.data.NBodyData``) still resolve, through the alias
table in :mod:`relaxcli.recipe.components`.
"""

from .atoms import AtomsData, Potential
from .grid import AllenCahnData, SteerableCNN
from .nbody import SEGNN, NBodyData
from .pointcloud import PointCloudData, VNPointNet

__all__ = [
    "NBodyData",
    "SEGNN",
    "PointCloudData",
    "VNPointNet",
    "AllenCahnData",
    "SteerableCNN",
    "AtomsData",
    "Potential",
]
