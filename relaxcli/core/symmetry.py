"""Equivariance test helpers that other code (and other libraries' tests) can reuse.

The whole-model check follows ``e3nn.util.test``: each input and the output is described by an e3nn ``Irreps``
(acting on the last axis), ``"cartesian_points"`` (rotation plus translation on the last axis of size 3), or None
(left alone); a mapping names another axis, ``{rep: cartesian_points, axis: 1}`` for points ``[B, 3, N]`` (see
:func:`feature_spec`). Group elements are drawn in float64 and inputs are transformed in float64, then cast to
their dtype.
Unlike ``e3nn.util.test.equivariance_error`` the errors are returned in float64 and also relative to the output.

Example:
    >>> report = equivariance_error(model, (pos, vel), ["cartesian_points", "1o"], "cartesian_points")
    >>> report.relative < 1e-6
    True
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from e3nn import o3

from .calls import inference
from .reps import default_dtype

__all__ = [
    "EquivarianceReport",
    "FeatureSpec",
    "feature_spec",
    "is_feature_mapping",
    "transform",
    "wigner_matrix",
    "act",
    "equivariance_error",
    "check_tolerance",
]

#: The keys that make a mapping one feature's spec (``{rep: cartesian_points, axis: 1}``) rather than specs keyed by
#: the entries of a dict input.
FEATURE_KEYS = ("rep", "axis")


@dataclass(frozen=True)
class FeatureSpec:
    """How O(3) acts on one tensor: ``rep`` (``"cartesian_points"``: rotation plus translation on a 3-axis; or e3nn
    irreps) on the axis ``axis`` (default the last). Parse one with :func:`feature_spec`."""

    rep: str
    axis: int = -1

    @property
    def points(self) -> bool:
        """Whether the feature is Cartesian points (translated as well as rotated)."""
        return self.rep == "cartesian_points"

    @property
    def dim(self) -> int:
        """The size of the axis the group acts on."""
        return 3 if self.points else int(o3.Irreps(self.rep).dim)

    def parity_acts(self) -> bool:
        """Whether parity acts (points, odd irreps); on even irreps it is the identity."""
        return self.points or any(ir.p == -1 for _, ir in o3.Irreps(self.rep))

    def __str__(self) -> str:
        return self.rep if self.axis == -1 else f"{self.rep} on axis {self.axis}"


def is_feature_mapping(value: Any) -> bool:
    """Whether ``value`` is one feature's spec written as a mapping (it has a ``rep`` or ``axis`` key), not specs
    keyed by the entries of a dict input."""
    return isinstance(value, Mapping) and any(k in value for k in FEATURE_KEYS)


def feature_spec(value: Any) -> FeatureSpec | None:
    """One tensor's spec, normalised: None (left alone); an e3nn irreps string or ``o3.Irreps``, or
    ``"cartesian_points"``, acting on the last axis; or a mapping that also says the axis, ``{rep: cartesian_points,
    axis: 1}`` for points ``[B, 3, N]`` (the representation may instead sit under a name of your choosing,
    ``{points: cartesian_points, axis: 1}``). A :class:`FeatureSpec` is returned as it is.

    Example:
        >>> feature_spec({"rep": "cartesian_points", "axis": 1})
        FeatureSpec(rep='cartesian_points', axis=1)

    Raises:
        ValueError: a malformed spec, in one paragraph saying what is accepted.
    """
    if value is None or isinstance(value, FeatureSpec):
        return value
    accepted = (
        "an e3nn Irreps string such as '1x1o', 'cartesian_points', null, or a mapping giving the axis the group "
        "acts on, {rep: cartesian_points, axis: 1}"
    )
    if isinstance(value, o3.Irreps):
        return FeatureSpec(str(value))
    if isinstance(value, Mapping):
        axis = value.get("axis", -1)
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(f"axis: expected an integer (the axis the group acts on, e.g. 1), got {axis!r}")
        named = {k: v for k, v in value.items() if k != "axis"}
        if len(named) != 1 or isinstance(next(iter(named.values())), Mapping):
            raise ValueError(
                f"{dict(value)!r}: a spec written as a mapping holds the representation under 'rep' (or one name "
                f"of your choosing) and the axis under 'axis', e.g. {{rep: cartesian_points, axis: 1}}; expected "
                f"{accepted}"
            )
        rep = next(iter(named.values()))
        if rep is None:
            return None
        spec = feature_spec(rep)
        return None if spec is None else FeatureSpec(spec.rep, axis)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected {accepted}, got {value!r}")
    if value == "cartesian_points":
        return FeatureSpec(value)
    try:
        o3.Irreps(value)
    except Exception:  # e3nn raises ValueError, but any failure means "not an Irreps"
        raise ValueError(f"{value!r} is not a valid spec; expected {accepted}") from None
    return FeatureSpec(value)


def transform(
    x: torch.Tensor, spec: Any, rotation: torch.Tensor, translation: torch.Tensor | None = None
) -> torch.Tensor:
    """Apply the O(3) element ``rotation`` (3x3, det ±1, float64) to ``x`` as ``spec`` (see :func:`feature_spec`)
    says, on the spec's axis; float64 result."""
    parsed = feature_spec(spec)
    if parsed is None:
        return x.to(torch.float64) if torch.is_floating_point(x) else x
    if not -x.dim() <= parsed.axis < x.dim():
        raise ValueError(f"{parsed} acts on axis {parsed.axis}, but the tensor has shape {tuple(x.shape)}")
    x64 = x.to(torch.float64).movedim(parsed.axis, -1)
    if parsed.dim == 1 and parsed.axis == -1 and (x.dim() == 0 or x.shape[-1] != 1):
        return x64 * wigner_matrix(parsed.rep, rotation)[0, 0]  # one scalar irrep acts on every entry as ±1
    if x64.shape[-1] != parsed.dim:
        raise ValueError(
            f"{parsed.rep} acts on an axis of size {parsed.dim}, but axis {parsed.axis} of the tensor has size "
            f"{x64.shape[-1]} (shape {tuple(x.shape)})"
        )
    if parsed.points:
        out = x64 @ rotation.T
        out = out + translation if translation is not None else out
    else:
        out = x64 @ wigner_matrix(parsed.rep, rotation).T
    return out.movedim(-1, parsed.axis)


