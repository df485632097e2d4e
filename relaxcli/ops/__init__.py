"""Op adapters: which modules of a user's model are equivariant linear ops, and how a branch joins each one.

- :mod:`~relaxcli.ops.base`: the adapter contract (:class:`OpAdapter`), class matching, explicit representations;
- :mod:`~relaxcli.ops.irreps`: e3nn ``o3.Linear``, tensor products, any irreps layer (action ``irreps``);
- :mod:`~relaxcli.ops.vector_neurons`: :class:`VNLinear` and VN-style layers (action ``vector_neurons``);
- :mod:`~relaxcli.ops.steerable`: escnn ``R2Conv`` / ``Linear`` over C_n, D_n (escnn imported only when used);
- :mod:`~relaxcli.ops.program`: the sites recorded in a ``torch.export`` program (``.pt2``);
- :mod:`~relaxcli.ops.registry`: the registry :func:`~relaxcli.relax` consults, and the recipe actions.
"""

from .base import ClassAdapter, ExplicitAdapter, OpAdapter
from .irreps import IrrepsAdapter, IrrepsLinearAdapter, TensorProductAdapter
from .registry import ACTIONS, find_adapter, register_op, registered_ops
from .vector_neurons import VectorNeuronAdapter, VNLinear

__all__ = [
    "OpAdapter",
    "ClassAdapter",
    "ExplicitAdapter",
    "IrrepsAdapter",
    "IrrepsLinearAdapter",
    "TensorProductAdapter",
    "VectorNeuronAdapter",
    "VNLinear",
    "ACTIONS",
    "register_op",
    "registered_ops",
    "find_adapter",
]
