"""Batches: how data items become model arguments. An item is ``(inputs, target)``; ``inputs`` is a tensor (one
positional argument), a tuple of tensors (positional arguments) or a dict: keyword arguments when the model's
``forward`` takes its keys, else one dict argument (as MACE and NequIP take their graph batch). The recipe's
``collate`` makes a batch of a list of items (default: torch's ``default_collate``; graphs of different sizes need
:class:`relaxcli.atoms.GraphCollate`) and ``forward`` adds keyword arguments to every call.

Example:
    >>> collate = build_collate(recipe)
    >>> inputs, target = split_batch(collate([data.train[i] for i in range(4)]))
    >>> out = call_model(model, to_device(inputs, device, torch.float64), {"compute_force": True})
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from ..errors import RelaxError
from ..recipe import Recipe, instantiate

__all__ = [
    "build_collate",
    "Counted",
    "split_batch",
    "call_args",
    "call_model",
    "model_function",
    "to_device",
    "example_batch",
]

Collate = Callable[[list[Any]], Any]


def build_collate(recipe: Recipe) -> Collate:
    """The recipe's ``collate`` (a component that builds the function), or torch's ``default_collate``."""
    if recipe.collate is None:
        return default_collate
    collate = instantiate(recipe.collate)
    if not callable(collate):
        raise RelaxError(
            f"collate: {recipe.collate.target} built a {type(collate).__name__}, which is not callable; the "
            "collate component must build a function from a list of data items to a batch, e.g. "
            "{_component_: relaxcli.atoms.GraphCollate}"
        )
    return collate


class Counted:
    """A collate function that also returns how many items the batch holds: ``(batch, n)``. A graph batch's
    tensors do not all start with the item count, so the trainer takes it from here."""

    def __init__(self, collate: Collate) -> None:
        self.collate = collate

    def __call__(self, items: list[Any]) -> tuple[Any, int]:
        return self.collate(items), len(items)


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, target)`` from a collated batch."""
    if not isinstance(batch, (list, tuple)) or len(batch) != 2:
        got = f"a {type(batch).__name__} of {len(batch)} items" if isinstance(batch, (list, tuple)) else type(batch)
        raise RelaxError(
            "each data item must be a pair (inputs, target), where inputs is a tensor, a tuple of tensors (positional "
            f"model arguments) or a dict (keyword arguments); got {got}. For a model of several inputs make each "
            "item ((x, s), y): TensorDataset(x, s, y) gives (x, s, y), so wrap it, e.g. a Dataset whose __getitem__ "
            "returns ((x[i], s[i]), y[i])"
        )
    return batch[0], batch[1]


def _user_module(model: Any) -> Any:
    """The user's module inside wrappers (``DistributedDataParallel``, :class:`~relaxcli.RelaxedModel`)."""
    from ..core.graph import RelaxedModel

    while isinstance(model, (RelaxedModel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def call_args(
    inputs: Any, model: Any = None, kwargs: dict[str, Any] | None = None
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional and keyword arguments from a batch's inputs (a tensor, a tuple of tensors, or a dict) and the
    recipe's ``forward`` keyword arguments. A dict becomes keyword arguments when ``model``'s ``forward`` takes
    them, else one positional argument."""
    kwargs = dict(kwargs or {})
    if isinstance(inputs, dict):
        if _takes_keywords(model, inputs, kwargs):
            return (), {**inputs, **kwargs}
        return (inputs,), kwargs
    if isinstance(inputs, (list, tuple)):
        return tuple(inputs), kwargs
    return (inputs,), kwargs


def _takes_keywords(model: Any, inputs: dict[str, Any], kwargs: dict[str, Any]) -> bool:
    if model is None:
        return True
    return _binds(type(_user_module(model)).forward, frozenset(inputs) | frozenset(kwargs))


@functools.lru_cache(maxsize=256)
def _binds(forward: Callable[..., Any], keys: frozenset[str]) -> bool:
    """Whether ``forward(self, **{keys})`` binds: decided once per forward and key set, not on every step."""
    try:
        signature = inspect.signature(forward)
    except (TypeError, ValueError):
        return True
    try:
        signature.bind(None, **dict.fromkeys(keys))
    except TypeError:
        return False
    return True


def call_model(model: nn.Module, inputs: Any, kwargs: dict[str, Any] | None = None) -> Any:
    """``model`` called on a batch's inputs, with the recipe's ``forward`` keyword arguments."""
    args, kw = call_args(inputs, model, kwargs)
    return model(*args, **kw)


def model_function(model: nn.Module, inputs: Any, kwargs: dict[str, Any] | None = None) -> Callable[..., Any]:
    """``model`` as a function of the positional form of ``inputs`` (one dict for dict inputs), for the
    equivariance checks, which call ``func(*args)`` on transformed copies of the inputs."""
    if isinstance(inputs, dict):
        return lambda d: call_model(model, d, kwargs)
    return lambda *args: call_model(model, args if isinstance(inputs, (list, tuple)) else args[0], kwargs)


def to_device(x: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move tensors (nested in tuples/lists/dicts) to ``device``; floating tensors also to ``dtype``. Other objects
    with a ``to`` method (a torch_geometric ``Batch``) are moved with ``x.to(device)``."""
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype if x.is_floating_point() else None)
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device, dtype) for v in x)
    if isinstance(x, dict):
        return {k: to_device(v, device, dtype) for k, v in x.items()}
    if callable(getattr(x, "to", None)) and not isinstance(x, (nn.Module, type)):
        return x.to(device)
    return x


def example_batch(dataset: Dataset, n: int, collate: Collate = default_collate) -> tuple[Any, Any]:
    """The first ``n`` items of ``dataset``, collated."""
    n = min(n, len(dataset))  # type: ignore[arg-type]
    return split_batch(collate([dataset[i] for i in range(n)]))