def wigner_matrix(irreps: Any, rotation: torch.Tensor) -> torch.Tensor:
    """``o3.Irreps(irreps).D_from_matrix(rotation)`` in float64, with the ``l <= 1`` blocks exact: ``±1`` and the
    matrix itself (e3nn's ``l = 1`` basis is Cartesian). e3nn goes through Euler angles, which costs up to ~2e-10 for
    some rotations and would make a float64 check at 1e-12 fail at random; higher ``l`` still does."""
    irreps = o3.Irreps(irreps)
    det = float(torch.det(rotation))
    blocks = []
    for mul, ir in irreps:
        if ir.l == 0:
            block = torch.full((1, 1), det if ir.p == -1 else 1.0, dtype=torch.float64)
        elif ir.l == 1:
            block = rotation.to(torch.float64) * (1.0 if ir.p == -1 else det)
        else:
            with default_dtype(torch.float64):
                block = o3.Irreps([(1, ir)]).D_from_matrix(rotation)
        blocks += [block] * mul
    return torch.block_diag(*blocks) if blocks else torch.zeros(0, 0, dtype=torch.float64)


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
    dtype: str | None = None  # the precision of the check, where the caller chose it (``relax project``)

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
        if self.dtype is not None:
            size += f", in {self.dtype}"
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
        func: the model or function; called as ``func(*args)``. A ``forward`` that takes gradients itself
            (forces by autograd) is run with gradients enabled (see :func:`relaxcli.core.calls.inference`).
        args_in: example inputs (at least one sample).
        irreps_in: one spec per input (Irreps string, ``"cartesian_points"``, an escnn ``FieldType`` or None); for
            a dict input, a dict of specs keyed like it (``{"positions": "cartesian_points", "cell": "1x1o"}``;
            keys it does not name are left alone).
        irreps_out: the spec of the output, a list of specs for a tuple output, or for a dict output a dict of
            specs naming the entries to compare (``{"energy": "0e", "forces": "1x1o"}``).
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
    _check_samples(args_in, specs_in)
    leaves = [s for spec in [*specs_in, irreps_out] for s in _leaf_specs(spec)]
    if any(hasattr(s, "gspace") for s in leaves):
        specs_out = list(irreps_out) if isinstance(irreps_out, (list, tuple)) else [irreps_out]
        return _escnn_equivariance_error(func, args_in, specs_in, specs_out)
    points_in = any(_points(s) for spec in specs_in for s in _leaf_specs(spec))
    translate_cases = [False, True] if do_translation and points_in else [False]
    parities = [1.0, -1.0] if do_parity and any(_parity_acts(s) for s in leaves) else [1.0]
    ref, specs_out = _outputs(inference(func, args_in), irreps_out)
    acc = _Accumulator()
    for parity in parities:
        for translate in translate_cases:
            name = ("parity" if parity < 0 else "rotation") + ("+translation" if translate else "")
            for _ in range(ntrials):
                rot = o3.rand_matrix(dtype=torch.float64) if generator is None else _rand_rotation(generator)
                rot = rot * parity
                shift = 10 * torch.randn(1, 3, dtype=torch.float64, generator=generator) if translate else None
                args_g = tuple(act(a, s, rot, shift) for a, s in zip(args_in, specs_in))
                out_g, _ = _outputs(inference(func, args_g), irreps_out)
                acc.add(name, out_g, [transform(y, s, rot, shift) for y, s in zip(ref, specs_out)])
    return acc.report()


