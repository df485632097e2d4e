"""Batches: how a data item becomes model arguments. An item is ``(inputs, target)``; ``inputs`` is a tensor (one
positional argument), a tuple of tensors (positional arguments) or a dict (keyword arguments).

Example:
    >>> inputs, target = split_batch(default_collate([data.train[i] for i in range(4)]))
    >>> out = call_model(model, to_device(inputs, device, torch.float64))
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from ..errors import RelaxError

__all__ = ["split_batch", "call_args", "call_model", "to_device", "example_batch"]


def split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
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


def call_args(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional and keyword arguments from a batch's inputs (a tensor, a tuple of tensors, or a dict)."""
    if isinstance(inputs, dict):
        return (), inputs
    if isinstance(inputs, (list, tuple)):
        return tuple(inputs), {}
    return (inputs,), {}


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model`` called on a batch's inputs."""
    args, kwargs = call_args(inputs)
    return model(*args, **kwargs)


def to_device(x: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move tensors (nested in tuples/lists/dicts) to ``device``; floating tensors also to ``dtype``."""
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype if x.is_floating_point() else None)
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device, dtype) for v in x)
    if isinstance(x, dict):
        return {k: to_device(v, device, dtype) for k, v in x.items()}
    return x


def example_batch(dataset: Dataset, n: int) -> tuple[Any, torch.Tensor]:
    """The first ``n`` items of ``dataset``, collated."""
    n = min(n, len(dataset))  # type: ignore[arg-type]
    return split_batch(default_collate([dataset[i] for i in range(n)]))
