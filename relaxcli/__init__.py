"""relax: constraint relaxation for equivariant neural networks.

Relax a user's model, train it with the regularisers and a θ schedule, and project it back to an exactly
equivariant model of the user's own class:

    >>> import relaxcli
    >>> relaxed = relaxcli.relax(model)                       # branches beside every equivariant linear op
    >>> reg = relaxcli.Regularizer(weight=0.01)
    >>> schedule = relaxcli.make_schedule("triangle", total_steps=1000)
    >>> for step, (x, y) in enumerate(batches):
    ...     schedule.before_step(relaxed, step)
    ...     loss = loss_fn(relaxed(x), y) + reg(relaxed).total
    ...     loss.backward(); opt.step(); opt.zero_grad()
    >>> model = relaxcli.project(relaxed)                     # the user's module, exactly equivariant

The package has a room per concept: :mod:`relaxcli.core` (the method), :mod:`relaxcli.ops` (op adapters),
:mod:`relaxcli.recipe` (recipes), :mod:`relaxcli.run` (training, checkpoints, delivery, inspection),
:mod:`relaxcli.tasks` (built-in tasks) and :mod:`relaxcli.testing` (test helpers). The names below are imported on
first use, so ``import relaxcli`` (and ``relax --help``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import EquivarianceError, RecipeError, RelaxError, TrustError

#: public name -> the module that defines it
_EXPORTS = {
    "relax": "core.graph",
    "RelaxedModel": "core.graph",
    "Site": "core.graph",
    "project": "core.projection",
    "Rep": "core.reps",
    "Branch": "core.branches",
    "DenseBranch": "core.branches",
    "VectorBranch": "core.branches",
    "Regularizer": "core.regularizers",
    "Regularization": "core.regularizers",
    "SiteTerms": "core.regularizers",
    "site_terms": "core.regularizers",
    "Schedule": "core.schedules",
    "ThetaSchedule": "core.schedules",
    "Ace": "core.schedules",
    "AceElastic": "core.schedules",
    "SCHEDULES": "core.schedules",
    "make_schedule": "core.schedules",
    "OpAdapter": "ops.base",
    "ExplicitAdapter": "ops.base",
    "IrrepsAdapter": "ops.irreps",
    "IrrepsLinearAdapter": "ops.irreps",
    "TensorProductAdapter": "ops.irreps",
    "VectorNeuronAdapter": "ops.vector_neurons",
    "VNLinear": "ops.vector_neurons",
    "register_op": "ops.registry",
    "registered_ops": "ops.registry",
    "find_adapter": "ops.registry",
    "export_program": "ops.program",
    "load_program": "ops.program",
    "load_model": "run.build",
}

__all__ = [*_EXPORTS, "RelaxError", "RecipeError", "EquivarianceError", "TrustError", "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'relaxcli' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from .core.branches import Branch, DenseBranch, VectorBranch
    from .core.graph import RelaxedModel, Site, relax
    from .core.projection import project
    from .core.regularizers import Regularization, Regularizer, SiteTerms, site_terms
    from .core.reps import Rep
    from .core.schedules import SCHEDULES, Ace, AceElastic, Schedule, ThetaSchedule, make_schedule
    from .ops.base import ExplicitAdapter, OpAdapter
    from .ops.irreps import IrrepsAdapter, IrrepsLinearAdapter, TensorProductAdapter
    from .ops.program import export_program, load_program
    from .ops.registry import find_adapter, register_op, registered_ops
    from .ops.vector_neurons import VectorNeuronAdapter, VNLinear
    from .run.build import load_model
