"""Calling a model for inference when its ``forward`` may itself need gradients.

Interatomic potentials (MACE, NequIP, e3nn networks with a force head) compute forces as ``-dE/dx`` with
``torch.autograd.grad`` inside ``forward``. Under ``torch.no_grad()`` that raises ``element 0 of tensors does not
require grad``. :func:`inference` runs the call without gradients and, for such a model, again with gradients
enabled, returning detached outputs; which models need gradients is remembered, so the failed try happens once.

Example:
    >>> out = inference(model, (batch,), {"compute_force": True})   # out["forces"] is detached
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["inference", "needs_grad", "detach"]

#: Models (or functions) seen to need gradients in their forward pass.
_NEEDS_GRAD: weakref.WeakSet[Any] = weakref.WeakSet()

#: What torch says when ``autograd.grad``/``backward`` meets a graph that ``no_grad`` did not record.
_GRAD_ERRORS = ("does not require grad", "does not have a grad_fn", "One of the differentiated Tensors")


def needs_grad(key: Any) -> bool:
    """Whether ``key`` (a model or function) was seen to compute gradients in its forward pass (:func:`inference`)."""
    try:
        return key in _NEEDS_GRAD
    except TypeError:  # not weak-referenceable
        return False


def inference(
    func: Callable[..., Any], args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, key: Any = None
) -> Any:
    """``func(*args, **kwargs)`` without recording gradients; for a model whose ``forward`` takes gradients (forces
    by autograd) with gradients enabled instead, and the outputs detached. What is remembered is keyed by ``key``
    (default: ``func``): pass the model when ``func`` is a wrapper around it."""
    kwargs = kwargs or {}
    key = func if key is None else key
    if not needs_grad(key):
        try:
            with torch.no_grad():
                return func(*args, **kwargs)
        except RuntimeError as e:
            if not any(m in str(e) for m in _GRAD_ERRORS):
                raise
            with contextlib.suppress(TypeError):  # not weak-referenceable: try without gradients again next time
                _NEEDS_GRAD.add(key)
    with torch.enable_grad():
        return detach(func(*args, **kwargs))


def detach(x: Any) -> Any:
    """``x`` with every tensor (nested in tuples, lists and dicts) detached."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, (list, tuple)):
        return type(x)(detach(v) for v in x)
    if isinstance(x, dict):
        return {k: detach(v) for k, v in x.items()}
    return x
