"""The grid task: Allen-Cahn phase fields on a periodic grid (exact C4 / D4 symmetry) and a steerable escnn CNN.

Example:
    >>> data = AllenCahnData(train=64, val=32, test=32)
    >>> (u0,), u_t = data.train[0]; u0.shape
    torch.Size([1, 32, 32])
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..core.reps import default_dtype
from .cache import SPLITS

__all__ = ["simulate_allen_cahn", "smooth_fields", "FieldSplit", "AllenCahnData", "SteerableCNN"]


def simulate_allen_cahn(u0: np.ndarray, steps: int = 20, dt: float = 0.1, diffusion: float = 1.0) -> np.ndarray:
    """Explicit Euler steps of ``u_t = D Δu + u − u³`` on a periodic grid (5-point Laplacian), ``u0 [..., H, W]``.

    The stencil and the reaction term commute with rotations by 90° and with flips of a square periodic grid, so the
    map ``u0 -> u_T`` is exactly D4-equivariant (in floating point too: the stencil sums the same four neighbours).
    """
    u = np.asarray(u0, dtype=np.float64).copy()
    for _ in range(steps):
        lap = (np.roll(u, 1, -1) + np.roll(u, -1, -1) + np.roll(u, 1, -2) + np.roll(u, -1, -2)) - 4 * u
        u = u + dt * (diffusion * lap + u - u**3)
    return u


def smooth_fields(rng: np.random.Generator, n: int, size: int, length_scale: float = 3.0) -> np.ndarray:
    """``n`` random fields ``[n, size, size]``: white noise low-pass filtered with a Gaussian of ``length_scale``
    pixels on the periodic grid, each scaled to unit root-mean-square."""
    noise = rng.standard_normal((n, size, size))
    k = np.fft.fftfreq(size)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    filt = np.exp(-2 * (np.pi * length_scale) ** 2 * k2)
    fields = np.fft.ifft2(np.fft.fft2(noise) * filt).real
    return fields / np.sqrt((fields**2).mean(axis=(-2, -1), keepdims=True))


class FieldSplit(Dataset):
    """``((u0 [1, H, W],), u_T [1, H, W])`` pairs, float32."""

    def __init__(self, inputs: np.ndarray, targets: np.ndarray, name: str = "") -> None:
        self.name = name
        self.inputs = torch.as_tensor(inputs[:, None].astype(np.float32))
        self.targets = torch.as_tensor(targets[:, None].astype(np.float32))

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        return (self.inputs[index],), self.targets[index]

    def __repr__(self) -> str:
        return f"FieldSplit({self.name!r}, {len(self)} fields of {tuple(self.inputs.shape[-2:])})"


class AllenCahnData:
    """The ``allen_cahn`` grid task: predict a phase field after ``steps`` Allen-Cahn steps from its initial state.

    Exact D4 symmetry (rotations by 90°, flips) on a periodic ``size x size`` grid; generated in well under a second,
    deterministic from ``seed`` (each split from its own stream, so a smaller split is a prefix of a larger one).

    Example:
        >>> data = AllenCahnData(train=64, val=32, test=32)
        >>> (u0,), u_t = data.train[0]; u0.shape
        torch.Size([1, 32, 32])
    """

    def __init__(
        self,
        train: int = 256,
        val: int = 128,
        test: int = 128,
        size: int = 32,
        steps: int = 20,
        dt: float = 0.1,
        diffusion: float = 1.0,
        length_scale: float = 3.0,
        seed: int = 0,
    ) -> None:
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if dt * diffusion > 0.25:
            raise ValueError(f"dt * diffusion = {dt * diffusion} > 0.25: the explicit scheme is unstable")
        self.sizes = {"train": int(train), "val": int(val), "test": int(test)}
        splits = {}
        for split_id, name in enumerate(SPLITS):
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7, split_id]))
            u0 = smooth_fields(rng, self.sizes[name], size, length_scale)
            splits[name] = FieldSplit(u0, simulate_allen_cahn(u0, steps, dt, diffusion), name)
        self.train, self.val, self.test = splits["train"], splits["val"], splits["test"]

    def __repr__(self) -> str:
        return f"AllenCahnData({self.sizes})"


class SteerableCNN(nn.Module):
    """escnn CNN for scalar fields on a periodic grid: ``[B, 1, H, W] -> [B, 1, H, W]``, equivariant to C_n or D_n.

    A lifting ``R2Conv`` (trivial -> ``channels`` regular fields), ``num_layers - 2`` regular -> regular
    ``R2Conv``s with ReLU, and a projection back to one trivial field; the output is ``u0 + net(u0)``. Convolutions
    pad circularly, so rotations by 90° and flips of the square periodic grid are exact symmetries. ``in_type`` and
    ``out_type`` are the escnn field types of input and output (``symmetry: {group: escnn, inputs: [in_type],
    output: out_type}``). Needs escnn (``relaxcli[escnn]``, see the README).

    Args:
        group: ``"C"`` (rotations) or ``"D"`` (rotations and flips).
        n: order of the rotations: 1, 2 or 4 (the ones that map the pixel grid onto itself).
        channels: regular fields per hidden layer.
        num_layers: convolutions in total (>= 2).
        kernel_size: odd kernel size.

    Example:
        >>> model = SteerableCNN(group="C", n=4, channels=4)
        >>> model(torch.randn(2, 1, 32, 32)).shape
        torch.Size([2, 1, 32, 32])
    """

    def __init__(
        self, group: str = "C", n: int = 4, channels: int = 8, num_layers: int = 3, kernel_size: int = 5
    ) -> None:
        super().__init__()
        from ..ops.steerable import import_escnn

        escnn = import_escnn()
        gspaces, esnn = escnn.gspaces, escnn.nn
        if group not in ("C", "D") or n not in (1, 2, 4):
            raise ValueError(f"group must be 'C' or 'D' and n one of 1, 2, 4; got group={group!r}, n={n}")
        if num_layers < 2 or kernel_size % 2 == 0:
            raise ValueError(f"need num_layers >= 2 and an odd kernel_size, got {num_layers}, {kernel_size}")
        dtype = torch.get_default_dtype()
        with default_dtype(torch.float32):  # escnn samples its bases in float32 and fails under a float64 default
            gs = gspaces.rot2dOnR2(n) if group == "C" else gspaces.flipRot2dOnR2(n)
            self.in_type = esnn.FieldType(gs, [gs.trivial_repr])
            hidden = esnn.FieldType(gs, channels * [gs.regular_repr])
            self.out_type = esnn.FieldType(gs, [gs.trivial_repr])
            pad = kernel_size // 2
            layers: list[nn.Module] = []
            types = [self.in_type] + [hidden] * (num_layers - 1) + [self.out_type]
            for i, (a, b) in enumerate(itertools.pairwise(types)):
                layers.append(esnn.R2Conv(a, b, kernel_size, padding=pad, padding_mode="circular"))
                if i < num_layers - 1:
                    layers.append(esnn.ReLU(b))
            self.net = esnn.SequentialModule(*layers)
        self.to(dtype)

    def forward(self, u0: torch.Tensor) -> torch.Tensor:
        from escnn.nn import GeometricTensor  # imported by __init__ already

        return u0 + self.net(GeometricTensor(u0, self.in_type)).tensor
