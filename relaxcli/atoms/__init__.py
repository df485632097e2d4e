"""Interatomic potentials: batching graphs of different sizes and the energy + forces loss.

- :class:`GraphCollate`: a list of per-structure dicts -> one graph batch (node and edge tensors concatenated,
  ``edge_index`` offset, ``batch``/``ptr`` added), the layout MACE, NequIP and torch_geometric models take;
- :class:`EnergyForcesLoss`: weighted energy and force errors (MSE or Huber, energies per atom or per structure).

Example (recipe)::

    collate: {_component_: relaxcli.atoms.GraphCollate}
    loss: {_component_: relaxcli.atoms.EnergyForcesLoss, forces_weight: 10.0}
"""

from .graphs import GraphCollate
from .losses import EnergyForcesLoss, energy_error, force_error

__all__ = ["GraphCollate", "EnergyForcesLoss", "energy_error", "force_error"]
