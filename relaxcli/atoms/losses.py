"""The energy + forces loss of interatomic potentials, and the per-term errors reported beside it.

Outputs and targets are dicts: ``energy`` ``[B]`` (one per structure) and ``forces`` ``[N, 3]`` (one row per atom);
``natoms`` ``[B]`` in the target gives energies per atom.

Example:
    >>> loss = EnergyForcesLoss(energy_weight=1.0, forces_weight=10.0)
    >>> loss({"energy": e_pred, "forces": f_pred}, {"energy": e, "forces": f, "natoms": n})
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["EnergyForcesLoss", "energy_error", "force_error"]


def _entry(d: Any, key: str, what: str) -> torch.Tensor:
    if not isinstance(d, dict) or key not in d:
        have = f"keys {', '.join(map(repr, d))}" if isinstance(d, dict) else f"a {type(d).__name__}"
        raise ValueError(f"the {what} has no {key!r} entry (it has {have}); potentials return and train on dicts")
    value: torch.Tensor = d[key]
    return value


def energy_error(output: Any, target: Any, per_atom: bool = True, key: str = "energy") -> torch.Tensor:
    """Energy error per structure, ``[B]``: per atom when ``per_atom`` and the target has ``natoms``."""
    err = _entry(output, key, "output").reshape(-1) - _entry(target, key, "target").reshape(-1)
    if per_atom and isinstance(target, dict) and "natoms" in target:
        err = err / target["natoms"].reshape(-1).to(err.dtype)
    return err


def force_error(output: Any, target: Any, key: str = "forces") -> torch.Tensor:
    """Force error per atom and component, ``[N, 3]``."""
    return _entry(output, key, "output") - _entry(target, key, "target")


class EnergyForcesLoss(nn.Module):
    """``energy_weight · L(E) + forces_weight · L(F)`` with ``L`` the mean squared error or Huber loss.

    Args:
        energy_weight, forces_weight: the weight of each term (0 drops it).
        per_atom: energies compared per atom (needs ``natoms`` in the target), so that large structures do not
            dominate; False compares total energies.
        kind: ``"mse"`` or ``"huber"`` (``delta``: the Huber threshold, in the data's units).
        energy_key, forces_key: the dict entries, if the model names them otherwise.
    """

    def __init__(
        self,
        energy_weight: float = 1.0,
        forces_weight: float = 10.0,
        per_atom: bool = True,
        kind: Literal["mse", "huber"] = "mse",
        delta: float = 0.01,
        energy_key: str = "energy",
        forces_key: str = "forces",
    ) -> None:
        super().__init__()
        if kind not in ("mse", "huber"):
            raise ValueError(f"kind must be 'mse' or 'huber', got {kind!r}")
        if energy_weight < 0 or forces_weight < 0 or energy_weight + forces_weight == 0:
            raise ValueError(
                f"energy_weight and forces_weight must be >= 0 and not both 0, got {energy_weight}, {forces_weight}"
            )
        self.energy_weight, self.forces_weight = float(energy_weight), float(forces_weight)
        self.per_atom, self.kind, self.delta = per_atom, kind, float(delta)
        self.energy_key, self.forces_key = energy_key, forces_key

    def _term(self, err: torch.Tensor) -> torch.Tensor:
        if self.kind == "huber":
            return F.huber_loss(err, torch.zeros_like(err), delta=self.delta)
        return err.pow(2).mean()

    def forward(self, output: Any, target: Any) -> torch.Tensor:
        terms = []
        if self.energy_weight:
            terms.append(self.energy_weight * self._term(energy_error(output, target, self.per_atom, self.energy_key)))
        if self.forces_weight:
            terms.append(self.forces_weight * self._term(force_error(output, target, self.forces_key)))
        return torch.stack(terms).sum()
