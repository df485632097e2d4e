"""Vector-Neuron linear maps (Deng et al., 2021): the shipped :class:`VNLinear` and the adapter that relaxes any
VN-style layer (:class:`VectorNeuronAdapter`, recipe action ``vector_neurons``).

Features are ``[B, C, 3, ...]``: ``C`` channels, each a Cartesian 3-vector, any number of trailing point axes.
The layer mixes channels only, ``y[:, o] = Σ_c W[o, c] x[:, c]``, which commutes with every rotation ``x -> x Rᵀ``.

Example:
    >>> layer = VNLinear(8, 16)
    >>> layer(torch.randn(2, 8, 3, 100)).shape
    torch.Size([2, 16, 3, 100])
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..core.branches import Branch, LayoutError, VectorBranch, vector_axes
from .base import ClassAdapter, read_attribute

__all__ = ["VNLinear", "VectorNeuronAdapter"]


class VNLinear(nn.Module):
    """``y[b, o, i, ...] = Σ_c weight[o, c] x[b, c, i, ...]`` on Vector-Neuron features ``[B, C, 3, ...]``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("oc,bc...->bo...", self.weight, x)

    def extra_repr(self) -> str:
        return f"{self.in_channels}x3 -> {self.out_channels}x3"


class VectorNeuronAdapter(ClassAdapter):
    """A Vector-Neuron linear layer: channels mixed, every channel a 3-vector (``[B, C_in, 3, ...] -> [B, C_out, 3,
    ...]`` by default; the axes may differ per call site).

    Written as VN models are in the wild, the maps are often plain ``nn.Linear(c_in, c_out, bias=False)`` applied
    to a transposed feature, ``linear(x.transpose(1, -1)).transpose(1, -1)``: register ``torch.nn.Linear`` and every
    such map is a site, with its channels on the last axis and its 3-vector axis found per call. An ``nn.Linear``
    with a bias is not a VN map (the bias breaks rotation equivariance) and is left alone, so a model's invariant
    head is no site.

    Args:
        target: the layer class, or its import path (any public alias: ``"torch.nn.Linear"``).
        in_channels, out_channels: where the layer keeps its channel counts: an attribute name, dotted for a
            submodule's (``"map_to_feat.in_features"``), a function ``layer -> count``, or the count itself. By
            default ``in_channels``/``out_channels``, else ``in_features``/``out_features`` (``nn.Linear``), else
            the shape ``[out, in]`` of the layer's one 2-D weight (a wrapper around one ``nn.Linear``).
        channel_axis: the feature's channel axis; None: ``-1`` for an ``nn.Linear`` (the axis it maps), else 1.
        vector_axis: the feature's 3-vector axis; None: found at each call, as the one axis of size 3 besides the
            channel axis and the batch axis 0 (several such axes are an error naming the site, asking for it).
        layouts: per call site, by ``fnmatch`` glob on the module path (the first that matches wins): the axes
            that differ there, ``{"encoder.conv_pos.*": {"vector_axis": 2}}`` (or ``[channel_axis, vector_axis]``).
        subclasses: match instances of subclasses of ``target`` too (default); False for the class itself only.

    Example:
        >>> register_op(VectorNeuronAdapter("torch.nn.Linear"))          # the VN authors' nn.Linear maps
        >>> register_op(VectorNeuronAdapter("models.vn_layers.VNLinear", in_channels="map_to_feat.in_features",
        ...                                 out_channels="map_to_feat.out_features"))
    """

    action = "vector_neurons"
    recipe_keys = ("in_channels", "out_channels", "channel_axis", "vector_axis", "layouts", "subclasses")

    def __init__(
        self,
        target: type[nn.Module] | str = VNLinear,
        in_channels: str | int | Callable[[nn.Module], int] = "in_channels",
        out_channels: str | int | Callable[[nn.Module], int] = "out_channels",
        channel_axis: int | None = None,
        vector_axis: int | None = None,
        layouts: Mapping[str, Any] | None = None,
        subclasses: bool = True,
    ) -> None:
        super().__init__(target, subclasses=subclasses)
        for key, spec in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(spec, str) and not all(part.isidentifier() for part in spec.split(".")):
                raise ValueError(
                    key,
                    f"{spec!r} is not an attribute name of the layer (dotted for a submodule's, e.g. "
                    "'map_to_feat.in_features')",
                )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.channel_axis, self.vector_axis = channel_axis, vector_axis
        self.layouts = _check_layouts(layouts)

    def channels(self, module: nn.Module) -> tuple[int, int]:
        """The layer's input and output channel counts."""
        return self._count(module, self.in_channels, "in"), self._count(module, self.out_channels, "out")

    def _count(self, module: nn.Module, spec: str | int | Callable[[nn.Module], int], side: str) -> int:
        try:
            return int(read_attribute(module, spec, f"{side}_channels"))
        except AttributeError as e:
            if spec != f"{side}_channels":
                raise TypeError(
                    f"{self.name}: {e}; pass {side}_channels= naming the attribute that holds the {side}put channel "
                    f"count (dotted for a submodule's, e.g. 'map_to_feat.{side}_features')"
                ) from None
        if hasattr(module, f"{side}_features"):  # nn.Linear
            return int(getattr(module, f"{side}_features"))
        weights = [p for p in module.parameters() if p.dim() == 2]
        if len(weights) == 1:
            return int(weights[0].shape[1 if side == "in" else 0])
        raise TypeError(
            f"{self.name}: cannot tell the layer's {side}put channel count: {type(module).__name__} has no "
            f"attribute {side}_channels or {side}_features and {len(weights)} 2-D weights (one would give it); "
            f"pass {side}_channels= naming the attribute that holds it, dotted for a submodule's (e.g. "
            f"'map_to_feat.{side}_features'), or a function of the layer"
        )

    def matches(self, module: nn.Module) -> bool:
        if isinstance(module, nn.Linear) and module.bias is not None:
            return False  # y = Wx + b is not rotation-equivariant: not a VN map (an invariant head, say)
        return super().matches(module)

    def axes(self, module: nn.Module, path: str | None = None) -> tuple[int, int | None]:
        """``(channel_axis, vector_axis)`` at the call site ``path`` (``layouts``, else the adapter's own); a
        vector axis of None is found at each call."""
        ca, va = self.channel_axis, self.vector_axis
        if path is not None:
            for glob, (c, v) in self.layouts.items():
                if fnmatch.fnmatchcase(path, glob):
                    ca, va = (ca if c is None else c), (va if v is None else v)
                    break
        if ca is None:
            ca = -1 if isinstance(module, nn.Linear) else 1
        return ca, va

    def make_branch(self, module: nn.Module, init_std: float) -> Branch:
        c_in, c_out = self.channels(module)
        return VectorBranch(c_in, c_out, init_std, *self.axes(module))

    def site_branch(self, path: str, module: nn.Module, init_std: float) -> Branch:
        c_in, c_out = self.channels(module)
        return VectorBranch(c_in, c_out, init_std, *self.axes(module, path))

    def can_fuse(self, module: nn.Module) -> bool:
        if isinstance(module, nn.Linear):  # a bias-free nn.Linear map: F.linear with the same [out, in] weight
            return type(module).forward is nn.Linear.forward and module.bias is None
        return type(module).forward is VNLinear.forward  # the shipped layer (or a subclass that keeps its forward)

    def fused(self, module: nn.Module, branch: Branch, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # VNLinear's W acts on channels and leaves the 3-axis alone: kron(W, I_3) in the branch's index c*3+i
        weight = module.weight
        assert isinstance(weight, torch.Tensor)
        eye = torch.eye(3, dtype=weight.dtype, device=weight.device)
        return branch.product(self.feature(args, kwargs), torch.kron(weight, eye) + branch.theta * branch.weight)

    def record(self, module: nn.Module) -> dict[str, Any]:
        c_in, c_out = self.channels(module)
        channel_axis, vector_axis = self.axes(module)
        return {
            "action": self.action,
            "in_channels": c_in,
            "out_channels": c_out,
            "channel_axis": channel_axis,
            "vector_axis": vector_axis,
        }

    def fits_feature(self, module: nn.Module, x: torch.Tensor) -> bool:
        c_in, _ = self.channels(module)
        try:
            vector_axes(x.shape, c_in, *self.axes(module))
        except LayoutError:
            return False
        return True


def _check_layouts(layouts: Mapping[str, Any] | None) -> dict[str, tuple[int | None, int | None]]:
    """``layouts`` as ``{glob: (channel_axis, vector_axis)}``; ValueError("layouts", why) for a malformed one."""
    expected = (
        "a mapping from module-path globs to the axes there, e.g. {'encoder.conv_pos.*': {vector_axis: 2}} or "
        "{'head.*': [-1, 1]} (channel_axis, vector_axis)"
    )
    if layouts is None:
        return {}
    if not isinstance(layouts, Mapping):
        raise ValueError("layouts", f"expected {expected}, got {layouts!r}")
    out: dict[str, tuple[int | None, int | None]] = {}
    for glob, given in layouts.items():
        if isinstance(given, Mapping):
            unknown = sorted(set(given) - {"channel_axis", "vector_axis"})
            if unknown or not given:
                raise ValueError("layouts", f"{glob!r}: give channel_axis and/or vector_axis, got {dict(given)!r}")
            axes = (given.get("channel_axis"), given.get("vector_axis"))
        elif isinstance(given, (list, tuple)) and len(given) == 2:
            axes = (given[0], given[1])
        else:
            raise ValueError("layouts", f"{glob!r}: expected {{channel_axis, vector_axis}} or a pair, got {given!r}")
        if not isinstance(glob, str) or not all(
            a is None or (isinstance(a, int) and not isinstance(a, bool)) for a in axes
        ):
            raise ValueError("layouts", f"expected {expected}, got {glob!r}: {given!r}")
        if axes[0] is not None and axes[0] == axes[1]:
            raise ValueError("layouts", f"{glob!r}: the channel and 3-vector axes must differ, got {axes[0]} twice")
        out[glob] = (axes[0], axes[1])
    return out