def act(x: Any, spec: Any, rotation: torch.Tensor, translation: torch.Tensor | None = None) -> Any:
    """The O(3) element acting on one model input ``x`` as ``spec`` says, in ``x``'s dtype: a tensor with its
    feature spec (see :func:`transform`; None leaves it alone), or a dict of tensors with a dict of specs keyed like
    it (keys the spec does not name are left alone).

    Raises:
        ValueError: a dict spec for an input that is not a dict, or naming a key the input lacks.
    """
    if _keyed(spec):
        _check_keys(x, spec, "input")
        return {k: act(v, spec[k], rotation, translation) if k in spec else v for k, v in x.items()}
    if spec is None or not torch.is_tensor(x):
        return x
    return transform(x, spec, rotation, translation).to(x.dtype)


def _check_keys(value: Any, spec: Mapping[str, Any], what: str) -> None:
    """A spec keyed by name needs a dict ``value`` (an input or the output) holding every key it names."""
    if not isinstance(value, Mapping):
        raise ValueError(
            f"the {what} spec is keyed by name ({', '.join(map(str, spec))}) but the {what} is a "
            f"{type(value).__name__}, not a dict"
        )
    missing = [k for k in spec if k not in value]
    if missing:
        raise ValueError(
            f"the {what} spec names {', '.join(map(repr, missing))}, which the {what} lacks; it has "
            f"{', '.join(map(repr, value))}"
        )


def _keyed(spec: Any) -> bool:
    """Whether ``spec`` is specs keyed by the entries of a dict (not one feature's spec written as a mapping)."""
    return isinstance(spec, Mapping) and not is_feature_mapping(spec)


def _leaf_specs(spec: Any) -> list[Any]:
    """The feature specs inside ``spec`` (a spec, a list of them, or a dict of them keyed by name)."""
    if _keyed(spec):
        return [s for v in spec.values() for s in _leaf_specs(v)]
    if isinstance(spec, (list, tuple)):
        return [s for v in spec for s in _leaf_specs(v)]
    return [spec]


def _outputs(out: Any, spec: Any) -> tuple[tuple[torch.Tensor, ...], list[Any]]:
    """The outputs to compare and their specs: for a dict spec the named entries of a dict output (in the spec's
    order; a null spec compares the entry as invariant), otherwise every output (a tensor or a tuple)."""
    if _keyed(spec):
        _check_keys(out, spec, "output")
        outputs, specs = tuple(out[k] for k in spec), list(spec.values())
    else:
        outputs, specs = _as_tuple(out), list(spec) if isinstance(spec, (list, tuple)) else [spec]
    _check_outputs(outputs, specs)
    return outputs, specs


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
    parsed = feature_spec(spec)
    return parsed is not None and parsed.parity_acts()


def _points(spec: Any) -> bool:
    """Whether ``spec`` describes Cartesian points (which translations move)."""
    parsed = feature_spec(spec)
    return parsed is not None and parsed.points


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
