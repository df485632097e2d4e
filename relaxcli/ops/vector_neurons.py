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

import math
from typing import Any

import torch
from torch import nn

from ..core.branches import Branch, VectorBranch
from .base import ClassAdapter

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
    """A Vector-Neuron linear layer: ``[B, C_in, 3, ...] -> [B, C_out, 3, ...]`` (axes configurable).

    Args:
        target: the layer class, or its import path as a string (``"mypkg.layers.MyVNLinear"``).
        in_channels, out_channels: attribute names on the layer holding the channel counts.
        channel_axis, vector_axis: where channels and the 3-vector sit in the feature tensor.
    """

    action = "vector_neurons"
    recipe_keys = ("in_channels", "out_channels", "channel_axis", "vector_axis")

    def __init__(
        self,
        target: type[nn.Module] | str = VNLinear,
        in_channels: str | int = "in_channels",
        out_channels: str | int = "out_channels",
        channel_axis: int = 1,
        vector_axis: int = 2,
    ) -> None:
        super().__init__(target)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.channel_axis, self.vector_axis = channel_axis, vector_axis

    def channels(self, module: nn.Module) -> tuple[int, int]:
        """The layer's input and output channel counts (attribute names, or the counts themselves)."""
        try:
            return tuple(
                int(c if isinstance(c, int) else getattr(module, c))  # type: ignore[return-value]
                for c in (self.in_channels, self.out_channels)
            )
        except AttributeError as e:
            raise TypeError(
                f"{self.name}: layer has no channel attribute ({e}); pass in_channels=/out_channels= "
                "naming the attributes that hold the channel counts"
            ) from None

    def make_branch(self, module: nn.Module, init_std: float) -> Branch:
        c_in, c_out = self.channels(module)
        return VectorBranch(c_in, c_out, init_std, self.channel_axis, self.vector_axis)

    def can_fuse(self, module: nn.Module) -> bool:
        return type(module).forward is VNLinear.forward  # the shipped layer (or a subclass that keeps its forward)

    def fused(self, module: nn.Module, branch: Branch, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # VNLinear's W acts on channels and leaves the 3-axis alone: kron(W, I_3) in the branch's index c*3+i
        weight = module.weight
        assert isinstance(weight, torch.Tensor)
        eye = torch.eye(3, dtype=weight.dtype, device=weight.device)
        return branch.product(self.feature(args, kwargs), torch.kron(weight, eye) + branch.theta * branch.weight)

    def record(self, module: nn.Module) -> dict[str, Any]:
        c_in, c_out = self.channels(module)
        return {
            "action": self.action,
            "in_channels": c_in,
            "out_channels": c_out,
            "channel_axis": self.channel_axis,
            "vector_axis": self.vector_axis,
        }

    def fits_feature(self, module: nn.Module, x: torch.Tensor) -> bool:
        c_in, _ = self.channels(module)
        axes = max(self.channel_axis, self.vector_axis)
        return x.dim() > axes and x.shape[self.channel_axis] == c_in and x.shape[self.vector_axis] == 3
