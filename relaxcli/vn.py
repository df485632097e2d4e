"""Vector-Neuron linear layer (Deng et al., 2021): an SO(3)-equivariant map between lists of 3-vectors.

Features are ``[B, C, 3, ...]``: ``C`` channels, each a Cartesian 3-vector, any number of trailing point axes.
The layer mixes channels only, ``y[:, o] = Σ_c W[o, c] x[:, c]``, which commutes with every rotation ``x -> x Rᵀ``.

Example:
    >>> layer = VNLinear(8, 16)
    >>> layer(torch.randn(2, 8, 3, 100)).shape
    torch.Size([2, 16, 3, 100])
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["VNLinear"]


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
