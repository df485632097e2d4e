"""Evaluation metrics reported beside the loss (recipe ``trainer.metrics``): one registry, ``METRICS``.

A metric is ``fn(output, target) -> 0-dim tensor``, the mean over the batch; the trainer weights it by batch size
over a split. Adding one is one function plus one entry here.

Example:
    >>> float(METRICS["accuracy"](torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0])))
    0.5
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..atoms.losses import energy_error, force_error
from ..errors import RelaxError

__all__ = ["METRICS", "accuracy", "energy_mae", "forces_mae"]


def accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy of logits ``[B, C]`` against integer class labels ``[B]``.

    Example:
        >>> float(accuracy(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0])))
        0.5
    """
    if output.dim() != 2 or target.shape != output.shape[:1] or target.is_floating_point():
        raise RelaxError(
            f"trainer.metrics: accuracy needs logits [batch, classes] and integer labels [batch], got "
            f"an output of shape {tuple(output.shape)} and a {target.dtype} target of shape "
            f"{tuple(target.shape)}; remove it from trainer.metrics for this task"
        )
    return (output.argmax(dim=-1) == target).to(torch.float64).mean()


def energy_mae(output: Any, target: Any) -> torch.Tensor:
    """Mean absolute energy error of a potential (dict output and target), per atom where the target has
    ``natoms``."""
    return _potential(energy_error, output, target, energy_mae.__name__)


def forces_mae(output: Any, target: Any) -> torch.Tensor:
    """Mean absolute force error of a potential, over atoms and components."""
    return _potential(force_error, output, target, forces_mae.__name__)


def _potential(error: Callable[[Any, Any], torch.Tensor], output: Any, target: Any, name: str) -> torch.Tensor:
    try:
        return error(output, target).abs().to(torch.float64).mean()
    except ValueError as e:
        raise RelaxError(f"trainer.metrics: {name}: {e}; remove it from trainer.metrics for this task") from None


#: The metrics a recipe may list in ``trainer.metrics``: ``name -> fn(output, target)``, a batch mean.
METRICS: dict[str, Callable[[Any, Any], torch.Tensor]] = {
    "accuracy": accuracy,
    "energy_mae": energy_mae,
    "forces_mae": forces_mae,
}
