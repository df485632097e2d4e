"""Equivariance test helpers that other code (and other libraries' tests) can reuse.

The whole-model check follows ``e3nn.util.test``: each input and the output is described by an e3nn ``Irreps``
(acting on the last axis), ``"cartesian_points"`` (rotation plus translation on the last axis of size 3), or None
(left alone). Group elements are drawn in float64 and inputs are transformed in float64, then cast to their dtype.
Unlike ``e3nn.util.test.equivariance_error`` the errors are returned in float64 and also relative to the output.

Example:
    >>> report = equivariance_error(model, (pos, vel), ["cartesian_points", "1o"], "cartesian_points")
    >>> report.relative < 1e-6
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from e3nn import o3

from .reps import default_dtype

__all__ = ["EquivarianceReport", "transform", "equivariance_error"]

def transform(x: torch.Tensor, spec: Any, rotation: torch.Tensor, translation: torch.Tensor | None = None
              ) -> torch.Tensor:
    """Apply the O(3) element ``rotation`` (3x3, det ±1, float64) to ``x`` as ``spec`` says; float64 result."""
    if spec is None:
        return x.to(torch.float64) if torch.is_floating_point(x) else x
    x64 = x.to(torch.float64)
    if spec == "cartesian_points":
        out = x64 @ rotation.T
        return out + translation if translation is not None else out
    irreps = o3.Irreps(spec)
    if x.shape[-1] != irreps.dim:
        raise ValueError(f"feature has last dimension {x.shape[-1]} but irreps {irreps} have dimension {irreps.dim}")
    with default_dtype(torch.float64):
        d = irreps.D_from_matrix(rotation)
    return x64 @ d.T


@dataclass
class EquivarianceReport:
    """Largest errors over the trials: ``absolute = max|f(g·x) − g·f(x)|``, ``relative = absolute / max|g·f(x)|``.

    ``cases`` holds the absolute error per case (``"rotation"``, ``"parity"``, ``"+translation"`` suffixes).
    """

    absolute: float
    relative: float
    cases: dict[str, float] = field(default_factory=dict)


def _as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (list, tuple)) else (out,)


def equivariance_error(func: Callable[..., Any], args_in: Sequence[torch.Tensor], irreps_in: Sequence[Any],
                       irreps_out: Any, ntrials: int = 3, do_parity: bool = True, do_translation: bool = True,
                       generator: torch.Generator | None = None) -> EquivarianceReport:
    """Measure how far ``func`` is from equivariance under random O(3) elements (and translations), or under every
    element of a finite escnn group when the specs are escnn ``FieldType``s.

    Args:
        func: the model or function; called as ``func(*args)``.
        args_in: example inputs.
        irreps_in: one spec per input (Irreps string, ``"cartesian_points"``, an escnn ``FieldType`` or None).
        irreps_out: the spec of the output, or a list of specs for a tuple output.
        ntrials: random group elements per case.
        do_parity: also test improper rotations (O(3)); turn off for SO(3)-only models.
        do_translation: also translate ``"cartesian_points"`` inputs (and outputs).
    """
    args_in = tuple(args_in)
    specs_in = list(irreps_in)
    if len(specs_in) != len(args_in):
        raise ValueError(f"{len(args_in)} inputs but {len(specs_in)} input specs")
    specs_out = list(irreps_out) if isinstance(irreps_out, (list, tuple)) else [irreps_out]
    if any(hasattr(s, "gspace") for s in specs_in + specs_out):
        return _escnn_equivariance_error(func, args_in, specs_in, specs_out)
    translate_cases = [False, True] if do_translation and "cartesian_points" in specs_in else [False]
    parities = [1.0, -1.0] if do_parity else [1.0]
    with torch.no_grad():
        ref = _as_tuple(func(*args_in))
    cases: dict[str, float] = {}
    worst_abs, worst_rel = 0.0, 0.0
    for parity in parities:
        for translate in translate_cases:
            name = ("parity" if parity < 0 else "rotation") + ("+translation" if translate else "")
            for _ in range(ntrials):
                rot = o3.rand_matrix(dtype=torch.float64) if generator is None else _rand_rotation(generator)
                rot = rot * parity
                shift = 10 * torch.randn(1, 3, dtype=torch.float64, generator=generator) if translate else None
                args_g = tuple(
                    transform(a, s, rot, shift).to(a.dtype) if torch.is_tensor(a) and s is not None else a
                    for a, s in zip(args_in, specs_in)
                )
                with torch.no_grad():
                    out_g = _as_tuple(func(*args_g))
                for y_g, y, s in zip(out_g, ref, specs_out):
                    expected = transform(y, s, rot, shift)
                    err = float((y_g.to(torch.float64) - expected).abs().max())
                    scale = float(expected.abs().max())
                    cases[name] = max(cases.get(name, 0.0), err)
                    worst_abs = max(worst_abs, err)
                    worst_rel = max(worst_rel, err / scale if scale > 0 else err)
    return EquivarianceReport(worst_abs, worst_rel, cases)


def _plain(out: Any) -> tuple[torch.Tensor, ...]:
    from ..ops.steerable import is_geometric_tensor

    return tuple(y.tensor if is_geometric_tensor(y) else y for y in _as_tuple(out))


def _escnn_equivariance_error(func: Callable[..., Any], args_in: tuple[Any, ...], specs_in: list[Any],
                              specs_out: list[Any]) -> EquivarianceReport:
    """Every element ``g`` of the (finite) escnn group, acting through the specs (escnn ``FieldType``s, or None for
    an untouched tensor) as escnn's ``GeometricTensor.transform`` does: grid and fibres, in float64."""
    from ..ops.steerable import transform_field

    group = next(s for s in specs_in + specs_out if hasattr(s, "gspace")).gspace.fibergroup
    if group.order() < 1:
        raise ValueError(f"whole-model checks need a finite escnn group, got {group}")
    with torch.no_grad():
        ref = _plain(func(*args_in))
    cases: dict[str, float] = {}
    worst_abs, worst_rel = 0.0, 0.0
    for g in group.elements:
        args_g = tuple(transform_field(a, s, g).to(a.dtype) if s is not None else a
                       for a, s in zip(args_in, specs_in))
        with torch.no_grad():
            out_g = _plain(func(*args_g))
        for y_g, y, s in zip(out_g, ref, specs_out):
            expected = transform_field(y, s, g) if s is not None else y.to(torch.float64)
            err = float((y_g.to(torch.float64) - expected).abs().max())
            scale = float(expected.abs().max())
            cases[str(g)] = max(cases.get(str(g), 0.0), err)
            worst_abs = max(worst_abs, err)
            worst_rel = max(worst_rel, err / scale if scale > 0 else err)
    return EquivarianceReport(worst_abs, worst_rel, cases)


def _rand_rotation(generator: torch.Generator) -> torch.Tensor:
    q = torch.randn(4, dtype=torch.float64, generator=generator)
    return o3.quaternion_to_matrix(q / q.norm())
