"""Op adapters: how ``relax`` recognises an equivariant linear op, what its representations are, and how the branch
is attached to it.

An adapter answers four questions about a module:

- ``matches(module)``: is this an op I know?
- ``make_branch(module, init_std)``: the unconstrained branch (with the input and output representations);
- ``feature(args, kwargs)``: which call argument is the feature the branch acts on;
- ``add(output, branch_output)``: how the branch output joins the op's output.

and, optionally, a fifth: ``can_fuse(module)`` / ``fused(module, branch, args, kwargs)``: where the op's own matrix
is cheap to form in the branch's layout (a VN linear, an escnn convolution's expanded filter), ``op(x) + θ·W x`` is
computed as one product with the matrix ``op + θ W``: the same map, at about the cost of the branch alone.

Built in: e3nn ``o3.Linear``, e3nn tensor products with internal weights (the branch acts on the first input, as in
the relaxation paper's SEGNN), Vector-Neuron linears (the shipped :class:`relaxcli.VNLinear` or any VN-style
class), and escnn ``R2Conv`` / ``Linear`` over C_n and D_n (:mod:`relaxcli.steerable`). Users add their own with
:func:`register_op`, or without Python through ``relax.ops`` in a recipe:
:class:`IrrepsAdapter` for any layer on e3nn irreps features, :class:`VectorNeuronAdapter` for VN-style layers,
:class:`ExplicitAdapter` for representations given as matrices.

Example:
    >>> class MyLinear(torch.nn.Module): ...            # maps "4x0e+2x1o" -> "4x0e+2x1o"
    >>> register_op(ExplicitAdapter(MyLinear, rep_in=Rep.from_irreps("4x0e+2x1o"),
    ...                             rep_out=Rep.from_irreps("4x0e+2x1o")))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from e3nn import o3
from torch import nn

from .branches import Branch, DenseBranch, VectorBranch
from .reps import Rep
from .vn import VNLinear

__all__ = [
    "OpAdapter", "IrrepsAdapter", "IrrepsLinearAdapter", "TensorProductAdapter", "VectorNeuronAdapter",
    "ExplicitAdapter",
    "register_op", "registered_ops", "find_adapter",
]


def _class_names(module: nn.Module) -> set[str]:
    return {f"{c.__module__}.{c.__qualname__}" for c in type(module).__mro__}


class OpAdapter:
    """Base class of op adapters. Subclasses set ``name`` and implement ``matches`` and ``make_branch``."""

    name: str = "op"

    def matches(self, module: nn.Module) -> bool:
        raise NotImplementedError

    def make_branch(self, module: nn.Module, init_std: float) -> Branch:
        raise NotImplementedError

    def feature(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        """The input the branch acts on; by default the first positional argument."""
        if args:
            return args[0]
        if len(kwargs) == 1:
            return next(iter(kwargs.values()))
        raise TypeError(f"{self.name}: cannot tell which argument is the feature (kwargs {sorted(kwargs)})")

    def add(self, output: Any, branch_output: torch.Tensor) -> Any:
        """Join the branch output to the op's output; override for wrapped outputs."""
        return output + branch_output

    def can_fuse(self, module: nn.Module) -> bool:
        """Whether :meth:`fused` can compute this op together with its branch (default: no)."""
        return False

    def fused(self, module: nn.Module, branch: Branch, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``module(*args, **kwargs)`` plus ``branch(x)``, as one product with the op's matrix plus ``θ W``."""
        raise NotImplementedError(f"{self.name} does not fuse its op and branch")


class _ClassAdapter(OpAdapter):
    """Matches instances of a class given as the class itself or by its import path."""

    def __init__(self, target: type[nn.Module] | str) -> None:
        self.target = target
        self.name = target if isinstance(target, str) else f"{target.__module__}.{target.__qualname__}"

    def matches(self, module: nn.Module) -> bool:
        if isinstance(self.target, str):
            return self.target in _class_names(module)
        return isinstance(module, self.target)


def _o3_reps(irreps_in: o3.Irreps, irreps_out: o3.Irreps) -> tuple[Rep, Rep]:
    """O(3) reps on both sides; parity is included on both as soon as either side has an odd irrep."""
    odd = any(ir.p == -1 for _, ir in (*irreps_in, *irreps_out))
    return Rep.from_irreps(irreps_in, parity=odd), Rep.from_irreps(irreps_out, parity=odd)


class _FeatureArg(_ClassAdapter):
    """The feature is the argument at position (int) or keyword (str) ``feature_arg``."""

    feature_arg: int | str = 0

    def feature(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        if isinstance(self.feature_arg, str):
            return kwargs[self.feature_arg]
        if self.feature_arg == 0:
            return super().feature(args, kwargs)
        return args[self.feature_arg]


class IrrepsAdapter(_FeatureArg):
    """Any layer whose feature and output are e3nn irreps on the last axis; O(3) acts through the irreps (so(3)
    generators, and parity as soon as either side has an odd irrep).

    Args:
        target: the layer class, or its import path.
        irreps_in, irreps_out: the name of the layer's attribute holding its irreps (an ``o3.Irreps`` or a string),
            or the irreps themselves (``"8x0e+4x1o"``).
        feature_arg: position (int) or keyword (str) of the feature argument.

    Example:
        >>> register_op(IrrepsAdapter("mypkg.layers.IrrepsDense", irreps_in="irreps_in", irreps_out="irreps_out"))
    """

    def __init__(self, target: type[nn.Module] | str, irreps_in: str = "irreps_in", irreps_out: str = "irreps_out",
                 feature_arg: int | str = 0) -> None:
        super().__init__(target)
        self.irreps_in, self.irreps_out, self.feature_arg = irreps_in, irreps_out, feature_arg

    def _irreps(self, module: nn.Module, spec: str) -> o3.Irreps:
        value = getattr(module, spec, None) if spec.isidentifier() else None
        try:
            return o3.Irreps(value if value is not None else spec)
        except (ValueError, AssertionError, TypeError):
            raise TypeError(f"{self.name}: {spec!r} is neither an attribute of the layer holding its irreps nor an "
                            f"irreps string such as '8x0e+4x1o'") from None

    def make_branch(self, module: nn.Module, init_std: float) -> Branch:
        rep_in, rep_out = _o3_reps(self._irreps(module, self.irreps_in), self._irreps(module, self.irreps_out))
        return DenseBranch(rep_in.dim, rep_out.dim, init_std, rep_in, rep_out)


class IrrepsLinearAdapter(IrrepsAdapter):
    """e3nn ``o3.Linear``: features ``[..., irreps_in.dim] -> [..., irreps_out.dim]``."""

    def __init__(self) -> None:
        super().__init__(o3.Linear)
        self.name = "e3nn.o3.Linear"


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
        return super().matches(module) and bool(module.internal_weights) and module.weight_numel > 0


class VectorNeuronAdapter(_ClassAdapter):
    """A Vector-Neuron linear layer: ``[B, C_in, 3, ...] -> [B, C_out, 3, ...]`` (axes configurable).

    Args:
        target: the layer class, or its import path as a string (``"mypkg.layers.MyVNLinear"``).
        in_channels, out_channels: attribute names on the layer holding the channel counts.
        channel_axis, vector_axis: where channels and the 3-vector sit in the feature tensor.
    """

    def __init__(self, target: type[nn.Module] | str = VNLinear, in_channels: str = "in_channels",
                 out_channels: str = "out_channels", channel_axis: int = 1, vector_axis: int = 2) -> None:
        super().__init__(target)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.channel_axis, self.vector_axis = channel_axis, vector_axis

    def make_branch(self, module: nn.Module, init_std: float) -> Branch:
        try:
            c_in, c_out = getattr(module, self.in_channels), getattr(module, self.out_channels)
        except AttributeError as e:
            raise TypeError(f"{self.name}: layer has no channel attribute ({e}); pass in_channels=/out_channels= "
                            "naming the attributes that hold the channel counts") from None
        return VectorBranch(int(c_in), int(c_out), init_std, self.channel_axis, self.vector_axis)

    def can_fuse(self, module: nn.Module) -> bool:
        return type(module).forward is VNLinear.forward  # the shipped layer (or a subclass that keeps its forward)

    def fused(self, module: nn.Module, branch: Branch, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # VNLinear's W acts on channels and leaves the 3-axis alone: kron(W, I_3) in the branch's index c*3+i
        eye = torch.eye(3, dtype=module.weight.dtype, device=module.weight.device)
        return branch.apply(self.feature(args, kwargs), torch.kron(module.weight, eye) + branch.theta * branch.weight)


class ExplicitAdapter(_FeatureArg):
    """A user's op whose representations are given explicitly; the feature is the last axis.

    Args:
        target: the op class or its import path.
        rep_in, rep_out: a :class:`Rep`, or a function ``module -> Rep``.
        feature_arg: position (int) or keyword (str) of the feature argument.
    """

    def __init__(self, target: type[nn.Module] | str, rep_in: Rep | Callable[[nn.Module], Rep],
                 rep_out: Rep | Callable[[nn.Module], Rep], feature_arg: int | str = 0) -> None:
        super().__init__(target)
        self.rep_in, self.rep_out, self.feature_arg = rep_in, rep_out, feature_arg

    def make_branch(self, module: nn.Module, init_std: float) -> Branch:
        rep_in = self.rep_in(module) if callable(self.rep_in) else self.rep_in
        rep_out = self.rep_out(module) if callable(self.rep_out) else self.rep_out
        return DenseBranch(rep_in.dim, rep_out.dim, init_std, rep_in, rep_out)


def _builtin() -> list[OpAdapter]:
    from .steerable import EscnnConvAdapter, EscnnLinearAdapter  # match by class name: escnn is not imported

    return [IrrepsLinearAdapter(), TensorProductAdapter(), VectorNeuronAdapter(), EscnnConvAdapter(),
            EscnnLinearAdapter()]


_REGISTRY: list[OpAdapter] = _builtin()


def register_op(adapter: OpAdapter) -> OpAdapter:
    """Register an adapter; it takes precedence over the ones registered before it. Returns the adapter."""
    if not isinstance(adapter, OpAdapter):
        raise TypeError(f"register_op expects an OpAdapter, got {type(adapter).__name__}")
    _REGISTRY.insert(0, adapter)
    return adapter


def registered_ops() -> list[OpAdapter]:
    """The adapters in the order they are tried."""
    return list(_REGISTRY)


def find_adapter(module: nn.Module, adapters: list[OpAdapter] | None = None) -> OpAdapter | None:
    """The first adapter (of ``adapters``, default the registry) that matches ``module``, or None."""
    for adapter in _REGISTRY if adapters is None else adapters:
        if adapter.matches(module):
            return adapter
    return None
