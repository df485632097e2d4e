"""Projection: strip the branches (θ = 0) and check that what remains, the user's own model, is equivariant.

Example:
    >>> model = project(relaxed, inputs=(pos, vel), irreps_in=["cartesian_points", "1o"],
    ...                 irreps_out="cartesian_points")
    >>> safetensors.torch.save_file(model.state_dict(), ...)  # exactly the user's keys
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import EquivarianceError
from .graph import RelaxedModel
from .symmetry import EquivarianceReport, check_tolerance, equivariance_error

__all__ = ["project", "verify_equivariant"]


def verify_equivariant(
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    irreps_in: Sequence[Any],
    irreps_out: Any,
    tolerance: float = 1e-6,
    *,
    samples: int | None = None,
    call: Callable[..., Any] | None = None,
    **kwargs: Any,
) -> EquivarianceReport:
    """Measure the relative equivariance error of ``model`` (in eval mode) and raise
    :class:`~relaxcli.EquivarianceError` if it exceeds ``tolerance``, is not finite, the model has non-finite weights,
    or no group element was tried. ``call`` is the function checked, ``model(*inputs)`` by default (one that adds
    keyword arguments, or passes a dict as keyword arguments).

    Raises:
        ValueError: ``tolerance`` is not a positive finite number, or see :func:`equivariance_error`.
    """
    check_tolerance(tolerance)
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        listing = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        hold = "weight tensors hold" if len(bad) != 1 else "weight tensor holds"
        raise EquivarianceError(
            f"the projected model cannot be verified: {len(bad)} {hold} NaN or inf ({listing}). Training diverged "
            "or the checkpoint is damaged; use an earlier checkpoint, or retrain with a lower learning rate."
        )
    was_training = model.training
    model.eval()
    try:
        report = equivariance_error(call or model, inputs, irreps_in, irreps_out, **kwargs)
    finally:
        model.train(was_training)
    report.samples = samples
    per_case = ", ".join(f"{k} {v:.2e}" for k, v in report.cases.items())
    if report.tested() == 0:
        raise EquivarianceError(
            "the equivariance check tried no group element, so it verified nothing; give at least one trial per case"
        )
    if not report.finite():
        raise EquivarianceError(
            f"the projected model is not verified: its equivariance error is not finite (relative {report.relative}, "
            f"absolute {report.absolute}; per case {per_case}), so its outputs hold NaN or inf on the check's inputs. "
            "Check the model's weights and inputs (a diverged run, or a division by zero in the model)."
        )
    if not report.relative <= tolerance:
        raise EquivarianceError(
            f"the projected model is not equivariant: relative error {report.relative:.3e} exceeds the tolerance "
            f"{tolerance:.1e} (absolute {report.absolute:.3e}; per case {per_case}; tested {report.describe()}). "
            "Check the symmetry spec of the inputs and output, or raise the tolerance."
        )
    return report


def project(
    relaxed: RelaxedModel,
    *,
    inputs: Sequence[torch.Tensor] | None = None,
    irreps_in: Sequence[Any] | None = None,
    irreps_out: Any = None,
    tolerance: float = 1e-6,
    **kwargs: Any,
) -> nn.Module:
    """Strip the branches of ``relaxed`` and return the user's module; verify equivariance when ``inputs`` are given.

    Raises:
        EquivarianceError: the stripped model's relative error on ``inputs`` exceeds ``tolerance``.
    """
    model = relaxed.strip()
    if inputs is not None:
        if irreps_in is None:
            raise ValueError("project(..., inputs=...) needs irreps_in and irreps_out to check equivariance")
        verify_equivariant(model, inputs, irreps_in, irreps_out, tolerance, **kwargs)
    return model
