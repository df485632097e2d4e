"""Test helpers for equivariant models, written for other libraries' test suites as well (like ``e3nn.util.test``).

- :func:`equivariance_error` / :func:`assert_equivariant`: the whole-model check. Each input and the output is
  described by an e3nn ``Irreps`` (acting on the last axis), ``"cartesian_points"`` (rotation plus translation on
  the last axis of size 3), an escnn ``FieldType``, or None (left alone). Group elements are drawn in float64 and
  inputs are transformed in float64, then cast to their dtype.
- :func:`assert_relaxable`: the whole relax → train-shaped → project round trip on a user's model.
- :func:`intertwiner_residual` / :func:`intertwiner_dim`: a linear map's distance from, and the dimension of, the
  space of intertwiners of two :class:`~relaxcli.Rep`.

Example:
    >>> from relaxcli.testing import assert_relaxable
    >>> def test_my_model_relaxes():
    ...     with default_dtype(torch.float64):
    ...         model = MyModel()
    ...     assert_relaxable(model, (pos, vel), ["cartesian_points", "1o"], "cartesian_points")
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .core.graph import RelaxedModel, relax
from .core.projection import project
from .core.reps import Rep
from .core.symmetry import EquivarianceReport, check_tolerance, equivariance_error, transform
from .ops.steerable import is_geometric_tensor

__all__ = [
    "EquivarianceReport",
    "transform",
    "equivariance_error",
    "assert_equivariant",
    "assert_relaxable",
    "RelaxableReport",
    "intertwiner_dim",
    "intertwiner_residual",
]


def assert_equivariant(
    func: Callable[..., Any],
    args_in: Sequence[torch.Tensor],
    irreps_in: Sequence[Any],
    irreps_out: Any,
    tolerance: float = 1e-6,
    **kwargs: Any,
) -> EquivarianceReport:
    """Raise ``AssertionError`` when the relative equivariance error exceeds ``tolerance`` or is not finite; else
    return the report.

    Raises:
        ValueError: ``tolerance`` is not a positive finite number, ``ntrials`` is not a positive integer, or an input
            has no samples (see :func:`equivariance_error`).
    """
    __tracebackhide__ = True
    check_tolerance(tolerance)
    report = equivariance_error(func, args_in, irreps_in, irreps_out, **kwargs)
    assert report.tested() > 0 and report.relative <= tolerance, (  # NaN fails too
        f"relative equivariance error {report.relative:.3e} > tolerance {tolerance:.1e} "
        f"(absolute {report.absolute:.3e}; per case {report.cases}; tested {report.describe()})"
    )
    return report


@dataclass
class RelaxableReport:
    """What :func:`assert_relaxable` measured: the sites found, and the relative equivariance error of the relaxed
    model with random branches (should be large) and of the projected and reloaded models (should be ~0)."""

    sites: list[str]
    mode: str
    relaxed: EquivarianceReport
    projected: EquivarianceReport
    reloaded: EquivarianceReport


def _outputs(model: Callable[..., Any], args: Sequence[Any]) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(*args)
    items = out if isinstance(out, (list, tuple)) else (out,)
    return [y.tensor if is_geometric_tensor(y) else y for y in items]


def _max_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x.double() - y.double()).abs().max()) for x, y in zip(a, b))


def assert_relaxable(
    model: nn.Module,
    args_in: Sequence[Any],
    irreps_in: Sequence[Any],
    irreps_out: Any,
    *,
    tolerance: float = 1e-6,
    branch_std: float = 0.1,
    ntrials: int = 2,
    relax_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> RelaxableReport:
    """Check that ``model`` goes through constraint relaxation and comes back exactly equivariant.

    1. :func:`~relaxcli.relax` it (sites found, branches zero): the output is unchanged;
    2. random branches at θ = 1 break equivariance (relative error above ``tolerance``);
    3. :func:`~relaxcli.project` strips the branches: the model is the original one (same output, same
       ``state_dict`` keys) and equivariant within ``tolerance``;
    4. its ``state_dict`` loads with ``strict=True`` into a fresh copy of the original, which is equivariant too.

    Run it in float64 where the model allows (``relaxcli.core.reps.default_dtype``): float32 round-off is ~1e-6.

    Args:
        model: the user's model, in the dtype of ``args_in``; it is relaxed in place and returned to its original
            form (the branches are stripped at the end).
        args_in, irreps_in, irreps_out: as for :func:`equivariance_error`.
        tolerance: the largest relative error accepted for an equivariant model.
        branch_std: the scale of the random branch weights of step 2.
        relax_kwargs: passed to :func:`~relaxcli.relax` (``include``, ``exclude``, ``mode``, ``adapters`` ...).
        kwargs: passed to :func:`equivariance_error` (``do_parity``, ``do_translation``).

    Returns:
        a :class:`RelaxableReport`.
    """
    __tracebackhide__ = True
    check_tolerance(tolerance)
    fresh = copy.deepcopy(model)
    keys = list(model.state_dict())
    model.eval()
    reference = _outputs(model, args_in)
    relaxed: RelaxedModel = relax(model, **{"init_std": 0.0, **(relax_kwargs or {})})
    relaxed.eval()
    relaxed.set_theta(1.0)
    zero = _max_difference(_outputs(relaxed, args_in), reference)
    scale = max(float(y.double().abs().max()) for y in reference) or 1.0
    assert zero <= tolerance * scale, f"a zero branch changed the output by {zero:.3e} (relaxed with {relaxed.mode})"
    with torch.no_grad():
        for site in relaxed.sites:
            site.branch.weight.normal_(0.0, branch_std)
    check = {"ntrials": ntrials, **kwargs}
    broken = equivariance_error(relaxed, args_in, irreps_in, irreps_out, **check)
    assert broken.relative > tolerance, (
        f"random branches did not break equivariance (relative error {broken.relative:.3e}): every site's input and "
        f"output may be invariant ({[s.path for s in relaxed.sites]}), or the branches are not applied"
    )
    sites, mode = [s.path for s in relaxed.sites], relaxed.mode
    projected = project(relaxed)
    assert projected is model and list(model.state_dict()) == keys, "projection did not return the user's module"
    same = _max_difference(_outputs(model, args_in), reference)
    assert same == 0.0, f"the projected model's output differs from the original by {same:.3e}"
    after = assert_equivariant(model, args_in, irreps_in, irreps_out, tolerance, **check)
    fresh.load_state_dict(model.state_dict(), strict=True)
    fresh.eval()
    reloaded = assert_equivariant(fresh, args_in, irreps_in, irreps_out, tolerance, **check)
    return RelaxableReport(sites, mode, broken, after, reloaded)


def intertwiner_residual(weight: torch.Tensor, rep_in: Rep, rep_out: Rep) -> tuple[torch.Tensor, torch.Tensor]:
    """Frobenius norms of ``W dρ_in(A_k) − dρ_out(A_k) W`` (per generator) and ``W ρ_in(g) − ρ_out(g) W``."""
    w = weight.to(torch.float64)
    lie = w @ rep_in.generators - rep_out.generators @ w
    disc = w @ rep_in.elements - rep_out.elements @ w
    return lie.flatten(1).norm(dim=1), disc.flatten(1).norm(dim=1)


def intertwiner_dim(rep_in: Rep, rep_out: Rep, tol: float = 1e-9) -> int:
    """Dimension of the joint null space of all constraints on ``W`` (the space of equivariant linear maps)."""
    eye_in, eye_out = torch.eye(rep_in.dim, dtype=torch.float64), torch.eye(rep_out.dim, dtype=torch.float64)
    # vec(W G) = (Gᵀ ⊗ I) vec(W) and vec(G W) = (I ⊗ G) vec(W), with column-major vec.
    blocks = [
        torch.kron(g.T.contiguous(), eye_out) - torch.kron(eye_in, h)
        for g, h in zip((*rep_in.generators, *rep_in.elements), (*rep_out.generators, *rep_out.elements))
    ]
    if not blocks:
        return rep_in.dim * rep_out.dim
    s = torch.linalg.svdvals(torch.cat(blocks))
    rank = int((s > tol * max(1.0, float(s.max()))).sum())
    return rep_in.dim * rep_out.dim - rank
