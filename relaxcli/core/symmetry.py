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

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from e3nn import o3

from .reps import default_dtype

__all__ = ["EquivarianceReport", "transform", "equivariance_error", "check_tolerance"]


def transform(
    x: torch.Tensor, spec: Any, rotation: torch.Tensor, translation: torch.Tensor | None = None
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

    ``cases`` holds the absolute error per case (``"rotation"``, ``"parity"``, ``"+translation"`` suffixes, or one
    case per element of the finite escnn group named by ``finite_group``) and ``elements`` how many group elements
    each case tried. A non-finite output or error makes ``absolute`` and ``relative`` NaN (or inf), never a pass.
    ``samples`` is the number of samples checked, where the caller knows it (``relax project``, ``relax inspect``).
    """

    absolute: float
    relative: float
    cases: dict[str, float] = field(default_factory=dict)
    elements: dict[str, int] = field(default_factory=dict)
    samples: int | None = None
    finite_group: str | None = None

    def tested(self) -> int:
        """The number of group elements tried, over all cases."""
        return sum(self.elements.values())

    def finite(self) -> bool:
        """Whether both errors are finite numbers (a NaN or inf output or error is not)."""
        return math.isfinite(self.absolute) and math.isfinite(self.relative)

    def describe(self) -> str:
        """Which cases were tested and on how much: ``"rotation ×3, parity ×3 (6 group elements, 16 samples)"``."""
        if self.finite_group is not None:  # one case per element
            listing = f"every element of {self.finite_group}"
        else:
            listing = ", ".join(f"{name} ×{n}" for name, n in self.elements.items())
        total = self.tested()
        size = f"{total} group element{'s' if total != 1 else ''}"
        if self.samples is not None:
            size += f", {self.samples} sample{'s' if self.samples != 1 else ''}"
        return f"{listing or 'nothing'} ({size})"


def _as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (list, tuple)) else (out,)


def equivariance_error(
    func: Callable[..., Any],
    args_in: Sequence[torch.Tensor],
    irreps_in: Sequence[Any],
    irreps_out: Any,
    ntrials: int = 3,
    do_parity: bool = True,
    do_translation: bool = True,
    generator: torch.Generator | None = None,
) -> EquivarianceReport:
    """Measure how far ``func`` is from equivariance under random O(3) elements (and translations), or under every
    element of a finite escnn group when the specs are escnn ``FieldType``s.

    Every case the group has is tested: rotations; parity (O(3)) where a spec has odd irreps or
    ``"cartesian_points"`` (elsewhere parity acts as the identity); translation where an input is
    ``"cartesian_points"``. ``do_parity`` and ``do_translation`` describe the group, they do not skip its cases.

    Args:
        func: the model or function; called as ``func(*args)``.
        args_in: example inputs (at least one sample).
        irreps_in: one spec per input (Irreps string, ``"cartesian_points"``, an escnn ``FieldType`` or None).
        irreps_out: the spec of the output, or a list of specs for a tuple output.
        ntrials: random group elements per case, at least 1.
        do_parity: the group has improper rotations (O(3)); False for SO(3)-only models.
        do_translation: the group translates ``"cartesian_points"`` inputs (and outputs).

    Raises:
        ValueError: ``ntrials`` is not a positive integer, an input or the output is empty (no samples), or the
            number of outputs and output specs differ.
    """
    _check_trials(ntrials)
    args_in = tuple(args_in)
    specs_in = list(irreps_in)
    if len(specs_in) != len(args_in):
        raise ValueError(f"{len(args_in)} inputs but {len(specs_in)} input specs")
    specs_out = list(irreps_out) if isinstance(irreps_out, (list, tuple)) else [irreps_out]
    _check_samples(args_in, specs_in)
    if any(hasattr(s, "gspace") for s in specs_in + specs_out):
        return _escnn_equivariance_error(func, args_in, specs_in, specs_out)
    translate_cases = [False, True] if do_translation and "cartesian_points" in specs_in else [False]
    parities = [1.0, -1.0] if do_parity and any(_parity_acts(s) for s in specs_in + specs_out) else [1.0]
    with torch.no_grad():
        ref = _as_tuple(func(*args_in))
    _check_outputs(ref, specs_out)
    acc = _Accumulator()
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
                acc.add(name, out_g, [transform(y, s, rot, shift) for y, s in zip(ref, specs_out)])
    return acc.report()


def check_tolerance(tolerance: Any) -> None:
    """Raise ``ValueError`` unless ``tolerance`` is a positive finite number (a NaN or inf tolerance passes all)."""
    if (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, numbers.Real)
        or not math.isfinite(tolerance)
        or tolerance <= 0
    ):
        raise ValueError(
            f"tolerance must be a positive finite number (the largest relative equivariance error "
            f"accepted, e.g. 1e-5), got {tolerance!r}"
        )


def _check_trials(ntrials: Any) -> None:
    if isinstance(ntrials, bool) or not isinstance(ntrials, numbers.Integral) or ntrials < 1:
        raise ValueError(
            f"ntrials must be a positive integer (random group elements per case, e.g. 3), got "
            f"{ntrials!r}: a check that tries no group element tests nothing"
        )


def _check_samples(args_in: tuple[Any, ...], specs_in: list[Any]) -> None:
    for i, (a, s) in enumerate(zip(args_in, specs_in)):
        if s is not None and torch.is_tensor(a) and a.numel() == 0:
            raise ValueError(
                f"input {i} ({s}) has no samples (shape {tuple(a.shape)}); an equivariance check needs "
                "at least one sample"
            )


def _check_outputs(out: tuple[Any, ...], specs_out: list[Any]) -> None:
    if len(out) != len(specs_out):
        raise ValueError(
            f"the function returned {len(out)} outputs but {len(specs_out)} output specs were given; "
            "give one spec per output"
        )
    for i, y in enumerate(out):
        if y.numel() == 0:
            raise ValueError(
                f"output {i} is empty (shape {tuple(y.shape)}): the check compared nothing; give inputs "
                "with at least one sample"
            )


def _parity_acts(spec: Any) -> bool:
    """Whether parity acts on a feature of this spec (odd irreps, or points); even irreps and None are fixed."""
    if spec is None:
        return False
    if spec == "cartesian_points":
        return True
    return any(ir.p == -1 for _, ir in o3.Irreps(spec))


def _worse(a: float, b: float) -> float:
    """The larger error; NaN when either is NaN (the builtin ``max`` would drop a NaN)."""
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


class _Accumulator:
    """Largest absolute and relative errors per case and overall, with NaN kept, and the elements per case."""

    def __init__(self) -> None:
        self.cases: dict[str, float] = {}
        self.elements: dict[str, int] = {}
        self.absolute, self.relative = 0.0, 0.0

    def add(self, case: str, got: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]) -> None:
        """One group element: each output ``got`` against ``expected`` (float64)."""
        self.elements[case] = self.elements.get(case, 0) + 1
        for y_g, want in zip(got, expected):
            err = float((y_g.to(torch.float64) - want).abs().max())
            scale = float(want.abs().max())
            rel = err / scale if scale > 0 else err  # a NaN scale gives a NaN relative error
            self.cases[case] = _worse(self.cases.get(case, 0.0), err)
            self.absolute = _worse(self.absolute, err)
            self.relative = _worse(self.relative, rel)

    def report(self, finite_group: str | None = None) -> EquivarianceReport:
        return EquivarianceReport(self.absolute, self.relative, self.cases, self.elements, finite_group=finite_group)


def _plain(out: Any) -> tuple[torch.Tensor, ...]:
    from ..ops.steerable import is_geometric_tensor

    items: tuple[Any, ...] = _as_tuple(out)
    return tuple(y.tensor if is_geometric_tensor(y) else y for y in items)


def _escnn_equivariance_error(
    func: Callable[..., Any], args_in: tuple[Any, ...], specs_in: list[Any], specs_out: list[Any]
) -> EquivarianceReport:
    """Every element ``g`` of the (finite) escnn group, acting through the specs (escnn ``FieldType``s, or None for
    an untouched tensor) as escnn's ``GeometricTensor.transform`` does: grid and fibres, in float64."""
    from ..ops.steerable import transform_field

    group = next(s for s in specs_in + specs_out if hasattr(s, "gspace")).gspace.fibergroup
    if group.order() < 1:
        raise ValueError(f"whole-model checks need a finite escnn group, got {group}")
    with torch.no_grad():
        ref = _plain(func(*args_in))
    _check_outputs(ref, specs_out)
    acc = _Accumulator()
    for g in group.elements:
        args_g = tuple(transform_field(a, s, g).to(a.dtype) if s is not None else a for a, s in zip(args_in, specs_in))
        with torch.no_grad():
            out_g = _plain(func(*args_g))
        acc.add(
            str(g),
            out_g,
            [transform_field(y, s, g) if s is not None else y.to(torch.float64) for y, s in zip(ref, specs_out)],
        )
    return acc.report(finite_group=str(group))


def _rand_rotation(generator: torch.Generator) -> torch.Tensor:
    q = torch.randn(4, dtype=torch.float64, generator=generator)
    return o3.quaternion_to_matrix(q / q.norm())
