"""The op registry: the adapters :func:`relaxcli.relax` tries, in order, and the recipe actions.

Built in: e3nn ``o3.Linear`` and tensor products with internal weights, Vector-Neuron linears (the shipped
:class:`~relaxcli.VNLinear`), and escnn ``R2Conv`` / ``Linear`` over C_n and D_n (matched by class name, so escnn
is only imported when a model holds one). :func:`register_op` adds a user's adapter in front of them.

``ACTIONS`` maps a recipe's ``relax.ops[*].action`` (and an action recorded in a ``.pt2`` file) to the adapter class
that implements it; each class lists the recipe keys its constructor takes (``recipe_keys``).

Example:
    >>> register_op(IrrepsAdapter("mypkg.layers.IrrepsDense"))
    >>> find_adapter(model.layers[0].dense).name
    'mypkg.layers.IrrepsDense'
"""

from __future__ import annotations

from torch import nn

from .base import ClassAdapter, OpAdapter
from .irreps import IrrepsAdapter, IrrepsLinearAdapter, TensorProductAdapter
from .steerable import EscnnConvAdapter, EscnnLinearAdapter
from .vector_neurons import VectorNeuronAdapter

__all__ = ["ACTIONS", "register_op", "registered_ops", "find_adapter"]

#: Recipe action name -> the adapter class implementing it (constructor: the layer class, then its recipe_keys);
#: the first is the default.
ACTIONS: dict[str, type[IrrepsAdapter] | type[VectorNeuronAdapter]] = {
    cls.action: cls for cls in (IrrepsAdapter, VectorNeuronAdapter) if cls.action is not None
}

_REGISTRY: list[OpAdapter] = [
    IrrepsLinearAdapter(),
    TensorProductAdapter(),
    VectorNeuronAdapter(channel_axis=1, vector_axis=2),  # the shipped VNLinear on [B, C, 3, ...]
    EscnnConvAdapter(),
    EscnnLinearAdapter(),
]


def register_op(adapter: OpAdapter) -> OpAdapter:
    """Register an adapter; it takes precedence over the ones registered before it. Returns the adapter.

    A class adapter given an import path imports it here and matches by class object, so any public alias works:
    ``register_op(VectorNeuronAdapter("torch.nn.Linear"))`` matches ``torch.nn.modules.linear.Linear``
    instances (and its subclasses', unless ``subclasses=False``).

    Raises:
        TypeError: ``adapter`` is not an :class:`OpAdapter`.
        ValueError: its import path does not import, or names no ``torch.nn.Module`` class.
    """
    if not isinstance(adapter, OpAdapter):
        raise TypeError(f"register_op expects an OpAdapter, got {type(adapter).__name__}")
    if isinstance(adapter, ClassAdapter):
        adapter.resolve()
    _REGISTRY.insert(0, adapter)
    return adapter


def registered_ops() -> list[OpAdapter]:
    """The adapters in the order they are tried."""
    return list(_REGISTRY)


def find_adapter(module: nn.Module, adapters: list[OpAdapter] | None = None) -> OpAdapter | None:
    """The first adapter (of ``adapters``, default the registry) that matches ``module``, or None."""
    for adapter in _REGISTRY if adapters is None else adapters:
        if adapter.matches(module):
            return adapter
    return None
