"""Evaluation metrics reported beside the loss (recipe ``trainer.metrics``): one registry, ``METRICS``.

A metric is ``fn(output, target) -> 0-dim tensor``, the mean over the batch; the trainer weights it by batch size
over a split. Adding one is one function plus one entry here.

Example:
    >>> float(METRICS["accuracy"](torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0])))
    0.5
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import RelaxError

__all__ = ["METRICS", "accuracy"]


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


#: The metrics a recipe may list in ``trainer.metrics``: ``name -> fn(output, target)``, a batch mean.
METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"accuracy": accuracy}
