"""Ops on e3nn irreps features: ``o3.Linear``, tensor products with internal weights, and any user layer whose
feature and output are e3nn irreps on the last axis (:class:`IrrepsAdapter`, recipe action ``irreps``).

O(3) acts through the irreps: the so(3) generators, and parity as soon as either side has an odd irrep.

Example:
    >>> register_op(IrrepsAdapter("mypkg.layers.IrrepsDense", irreps_in="irreps_in", irreps_out="irreps_out"))
"""

from __future__ import annotations

from typing import Any

import torch
from e3nn import o3
from torch import nn

from ..core.branches import Branch, DenseBranch
from ..core.reps import Rep
from .base import ClassAdapter, read_attribute

__all__ = ["IrrepsAdapter", "IrrepsLinearAdapter", "TensorProductAdapter"]


def _o3_reps(irreps_in: o3.Irreps, irreps_out: o3.Irreps) -> tuple[Rep, Rep]:
    """O(3) reps on both sides; parity is included on both as soon as either side has an odd irrep."""
    odd = any(ir.p == -1 for _, ir in (*irreps_in, *irreps_out))
    return Rep.from_irreps(irreps_in, parity=odd), Rep.from_irreps(irreps_out, parity=odd)


def _is_path(spec: str) -> bool:
    """Whether ``spec`` reads as an attribute name, dotted for a submodule's (irreps strings never do)."""
    return all(part.isidentifier() for part in spec.split("."))


class IrrepsAdapter(ClassAdapter):
    """Any layer whose feature and output are e3nn irreps on the last axis.

    Args:
        target: the layer class, or its import path.
        irreps_in, irreps_out: the name of the layer's attribute holding its irreps (an ``o3.Irreps`` or a string),
            dotted for a submodule's (``"linear.irreps_in"``), or the irreps themselves (``"8x0e+4x1o"``).
        feature_arg: position (int) or keyword (str) of the feature argument.
        subclasses: match instances of subclasses of ``target`` too (default); False for the class itself only.
    """

    action = "irreps"
    recipe_keys = ("irreps_in", "irreps_out", "feature_arg", "subclasses")

    def __init__(
        self,
        target: type[nn.Module] | str,
        irreps_in: str = "irreps_in",
        irreps_out: str = "irreps_out",
        feature_arg: int | str = 0,
        subclasses: bool = True,
    ) -> None:
        super().__init__(target, feature_arg, subclasses)
        for key, spec in (("irreps_in", irreps_in), ("irreps_out", irreps_out)):
            if not _is_path(spec):
                try:
                    o3.Irreps(spec)
                except (ValueError, AssertionError):
                    raise ValueError(
                        key, f"{spec!r} is neither an attribute name of the layer nor irreps such as '8x0e+4x1o'"
                    ) from None
        self.irreps_in, self.irreps_out = irreps_in, irreps_out

    def irreps(self, module: nn.Module) -> tuple[o3.Irreps, o3.Irreps]:
        """The op's input and output irreps."""
        return self._irreps(module, self.irreps_in), self._irreps(module, self.irreps_out)

    def _irreps(self, module: nn.Module, spec: str) -> o3.Irreps:
        try:
            value = read_attribute(module, spec, "the attribute") if _is_path(spec) else None
        except AttributeError:
            value = None
        try:
            return o3.Irreps(value if value is not None else spec)
        except (ValueError, AssertionError, TypeError):
            raise TypeError(
                f"{self.name}: {spec!r} is neither an attribute of the layer holding its irreps nor an "
                f"irreps string such as '8x0e+4x1o'"
            ) from None

    def make_branch(self, module: nn.Module, init_std: float) -> Branch:
        rep_in, rep_out = _o3_reps(*self.irreps(module))
        return DenseBranch(rep_in.dim, rep_out.dim, init_std, rep_in, rep_out)

    def record(self, module: nn.Module) -> dict[str, Any]:
        irreps_in, irreps_out = self.irreps(module)
        return {"action": self.action, "irreps_in": str(irreps_in), "irreps_out": str(irreps_out)}

    def fits_feature(self, module: nn.Module, x: torch.Tensor) -> bool:
        return x.dim() >= 1 and int(x.shape[-1]) == int(self.irreps(module)[0].dim)


class IrrepsLinearAdapter(IrrepsAdapter):
    """e3nn ``o3.Linear`` with internal weights: features ``[..., irreps_in.dim] -> [..., irreps_out.dim]``.

    Weights passed in from outside (``internal_weights=False``) belong to another network and are left alone."""

    def __init__(self) -> None:
        super().__init__(o3.Linear)
        self.name = "e3nn.o3.Linear"

    def matches(self, module: nn.Module) -> bool:
        return super().matches(module) and bool(getattr(module, "internal_weights", True))


class TensorProductAdapter(IrrepsAdapter):
    """e3nn ``o3.TensorProduct`` (and ``FullyConnectedTensorProduct`` ...) with internal weights.

    The branch maps the first input ``x1`` (``irreps_in1``) to ``irreps_out``. Tensor products whose weights are
    computed outside (``internal_weights=False``, e.g. from a radial MLP) are not linear ops with trainable
    intertwiners and are left alone.
    """

    def __init__(self) -> None:
        super().__init__(o3.TensorProduct, irreps_in="irreps_in1")
        self.name = "e3nn.o3.TensorProduct"

    def matches(self, module: nn.Module) -> bool:
        return (
            super().matches(module)
            and bool(getattr(module, "internal_weights", False))
            and int(getattr(module, "weight_numel", 0)) > 0
        )
